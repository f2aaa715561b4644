// StreamEncoder: writes the stream header, one record per writeRecord, and the trailer.
import { bufferView, dataView } from '../../buffers';
import { Buffer } from 'node:buffer';
import { crc32, extendCrc } from './crc';
import {
  FIXED_HEADER_SIZE,
  KIND_DATA,
  KIND_TRAILER,
  MAGIC,
  MAX_HEADER_JSON,
  PHASE_STOP_COPY,
  RECORD_HEADER_SIZE,
  STREAM_HEADER,
  STREAM_VERSION,
  TRAILER,
  TRAILER_PAYLOAD_SIZE,
  asBuffer,
  checkMaxPayload,
  encodeRecordHeader,
  type StreamTotals,
} from './format';
import { headerProblem, type StreamHeader } from './header';
import {
  FileSink,
  RecordPool,
  releasableRecord,
  sinkReleasesOnCallback,
  writableEmitter,
  type Emit,
  type StreamSink,
} from './sink';

/** Records with a payload from this size on are allocated in native-owned memory (see writeRecord). */
const NATIVE_RECORD_MIN = 64 << 10;

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
  /**
   * false: payloads are not checksummed (their CRC fields are 0, a given payloadCrc is ignored).
   * Only for a stream that stays in this process's memory (isInProcess), read by a decoder made
   * with the same option; any other decoder refuses it at the first large record. Default: true.
   */
  checksums?: boolean;
}

