// StreamError: what is wrong with a .vfmig stream and where, built by a few named constructors.
import { printable } from '../../printable';
export type StreamErrorCode =
  | 'ERR_STREAM_BAD_MAGIC'
  | 'ERR_STREAM_VERSION'
  | 'ERR_STREAM_TRUNCATED'
  | 'ERR_STREAM_CHECKSUM'
  | 'ERR_STREAM_SEQUENCE'
  | 'ERR_STREAM_TRAILER'
  | 'ERR_STREAM_FORMAT'
  | 'ERR_STREAM_LIMIT';

/** A place in a stream a message names: `label` opens the message, `offset` and `record` go on the error. */
export interface Place {
  label: string;
  offset: number;
  record?: bigint;
}

/** The places the decoder reports problems at. */
export const at = {
  header: (offset: number): Place => ({ label: `stream header at offset ${offset}`, offset }),
  record: (index: bigint, offset: number): Place => ({
    label: `record ${index} at offset ${offset}`,
    offset,
    record: index,
  }),
  trailer: (index: bigint, offset: number): Place => ({ label: `trailer at offset ${offset}`, offset, record: index }),
};

const hex32 = (v: number): string => `0x${v.toString(16).padStart(8, '0')}`;

/**
 * A stream that is not a valid, complete .vfmig stream. `offset` is where the problem is: the
 * field, for the fixed fields of the stream header; the start of the structure a checksum or a
 * record-level check covers (stream header, record header, payload); the end of the data, for a
 * truncated stream. `record` is the index of the record concerned (the trailer's index is the
 * number of data records), when the problem is inside one. Stream content quoted in a message
 * goes through printable(), so a message is safe to print on a terminal.
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

  /** The data ends at `end`, inside `inside` (a description: "the trailer (at offset 80)"). */
  static truncated(end: number, inside: string, record?: bigint): StreamError {
    return new StreamError('ERR_STREAM_TRUNCATED', `the stream ends at offset ${end}, inside ${inside}`, end, record);
  }

  /** The data ends cleanly between records, where a record or the trailer should start. */
  static noTrailer(end: number, records: bigint): StreamError {
    return new StreamError(
      'ERR_STREAM_TRUNCATED',
      `no trailer: the stream is incomplete (it ends at offset ${end}, after ${records} records)`,
      end,
    );
  }

  static empty(): StreamError {
    return new StreamError('ERR_STREAM_TRUNCATED', 'the stream is empty', 0);
  }

  /** A stored CRC differs from the computed one; `span` says what it covers, `offset` where that starts. */
  static checksum(
    place: Place,
    what: string,
    stored: number,
    computed: number,
    span?: string,
    offset = place.offset,
  ): StreamError {
    return new StreamError(
      'ERR_STREAM_CHECKSUM',
      `${place.label}: ${what} checksum mismatch (${span ? `${span}; ` : ''}stored ${hex32(stored)}, computed ${hex32(computed)})`,
      offset,
      place.record,
    );
  }

  /** A structure that breaks a rule of the format. */
  static malformed(place: Place, problem: string): StreamError {
    return new StreamError('ERR_STREAM_FORMAT', `${place.label}: ${problem}`, place.offset, place.record);
  }

  /** Records out of order, or a trailer that counts another number of them. */
  static sequence(place: Place, problem: string): StreamError {
    return new StreamError('ERR_STREAM_SEQUENCE', `${place.label}: ${problem}`, place.offset, place.record);
  }

  /** A trailer whose fields or totals are wrong. */
  static trailer(place: Place, problem: string): StreamError {
    return new StreamError('ERR_STREAM_TRAILER', `${place.label}: ${problem}`, place.offset, place.record);
  }

  /** A length over a limit the reader enforces. */
  static limit(place: Place, problem: string): StreamError {
    return new StreamError('ERR_STREAM_LIMIT', `${place.label}: ${problem}`, place.offset, place.record);
  }

  static version(place: Place, problem: string): StreamError {
    return new StreamError('ERR_STREAM_VERSION', `${place.label}: ${problem}`, place.offset, place.record);
  }

  /** Bytes after a complete stream's trailer, from `end` on. */
  static trailingData(end: number): StreamError {
    return new StreamError('ERR_STREAM_FORMAT', `trailing data after trailer, at offset ${end}`, end);
  }

  /** The first bytes are not the magic. */
  static badMagic(got: Buffer, magic: Buffer): StreamError {
    const shown = got.subarray(0, magic.length);
    return new StreamError(
      'ERR_STREAM_BAD_MAGIC',
      `stream header at offset 0: bad magic ${printable(JSON.stringify(shown.toString('latin1')))} (${shown.toString('hex')}), expected "VFIOMIG\\0": not a vfio-migration stream`,
      0,
    );
  }
}
