// One direction of an in-process channel: a writable stream and an async iterable over a small queue of chunks, without node:stream.
import { EventEmitter } from 'node:events';

// channelPair() used two object-mode PassThroughs. Their first use in a process (loading the
// stream modules, then cold code on every frame) took ~45-75 ms in the guest, a plain queue
// ~3 ms; and every frame of an in-process migrate crosses one, the stop-and-copy's included.

/** Chunks queued for the reader (two frames: header, payload); later writes are held. */
export const MEMORY_PIPE_CHUNKS = 4;
/** Bytes held at which write() asks the writer to wait for 'drain' (a Writable's default mark). */
export const MEMORY_PIPE_HELD_BYTES = 16 * 1024;

type WriteCallback = (err?: Error | null) => void;

function streamError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * What WireEnd writes to and reads from, with the semantics of the object-mode PassThrough it
 * replaces where WireEnd relies on them: MEMORY_PIPE_CHUNKS chunks are queued for the reader,
 * later ones held; write() returns false once MEMORY_PIPE_HELD_BYTES are held, and 'drain'
 * follows when the reader has taken every held chunk; a write is called back when its chunk is
 * queued for the reader; end() ends the reader's iteration after the queued chunks; destroy()
 * fails the reader (ERR_STREAM_PREMATURE_CLOSE) and the held writes (ERR_STREAM_DESTROYED), then
 * emits 'close'. A reader that stops iterating destroys the pipe, as a Readable's iterator does.
 */
export class MemoryPipe extends EventEmitter implements AsyncIterable<Uint8Array> {
  // Queued for the reader (at most MEMORY_PIPE_CHUNKS), then held back, oldest first.
  readonly #queued: Uint8Array[] = [];
  readonly #held: { chunk: Uint8Array; callback?: WriteCallback }[] = [];
  #heldBytes = 0;
  #callbacks: WriteCallback[] = [];
  #wakeReader: (() => void) | undefined;
  #ended = false;
  #needDrain = false;
  destroyed = false;

  get writableEnded(): boolean {
    return this.#ended;
  }

  write(chunk: Uint8Array, callback?: WriteCallback): boolean {
    if (this.destroyed || this.#ended) {
      const err = this.destroyed
        ? streamError('ERR_STREAM_DESTROYED', 'Cannot call write after a stream was destroyed')
        : streamError('ERR_STREAM_WRITE_AFTER_END', 'write after end');
      process.nextTick(() => callback?.(err));
      return false;
    }
    if (this.#queued.length < MEMORY_PIPE_CHUNKS && !this.#held.length) {
      this.#queue(chunk, callback);
      return true;
    }
    this.#held.push({ chunk, callback });
    this.#heldBytes += chunk.length;
    if (this.#heldBytes < MEMORY_PIPE_HELD_BYTES) return true;
    this.#needDrain = true;
    return false;
  }

  end(): this {
    if (!this.#ended && !this.destroyed) {
      this.#ended = true;
      this.#wake();
    }
    return this;
  }

  destroy(): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.#queued.length = 0;
    const held = this.#held.splice(0);
    this.#heldBytes = 0;
    this.#wake();
    process.nextTick(() => {
      for (const { callback } of held)
        callback?.(streamError('ERR_STREAM_DESTROYED', 'Cannot call write after a stream was destroyed'));
      this.emit('close');
    });
    return this;
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: async (): Promise<IteratorResult<Uint8Array>> => {
        for (;;) {
          if (this.destroyed) throw streamError('ERR_STREAM_PREMATURE_CLOSE', 'Premature close');
          const chunk = this.#queued.shift();
          if (chunk) {
            this.#admitHeld();
            return { value: chunk, done: false };
          }
          if (this.#ended) return { value: undefined, done: true };
          await new Promise<void>((resolve) => (this.#wakeReader = resolve));
        }
      },
      return: async (): Promise<IteratorResult<Uint8Array>> => {
        if (!(this.#ended && !this.#queued.length)) this.destroy();
        return { value: undefined, done: true };
      },
    };
  }

  #queue(chunk: Uint8Array, callback?: WriteCallback): void {
    this.#queued.push(chunk);
    if (callback) this.#callBackLater(callback);
    this.#wake();
  }

  /** The reader took a chunk: held writes move up into the queue; 'drain' once none is held. */
  #admitHeld(): void {
    while (this.#held.length && this.#queued.length < MEMORY_PIPE_CHUNKS) {
      const { chunk, callback } = this.#held.shift()!;
      this.#heldBytes -= chunk.length;
      this.#queue(chunk, callback);
    }
    if (this.#needDrain && !this.#held.length) {
      this.#needDrain = false;
      process.nextTick(() => this.emit('drain'));
    }
  }

  /**
   * Calls `callback` on the next tick, as a Writable would, with every other callback queued
   * before that tick comes in the same tick, in order: a process.nextTick costs some twenty JS
   * calls (async ids, hooks, its queue) in V8's interpreter, and each frame of an in-process
   * migrate is two writes, several frames per device inside a migration's downtime. A tick, not a
   * promise reaction or a call right away: then the reader's side (woken by a promise) runs before
   * the writer goes on; calling back sooner lengthened the downtime's validation and resume in the
   * guest (one device's median: 25 -> 31 ms as a promise reaction, 33 -> 41 ms called at once).
   */
  #callBackLater(callback: WriteCallback): void {
    this.#callbacks.push(callback);
    if (this.#callbacks.length > 1) return;
    process.nextTick(() => {
      const due = this.#callbacks;
      this.#callbacks = [];
      for (const cb of due) cb();
    });
  }

  #wake(): void {
    const wake = this.#wakeReader;
    this.#wakeReader = undefined;
    wake?.();
  }
}
