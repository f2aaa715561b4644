// Pieces both ends of a migrate share: the error that says which side failed, the message inbox, the per-device byte queue.
import { monotonicMs } from '../clock';
import { MigrationError, type MigrationErrorCode, type Recovery } from './errors';
import { FRAME, WireError, frameName, messageBody, type Frame, type WireEnd } from './wire';

/** Which end failed: the one holding the sources, the one holding the destinations, or the channel between. */
export type Side = 'source' | 'destination' | 'channel';

export interface DeviceOutcome {
  device: string;
  role: 'source' | 'destination';
  /** What the device was left in: RUNNING again, reset, STOP (committed source), or unrecovered. */
  recovery: Recovery | 'committed';
}

/** A failed migrate: which side failed, whether the commit had been given, and what each device was left in. */
export class MigrateError extends MigrationError {
  side: Side;
  committed: boolean;
  devices: DeviceOutcome[] = [];

  constructor(
    code: MigrationErrorCode,
    message: string,
    side: Side,
    options: { cause?: unknown; step?: string; committed?: boolean } = {},
  ) {
    super(code, message, options);
    this.name = 'MigrateError';
    this.side = side;
    this.committed = options.committed ?? false;
  }
}

/** What a peer's ERROR frame says. */
export interface PeerError {
  message: string;
  code?: string;
  side?: Side;
  step?: string;
  /** What the peer did to its devices ('running', 'reset', ...). */
  recovery?: string;
}

/** Turns what went wrong locally or on the wire into a MigrateError naming the side. */
export function asMigrateError(err: unknown, local: 'source' | 'destination', step: string): MigrateError {
  if (err instanceof MigrateError) return err;
  if (err instanceof WireError) {
    const code = err.code === 'ERR_WIRE_TIMEOUT' ? 'ERR_MIGRATION_TIMEOUT' : 'ERR_MIGRATION_CHANNEL';
    return new MigrateError(code, `${step}: ${err.message}`, 'channel', { cause: err, step });
  }
  if (err instanceof MigrationError) {
    const side: Side = err.code === 'ERR_MIGRATION_IO' ? 'channel' : local;
    const e = new MigrateError(err.code, `${step}: ${err.message}`, side, { cause: err, step: err.step ?? step });
    e.errno = err.errno;
    e.record = err.record;
    return e;
  }
  const message = err instanceof Error ? err.message : String(err);
  const side: Side = /EPIPE|ECONNRESET|closed|destroyed|write after end/i.test(message) ? 'channel' : local;
  return new MigrateError(
    side === 'channel' ? 'ERR_MIGRATION_CHANNEL' : 'ERR_MIGRATION_DEVICE',
    `${step}: ${message}`,
    side,
    { cause: err, step },
  );
}

interface Waiter {
  type: number;
  device: number;
  resolve(frame: Frame): void;
}

/**
 * Reads the frames a peer sends and hands each to the one waiting for it. An ERROR frame, the
 * end of the channel or a malformed frame fails every waiter, now and later.
 */
export class Inbox {
  readonly #wire: WireEnd;
  readonly #waiters = new Set<Waiter>();
  readonly #early: Frame[] = [];
  readonly #failWaiters = new Set<(err: Error) => void>();
  #failure: Error | undefined;
  /** Called once when the peer fails, closes the channel or sends something malformed (not for fail()). */
  onPeerFailure: ((err: Error) => void) | undefined;
  /** Called for frames nobody waits for (DATA on the destination); may return a promise for back-pressure. */
  onFrame: ((frame: Frame) => void | Promise<void>) | undefined;

  readonly #peer: 'source' | 'destination';
  #started = false;
  /** When a frame last arrived or the receiver last wrote a record (monotonicMs: no wall-clock step fires or hides a timeout). */
  lastActivity = monotonicMs();

  constructor(wire: WireEnd, peer: 'source' | 'destination') {
    this.#wire = wire;
    this.#peer = peer;
  }

