// The migrate wire format (docs/migrate-protocol.md): preamble, frames, and the channel both ends speak over.
import { Buffer } from 'node:buffer';
import { FrameQueue } from './frame-queue';
import { ChunkReader } from './stream/reader';
import { writableEmitter, type Emit } from './stream/sink';

export const WIRE_MAGIC = Buffer.from('VFIOMIGW', 'latin1');
export const WIRE_VERSION = 1;
export const PREAMBLE_SIZE = 12;
export const FRAME_HEADER_SIZE = 8;
/** Largest JSON message body; DATA frames may be larger (one stream record and its header). */
export const MAX_MESSAGE = 1 << 20;
/** Largest DATA frame: a record of the stream format's default maximum payload plus its header. */
export const MAX_DATA = (1 << 30) + 64;

export const FRAME = {
  hello: 0x01,
  ready: 0x02,
  data: 0x10,
  initialDone: 0x11,
  switchoverAck: 0x12,
  loaded: 0x20,
  commit: 0x21,
  running: 0x22,
  error: 0x7f,
} as const;
export type FrameType = (typeof FRAME)[keyof typeof FRAME];
const NAMES = new Map<number, string>(Object.entries(FRAME).map(([k, v]) => [v, k]));

export function frameName(type: number): string {
  return NAMES.get(type) ?? `unknown frame 0x${type.toString(16)}`;
}

export interface Frame {
  type: number;
  device: number;
  payload: Buffer;
}

/** The error the wire itself reports: bad preamble, foreign version, malformed frame, closed channel. */
export class WireError extends Error {
  readonly code: 'ERR_WIRE_VERSION' | 'ERR_WIRE_FORMAT' | 'ERR_WIRE_CLOSED' | 'ERR_WIRE_TIMEOUT';
  constructor(code: WireError['code'], message: string) {
    super(message);
    this.name = 'WireError';
    this.code = code;
  }
}

export function encodePreamble(version = WIRE_VERSION): Buffer {
  const b = Buffer.alloc(PREAMBLE_SIZE);
  WIRE_MAGIC.copy(b, 0);
  b.writeUInt16LE(version, 8);
  b.writeUInt16LE(0, 10);
  return b;
}

/** The version a preamble announces; throws on anything that is not a preamble. */
export function decodePreamble(b: Buffer): number {
  if (b.length !== PREAMBLE_SIZE || !b.subarray(0, 8).equals(WIRE_MAGIC)) {
    throw new WireError(
      'ERR_WIRE_FORMAT',
      `the peer does not speak the vfio-mig migrate protocol (got ${JSON.stringify(b.subarray(0, 8).toString('latin1'))}; is the remote command a vfio-mig receive?)`,
    );
  }
  return b.readUInt16LE(8);
}

// Frame headers are written and read byte by byte: Buffer's writeUInt32LE and kin are JS functions
// with argument checks, some five calls each, and every frame of a migration's downtime over a
// byte channel (ssh, exec, a socket) passes here in V8's interpreter, where every call counts.
// Byte by byte is no JS call at all; the dataView() helper the record headers use is one more per
// frame header, which bench/calls.ts counted when the in-process channel still went as bytes
// (3 runs each, four devices' downtime: 3177-3200 calls with it, 3147-3170 without).
export function encodeFrameHeader(type: number, device: number, length: number): Buffer {
  checkFrameHeader(type, device, length);
  const h = Buffer.alloc(FRAME_HEADER_SIZE);
  h[0] = type;
  h[1] = 0;
  h[2] = device & 0xff;
  h[3] = device >>> 8;
  h[4] = length & 0xff;
  h[5] = (length >>> 8) & 0xff;
  h[6] = (length >>> 16) & 0xff;
  h[7] = length >>> 24;
  return h;
}

function checkFrameHeader(type: number, device: number, length: number): void {
  if (type >>> 8 || device >>> 16 || !(length >= 0 && length <= 0xffffffff))
    throw new RangeError(`frame header: type ${type}, device ${device} or length ${length} out of range`);
}

export function encodeFrame(type: number, device: number, payload: Buffer): Buffer {
  return Buffer.concat([encodeFrameHeader(type, device, payload.length), payload]);
}

export function encodeMessage(type: number, device: number, body: unknown): Buffer {
  return encodeFrame(type, device, Buffer.from(JSON.stringify(body ?? {}), 'utf8'));
}

