// One direction of an in-process migrate channel (channelPair): frames handed to the reader as objects, never as bytes.
import type { Frame } from './wire';

// The channel between two ends in one process carried bytes: each frame was a header and a
// payload written into a queue of chunks, and read back out of it by a byte reader that split
// them again. Every frame of a migration's downtime went that way, and the JS it ran (some forty
// calls per frame, interpreted under emulation) was over a quarter of what each extra device
// added to the downtime (bench/calls.ts: 619 calls per extra device before, 445 after). Here a
// frame goes over as the object it is.

/** Frames queued for the reader; later ones are held until it takes one (a frame is its own chunk). */
export const FRAME_QUEUE_FRAMES = 2;
/** Payload bytes held at which a sender waits until every held frame is queued (a Writable's default mark). */
export const FRAME_QUEUE_HELD_BYTES = 16 * 1024;

function streamError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}
const destroyedError = (): Error =>
  streamError('ERR_STREAM_DESTROYED', 'Cannot call write after a stream was destroyed');

interface Held {
  frame: Frame;
  /** A flushed send waits for its frame to be queued. */
  queued?: () => void;
  failed?: (err: Error) => void;
}

/**
 * The semantics WireEnd had from the byte queue it replaces: FRAME_QUEUE_FRAMES frames wait for
 * the reader and later ones are held; a send goes on at once unless it is flushed (a message:
 * it goes on once its frame is queued, on a later tick) or FRAME_QUEUE_HELD_BYTES of payload are
 * held (it goes on once none is); end() ends the reader's frames after the queued and held ones;
 * destroy() drops them, fails the reader (ERR_STREAM_PREMATURE_CLOSE) and the waiting sends
 * (ERR_STREAM_DESTROYED). A reader that stops early destroys the queue, so its peer's sends fail.
 */
export class FrameQueue {
  readonly #queued: Frame[] = [];
  readonly #held: Held[] = [];
  #heldBytes = 0;
  #drainWaiters: { resolve(): void; reject(err: Error): void }[] = [];
  #callbacks: (() => void)[] = [];
  #reader: { resolve(frame: Frame | null): void; reject(err: Error): void } | undefined;
  #ended = false;
  destroyed = false;

  /** Whether no more frames can be sent (ended or destroyed). */
  get closed(): boolean {
    return this.#ended || this.destroyed;
  }

  /** Sends a frame: undefined when the sender may go on at once, else a promise of when it may. */
  push(frame: Frame, flush: boolean): Promise<void> | undefined {
    if (this.closed) throw new Error('the stream sink is closed: cannot write to it');
    if (this.#queued.length < FRAME_QUEUE_FRAMES && !this.#held.length) {
      this.#deliver(frame);
      return flush ? new Promise<void>((resolve) => this.#callBackLater(resolve)) : undefined;
    }
    const held: Held = { frame };
    this.#held.push(held);
    this.#heldBytes += frame.payload.length;
    if (flush) {
      return new Promise<void>((resolve, reject) => {
        held.queued = resolve;
        held.failed = reject;
      });
    }
    if (this.#heldBytes < FRAME_QUEUE_HELD_BYTES) return undefined;
    return new Promise<void>((resolve, reject) => this.#drainWaiters.push({ resolve, reject }));
  }

  /** The next frame if one waits, without waiting. */
  take(): Frame | undefined {
    const frame = this.#queued.shift();
    if (frame !== undefined && this.#held.length) this.#admitHeld();
    return frame;
  }

  /** The next frame; null once the sender ended and every frame was taken; rejects once destroyed. One reader at a time. */
  next(): Promise<Frame | null> {
    if (this.destroyed) return Promise.reject(streamError('ERR_STREAM_PREMATURE_CLOSE', 'Premature close'));
    const frame = this.take();
    if (frame !== undefined) return Promise.resolve(frame);
    if (this.#ended) return Promise.resolve(null);
    return new Promise<Frame | null>((resolve, reject) => (this.#reader = { resolve, reject }));
  }

  /** No more frames: the reader gets the queued and held ones, then null. */
  end(): void {
    if (this.closed) return;
    this.#ended = true;
    if (!this.#queued.length && !this.#held.length) this.#wake(null);
  }

  /** The reader is done with this queue: fails `reason` to its waiting read, and destroys the queue unless it was read to its end. */
  stopReading(reason: Error): void {
    const reader = this.#reader;
    this.#reader = undefined;
    reader?.reject(reason);
    if (!(this.#ended && !this.#queued.length && !this.#held.length)) this.destroy();
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.#queued.length = 0;
    const held = this.#held.splice(0);
    this.#heldBytes = 0;
    const drainWaiters = this.#drainWaiters.splice(0);
    const reader = this.#reader;
    this.#reader = undefined;
    reader?.reject(streamError('ERR_STREAM_PREMATURE_CLOSE', 'Premature close'));
    for (const h of held) h.failed?.(destroyedError());
    for (const w of drainWaiters) w.reject(destroyedError());
  }

  #deliver(frame: Frame): void {
    const reader = this.#reader;
    if (reader) {
      this.#reader = undefined;
      reader.resolve(frame);
    } else {
      this.#queued.push(frame);
    }
  }

  /** The reader took a frame: held ones move up into the queue; waiting sends go on once none is held. */
  #admitHeld(): void {
    while (this.#held.length && this.#queued.length < FRAME_QUEUE_FRAMES) {
      const held = this.#held.shift()!;
      this.#heldBytes -= held.frame.payload.length;
      this.#deliver(held.frame);
      if (held.queued) this.#callBackLater(held.queued);
    }
    if (!this.#held.length && this.#drainWaiters.length) {
      const waiters = this.#drainWaiters.splice(0);
      this.#callBackLater(() => waiters.forEach((w) => w.resolve()));
    }
    if (this.#ended && !this.#queued.length && !this.#held.length) this.#wake(null);
  }

  #wake(value: Frame | null): void {
    const reader = this.#reader;
    this.#reader = undefined;
    reader?.resolve(value);
  }

  /**
   * Calls `callback` on the next tick, with every other callback queued before that tick comes
   * in the same tick, in order: a process.nextTick costs some twenty JS calls in V8's interpreter.
   * A tick, not a promise reaction or a call right away: the reader's side (woken by a promise)
   * then runs before the sender goes on; calling back sooner lengthened the downtime's validation
   * and resume in the guest (one device's median: 25 -> 31 ms as a promise reaction, 33 -> 41 ms
   * called at once, measured on the byte queue this replaces).
   */
  #callBackLater(callback: () => void): void {
    this.#callbacks.push(callback);
    if (this.#callbacks.length > 1) return;
    process.nextTick(() => {
      const due = this.#callbacks;
      this.#callbacks = [];
      for (const cb of due) cb();
    });
  }
}