  /** Starts reading frames (after the preamble was read). */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    void this.#pump(this.#peer);
  }

  get failure(): Error | undefined {
    return this.#failure;
  }

  async #pump(peer: 'source' | 'destination'): Promise<void> {
    try {
      for (;;) {
        const frame = await this.#wire.read(undefined, `the ${peer}`);
        if (!frame) throw new WireError('ERR_WIRE_CLOSED', `the ${peer} closed the channel`);
        this.lastActivity = monotonicMs();
        if (frame.type === FRAME.error) {
          const body = messageBody<PeerError>(frame);
          const side = body.side ?? peer;
          const code = side === 'channel' ? 'ERR_MIGRATION_CHANNEL' : 'ERR_MIGRATION_PEER';
          const e = new MigrateError(code, `the ${peer} failed: ${String(body.message)}`, side, { step: body.step });
          (e as MigrateError & { peer: PeerError }).peer = body;
          throw e;
        }
        const w = [...this.#waiters].find((x) => x.type === frame.type && x.device === frame.device);
        if (w) {
          this.#waiters.delete(w);
          w.resolve(frame);
        } else if (this.onFrame) {
          await this.onFrame(frame);
        } else {
          this.#early.push(frame);
        }
      }
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      const first = this.#failure === undefined;
      this.fail(error);
      if (first) this.onPeerFailure?.(error);
    }
  }

  /** Fails every waiter (a local failure, or the channel's). The first failure sticks. */
  fail(err: Error): void {
    this.#failure ??= err;
    for (const f of this.#failWaiters) f(this.#failure);
    this.#failWaiters.clear();
  }

  /** The next frame of this type (and device), bounded by timeoutMs and the signal. */
  wait(
    type: number,
    device: number,
    timeoutMs: number | undefined,
    what: string,
    signal?: AbortSignal,
  ): Promise<Frame> {
    const i = this.#early.findIndex((f) => f.type === type && f.device === device);
    if (i >= 0) return Promise.resolve(this.#early.splice(i, 1)[0]!);
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise<Frame>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        if (timer) clearTimeout(timer);
        this.#waiters.delete(waiter);
        this.#failWaiters.delete(onFail);
        signal?.removeEventListener('abort', onAbort);
      };
      const waiter: Waiter = {
        type,
        device,
        resolve: (f) => {
          cleanup();
          resolve(f);
        },
      };
      const onFail = (err: Error): void => {
        cleanup();
        reject(err);
      };
      const onAbort = (): void => onFail(abortReason(signal!, what));
      this.#waiters.add(waiter);
      this.#failWaiters.add(onFail);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs) {
        timer = setTimeout(
          () => onFail(new WireError('ERR_WIRE_TIMEOUT', `timed out after ${timeoutMs} ms waiting for ${what}`)),
          timeoutMs,
        );
      }
    });
  }

  /** A promise that rejects when the inbox fails (never resolves). */
  failed(): Promise<never> {
    return new Promise<never>((_, reject) => {
      if (this.#failure) reject(this.#failure);
      else this.#failWaiters.add(reject);
    });
  }
}

export function abortReason(signal: AbortSignal, what: string): MigrateError {
  const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'aborted');
  return new MigrateError('ERR_MIGRATION_ABORTED', `aborted while waiting for ${what}: ${reason}`, 'source');
}

export { frameName };

/**
 * The bytes of one device's stream as DATA frames bring them, read by a StreamDecoder. push()
 * resolves once the queue is under its high-water mark, which holds back the channel reader.
 */
export class ByteQueue implements AsyncIterable<Buffer> {
  #chunks: Buffer[] = [];
  #bytes = 0;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  #drain: (() => void) | undefined;
  readonly #highWater: number;

  /** `highWater`: bytes queued before push() holds back (receive's RECEIVE_QUEUE_BYTES). */
  constructor(highWater: number) {
    this.#highWater = highWater;
  }

  push(chunk: Buffer): Promise<void> | void {
    if (this.#ended) return;
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    this.#wake?.();
    if (this.#bytes > this.#highWater) return new Promise<void>((r) => (this.#drain = r));
  }

  end(error?: Error): void {
    this.#ended = true;
    this.#error ??= error;
    this.#wake?.();
    this.#drain?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    for (;;) {
      const chunk = this.#chunks.shift();
      if (chunk) {
        this.#bytes -= chunk.length;
        if (this.#bytes <= this.#highWater && this.#drain) {
          const d = this.#drain;
          this.#drain = undefined;
          d();
        }
        yield chunk;
        continue;
      }
      if (this.#error) throw this.#error;
      if (this.#ended) return;
      await new Promise<void>((r) => (this.#wake = r));
      this.#wake = undefined;
    }
  }
}

/**
 * Runs `step` on every item at once and waits until every one has ended, so that no recovery
 * starts while a device step (a state change, a data read or write) is still in flight; then
 * throws the first failure in time, if any. `onFailure` runs at that first failure, so the
 * caller can tell the other steps to stop early (they then fail too, but their errors are only
 * the echo of the first).
 */
export async function settleAll<T, R>(
  items: readonly T[],
  step: (item: T, index: number) => Promise<R>,
  onFailure?: (err: unknown) => void,
): Promise<R[]> {
  let first: { reason: unknown } | undefined;
  const outcomes = await Promise.allSettled(
    items.map(async (item, i) => {
      try {
        return await step(item, i);
      } catch (err) {
        if (!first) {
          first = { reason: err };
          onFailure?.(err);
        }
        throw err;
      }
    }),
  );
  if (first) throw first.reason;
  return outcomes.map((o) => (o as PromiseFulfilledResult<R>).value);
}

/** Waits for `p` at most `ms` (its outcome ignored): a best-effort message to a peer that may be gone. */
export async function settleWithin(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    p.catch(() => undefined),
    new Promise<void>((r) => {
      timer = setTimeout(r, ms);
    }),
  ]);
  clearTimeout(timer);
}
