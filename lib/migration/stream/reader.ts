// Exact-length reads for the decoder: the interface both readers keep, and the reader over async iterables of chunks.
import { Buffer } from 'node:buffer';
import { ByteSourceReader, isByteSource, type ByteSource } from '../source';
import { EMPTY } from './format';
import { allocIoBuffer, bufferView } from '../../buffers';

/**
 * What the decoder reads through. ChunkReader (here) reads an async iterable of chunks;
 * ByteSourceReader (../source.ts) reads a ByteSource into buffers it reuses.
 */
export interface StreamReader {
  /** Stream offset of the next unread byte. */
  readonly position: number;
  /** Bytes received from the source so far: where the stream ends, once it has ended. */
  readonly received: number;
  /** Bytes received and not yet read. */
  readonly buffered: number;
  /** Reads until `n` bytes are buffered; false when the source ended first. */
  fill(n: number): Promise<boolean>;
  /** The next `n` bytes, or null when the source ends before them (see `received`). */
  read(n: number): Promise<Buffer | null>;
  /**
   * Optional: read(n) with the bytes' CRC-32 when the read that brought them computed it where it
   * read (undefined otherwise: the caller computes it).
   */
  readChecksummed?(n: number): Promise<{ bytes: Buffer; crc: number | undefined } | null>;
  /** Takes `n` (<= buffered) bytes. */
  take(n: number): Buffer;
  /** Releases the source if it has not ended; idempotent. */
  close(): void | Promise<void>;
}

/**
 * Where a stream is read from: any async iterable of byte chunks (a Readable, a generator), or a
 * ByteSource (FdSource), which the decoder reads into three buffers it reuses.
 */
export type StreamSource = AsyncIterable<Buffer | Uint8Array> | ByteSource;

/** The reader for `source`. */
export function streamReader(source: StreamSource): StreamReader {
  return isByteSource(source) ? new ByteSourceReader(source) : new ChunkReader(source);
}

// Reads at least this large are filled chunk by chunk into their final Buffer, so a record is
// held once in memory rather than as pieces plus their concatenation.
const DIRECT_READ_MIN = 64 * 1024;
// A large read's buffer is first allocated up to this size; past it, it doubles as data arrives.
const GROW_STEP = 16 << 20;

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new TypeError(
    `StreamDecoder: the source yielded ${typeof chunk === 'string' ? 'a string (a Readable with an encoding set?)' : typeof chunk}, not bytes`,
  );
}

/**
 * Exact-length reads over an async iterable of arbitrarily sized chunks. Holds only the chunks
 * the current read needs plus the rest of the last one. Source chunks are referenced, not copied,
 * when a read lies inside one; they must not be modified after they are yielded (those of a
 * Readable never are).
 */
export class ChunkReader implements StreamReader {
  readonly #source: AsyncIterator<Buffer | Uint8Array>;
  #chunks: Buffer[] = [];
  #first = 0; // index in #chunks of the first unread chunk
  #head = 0; // unread bytes of #chunks[#first] start here
  #buffered = 0;
  #received = 0;
  #ended = false;
  #closed = false;

  constructor(source: AsyncIterable<Buffer | Uint8Array>) {
    if (source === null || typeof source !== 'object' || typeof source[Symbol.asyncIterator] !== 'function') {
      throw new TypeError('StreamDecoder: source must be an async iterable of Buffers (a Readable is one)');
    }
    this.#source = source[Symbol.asyncIterator]();
  }

  /** Stream offset of the next unread byte. */
  get position(): number {
    return this.#received - this.#buffered;
  }

  /** Bytes received from the source so far: where the stream ends, once it has ended. */
  get received(): number {
    return this.#received;
  }

  get buffered(): number {
    return this.#buffered;
  }

  /** Pulls chunks until `n` bytes are buffered; false when the source ended first. */
  async fill(n: number): Promise<boolean> {
    while (this.#buffered < n) {
      const chunk = await this.#pull();
      if (chunk === undefined) return false;
      if (chunk.length > 0) this.#push(chunk);
    }
    return true;
  }

