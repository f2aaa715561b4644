// The .vfmig byte layout (docs/stream-format.md): constants, and one table of field offsets the encoder and decoder share.
import { bufferView, dataView } from '../../buffers';
import { Buffer, constants as bufferConstants } from 'node:buffer';
import { crc32 } from './crc';

// Layout, version 1, little-endian.
//
//   stream header  magic[8] "VFIOMIG\0" | u16 version | u16 flags | u32 N | JSON[N] | u32 crc32(all before)
//   record header  u8 kind | u8 0 | u16 0 | u32 phase | u64 sequence | u64 length | u32 crc32(payload)
//                  | u32 crc32(the 28 bytes before)                                     (32 bytes)
//   payload        length bytes
//   trailer        record header (kind 0xff, phase 0, sequence = DATA record count, length 20), then
//                  u64 record count | u64 total payload bytes | u32 crc32(every byte before the trailer)

export const MAGIC = Buffer.from('VFIOMIG\0', 'latin1');
/** The first 8 bytes of every stream. A copy: changing it changes nothing. */
export const STREAM_MAGIC: Buffer = Buffer.from(MAGIC);
export const STREAM_VERSION = 1;
/** The phase of the records written after the device stopped (stop-and-copy). */
export const PHASE_STOP_COPY = 0xffffffff;
/** Largest header JSON document, in bytes. */
export const MAX_HEADER_JSON = 1 << 20;
/** Default largest record payload, in bytes; see StreamDecoderOptions.maxPayload. */
export const DEFAULT_MAX_PAYLOAD = 1 << 30;

export const KIND_DATA = 0x01;
export const KIND_TRAILER = 0xff;

/** The fixed fields of the stream header, before the JSON document. */
export const STREAM_HEADER = {
  magic: 0, // 8 bytes
  version: 8, // u16
  flags: 10, // u16
  jsonLength: 12, // u32
  json: 16, // jsonLength bytes, then a u32 CRC-32 of every byte before it
} as const;
export const FIXED_HEADER_SIZE = 16;

/** Offsets of the record header fields (32 bytes); the same header opens DATA records and the trailer. */
export const RECORD_HEADER = {
  kind: 0, // u8
  reserved8: 1, // u8, 0
  reserved16: 2, // u16, 0
  phase: 4, // u32
  sequence: 8, // u64
  length: 16, // u64
  payloadCrc: 24, // u32, CRC-32 of the payload
  headerCrc: 28, // u32, CRC-32 of bytes 0 to 27
} as const;
export const RECORD_HEADER_SIZE = 32;

/** Offsets of the trailer's payload fields (20 bytes). */
export const TRAILER = {
  records: 0, // u64, number of DATA records
  payloadBytes: 8, // u64, sum of their payload lengths
  streamCrc: 16, // u32, CRC-32 of every stream byte before the trailer's record header
} as const;
export const TRAILER_PAYLOAD_SIZE = 20;

export const EMPTY = Buffer.alloc(0);

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

/** A record header's fields, as read; the checksum of the header itself is checked before. */
export interface RecordHeaderFields {
  kind: number;
  reserved: number;
  phase: number;
  sequence: bigint;
  length: bigint;
  payloadCrc: number;
}

export function encodeRecordHeader(
  kind: number,
  phase: number,
  sequence: bigint,
  length: number,
  payloadCrc: number,
  into: Buffer,
): void {
  if (into.byteLength < RECORD_HEADER_SIZE) throw new RangeError('encodeRecordHeader: the buffer is too small');
  const v = dataView(into);
  v.setUint8(RECORD_HEADER.kind, kind);
  v.setUint8(RECORD_HEADER.reserved8, 0);
  v.setUint16(RECORD_HEADER.reserved16, 0, true);
  v.setUint32(RECORD_HEADER.phase, phase, true);
  v.setBigUint64(RECORD_HEADER.sequence, sequence, true);
  v.setBigUint64(RECORD_HEADER.length, BigInt(length), true);
  v.setUint32(RECORD_HEADER.payloadCrc, payloadCrc, true);
  v.setUint32(RECORD_HEADER.headerCrc, crc32(bufferView(into, 0, RECORD_HEADER.headerCrc)), true);
}

/** The CRC-32 stored in a record header, and the one computed over the bytes it covers. */
export function recordHeaderCrcs(head: Buffer): { stored: number; computed: number } {
  return {
    stored: dataView(head).getUint32(RECORD_HEADER.headerCrc, true),
    computed: crc32(bufferView(head, 0, RECORD_HEADER.headerCrc)),
  };
}

export function decodeRecordHeader(head: Buffer): RecordHeaderFields {
  const v = dataView(head);
  return {
    kind: v.getUint8(RECORD_HEADER.kind),
    reserved: v.getUint8(RECORD_HEADER.reserved8) | v.getUint16(RECORD_HEADER.reserved16, true),
    phase: v.getUint32(RECORD_HEADER.phase, true),
    sequence: v.getBigUint64(RECORD_HEADER.sequence, true),
    length: v.getBigUint64(RECORD_HEADER.length, true),
    payloadCrc: v.getUint32(RECORD_HEADER.payloadCrc, true),
  };
}

export function checkMaxPayload(value: number | undefined): number {
  if (value === undefined) return DEFAULT_MAX_PAYLOAD;
  if (!Number.isSafeInteger(value) || value < 0 || value > bufferConstants.MAX_LENGTH) {
    throw new RangeError(`maxPayload must be an integer from 0 to ${bufferConstants.MAX_LENGTH}, got ${String(value)}`);
  }
  return value;
}

/** A Buffer view of the bytes of `u8`, without a copy. */
export function asBuffer(u8: Uint8Array): Buffer {
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}
