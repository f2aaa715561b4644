// Holds off V8's major garbage collections through a migration's downtime; nested holds are counted.
import { native } from './native';

/** Holds taken in this process; the hint is on while there is at least one. */
let holders = 0;

/**
 * One step's hold: while taken, V8 is asked not to run a major (mark-compact) collection. A
 * migration takes it from the first source stop until the destination runs: a full collection
 * there stops the JS thread that drives every device (24-75 ms in the test guest, where V8's
 * old-generation limit is reached by the I/O buffers' native memory alone). V8 still collects
 * past its own bounds (a heap far over its limit, a hold of more than a few seconds), and
 * young-generation collections go on. A collection held off runs after the release.
 *
 * Holds nest: the hint ends when the last one is released (a migrate and a receive in one
 * process). take() and release() are each idempotent. On a V8 that takes no such hint
 * (canHoldMajorGc() false), holding does nothing.
 */
export class GcHold {
  #held = false;

  take(): void {
    if (this.#held) return;
    this.#held = true;
    if (holders++ === 0) native.deferMajorGc(true);
  }

  release(): void {
    if (!this.#held) return;
    this.#held = false;
    if (--holders === 0) native.deferMajorGc(false);
  }
}

/** Runs `step` with a GcHold it may take, and releases that hold however the step ends. */
export async function withGcHold<T>(step: (gc: GcHold) => Promise<T>): Promise<T> {
  const gc = new GcHold();
  try {
    return await step(gc);
  } finally {
    gc.release();
  }
}

/** How many holds are taken now (0 once every migration in this process released its own). */
export function majorGcHolds(): number {
  return holders;
}

/** Whether this process's V8 takes the hint a GcHold gives. */
export function canHoldMajorGc(): boolean {
  return native.majorGcHint;
}
