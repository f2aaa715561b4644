// Byte sources the stream decoder reads into its own reused buffers (files, pipes, any fd), and the reader over them.
import { Buffer } from 'node:buffer';
import { fstatSync } from 'node:fs';
import { allocIoBuffer, allocIoBufferAsync } from '../buffers';
import { FdHandle } from '../fd-handle';
import { isSyscallError } from '../errors';
import { native } from '../native';
import { O_RDONLY } from '../uapi';
import { MigrationError, abortError } from './errors';
import { crc32, crc32Combine } from './stream/crc';

/**
 * A source of stream bytes that reads into buffers the caller owns. The decoder then keeps three
 * buffers and reads every record into one of them, instead of receiving a freshly allocated
 * chunk per read: fresh memory means a page fault per 4 KiB, which costs more than the data's
 * copy (bench/RESULTS.md, loads).
 */
export interface ByteSource {
  /**
   * Reads into buffer[offset, offset + max), resolving the byte count once at least `min` bytes
   * came; fewer only when the input ended (0 at its end).
   */
  readAtLeast(buffer: Buffer, offset: number, min: number, max: number): Promise<number>;
  /**
   * Optional: readAtLeast, plus the CRC-32 of the first `crcLength` bytes read (fewer if fewer
   * came), computed where the bytes were read. Resolves null when this source cannot (then
   * nothing was read).
   */
  readAtLeastChecksummed?(
    buffer: Buffer,
    offset: number,
    min: number,
    max: number,
    crcLength: number,
  ): Promise<{ bytes: number; crc: number } | null>;
  /**
   * Releases the source. A read in flight that could wait indefinitely (a pipe with no data) is
   * cancelled: it rejects promptly, and the source lets go of the fd only after it settled.
   */
  close(): void;
}

export function isByteSource(value: unknown): value is ByteSource {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as ByteSource).readAtLeast === 'function' &&
    typeof (value as ByteSource).close === 'function'
  );
}

// Ids that let close() cancel this source's reads only (stdin may back several sources).
let lastCancelId = 0;

/**
 * A ByteSource over a file descriptor: a regular file, a pipe, a socket or a terminal, blocking or
 * not. A regular file is read on the thread pool; anything else is waited for on a native thread
 * of its own, never on the JS thread nor a pool thread, and close() cancels that wait. Also an
 * async iterable of fresh Buffers, for consumers that keep what they are given.
 */
export class FdSource implements ByteSource, AsyncIterable<Buffer> {
  readonly name: string;
  readonly #handle: FdHandle;
  readonly #cancelId = (lastCancelId = (lastCancelId % 0xfffffffe) + 1);

  readonly #signal: AbortSignal | undefined;
  // Whether the fd is a regular file or block device (read with its checksum on the pool), once known.
  #seekable: boolean | undefined;

  /**
   * Reads `fd`; close() closes it only when `closeFd` is set (stdin stays open by default). With
   * `signal`, an abort closes the source: a read waiting on a silent pipe, and every read after,
   * rejects with ERR_MIGRATION_ABORTED.
   */
  constructor(fd: number, options: { name?: string; closeFd?: boolean; signal?: AbortSignal } = {}) {
    if (!Number.isInteger(fd) || fd < 0)
      throw new TypeError(`FdSource: fd must be a non-negative integer, got ${String(fd)}`);
    this.name = options.name ?? `fd ${fd}`;
    this.#handle = new FdHandle(fd, this.name, { closeFd: options.closeFd ?? false });
    this.#signal = options.signal;
    this.#signal?.addEventListener('abort', () => this.close(), { once: true });
  }

  /** Opens a file (O_RDONLY | O_CLOEXEC) to read a stream from; close() closes it. */
  static open(path: string, options: { signal?: AbortSignal } = {}): FdSource {
    if (typeof path !== 'string' || path.includes('\0'))
      throw new TypeError(`FdSource.open: path must be a string without NUL bytes, got ${JSON.stringify(path)}`);
    return new FdSource(native.open(path, O_RDONLY), { name: path, closeFd: true, signal: options.signal });
  }

  /**
   * See ByteSource. A read cancelled by close() rejects with a MigrationError ERR_MIGRATION_IO
   * whose errno is ECANCELED. Buffers from allocIoBuffer() are read into without a copy.
   */
  async readAtLeast(buffer: Buffer, offset: number, min: number, max: number): Promise<number> {
    try {
      return await this.#handle.run((fd) => native.readAtLeastAsync(fd, buffer, offset, min, max, this.#cancelId));
    } catch (err) {
      throw this.#readError(err);
    }
  }