  /** The next `n` bytes, or null when the source ends before them (see `received`). */
  async read(n: number): Promise<Buffer | null> {
    if (n === 0) return EMPTY;
    if (this.#buffered >= n) return this.take(n);
    if (n < DIRECT_READ_MIN) return (await this.fill(n)) ? this.take(n) : null;

    let out: Buffer | undefined;
    let filled = 0;
    // The buffer grows with the data (at most GROW_STEP ahead of it, then doubling), so that a
    // length that lies costs memory only in proportion to the bytes that actually came.
    const grow = (need: number): void => {
      if (out !== undefined && out.length >= need) return;
      // Native-owned (this path only serves reads of DIRECT_READ_MIN or more): a payload assembled
      // here is written into a device without a bounce copy.
      const bigger = allocIoBuffer(Math.min(n, Math.max(need, GROW_STEP, 2 * (out?.length ?? 0))));
      out?.copy(bigger, 0, 0, filled);
      out = bigger;
    };
    if (this.#buffered > 0) {
      grow(this.#buffered);
      for (let i = this.#first; i < this.#chunks.length; i++) {
        const chunk = this.#chunks[i]!;
        filled += chunk.copy(out!, filled, i === this.#first ? this.#head : 0);
      }
      this.#chunks = [];
      this.#first = this.#head = this.#buffered = 0;
    }
    while (filled < n) {
      const chunk = await this.#pull();
      if (chunk === undefined) return null;
      if (chunk.length === 0) continue;
      const k = Math.min(chunk.length, n - filled);
      if (out === undefined && k === n) {
        // The whole read lies in one source chunk: no copy (and no view when it is the chunk).
        if (k === chunk.length) return chunk;
        this.#push(bufferView(chunk, k));
        return bufferView(chunk, 0, n);
      }
      grow(filled + k);
      chunk.copy(out!, filled, 0, k);
      filled += k;
      if (k < chunk.length) this.#push(bufferView(chunk, k));
    }
    return out!;
  }

  /** Takes `n` (<= buffered) bytes: the chunk itself when they are one whole chunk, a view when they lie inside one, else one copy. */
  take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const chunks = this.#chunks;
    const first = chunks[this.#first]!;
    let out: Buffer;
    if (this.#head === 0 && first.length === n) {
      // A read of exactly one whole chunk: the chunk itself, not a view (two JS calls fewer). Made
      // for the in-process channel's frames when they went as bytes; since they go as objects
      // (frame-queue.ts) a local migrate's downtime no longer takes this path.
      out = first;
      this.#first++;
    } else if (first.length - this.#head >= n) {
      out = bufferView(first, this.#head, this.#head + n);
      this.#head += n;
      if (this.#head === first.length) {
        this.#first++;
        this.#head = 0;
      }
    } else {
      out = Buffer.allocUnsafe(n);
      let copied = 0;
      while (copied < n) {
        const chunk = chunks[this.#first]!;
        const k = Math.min(chunk.length - this.#head, n - copied);
        chunk.copy(out, copied, this.#head, this.#head + k);
        copied += k;
        this.#head += k;
        if (this.#head === chunk.length) {
          this.#first++;
          this.#head = 0;
        }
      }
    }
    this.#buffered -= n;
    if (this.#first === chunks.length) {
      this.#chunks = [];
      this.#first = 0;
    } else if (this.#first >= 1024) {
      // Tiny chunks: drop the consumed ones without shifting the array on every read.
      this.#chunks = chunks.slice(this.#first);
      this.#first = 0;
    }
    return out;
  }

  /** Releases the source if it has not ended (a Readable is destroyed). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#ended) {
      this.#ended = true;
      try {
        await this.#source.return?.();
      } catch {
        // The error that made us stop is the one worth reporting.
      }
    }
  }

  #push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  async #pull(): Promise<Buffer | undefined> {
    if (this.#ended) return undefined;
    const next = await this.#source.next();
    if (next.done) {
      this.#ended = true;
      return undefined;
    }
    const chunk = toBuffer(next.value);
    this.#received += chunk.length;
    return chunk;
  }
}