/**
 * Writes a stream: the header, then one record per writeRecord, then the trailer on finish().
 *
 * Each record is copied once into a Buffer of its own (record header + payload), and that Buffer
 * is what the sink gets; a payload read into a payloadBuffer() is in such a Buffer already. The
 * copy is what lets the caller reuse its payload buffer as soon as writeRecord resolves whatever
 * the sink is: a Writable's callback only says the chunk was
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
  readonly #checksums: boolean;
  #state: 'new' | 'open' = 'new';
  #failure: { error: unknown } | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #finishing: Promise<StreamTotals> | undefined;
  #crc = 0;
  #records = 0n;
  #payloadBytes = 0n;
  // Record buffers reused: a Writable's once its callback ran (any size); a sink function's once
  // a destination in this process released them (native-owned, payloads of #poolMin or more).
  #pool: RecordPool | undefined;
  #poolMin = 0;
  #file: FileSink | undefined;

  constructor(sink: StreamSink, header: StreamHeader, options: StreamEncoderOptions = {}) {
    if (sink instanceof FileSink) {
      this.#file = sink;
      this.#emit = (chunk) => sink.write([chunk]);
    } else if (typeof sink === 'function') {
      this.#emit = (chunk) => sink(chunk);
      // A function may hand its records to a destination in this process, which hands them back
      // (releaseRecord) once written; records it keeps or copies are simply never reused.
      this.#pool = new RecordPool({ releasable: true });
      this.#poolMin = NATIVE_RECORD_MIN;
    } else if (sink !== null && typeof sink === 'object' && typeof sink.write === 'function') {
      const pool = (options.recycle ?? sinkReleasesOnCallback(sink)) ? new RecordPool() : undefined;
      this.#pool = pool;
      this.#emit = writableEmitter(sink, pool && ((chunk) => pool.give(chunk)));
    } else {
      throw new TypeError('StreamEncoder: sink must be a writable stream or an async function');
    }
    this.#maxPayload = checkMaxPayload(options.maxPayload);
    this.#checksums = options.checksums ?? true;

    const problem = headerProblem(header);
    if (problem !== undefined) {
      const message = `StreamEncoder: bad stream header: ${problem.problem}`;
      throw problem.limit ? new RangeError(message) : new TypeError(message);
    }
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
    MAGIC.copy(bytes, STREAM_HEADER.magic);
    bytes.writeUInt16LE(STREAM_VERSION, STREAM_HEADER.version);
    bytes.writeUInt16LE(0, STREAM_HEADER.flags);
    bytes.writeUInt32LE(jsonLength, STREAM_HEADER.jsonLength);
    bytes.write(json, STREAM_HEADER.json, 'utf8');
    bytes.writeUInt32LE(crc32(bytes.subarray(0, FIXED_HEADER_SIZE + jsonLength)), FIXED_HEADER_SIZE + jsonLength);
    this.#headerBytes = bytes;
  }

  /** Whether payloads are checksummed (see StreamEncoderOptions.checksums): a reader may skip computing them. */
  get checksums(): boolean {
    return this.#checksums;
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
   * Room to read a payload of up to `size` bytes into, inside a record of this encoder's own, so
   * that writeRecord sends that record without copying the payload: only for a sink function
   * (which may hand its records to a destination in this process) and large payloads; undefined
   * otherwise. The caller must not touch the buffer once it passed it to writeRecord: the record
   * now belongs to the sink, and comes back to this encoder through releaseRecord.
   */
  payloadBuffer(size: number): Buffer | undefined {
    if (!this.#pool?.releasable || size < this.#poolMin) return undefined;
    return bufferView(this.#pool.take(RECORD_HEADER_SIZE + size), RECORD_HEADER_SIZE);
  }

  /**
   * Writes one DATA record. `payload` is copied when the record's turn comes (to a FileSink it is
   * written from where it is; from a payloadBuffer() it is sent where it is) and not looked at
   * after the promise resolves, so the caller may reuse it then (not a payloadBuffer()'s).
   * `payloadCrc`, when given, is the payload's CRC-32 computed where it was read (native, on the
   * thread that read it); it is trusted.
   */
  writeRecord(phase: number, payload: Buffer | Uint8Array, payloadCrc?: number): Promise<void> {
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
      if (this.#file) {
        const crcOfPayload = this.#checksums ? (payloadCrc ?? crc32(payload, 0)) : 0;
        const head = Buffer.allocUnsafe(RECORD_HEADER_SIZE);
        encodeRecordHeader(KIND_DATA, phase, this.#records, length, crcOfPayload, head);
        const crc = extendCrc(crc32(head, this.#crc), payload, crcOfPayload);
        await this.#file.write([head, payload]);
        this.#crc = crc;
        this.#records++;
        this.#payloadBytes += BigInt(length);
        return;
      }
      // A payload read into a payloadBuffer() is already in its record, behind the header's room.
      const own = this.#pool?.releasable && releasableRecord(payload);
      const inPlace = own && own.pool === this.#pool && payload.byteOffset === own.buf.byteOffset + RECORD_HEADER_SIZE;
      // A sink function may keep the record (a channel to a destination in this process, which
      // writes its payload into a device): native-owned memory is written from without a bounce.
      const record = inPlace
        ? bufferView(own.buf, 0, RECORD_HEADER_SIZE + length)
        : this.#pool && length >= this.#poolMin
          ? this.#pool.take(RECORD_HEADER_SIZE + length)
          : Buffer.allocUnsafe(RECORD_HEADER_SIZE + length);
      // Buffer#copy is a plain memmove; TypedArray#set measured 10x slower under emulation (bench).
      if (!inPlace) asBuffer(payload).copy(record, RECORD_HEADER_SIZE);
      const body = bufferView(record, RECORD_HEADER_SIZE);
      const crcOfPayload = this.#checksums ? (payloadCrc ?? crc32(body)) : 0;
      encodeRecordHeader(KIND_DATA, phase, this.#records, length, crcOfPayload, record);
      const crc = extendCrc(crc32(bufferView(record, 0, RECORD_HEADER_SIZE), this.#crc), body, crcOfPayload);
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
      const body = bufferView(trailer, RECORD_HEADER_SIZE);
      const fields = dataView(body);
      fields.setBigUint64(TRAILER.records, this.#records, true);
      fields.setBigUint64(TRAILER.payloadBytes, this.#payloadBytes, true);
      fields.setUint32(TRAILER.streamCrc, this.#crc, true);
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
