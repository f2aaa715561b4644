// The .vfmig stream format (DESIGN.md, "The stream format"): encoder, streaming decoder and offline verifier.
import { constants as bufferConstants } from 'node:buffer';
import type { Writable } from 'node:stream';
import { WriteStream } from 'node:fs';
import { Socket } from 'node:net';
import { crc32 } from 'node:zlib';
import { ByteSourceReader, isByteSource, type ByteSource } from './source';

// ---------------------------------------------------------------------------------------------
// Layout, version 1, little-endian.
//
//   stream header  magic[8] "VFIOMIG\0" | u16 version | u16 flags | u32 N | JSON[N] | u32 crc32(all before)
//   record header  u8 kind | u8 0 | u16 0 | u32 phase | u64 sequence | u64 length | u32 crc32(payload)
//                  | u32 crc32(the 28 bytes before)                                     (32 bytes)
//   payload        length bytes
//   trailer        record header (kind 0xff, phase 0, sequence = DATA record count, length 20), then
//                  u64 record count | u64 total payload bytes | u32 crc32(every byte before the trailer)
// ---------------------------------------------------------------------------------------------

const MAGIC = Buffer.from('VFIOMIG\0', 'latin1');
/** The first 8 bytes of every stream. A copy: changing it changes nothing. */
export const STREAM_MAGIC: Buffer = Buffer.from(MAGIC);
export const STREAM_VERSION = 1;
/** The phase of the records written after the device stopped (stop-and-copy). */
export const PHASE_STOP_COPY = 0xffffffff;
/** Largest header JSON document, in bytes. */
export const MAX_HEADER_JSON = 1 << 20;
/** Default largest record payload, in bytes; see StreamDecoderOptions.maxPayload. */
export const DEFAULT_MAX_PAYLOAD = 1 << 30;

const KIND_DATA = 0x01;
const KIND_TRAILER = 0xff;
const FIXED_HEADER_SIZE = 16;
const RECORD_HEADER_SIZE = 32;
const TRAILER_PAYLOAD_SIZE = 20;
const EMPTY = Buffer.alloc(0);

export interface StreamHeader {
  protocol: 'v1' | 'v2';
  device: Record<string, unknown>;
  [key: string]: unknown;
}

export interface StreamRecord {
  /** Pre-copy iteration (0, 1, ...) or PHASE_STOP_COPY. */
  phase: number;
  sequence: bigint;
  payload: Buffer;
}

export interface StreamTotals {
  records: bigint;
  payloadBytes: bigint;
}

export type StreamErrorCode =
  | 'ERR_STREAM_BAD_MAGIC'
  | 'ERR_STREAM_VERSION'
  | 'ERR_STREAM_TRUNCATED'
  | 'ERR_STREAM_CHECKSUM'
  | 'ERR_STREAM_SEQUENCE'
  | 'ERR_STREAM_TRAILER'
  | 'ERR_STREAM_FORMAT'
  | 'ERR_STREAM_LIMIT';

/**
 * A stream that is not a valid, complete .vfmig stream. `offset` is where the problem is: the
 * field, for the fixed fields of the stream header; the start of the structure a checksum or a
 * record-level check covers (stream header, record header, payload); the end of the data, for a
 * truncated stream. `record` is the index of the record concerned (the trailer's index is the
 * number of data records), when the problem is inside one.
 */
export class StreamError extends Error {
  readonly code: StreamErrorCode;
  readonly offset: number;
  readonly record?: bigint;

  constructor(code: StreamErrorCode, message: string, offset: number, record?: bigint) {
    super(message);
    this.name = 'StreamError';
    this.code = code;
    this.offset = offset;
    if (record !== undefined) this.record = record;
  }
}

/**
 * crc32(data, running) that also holds for empty data: Node's zlib.crc32 returns 0, not `running`,
 * for an empty view whose ArrayBuffer has no memory behind it (new Uint8Array(0), or Buffer.alloc(0)
 * once its .buffer has been touched), as zlib's crc32() does for a null pointer.
 */
function crc32Update(data: Uint8Array, running: number): number {
  return data.byteLength === 0 ? running : crc32(data, running);
}

const hex32 = (v: number): string => `0x${v.toString(16).padStart(8, '0')}`;

