// Where the encoder writes: a Writable or an async function, with back-pressure, error capture and buffer reuse.
import { Buffer } from 'node:buffer';
import type { Writable } from 'node:stream';
import { WriteStream } from 'node:fs';
import { native } from '../../native';
import { allocIoBuffer } from '../../buffers';

/**
 * A regular file (or block device) that the encoder writes itself: each record leaves in one
 * writev from the buffer its payload was read into, with no copy and no stream queue between.
 * The caller owns the fd (opens, fsyncs, closes it).
 */
export class FileSink {
  constructor(readonly fd: number) {}

  /** Writes the views in order at the fd's offset; resolves once they are all written. */
  async write(parts: Uint8Array[]): Promise<void> {
    await native.writevAllAsync(this.fd, parts);
  }
}

export type StreamSink = NodeJS.WritableStream | FileSink | ((chunk: Buffer) => Promise<void>);

/** Hands one chunk to the sink; `flush` waits until the sink has taken it. */
export type Emit = (chunk: Buffer, flush: boolean) => Promise<void>;

/** Sinks known to be done with a chunk when its write callback runs. */
export function sinkReleasesOnCallback(w: NodeJS.WritableStream): boolean {
  if (w instanceof WriteStream || w === process.stdout || w === process.stderr) return true;
  // node:net is required here only: a socket sink means it is loaded already, and a command
  // that writes a file does not pay for loading it (~50 ms of start-up in the guest).
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on use, see above
  const { Socket } = require('node:net') as typeof import('node:net');
  return w instanceof Socket;
}

/** A few record buffers of one size, handed back after the sink wrote them. */
export class RecordPool {
  #free: Buffer[] = [];
  #size = 0;
  readonly #mine = new WeakSet<Buffer>();
  /** Native-owned records that their holder hands back with releaseRecord() (see the constructor). */
  readonly releasable: boolean;

  /**
   * With `releasable`, records are native-owned (a device write in this process uses them without
   * a bounce copy) and whoever ends up holding one may hand it back with releaseRecord().
   */
  constructor(options: { releasable?: boolean } = {}) {
    this.releasable = !!options.releasable;
  }

  take(size: number): Buffer {
    if (size === this.#size && this.#free.length) return this.#free.pop()!;
    const buf = this.releasable ? allocIoBuffer(size) : Buffer.allocUnsafeSlow(size);
    this.#mine.add(buf);
    if (this.releasable) RELEASABLE.set(buf.buffer, { pool: this, buf });
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

// Records of releasable pools by their memory, so that a view of one finds its way back.
const RELEASABLE = new WeakMap<ArrayBufferLike, { pool: RecordPool; buf: Buffer }>();

/** The whole record of a releasable pool whose memory `view` is in, and that pool; undefined for other memory. */
export function releasableRecord(view: Uint8Array): { pool: RecordPool; buf: Buffer } | undefined {
  return RELEASABLE.get(view.buffer);
}

/**
 * Hands a record back to the encoder that made it, once its holder is done with every view of
 * it: a destination in this process calls it after writing the record's payload into its
 * device, so the source's next records reuse memory that is already mapped (fresh memory costs
 * a page fault per 4 KiB). A view of any other memory is ignored (a record that came through a
 * pipe is a copy).
 */
export function releaseRecord(view: Uint8Array): void {
  const entry = releasableRecord(view);
  if (entry) entry.pool.give(entry.buf);
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

/** An Emit over a Writable; `written` gets each non-final chunk once the sink's callback ran. */
export function writableEmitter(w: NodeJS.WritableStream, written?: (chunk: Buffer) => void): Emit {
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
