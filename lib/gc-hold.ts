// Holds off V8's major garbage collections through a migration's downtime; nested holds are counted.
import { native } from './native';

let holders = 0;

/**
 * Asks V8 not to run a major (mark-compact) collection until the returned release is called,
 * which a migration does from the first source stop until the destination runs: a full
 * collection there stops the JS thread that drives every device (24-75 ms in the test guest,
 * where V8's old-generation limit is reached by the I/O buffers' native memory alone). V8 still
 * collects past its own bounds (a heap far over its limit, a hold of more than a few seconds),
 * and young-generation collections go on. A collection held off runs after the release.
 *
 * Holds nest: the hint ends when the last holder releases (a migrate and a receive in one
 * process). Release is idempotent. On a V8 that takes no such hint, holding does nothing.
 */
export function holdMajorGc(): () => void {
  if (holders++ === 0) native.deferMajorGc(true);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--holders === 0) native.deferMajorGc(false);
  };
}

/** One hold a step takes at most once and releases at most once (migrate's and receive's downtime). */
export class GcHold {
  #release: (() => void) | undefined;

  take(): void {
    this.#release ??= holdMajorGc();
  }

  release(): void {
    const release = this.#release;
    this.#release = undefined;
    release?.();
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

/** Whether this process's V8 takes the hint holdMajorGc() gives. */
export function canHoldMajorGc(): boolean {
  return native.majorGcHint;
}