// ---------------------------------------------------------------------------------------------
// CRC-32 combination (zlib's crc32_combine, in its x^(2^n) mod p form). crc32(A ‖ B) follows from
// crc32(A), crc32(B) and |B| in ~1000 integer operations, so the running stream checksum does not
// need a second pass over every payload whose own CRC was just computed: it halves the CRC work,
// which is the bulk of the codec's CPU time on large streams.
// ---------------------------------------------------------------------------------------------

const CRC_POLY = 0xedb88320;

/** a(x) * b(x) mod p(x), in the reflected bit order of CRC-32. */
function multModP(a: number, b: number): number {
  if (a === 0) return 0;
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ CRC_POLY : b >>> 1;
  }
  return p >>> 0;
}

const X2N_TABLE = new Uint32Array(32);
{
  let p = 1 << 30; // x^1
  X2N_TABLE[0] = p;
  for (let n = 1; n < 32; n++) X2N_TABLE[n] = p = multModP(p, p);
}

/** x^(n * 2^k) mod p(x). */
function x2nModP(n: number, k: number): number {
  let p = 0x80000000; // x^0
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N_TABLE[k & 31]!, p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

// v1 streams repeat one transaction size, so the operator for the last length is kept.
let combineLength = -1;
let combineOperator = 0;

/** crc32(A ‖ B) from crc32(A), crc32(B) and the length of B. */
function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB !== combineLength) {
    combineOperator = x2nModP(lengthB, 3);
    combineLength = lengthB;
  }
  return (multModP(combineOperator, crcA) ^ crcB) >>> 0;
}

// Below this size a second CRC pass costs less than a combination.
const COMBINE_MIN = 4096;

/** Extends the running CRC `running` over `payload`, whose own CRC is `payloadCrc`. */
function extendCrc(running: number, payload: Uint8Array, payloadCrc: number): number {
  return payload.byteLength < COMBINE_MIN
    ? crc32Update(payload, running)
    : crc32Combine(running, payloadCrc, payload.byteLength);
}

function encodeRecordHeader(
  kind: number,
  phase: number,
  sequence: bigint,
  length: number,
  payloadCrc: number,
  into: Buffer,
): void {
  into.writeUInt8(kind, 0);
  into.writeUInt8(0, 1);
  into.writeUInt16LE(0, 2);
  into.writeUInt32LE(phase, 4);
  into.writeBigUInt64LE(sequence, 8);
  into.writeBigUInt64LE(BigInt(length), 16);
  into.writeUInt32LE(payloadCrc, 24);
  into.writeUInt32LE(crc32(into.subarray(0, 28)), 28);
}

