// Pre-copy policy: when a save stops copying from the running device and stops it. One rule for both protocols.
import type { PendingData, PrecopyPolicy } from './types';

/** Pre-copy iterations when a policy gives none (the CLI's --precopy-threshold/--precopy-time alone). */
export const DEFAULT_PRECOPY_ITERATIONS = 8;

export interface PrecopyProgress {
  /** Passes done so far. */
  iterations: number;
  /** What the device reported before the previous pass (undefined before the first). */
  previous: bigint | undefined;
  elapsedMs: number;
}

/** Why pre-copy ends, or null to run another pass. */
export type PrecopyStop = 'drained' | 'threshold' | 'not-converging' | 'iterations' | 'time' | null;

/**
 * The one pre-copy rule: stop when nothing is pending; once the device's initial data is out,
 * also when what is pending is at or below the threshold or no longer shrinks; always at the
 * iteration or time limit.
 */
export function precopyStop(policy: PrecopyPolicy, pending: PendingData, at: PrecopyProgress): PrecopyStop {
  const maxIterations = policy.maxIterations ?? DEFAULT_PRECOPY_ITERATIONS;
  const threshold = policy.threshold === undefined ? 0n : BigInt(policy.threshold);
  const bytes = pending.bytes;
  if (bytes === 0n) return 'drained';
  if (pending.initialDone && bytes !== undefined) {
    if (bytes <= threshold) return 'threshold';
    if (at.previous !== undefined && bytes >= at.previous) return 'not-converging';
  }
  if (at.iterations >= maxIterations) return 'iterations';
  if (policy.timeMs !== undefined && at.elapsedMs >= policy.timeMs) return 'time';
  return null;
}

/** Whether a policy asks for any pre-copy at all. */
export function wantsPrecopy(policy: PrecopyPolicy | false | undefined): policy is PrecopyPolicy {
  return !!policy && (policy.maxIterations ?? DEFAULT_PRECOPY_ITERATIONS) > 0;
}
