// Overlap of device I/O with stream work: one emit in flight while the next chunk is read, one record decoded ahead.
import { Buffer } from 'node:buffer';
import { allocIoBuffer } from '../buffers';
import type { StreamEncoder } from './stream';
import { releaseRecord } from './stream/sink';
import type { CopyPass, EmitChunk } from './types';

/**
 * Keeps at most one emit (checksum, copy, sink write) running while the engine reads the next
 * chunk from the device. push() first waits for the emit in flight, so the buffer that emit was
 * given may be refilled once push() returns for the one after it: with two buffers used in
 * turn, a buffer is never written while an emit still reads it. Records stay in order.
 */
export class EmitWindow {
  readonly #emit: EmitChunk;
  readonly #payloadBuffer: ((size: number) => Buffer | undefined) | undefined;
  readonly #returnBuffer: ((buf: Buffer) => void) | undefined;
  #inFlight: Promise<void> | null = null;
  /** Whether the emit wants each chunk's CRC-32 (CopyPass.checksum). */
  readonly checksums: boolean;

  /**
   * `payloadBuffer`: where the emit can take a chunk without copying it (StreamEncoder.payloadBuffer);
   * `returnBuffer`: takes back such a buffer that was never emitted (and ignores any other);
   * `checksums`: false when the emit does not use the chunks' CRCs (StreamEncoder.checksums).
   */
  constructor(
    emit: EmitChunk,
    {
      payloadBuffer,
      returnBuffer,
      checksums = true,
    }: {
      payloadBuffer?: (size: number) => Buffer | undefined;
      returnBuffer?: (buf: Buffer) => void;
      checksums?: boolean;
    } = {},
  ) {
    this.#emit = emit;
    this.#payloadBuffer = payloadBuffer;
    this.#returnBuffer = returnBuffer;
    this.checksums = checksums;
  }

  /** A buffer to read the next chunk of up to `size` bytes into that the emit sends as it is, if it has one (CopyPass.buffer). */
  buffer(size: number): Buffer | undefined {
    return this.#payloadBuffer?.(size);
  }

  /** What a CopyPass of records of `phase` needs from this window: where chunks go, their buffers, whether to checksum. */
  passTo(phase: number): Pick<CopyPass, 'emit' | 'buffer' | 'unusedBuffer' | 'checksum'> {
    return {
      emit: (payload, payloadCrc) => this.push(phase, payload, payloadCrc),
      buffer: (size) => this.buffer(size),
      unusedBuffer: (buf) => this.#returnBuffer?.(buf),
      checksum: this.checksums,
    };
  }

  async push(phase: number, payload: Uint8Array, payloadCrc?: number): Promise<void> {
    await this.flush();
    const p = this.#emit(phase, payload, payloadCrc);
    p.catch(() => undefined); // surfaced by the next push() or flush()
    this.#inFlight = p;
  }

  /** Waits for the emit in flight; its error, if any, is thrown here. */
  async flush(): Promise<void> {
    const p = this.#inFlight;
    this.#inFlight = null;
    if (p) await p;
  }
}

/** The EmitWindow that writes records through `encoder`, with its payload buffers and its checksum choice. */
export function encoderWindow(encoder: StreamEncoder): EmitWindow {
  return new EmitWindow((phase, payload, payloadCrc) => encoder.writeRecord(phase, payload, payloadCrc), {
    payloadBuffer: (size) => encoder.payloadBuffer(size),
    returnBuffer: releaseRecord,
    checksums: encoder.checksums,
  });
}

/** Two chunk buffers used in turn with an EmitWindow; grown on demand, never shrunk. */
export class ChunkBuffers {
  #buffers: [Buffer, Buffer] = [Buffer.alloc(0), Buffer.alloc(0)];
  #turn = 0;

  /** The next buffer, at least `length` bytes. */
  next(length: number): Buffer {
    this.#turn ^= 1;
    // Native-owned: async device reads fill it in place, with no bounce copy.
    if (this.#buffers[this.#turn].length < length) this.#buffers[this.#turn] = allocIoBuffer(length);
    return this.#buffers[this.#turn];
  }
}

/**
 * Yields what `source` yields, asking for the next item as soon as the current one is handed
 * out, so decoding record N+1 overlaps with writing record N into the device. Items must not be
 * reused by the source (StreamDecoder's are not).
 */
export async function* readAhead<T>(source: AsyncIterable<T>): AsyncGenerator<T> {
  const it = source[Symbol.asyncIterator]();
  let next = it.next();
  let finished = false;
  try {
    for (;;) {
      const r = await next;
      if (r.done) {
        finished = true;
        return;
      }
      next = it.next();
      next.catch(() => undefined); // surfaced when awaited
      yield r.value;
    }
  } finally {
    // Early exit: release the source without waiting on a read that may never complete (a stalled pipe).
    if (!finished) void Promise.resolve(it.return?.()).catch(() => undefined);
  }
}