/** The JSON body of a message frame, which must be an object. */
export function messageBody<T = Record<string, unknown>>(frame: Frame): T {
  let v: unknown;
  try {
    v = JSON.parse(frame.payload.toString('utf8'));
  } catch {
    throw new WireError('ERR_WIRE_FORMAT', `${frameName(frame.type)} frame: body is not JSON`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new WireError('ERR_WIRE_FORMAT', `${frameName(frame.type)} frame: body is not a JSON object`);
  return v as T;
}

/** A duplex byte stream: what migrate() and receive() talk over. */
export type Channel =
  | { readable: AsyncIterable<Buffer | Uint8Array>; writable: NodeJS.WritableStream }
  | (NodeJS.ReadWriteStream & AsyncIterable<Buffer | Uint8Array>);

// The ends of channelPair(): the frame queue each reads from and the one it writes to.
const FRAME_LINKS = new WeakMap<object, { incoming: FrameQueue; outgoing: FrameQueue }>();

/** A pseudo frame type (no FRAME has it) carrying the preamble over a frame queue. */
const PREAMBLE_FRAME = 0x00;

/**
 * A channel end joined to its peer in this process by two frame queues: a WireEnd on it hands
 * frames over as objects (no bytes; isInProcess). It carries frames, not bytes: its `readable`
 * and `writable` throw.
 */
export function inProcessEnd(incoming: FrameQueue, outgoing: FrameQueue): Channel {
  const bytes = (): never => {
    throw new TypeError(
      'an in-process channel (channelPair) carries frames, not bytes: give it to migrate() or receive()',
    );
  };
  const end = Object.defineProperties({}, { readable: { get: bytes }, writable: { get: bytes } }) as Channel;
  FRAME_LINKS.set(end, { incoming, outgoing });
  return end;
}

/**
 * Whether both ends of `channel` are in this process: records are handed over by reference, no
 * byte is serialised, so the stream goes without payload checksums (nothing could corrupt them in
 * transit). Decided by how the channel was made, never by anything the stream says.
 */
export function isInProcess(channel: Channel): boolean {
  return FRAME_LINKS.has(channel);
}

function channelEnds(channel: Channel): {
  readable: AsyncIterable<Buffer | Uint8Array>;
  writable: NodeJS.WritableStream;
} {
  if (channel && typeof channel === 'object' && 'readable' in channel && typeof channel.readable === 'object')
    return channel as { readable: AsyncIterable<Buffer | Uint8Array>; writable: NodeJS.WritableStream };
  if (channel && typeof (channel as NodeJS.ReadWriteStream).write === 'function')
    return { readable: channel as AsyncIterable<Buffer>, writable: channel as NodeJS.WritableStream };
  throw new TypeError('channel must be a Duplex or { readable, writable }');
}

/**
 * One end of the wire: writes frames in order (a frame is never interleaved with another), reads
 * frames one at a time. A read that the peer never answers ends with close() or a timeout. On a
 * channelPair() end the frames go over as objects (frame-queue.ts), on any other channel as bytes.
 */
export class WireEnd {
  readonly #bytes: { reader: ChunkReader; emit: Emit; writable: NodeJS.WritableStream } | undefined;
  readonly #frames: { incoming: FrameQueue; outgoing: FrameQueue } | undefined;
  #closed = false;
  #closeWaiters = new Set<(err: Error) => void>();
  bytesOut = 0;
  bytesIn = 0;

  constructor(channel: Channel) {
    this.#frames = FRAME_LINKS.get(channel);
    if (this.#frames) return;
    const { readable, writable } = channelEnds(channel);
    this.#bytes = { reader: new ChunkReader(readable), emit: writableEmitter(writable), writable };
  }

  async writePreamble(version = WIRE_VERSION): Promise<void> {
    if (this.#closed) throw new WireError('ERR_WIRE_CLOSED', 'the channel is closed');
    const preamble = encodePreamble(version);
    this.bytesOut += preamble.length;
    if (this.#frames) await this.#frames.outgoing.push({ type: PREAMBLE_FRAME, device: 0, payload: preamble }, false);
    else await this.#bytes!.emit(preamble, false);
  }

  async readPreamble(timeoutMs?: number): Promise<number> {
    let b: Buffer | null;
    if (this.#frames) {
      const frame = await this.#timed(this.#frames.incoming.next(), timeoutMs, 'the peer to start');
      // Anything but a preamble fails decodePreamble, as its bytes would.
      b = frame && (frame.type === PREAMBLE_FRAME ? frame.payload : Buffer.alloc(0));
    } else {
      b = await this.#timed(this.#bytes!.reader.read(PREAMBLE_SIZE), timeoutMs, 'the peer to start');
    }
    if (!b) throw new WireError('ERR_WIRE_CLOSED', 'the channel closed before the peer said hello');
    this.bytesIn += PREAMBLE_SIZE;
    return decodePreamble(Buffer.from(b));
  }

  /** Writes a frame; the header and payload go as two writes in the same tick, so nothing comes between. */
  async send(type: number, device: number, payload: Buffer, flush = false): Promise<void> {
    if (this.#closed) throw new WireError('ERR_WIRE_CLOSED', 'the channel is closed');
    if (this.#frames) {
      checkFrameHeader(type, device, payload.length);
      this.bytesOut += FRAME_HEADER_SIZE + payload.length;
      await this.#frames.outgoing.push({ type, device, payload }, flush);
      return;
    }
    const emit = this.#bytes!.emit;
    const header = encodeFrameHeader(type, device, payload.length);
    const p = emit(header, false);
    const q = emit(payload, flush);
    this.bytesOut += header.length + payload.length;
    await Promise.all([p, q]);
  }

  sendMessage(type: number, device: number, body: unknown): Promise<void> {
    return this.send(type, device, Buffer.from(JSON.stringify(body ?? {}), 'utf8'), true);
  }

  /** The next frame, or null at a clean end of the channel between frames. */
  async read(timeoutMs?: number, waitingFor = 'the peer'): Promise<Frame | null> {
    if (this.#frames) return this.#readFrame(this.#frames.incoming, timeoutMs, waitingFor);
    const reader = this.#bytes!.reader;
    const head = await this.#timed(reader.read(FRAME_HEADER_SIZE), timeoutMs, waitingFor);
    if (!head) {
      if (reader.buffered > 0) throw new WireError('ERR_WIRE_CLOSED', 'the channel closed inside a frame');
      return null;
    }
    const type = head[0]!;
    const device = head[2]! | (head[3]! << 8);
    const length = (head[4]! | (head[5]! << 8) | (head[6]! << 16)) + head[7]! * 0x1000000;
    if (head[1] !== 0) throw new WireError('ERR_WIRE_FORMAT', `frame header: reserved byte is not 0`);
    if (!NAMES.has(type)) throw new WireError('ERR_WIRE_FORMAT', frameName(type));
    const limit = type === FRAME.data ? MAX_DATA : MAX_MESSAGE;
    if (length > limit)
      throw new WireError('ERR_WIRE_FORMAT', `${frameName(type)} frame of ${length} bytes, more than ${limit}`);
    const body = await this.#timed(reader.read(length), timeoutMs, waitingFor);
    if (!body) throw new WireError('ERR_WIRE_CLOSED', `the channel closed inside a ${frameName(type)} frame`);
    this.bytesIn += FRAME_HEADER_SIZE + length;
    return { type, device, payload: body };
  }

  async #readFrame(incoming: FrameQueue, timeoutMs: number | undefined, waitingFor: string): Promise<Frame | null> {
    if (this.#closed) throw new WireError('ERR_WIRE_CLOSED', 'the channel is closed');
    // Without a timeout a waiting read needs no timer: close() fails it through the queue.
    const frame =
      incoming.take() ?? (await (timeoutMs ? this.#timed(incoming.next(), timeoutMs, waitingFor) : incoming.next()));
    if (!frame) return null;
    if (!NAMES.has(frame.type)) throw new WireError('ERR_WIRE_FORMAT', frameName(frame.type));
    this.bytesIn += FRAME_HEADER_SIZE + frame.payload.length;
    return frame;
  }

  /** Stops reading and writing; pending reads fail. Ends the writable side. Idempotent. */
  close(reason = 'the channel was closed'): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#closeWaiters) w(new WireError('ERR_WIRE_CLOSED', reason));
    this.#closeWaiters.clear();
    if (this.#frames) {
      this.#frames.incoming.stopReading(new WireError('ERR_WIRE_CLOSED', reason));
      this.#frames.outgoing.end();
      return;
    }
    void Promise.resolve(this.#bytes!.reader.close()).catch(() => undefined);
    try {
      this.#bytes!.writable.end();
    } catch {
      // already destroyed
    }
  }

  /**
   * Closes at once, dropping what is queued: for a peer that is gone or failed, whose reader may
   * never drain the channel (a write waiting on back-pressure then fails instead of hanging).
   */
  destroy(reason = 'the channel was dropped'): void {
    this.close(reason);
    if (this.#frames) this.#frames.outgoing.destroy();
    else (this.#bytes!.writable as Partial<NodeJS.WritableStream & { destroy(): void }>).destroy?.();
  }

  #timed<T>(p: Promise<T>, timeoutMs: number | undefined, waitingFor: string): Promise<T> {
    p.catch(() => undefined);
    if (this.#closed) return Promise.reject(new WireError('ERR_WIRE_CLOSED', 'the channel is closed'));
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        if (timer) clearTimeout(timer);
        this.#closeWaiters.delete(onClose);
      };
      const onClose = (err: Error): void => {
        done();
        reject(err);
      };
      this.#closeWaiters.add(onClose);
      if (timeoutMs !== undefined && timeoutMs > 0) {
        timer = setTimeout(() => {
          done();
          reject(new WireError('ERR_WIRE_TIMEOUT', `timed out after ${timeoutMs} ms waiting for ${waitingFor}`));
        }, timeoutMs);
      }
      p.then(
        (v) => {
          done();
          resolve(v);
        },
        (err: unknown) => {
          done();
          reject(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
  }
}