  /**
   * See ByteSource: for a regular file or block device, the read and the checksum are one pool
   * job; for anything else (a pipe, whose read may wait) null.
   */
  async readAtLeastChecksummed(
    buffer: Buffer,
    offset: number,
    min: number,
    max: number,
    crcLength: number,
  ): Promise<{ bytes: number; crc: number } | null> {
    try {
      if (this.#seekable === undefined) {
        const st = fstatSync(this.#handle.fd);
        this.#seekable = st.isFile() || st.isBlockDevice();
      }
      if (!this.#seekable) return null;
      return await this.#handle.run((fd) =>
        native.readAtLeastChecksummedAsync(fd, buffer, offset, min, max, crcLength),
      );
    } catch (err) {
      throw this.#readError(err);
    }
  }

  /** What a failed read reports: the abort, a close that cancelled it, or the failure naming the input. */
  #readError(err: unknown): Error {
    if (this.#signal?.aborted) return Object.assign(abortError(this.#signal, `reading ${this.name}`), { cause: err });
    if (this.#handle.closed && isSyscallError(err, 'ECANCELED')) {
      return new MigrationError('ERR_MIGRATION_IO', `${this.name} was closed while a read was waiting`, {
        cause: err,
        errno: 'ECANCELED',
      });
    }
    // Name the input: "read EISDIR" alone does not say which file.
    const errno = isSyscallError(err) ? err.code : undefined;
    return new MigrationError('ERR_MIGRATION_IO', `reading ${this.name} failed: ${(err as Error).message}`, {
      cause: err,
      errno,
    });
  }

  /** Idempotent; cancels a waiting read, and closes the fd (when owned) once that read let go. */
  close(): void {
    if (this.#handle.closed) return;
    native.cancelReads(this.#cancelId);
    this.#handle.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    try {
      for (;;) {
        const chunk = allocIoBuffer(1 << 20);
        const n = await this.readAtLeast(chunk, 0, 1, chunk.length);
        if (n === 0) return;
        yield chunk.subarray(0, n);
      }
    } finally {
      this.close();
    }
  }
}

// A refill reads this much past what it needs (the next record header, at least), and a buffer
// is never smaller than MIN_CAPACITY, so small records do not cost one read each.
const LOOKAHEAD = 4096;
export const MIN_CAPACITY = 256 * 1024;
// A buffer is first made at most this much larger than the bytes it holds; past that it doubles
// as data arrives, so a record length that lies costs memory only in proportion to real bytes.
const GROW_STEP = 16 << 20;
const EMPTY = Buffer.alloc(0);

/**
 * Exact-length reads over a ByteSource into three buffers used in turn. A read returns a view
 * of one of them; a buffer is written again only after two more buffer switches, and one read
 * of the decoder's switches at most once, so a record's views (header and payload) stay valid
 * while the decoder reads the next record (two reads): the consumer may hold one record while
 * the next is decoded, and must be done with it when it asks for the one after.
 */
export class ByteSourceReader {
  readonly #source: ByteSource;
  readonly #buffers: Buffer[] = [EMPTY, EMPTY, EMPTY];
  #turn = 0;
  #buf: Buffer = EMPTY;
  #head = 0; // next unread byte of #buf
  #tail = 0; // end of the bytes read into #buf
  #received = 0;
  #ended = false;
  #closed = false;

  constructor(source: ByteSource) {
    this.#source = source;
  }

  /** Stream offset of the next unread byte. */
  get position(): number {
    return this.#received - this.buffered;
  }

  /** Bytes received from the source so far: where the stream ends, once it has ended. */
  get received(): number {
    return this.#received;
  }

  get buffered(): number {
    return this.#tail - this.#head;
  }

  /** Reads until `n` bytes are buffered; false when the source ended first. */
  async fill(n: number): Promise<boolean> {
    return (await this.#fill(n, false)).ok;
  }

  /**
   * fill(n); with `checksum`, when a read completes the `n` bytes and the source can checksum
   * where it reads, also their CRC-32: the bytes that read brought are checksummed in the same
   * job, those buffered before it here (a look-ahead's few KiB), and the two CRCs combined.
   */
  async #fill(n: number, checksum: boolean): Promise<{ ok: boolean; crc?: number }> {
    if (this.buffered >= n) return { ok: true };
    if (this.#ended) return { ok: false };
    // Bytes already handed out lie before #head: new bytes go after #tail, or into the next buffer.
    if (this.#buf.length - this.#head < n) await this.#switchBuffer(n);
    while (this.buffered < n) {
      // A length read from the stream can lie: the buffer grows only as bytes actually arrive.
      if (this.#tail === this.#buf.length) await this.#grow(n);
      const need = n - this.buffered;
      const room = this.#buf.length - this.#tail;
      if (checksum && need <= room && this.#source.readAtLeastChecksummed) {
        const before = this.buffered;
        const r = await this.#source.readAtLeastChecksummed(this.#buf, this.#tail, need, room, need);
        if (r !== null) {
          this.#tail += r.bytes;
          this.#received += r.bytes;
          if (r.bytes < need) {
            this.#ended = true;
            return { ok: false };
          }
          const head = before === 0 ? 0 : crc32(this.#buf.subarray(this.#head, this.#head + before));
          return { ok: true, crc: before === 0 ? r.crc : crc32Combine(head, r.crc, need) };
        }
        // This source cannot checksum as it reads (a pipe): nothing was read, read plainly.
      }
      const min = Math.min(need, room);
      const got = await this.#source.readAtLeast(this.#buf, this.#tail, min, room);
      this.#tail += got;
      this.#received += got;
      if (got < min) {
        this.#ended = true;
        return { ok: false };
      }
    }
    return { ok: true };
  }

  /** The next `n` bytes, or null when the source ends before them (see `received`). */
  async read(n: number): Promise<Buffer | null> {
    if (n === 0) return EMPTY;
    return (await this.fill(n)) ? this.take(n) : null;
  }

  /**
   * read(n), with the bytes' CRC-32 when the read that brought them could compute it (one pool job
   * for a file); `crc` is undefined when it could not, or when no read was needed.
   */
  async readChecksummed(n: number): Promise<{ bytes: Buffer; crc: number | undefined } | null> {
    if (n === 0) return { bytes: EMPTY, crc: 0 };
    const filled = await this.#fill(n, true);
    return filled.ok ? { bytes: this.take(n), crc: filled.crc } : null;
  }

  /** Takes `n` (<= buffered) bytes, as a view. */
  take(n: number): Buffer {
    const out = this.#buf.subarray(this.#head, this.#head + n);
    this.#head += n;
    return out;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#source.close();
  }

  /**
   * Moves the unread bytes to the next buffer, which is made to hold `n` bytes plus the look-ahead,
   * or GROW_STEP more than is buffered when `n` is larger: #grow() adds the rest as data arrives.
   */
  async #switchBuffer(n: number): Promise<void> {
    const turn = (this.#turn + 1) % this.#buffers.length;
    const first = Math.max(MIN_CAPACITY, Math.min(n + LOOKAHEAD, this.buffered + GROW_STEP));
    if (this.#buffers[turn]!.length < first) {
      // Native-owned: the source reads into it in place (no bounce copy), and it stays valid for
      // an in-flight read whatever a consumer does with the views it was handed. Faulted in on
      // the pool: the copy below is the first write to it, on the JS thread. The turn moves only
      // once it is there: a failed allocation leaves the reader as it was.
      this.#buffers[turn] = await allocIoBufferAsync(first);
    }
    this.#turn = turn;
    const next = this.#buffers[turn]!;
    const have = this.buffered;
    this.#buf.copy(next, 0, this.#head, this.#tail);
    this.#buf = next;
    this.#head = 0;
    this.#tail = have;
  }

  /**
   * Replaces the current buffer, full and still short of `n` bytes, by one twice its size (at most
   * `n` plus the look-ahead). Only a buffer just switched to grows (fill() switches whenever the
   * current one cannot hold `n` bytes past #head), so no view of it was handed out yet: the
   * three-buffer contract holds, and the old buffer goes to the collector.
   */
  async #grow(n: number): Promise<void> {
    const bigger = await allocIoBufferAsync(Math.min(n + LOOKAHEAD, 2 * this.#buf.length));
    const have = this.buffered;
    this.#buf.copy(bigger, 0, this.#head, this.#tail);
    this.#buffers[this.#turn] = bigger;
    this.#buf = bigger;
    this.#head = 0;
    this.#tail = have;
  }
}
