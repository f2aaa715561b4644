// StreamDecoder: reads a stream record by record, yielding each only once everything that covers it is verified.
import { dataView } from '../../buffers';
import { crc32, extendCrc } from './crc';
import { native } from '../../native';
import { StreamError, at } from './errors';
import {
  FIXED_HEADER_SIZE,
  KIND_DATA,
  KIND_TRAILER,
  MAGIC,
  MAX_HEADER_JSON,
  RECORD_HEADER_SIZE,
  STREAM_HEADER,
  STREAM_VERSION,
  TRAILER,
  TRAILER_PAYLOAD_SIZE,
  checkMaxPayload,
  decodeRecordHeader,
  recordHeaderCrcs,
  type RecordHeaderFields,
  type StreamRecord,
  type StreamTotals,
} from './format';
import { parseHeader, type StreamHeader } from './header';
import { streamReader, type StreamReader, type StreamSource } from './reader';

/** Payloads from this size on are checksummed on the thread pool (a pool hop costs less than the CRC). */
const POOL_CRC_MIN = 64 << 10;

export interface StreamDecoderOptions {
  /**
   * Largest record payload accepted, in bytes (default 1 GiB). A larger length is refused
   * (ERR_STREAM_LIMIT) before anything is allocated, which bounds the decoder's memory.
   */
  maxPayload?: number;
  /**
   * false: payload checksums are not verified (the record and stream headers still are). Only for
   * a stream from an encoder made with the same option, in this process (isInProcess). Default: true.
   */
  checksums?: boolean;
}

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
  readonly #reader: StreamReader;
  readonly #maxPayload: number;
  readonly #checksums: boolean;
  #header: Promise<StreamHeader> | undefined;
  #iterated = false;
  #crc = 0;
  #next = 0n; // index, and so sequence number, of the next record
  #payloadBytes = 0n;
  #totals: StreamTotals | undefined;

  constructor(source: StreamSource, options: StreamDecoderOptions = {}) {
    this.#reader = streamReader(source);
    this.#maxPayload = checkMaxPayload(options.maxPayload);
    this.#checksums = options.checksums ?? true;
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
      if (!got.subarray(0, n).equals(MAGIC.subarray(0, n))) throw StreamError.badMagic(got, MAGIC);
      if (got.length === 0) throw StreamError.empty();
      throw StreamError.truncated(got.length, `the stream header's first ${FIXED_HEADER_SIZE} bytes`);
    }
    const fixed = reader.take(FIXED_HEADER_SIZE);
    if (!fixed.subarray(STREAM_HEADER.magic, MAGIC.length).equals(MAGIC)) throw StreamError.badMagic(fixed, MAGIC);
    const version = fixed.readUInt16LE(STREAM_HEADER.version);
    if (version !== STREAM_VERSION) {
      throw StreamError.version(
        at.header(STREAM_HEADER.version),
        `unsupported format version ${version} (this build reads version ${STREAM_VERSION})`,
      );
    }
    const flags = fixed.readUInt16LE(STREAM_HEADER.flags);
    if (flags !== 0) {
      throw StreamError.malformed(at.header(STREAM_HEADER.flags), `unsupported flags 0x${flags.toString(16)}`);
    }
    const jsonLength = fixed.readUInt32LE(STREAM_HEADER.jsonLength);
    if (jsonLength === 0 || jsonLength > MAX_HEADER_JSON) {
      throw StreamError.malformed(
        at.header(STREAM_HEADER.jsonLength),
        `JSON length ${jsonLength} is out of range (1 to ${MAX_HEADER_JSON})`,
      );
    }
    const rest = await reader.read(jsonLength + 4);
    if (rest === null) {
      throw StreamError.truncated(reader.received, `the stream header (${FIXED_HEADER_SIZE + jsonLength + 4} bytes)`);
    }
    const json = rest.subarray(0, jsonLength);
    const computed = crc32(json, crc32(fixed));
    const stored = rest.readUInt32LE(jsonLength);
    if (computed !== stored) throw StreamError.checksum(at.header(0), 'header', stored, computed);
    this.#crc = crc32(rest.subarray(jsonLength), computed);

    return parseHeader(json, STREAM_HEADER.json);
  }

  /** The next DATA record, or null after a verified trailer. */
  async #readRecord(): Promise<StreamRecord | null> {
    const reader = this.#reader;
    const offset = reader.position;
    const index = this.#next;
    const head = await reader.read(RECORD_HEADER_SIZE);
    if (head === null) {
      if (reader.received === offset) throw StreamError.noTrailer(offset, index);
      throw StreamError.truncated(reader.received, `the header of record ${index} (at offset ${offset})`, index);
    }
    const place = at.record(index, offset);
    // The header checksum comes first, so that no corrupt length is ever acted on.
    const headCrc = recordHeaderCrcs(head);
    if (headCrc.computed !== headCrc.stored) {
      throw StreamError.checksum(place, 'record header', headCrc.stored, headCrc.computed);
    }
    const fields = decodeRecordHeader(head);
    if (fields.kind !== KIND_DATA && fields.kind !== KIND_TRAILER) {
      throw StreamError.malformed(place, `unknown record kind 0x${fields.kind.toString(16)}`);
    }
    if (fields.reserved !== 0) throw StreamError.malformed(place, 'reserved header bytes are not 0');
    if (fields.kind === KIND_TRAILER) {
      await this.#readTrailer(offset, fields);
      return null;
    }

    const { phase, sequence, length, payloadCrc } = fields;
    if (sequence !== index) {
      throw StreamError.sequence(
        place,
        `sequence number ${sequence}, expected ${index}: records were reordered, dropped or duplicated`,
      );
    }
    if (length > BigInt(this.#maxPayload)) {
      throw StreamError.limit(place, `payload length ${length} is larger than maxPayload (${this.#maxPayload})`);
    }
    const n = Number(length);
    const payloadAt = offset + RECORD_HEADER_SIZE;
    // From a file, the read that brings the payload checksums it too (one pool job).
    let readCrc: number | undefined;
    let payload: Buffer | null;
    if (reader.readChecksummed && this.#checksums) {
      const checked = await reader.readChecksummed(n);
      payload = checked && checked.bytes;
      readCrc = checked?.crc;
    } else {
      payload = await reader.read(n);
    }
    if (payload === null) {
      throw StreamError.truncated(
        reader.received,
        `the payload of record ${index} (${n} bytes at offset ${payloadAt})`,
        index,
      );
    }
    // Unless the read already checked it (a file): a large payload in native-owned memory (a pipe
    // read, an assembled channel read) is checked on the thread pool, so the JS thread stays free
    // while the previous record is written to the device. Other memory is checked at once
    // (copying it for the pool would cost more).
    const computed = !this.#checksums
      ? payloadCrc
      : (readCrc ?? (n >= POOL_CRC_MIN ? await native.crc32Async(payload, 0, n) : crc32(payload)));
    if (computed !== payloadCrc) {
      throw StreamError.checksum(
        place,
        'payload',
        payloadCrc,
        computed,
        `${n} bytes at offset ${payloadAt}`,
        payloadAt,
      );
    }
    this.#crc = extendCrc(crc32(head, this.#crc), payload, computed);
    this.#next++;
    this.#payloadBytes += length;
    return { phase, sequence, payload };
  }

  async #readTrailer(offset: number, { phase, sequence, length, payloadCrc }: RecordHeaderFields): Promise<void> {
    const reader = this.#reader;
    const index = this.#next;
    const place = at.trailer(index, offset);
    if (sequence !== index) {
      throw StreamError.sequence(
        place,
        `it counts ${sequence} records, but ${index} were read: records are missing or the trailer is foreign`,
      );
    }
    if (phase !== 0 || length !== BigInt(TRAILER_PAYLOAD_SIZE)) {
      throw StreamError.trailer(
        place,
        `malformed trailer (phase ${phase}, payload length ${length}; expected phase 0, length ${TRAILER_PAYLOAD_SIZE})`,
      );
    }
    const body = await reader.read(TRAILER_PAYLOAD_SIZE);
    if (body === null) throw StreamError.truncated(reader.received, `the trailer (at offset ${offset})`, index);
    const computed = crc32(body);
    if (computed !== payloadCrc) {
      throw StreamError.checksum(place, 'trailer', payloadCrc, computed, undefined, offset + RECORD_HEADER_SIZE);
    }
    const fields = dataView(body);
    const records = fields.getBigUint64(TRAILER.records, true);
    const payloadBytes = fields.getBigUint64(TRAILER.payloadBytes, true);
    const streamCrc = fields.getUint32(TRAILER.streamCrc, true);
    if (records !== index || payloadBytes !== this.#payloadBytes) {
      throw StreamError.trailer(
        place,
        `the trailer's totals (${records} records, ${payloadBytes} payload bytes) differ from the stream's (${index} records, ${this.#payloadBytes} payload bytes)`,
      );
    }
    if (streamCrc !== this.#crc) {
      throw StreamError.checksum(place, 'stream', streamCrc, this.#crc, `over offsets 0 to ${offset}`);
    }
    const end = reader.position;
    if (await reader.fill(1)) {
      throw StreamError.trailingData(end);
    }
    this.#totals = { records, payloadBytes };
  }
}