function checkMaxPayload(value: number | undefined): number {
  if (value === undefined) return DEFAULT_MAX_PAYLOAD;
  if (!Number.isSafeInteger(value) || value < 0 || value > bufferConstants.MAX_LENGTH) {
    throw new RangeError(`maxPayload must be an integer from 0 to ${bufferConstants.MAX_LENGTH}, got ${String(value)}`);
  }
  return value;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Why `h` is not a valid stream header, or undefined when it is one. */
function headerProblem(h: unknown): string | undefined {
  if (!isPlainObject(h)) {
    return `it must be a JSON object, got ${h === null ? 'null' : Array.isArray(h) ? 'an array' : typeof h}`;
  }
  if (h.protocol !== 'v1' && h.protocol !== 'v2') {
    return `its protocol must be 'v1' or 'v2', got ${JSON.stringify(h.protocol) ?? 'nothing'}`;
  }
  if (!isPlainObject(h.device)) return 'its device must be an object';
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

export type StreamSink = NodeJS.WritableStream | ((chunk: Buffer) => Promise<void>);

export interface StreamEncoderOptions {
  /** Largest payload writeRecord accepts, so no stream is written that a decoder would refuse. */
  maxPayload?: number;
  /**
   * The Writable sink is done with a chunk once its write callback ran (true of files, sockets,
   * pipes and process.stdout; not of an in-process PassThrough, whose readable side still holds
   * it). The encoder then reuses record buffers instead of allocating one per record: fresh
   * allocations are fresh pages, and their page faults cost more than the copy (see bench/).
   * Default: decided from the sink's type.
   */
  recycle?: boolean;
}

type Emit = (chunk: Buffer, flush: boolean) => Promise<void>;

/** Sinks known to be done with a chunk when its write callback runs. */
function sinkReleasesOnCallback(w: NodeJS.WritableStream): boolean {
  return w instanceof WriteStream || w instanceof Socket || w === process.stdout || w === process.stderr;
}

/** A few record buffers of one size, handed back after the sink wrote them. */
class RecordPool {
  #free: Buffer[] = [];
  #size = 0;
  readonly #mine = new WeakSet<Buffer>();

  take(size: number): Buffer {
    if (size === this.#size && this.#free.length) return this.#free.pop()!;
    const buf = Buffer.allocUnsafeSlow(size);
    this.#mine.add(buf);
    return buf;
  }

  /** Only buffers this pool handed out come back (the header and trailer never do). */
  give(buf: Buffer): void {
    if (!this.#mine.has(buf)) return;
    if (buf.length !== this.#size) {
      this.#size = buf.length;
      this.#free = [];
    }
    if (this.#free.length < 4) this.#free.push(buf);
  }
}

/** Waits until `w` drains, or rejects if it errors or closes first. */
function drained(w: NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: unknown): void => {
      w.removeListener('drain', onDrain);
      w.removeListener('error', onError);
      w.removeListener('close', onClose);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onDrain = (): void => done();
    const onError = (err: unknown): void => done(err);
    const onClose = (): void => done(new Error('the stream sink closed before it drained'));
    w.on('drain', onDrain);
    w.on('error', onError);
    w.on('close', onClose);
    // Destroyed before we listened: 'close' may already have gone by.
    const state = w as Partial<Writable>;
    if (state.destroyed) done(state.errored ?? new Error('the stream sink is destroyed'));
  });
}

function writableEmitter(w: NodeJS.WritableStream, written?: (chunk: Buffer) => void): Emit {
  // An error reported by the callback of a write we did not wait for: raised at the next call.
  let failure: unknown;
  // The sink may fail while no write is awaited (a file destroyed under an in-flight write):
  // keep the error for the next call instead of letting an unhandled 'error' event end the process.
  w.on('error', (err: unknown) => {
    failure ??= err;
  });
  return async (chunk, flush) => {
    if (failure !== undefined) throw failure;
    const state = w as Partial<Writable>;
    if (state.destroyed || state.writableEnded) {
      throw state.errored ?? new Error('the stream sink is closed: cannot write to it');
    }
    if (flush) {
      // The last chunk: wait until the sink has taken it, so that finish() reports its errors.
      await new Promise<void>((resolve, reject) => {
        w.write(chunk, (err) => (err ? reject(err) : resolve()));
      });
    } else if (
      !w.write(chunk, (err) => {
        if (err) failure ??= err;
        else written?.(chunk);
      })
    ) {
      await drained(w);
    }
    if (failure !== undefined) throw failure;
  };
}

/**
 * Writes a stream: the header, then one record per writeRecord, then the trailer on finish().
 *
 * Each record is copied once into a Buffer of its own (record header + payload), and that Buffer
 * is what the sink gets. The copy is what lets the caller reuse its payload buffer as soon as
 * writeRecord resolves whatever the sink is: a Writable's callback only says the chunk was
 * handled, and a Transform or PassThrough still holds it in its readable queue after that. The
 * one Buffer per record also makes one write per record instead of two. A sink function may keep
 * the chunks it is given.
 *
 * Calls are serialised: a call made before the previous one resolved waits its turn. A sink
 * error fails the encoder for good, since the stream then has a hole.
 */
export class StreamEncoder {
  readonly #emit: Emit;
  readonly #headerBytes: Buffer;
  readonly #maxPayload: number;
  #state: 'new' | 'open' = 'new';
  #failure: { error: unknown } | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #finishing: Promise<StreamTotals> | undefined;
  #crc = 0;
  #records = 0n;
  #payloadBytes = 0n;
  #pool: RecordPool | undefined;

  constructor(sink: StreamSink, header: StreamHeader, options: StreamEncoderOptions = {}) {
    if (typeof sink === 'function') {
      this.#emit = (chunk) => sink(chunk);
    } else if (sink !== null && typeof sink === 'object' && typeof sink.write === 'function') {
      const pool = (options.recycle ?? sinkReleasesOnCallback(sink)) ? new RecordPool() : undefined;
      this.#pool = pool;
      this.#emit = writableEmitter(sink, pool && ((chunk) => pool.give(chunk)));
    } else {
      throw new TypeError('StreamEncoder: sink must be a writable stream or an async function');
    }
    this.#maxPayload = checkMaxPayload(options.maxPayload);

    const problem = headerProblem(header);
    if (problem !== undefined) throw new TypeError(`StreamEncoder: bad stream header: ${problem}`);
    let json: string;
    try {
      json = JSON.stringify(header);
    } catch (err) {
      throw new TypeError(`StreamEncoder: the stream header cannot be written as JSON: ${(err as Error).message}`);
    }
    const jsonLength = Buffer.byteLength(json, 'utf8');
    if (jsonLength > MAX_HEADER_JSON) {
      throw new RangeError(
        `StreamEncoder: the stream header is ${jsonLength} bytes of JSON, more than ${MAX_HEADER_JSON}`,
      );
    }
    // Encoded now so that a bad header fails in the constructor, not at the first write.
    const bytes = Buffer.allocUnsafe(FIXED_HEADER_SIZE + jsonLength + 4);
    MAGIC.copy(bytes, 0);
    bytes.writeUInt16LE(STREAM_VERSION, 8);
    bytes.writeUInt16LE(0, 10);
    bytes.writeUInt32LE(jsonLength, 12);
    bytes.write(json, FIXED_HEADER_SIZE, 'utf8');
    bytes.writeUInt32LE(crc32(bytes.subarray(0, FIXED_HEADER_SIZE + jsonLength)), FIXED_HEADER_SIZE + jsonLength);
    this.#headerBytes = bytes;
  }

  /** Records written and their payload bytes so far. */
  get totals(): StreamTotals {
    return { records: this.#records, payloadBytes: this.#payloadBytes };
  }

  /** Writes the stream header; writeRecord and finish do it when it was not done. */
  writeHeader(): Promise<void> {
    return this.#run(async () => {
      if (this.#state === 'new') await this.#writeHeader();
    });
  }

  /**
   * Writes one DATA record. `payload` is copied when the record's turn comes and not looked at
   * after that, so the caller may reuse it once the promise resolves.
   */
  writeRecord(phase: number, payload: Buffer | Uint8Array): Promise<void> {
    if (!Number.isInteger(phase) || phase < 0 || phase > PHASE_STOP_COPY) {
      return Promise.reject(
        new RangeError(`StreamEncoder: phase must be an integer from 0 to ${PHASE_STOP_COPY}, got ${String(phase)}`),
      );
    }
    if (!(payload instanceof Uint8Array)) {
      return Promise.reject(new TypeError('StreamEncoder: payload must be a Buffer or Uint8Array'));
    }
    if (payload.byteLength > this.#maxPayload) {
      return Promise.reject(
        new RangeError(
          `StreamEncoder: payload of ${payload.byteLength} bytes is larger than maxPayload (${this.#maxPayload})`,
        ),
      );
    }
    if (this.#finishing !== undefined) {
      return Promise.reject(new Error('StreamEncoder: writeRecord() after finish()'));
    }
    return this.#run(async () => {
      if (this.#state === 'new') await this.#writeHeader();
      const length = payload.byteLength;
      const record = this.#pool
        ? this.#pool.take(RECORD_HEADER_SIZE + length)
        : Buffer.allocUnsafe(RECORD_HEADER_SIZE + length);
      // Buffer#copy is a plain memmove; TypedArray#set measured 10x slower under emulation (bench).
      toBuffer(payload).copy(record, RECORD_HEADER_SIZE);
      const body = record.subarray(RECORD_HEADER_SIZE);
      const payloadCrc = crc32(body);
      encodeRecordHeader(KIND_DATA, phase, this.#records, length, payloadCrc, record);
      const crc = extendCrc(crc32Update(record.subarray(0, RECORD_HEADER_SIZE), this.#crc), body, payloadCrc);
      await this.#emit(record, false);
      this.#crc = crc;
      this.#records++;
      this.#payloadBytes += BigInt(length);
    });
  }

  /**
   * Writes the trailer, after which the stream is complete, and resolves once the sink has taken
   * it. Does not end the sink. Calling it again returns the same result.
   */
  finish(): Promise<StreamTotals> {
    this.#finishing ??= this.#run(async () => {
      if (this.#state === 'new') await this.#writeHeader();
      const trailer = Buffer.allocUnsafe(RECORD_HEADER_SIZE + TRAILER_PAYLOAD_SIZE);
      const body = trailer.subarray(RECORD_HEADER_SIZE);
      body.writeBigUInt64LE(this.#records, 0);
      body.writeBigUInt64LE(this.#payloadBytes, 8);
      body.writeUInt32LE(this.#crc, 16);
      encodeRecordHeader(KIND_TRAILER, 0, this.#records, TRAILER_PAYLOAD_SIZE, crc32(body), trailer);
      await this.#emit(trailer, true);
      return this.totals;
    });
    return this.#finishing;
  }

  async #writeHeader(): Promise<void> {
    await this.#emit(this.#headerBytes, false);
    this.#crc = crc32(this.#headerBytes);
    this.#state = 'open';
  }

  #run<T>(op: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(async () => {
      if (this.#failure) throw this.#failure.error;
      try {
        return await op();
      } catch (error) {
        // Only sink errors get here (calls are checked before queueing), and they leave a hole.
        this.#failure ??= { error };
        throw error;
      }
    });
    this.#queue = result.catch(() => undefined);
    return result;
  }
}

// ---------------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------------

// Reads at least this large are filled chunk by chunk into their final Buffer, so a record is
// held once in memory rather than as pieces plus their concatenation.
const DIRECT_READ_MIN = 64 * 1024;

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
class ChunkReader {
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
    if (this.#buffered > 0) {
      out = Buffer.allocUnsafe(n);
      for (let i = this.#first; i < this.#chunks.length; i++) {
        const chunk = this.#chunks[i]!;
        filled += chunk.copy(out, filled, i === this.#first ? this.#head : 0);
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
        // The whole read lies in one source chunk: no copy.
        if (k < chunk.length) this.#push(chunk.subarray(k));
        return chunk.subarray(0, n);
      }
      out ??= Buffer.allocUnsafe(n);
      chunk.copy(out, filled, 0, k);
      filled += k;
      if (k < chunk.length) this.#push(chunk.subarray(k));
    }
    return out!;
  }

  /** Takes `n` (<= buffered) bytes: a view when they lie in one chunk, else one copy. */
  take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const chunks = this.#chunks;
    const first = chunks[this.#first]!;
    let out: Buffer;
    if (first.length - this.#head >= n) {
      out = first.subarray(this.#head, this.#head + n);
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

export interface StreamDecoderOptions {
  /**
   * Largest record payload accepted, in bytes (default 1 GiB). A larger length is refused
   * (ERR_STREAM_LIMIT) before anything is allocated, which bounds the decoder's memory.
   */
  maxPayload?: number;
}

/**
 * Where a stream is read from: any async iterable of byte chunks (a Readable, a generator), or a
 * ByteSource (FdSource), which the decoder reads into three buffers it reuses.
 */
export type StreamSource = AsyncIterable<Buffer | Uint8Array> | ByteSource;

/**
 * Reads a stream: the header first, then the records, each returned only once its checksums and
 * sequence number are verified, then the trailer, verified before records() returns. Memory use
 * is about one record, whatever the stream's size. Any problem is a StreamError, after which the
 * source is released.
 *
 * From an async iterable, a record's payload is a view of the source's chunk or a copy, and may be
 * kept. From a ByteSource, it lives in a buffer the decoder reuses: it stays valid while the next
 * record is read, and is overwritten once the record after that is asked for (copy it to keep it).
 */
export class StreamDecoder {
  readonly #reader: ChunkReader | ByteSourceReader;
  readonly #maxPayload: number;
  #header: Promise<StreamHeader> | undefined;
  #iterated = false;
  #crc = 0;
  #next = 0n; // index, and so sequence number, of the next record
  #payloadBytes = 0n;
  #totals: StreamTotals | undefined;

  constructor(source: StreamSource, options: StreamDecoderOptions = {}) {
    this.#reader = isByteSource(source) ? new ByteSourceReader(source) : new ChunkReader(source);
    this.#maxPayload = checkMaxPayload(options.maxPayload);
  }

  /** The trailer's totals, once it has been verified. */
  get totals(): StreamTotals | undefined {
    return this.#totals && { ...this.#totals };
  }

  /** Stream bytes consumed so far. */
  get bytesRead(): number {
    return this.#reader.position;
  }

  /** Reads and verifies the stream header; later calls return the same header. */
  readHeader(): Promise<StreamHeader> {
    this.#header ??= this.#readHeader().catch(async (err: unknown) => {
      await this.#reader.close();
      throw err;
    });
    return this.#header;
  }

  /** The records, in order. Reads the header first if readHeader() was not called. */
  async *records(): AsyncGenerator<StreamRecord, void, undefined> {
    if (this.#iterated) throw new Error('StreamDecoder: records() can be iterated only once');
    this.#iterated = true;
    try {
      await this.readHeader();
      for (;;) {
        const record = await this.#readRecord();
        if (record === null) return;
        yield record;
      }
    } finally {
      // On an error or an early break: a file stream gets closed rather than left open.
      await this.#reader.close();
    }
  }

  async #readHeader(): Promise<StreamHeader> {
    const reader = this.#reader;
    if (!(await reader.fill(FIXED_HEADER_SIZE))) {
      const got = reader.take(reader.buffered);
      const n = Math.min(got.length, MAGIC.length);
      if (!got.subarray(0, n).equals(MAGIC.subarray(0, n))) throw badMagic(got);
      throw new StreamError(
        'ERR_STREAM_TRUNCATED',
        got.length === 0
          ? 'the stream is empty'
          : `the stream ends at offset ${got.length}, inside the stream header's first ${FIXED_HEADER_SIZE} bytes`,
        got.length,
      );
    }
    const fixed = reader.take(FIXED_HEADER_SIZE);
    if (!fixed.subarray(0, MAGIC.length).equals(MAGIC)) throw badMagic(fixed);
    const version = fixed.readUInt16LE(8);
    if (version !== STREAM_VERSION) {
      throw new StreamError(
        'ERR_STREAM_VERSION',
        `stream header at offset 8: unsupported format version ${version} (this build reads version ${STREAM_VERSION})`,
        8,
      );
    }
    const flags = fixed.readUInt16LE(10);
    if (flags !== 0) {
      throw new StreamError(
        'ERR_STREAM_FORMAT',
        `stream header at offset 10: unsupported flags 0x${flags.toString(16)}`,
        10,
      );
    }
    const jsonLength = fixed.readUInt32LE(12);
    if (jsonLength === 0 || jsonLength > MAX_HEADER_JSON) {
      throw new StreamError(
        'ERR_STREAM_FORMAT',
        `stream header at offset 12: JSON length ${jsonLength} is out of range (1 to ${MAX_HEADER_JSON})`,
        12,
      );
    }
    const rest = await reader.read(jsonLength + 4);
    if (rest === null) {
      throw new StreamError(
        'ERR_STREAM_TRUNCATED',
        `the stream ends at offset ${reader.received}, inside the stream header (${FIXED_HEADER_SIZE + jsonLength + 4} bytes)`,
        reader.received,
      );
    }
    const json = rest.subarray(0, jsonLength);
    const computed = crc32Update(json, crc32(fixed));
    const stored = rest.readUInt32LE(jsonLength);
    if (computed !== stored) {
      throw new StreamError(
        'ERR_STREAM_CHECKSUM',
        `stream header at offset 0: checksum mismatch (stored ${hex32(stored)}, computed ${hex32(computed)}): the header is corrupt`,
        0,
      );
    }
    this.#crc = crc32Update(rest.subarray(jsonLength), computed);

    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
    } catch (err) {
      throw new StreamError(
        'ERR_STREAM_FORMAT',
        `stream header at offset ${FIXED_HEADER_SIZE}: the header is not valid UTF-8 JSON: ${(err as Error).message}`,
        FIXED_HEADER_SIZE,
      );
    }
    const problem = headerProblem(header);
    if (problem !== undefined) {
      throw new StreamError(
        'ERR_STREAM_FORMAT',
        `stream header at offset ${FIXED_HEADER_SIZE}: ${problem}`,
        FIXED_HEADER_SIZE,
      );
    }
    return header as StreamHeader;
  }

  /** The next DATA record, or null after a verified trailer. */
  async #readRecord(): Promise<StreamRecord | null> {
    const reader = this.#reader;
    const at = reader.position;
    const index = this.#next;
    const head = await reader.read(RECORD_HEADER_SIZE);
    if (head === null) {
      if (reader.received === at) {
        throw new StreamError(
          'ERR_STREAM_TRUNCATED',
          `no trailer: the stream is incomplete (it ends at offset ${at}, after ${index} records)`,
          at,
        );
      }
      throw new StreamError(
        'ERR_STREAM_TRUNCATED',
        `the stream ends at offset ${reader.received}, inside the header of record ${index} (at offset ${at})`,
        reader.received,
        index,
      );
    }
    // The header checksum comes first, so that no corrupt length is ever acted on.
    const headCrc = crc32(head.subarray(0, 28));
    const storedHeadCrc = head.readUInt32LE(28);
    if (headCrc !== storedHeadCrc) {
      throw new StreamError(
        'ERR_STREAM_CHECKSUM',
        `record ${index} at offset ${at}: record header checksum mismatch (stored ${hex32(storedHeadCrc)}, computed ${hex32(headCrc)})`,
        at,
        index,
      );
    }
    const kind = head[0]!;
    if (kind !== KIND_DATA && kind !== KIND_TRAILER) {
      throw new StreamError(
        'ERR_STREAM_FORMAT',
        `record ${index} at offset ${at}: unknown record kind 0x${kind.toString(16)}`,
        at,
        index,
      );
    }
    if (head[1] !== 0 || head.readUInt16LE(2) !== 0) {
      throw new StreamError(
        'ERR_STREAM_FORMAT',
        `record ${index} at offset ${at}: reserved header bytes are not 0`,
        at,
        index,
      );
    }
    const phase = head.readUInt32LE(4);
    const sequence = head.readBigUInt64LE(8);
    const length = head.readBigUInt64LE(16);
    const payloadCrc = head.readUInt32LE(24);
    if (kind === KIND_TRAILER) {
      await this.#readTrailer(at, phase, sequence, length, payloadCrc);
      return null;
    }

    if (sequence !== index) {
      throw new StreamError(
        'ERR_STREAM_SEQUENCE',
        `record ${index} at offset ${at}: sequence number ${sequence}, expected ${index}: records were reordered, dropped or duplicated`,
        at,
        index,
      );
    }
    if (length > BigInt(this.#maxPayload)) {
      throw new StreamError(
        'ERR_STREAM_LIMIT',
        `record ${index} at offset ${at}: payload length ${length} is larger than maxPayload (${this.#maxPayload})`,
        at,
        index,
      );
    }
    const n = Number(length);
    const payload = await reader.read(n);
    if (payload === null) {
      throw new StreamError(
        'ERR_STREAM_TRUNCATED',
        `the stream ends at offset ${reader.received}, inside the payload of record ${index} (${n} bytes at offset ${at + RECORD_HEADER_SIZE})`,
        reader.received,
        index,
      );
    }
    const computed = crc32(payload);
    if (computed !== payloadCrc) {
      throw new StreamError(
        'ERR_STREAM_CHECKSUM',
        `record ${index} at offset ${at}: payload checksum mismatch (${n} bytes at offset ${at + RECORD_HEADER_SIZE}; stored ${hex32(payloadCrc)}, computed ${hex32(computed)})`,
        at + RECORD_HEADER_SIZE,
        index,
      );
    }
    this.#crc = extendCrc(crc32Update(head, this.#crc), payload, computed);
    this.#next++;
    this.#payloadBytes += length;
    return { phase, sequence, payload };
  }

  async #readTrailer(at: number, phase: number, sequence: bigint, length: bigint, payloadCrc: number): Promise<void> {
    const reader = this.#reader;
    const index = this.#next;
    const where = `trailer at offset ${at}`;
    if (sequence !== index) {
      throw new StreamError(
        'ERR_STREAM_SEQUENCE',
        `${where}: it counts ${sequence} records, but ${index} were read: records are missing or the trailer is foreign`,
        at,
        index,
      );
    }
    if (phase !== 0 || length !== BigInt(TRAILER_PAYLOAD_SIZE)) {
      throw new StreamError(
        'ERR_STREAM_TRAILER',
        `${where}: malformed trailer (phase ${phase}, payload length ${length}; expected phase 0, length ${TRAILER_PAYLOAD_SIZE})`,
        at,
        index,
      );
    }
    const body = await reader.read(TRAILER_PAYLOAD_SIZE);
    if (body === null) {
      throw new StreamError(
        'ERR_STREAM_TRUNCATED',
        `the stream ends at offset ${reader.received}, inside the trailer (at offset ${at})`,
        reader.received,
        index,
      );
    }
    const computed = crc32(body);
    if (computed !== payloadCrc) {
      throw new StreamError(
        'ERR_STREAM_CHECKSUM',
        `${where}: trailer checksum mismatch (stored ${hex32(payloadCrc)}, computed ${hex32(computed)})`,
        at + RECORD_HEADER_SIZE,
        index,
      );
    }
    const records = body.readBigUInt64LE(0);
    const payloadBytes = body.readBigUInt64LE(8);
    const streamCrc = body.readUInt32LE(16);
    if (records !== index || payloadBytes !== this.#payloadBytes) {
      throw new StreamError(
        'ERR_STREAM_TRAILER',
        `${where}: the trailer's totals (${records} records, ${payloadBytes} payload bytes) differ from the stream's (${index} records, ${this.#payloadBytes} payload bytes)`,
        at,
        index,
      );
    }
    if (streamCrc !== this.#crc) {
      throw new StreamError(
        'ERR_STREAM_CHECKSUM',
        `${where}: stream checksum mismatch (stored ${hex32(streamCrc)}, computed ${hex32(this.#crc)} over offsets 0 to ${at})`,
        at,
        index,
      );
    }
    const end = reader.position;
    if (await reader.fill(1)) {
      throw new StreamError('ERR_STREAM_FORMAT', `trailing data after trailer, at offset ${end}`, end);
    }
    this.#totals = { records, payloadBytes };
  }
}

function badMagic(got: Buffer): StreamError {
  const shown = got.subarray(0, MAGIC.length);
  return new StreamError(
    'ERR_STREAM_BAD_MAGIC',
    `stream header at offset 0: bad magic ${JSON.stringify(shown.toString('latin1'))} (${shown.toString('hex')}), expected "VFIOMIG\\0": not a vfio-migration stream`,
    0,
  );
}

// ---------------------------------------------------------------------------------------------
// Offline verification
// ---------------------------------------------------------------------------------------------

export interface VerifyOptions extends StreamDecoderOptions {
  /** Stops the verification between records, rejecting with the signal's reason. */
  signal?: AbortSignal;
}

export interface VerifyResult {
  header: StreamHeader;
  records: bigint;
  payloadBytes: bigint;
  /** One entry per phase, in the order of their first record. */
  phases: { phase: number; records: number; bytes: bigint }[];
  streamBytes: bigint;
}

/** Decodes a whole stream, checking everything the loader would, and summarises it. */
export async function verifyStream(source: StreamSource, options: VerifyOptions = {}): Promise<VerifyResult> {
  const { signal, ...decoderOptions } = options;
  signal?.throwIfAborted();
  const decoder = new StreamDecoder(source, decoderOptions);
  const phases = new Map<number, { phase: number; records: number; bytes: bigint }>();
  const header = await decoder.readHeader();
  for await (const { phase, payload } of decoder.records()) {
    signal?.throwIfAborted();
    let entry = phases.get(phase);
    if (entry === undefined) phases.set(phase, (entry = { phase, records: 0, bytes: 0n }));
    entry.records++;
    entry.bytes += BigInt(payload.length);
  }
  const totals = decoder.totals!;
  return {
    header,
    records: totals.records,
    payloadBytes: totals.payloadBytes,
    phases: [...phases.values()],
    streamBytes: BigInt(decoder.bytesRead),
  };
}
