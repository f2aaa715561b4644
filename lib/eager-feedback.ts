// Feedback from a function's first call while a migration runs: its downtime is mostly code that runs there once per device.
import { native } from './native';

/** Scopes open in this process; V8 allocates feedback eagerly while there is at least one. */
let scopes = 0;
/** Whether node's own arguments settle feedback allocation (undefined until the first scope asks). */
let chosenByUser: boolean | undefined;

/**
 * V8 gives a function its feedback vector, where its inline caches learn the shapes it meets,
 * only once it has run a while (--lazy-feedback-allocation). A migration's downtime runs code
 * that runs nowhere else (the stop-copy pass, the trailer, a stream's end, the messages), once
 * per device, so without this every property access there was a generic lookup. While a scope
 * is open, every function gets its vector at its first call (native/heap.cc has the figures).
 *
 * Scopes nest (migrate() and receive() in one process each open one); the flag goes back to
 * V8's default when the last one closes, so a code cache made at exit (cli/code-cache.ts) is
 * made under the flags the process started with. A process started with either form of the
 * flag is left as its user chose (node takes V8 flags as its arguments only: NODE_OPTIONS
 * refuses them).
 */
export async function withEagerFeedback<T>(step: () => Promise<T>): Promise<T> {
  chosenByUser ??= process.execArgv.some((arg) => /^--(no-?)?lazy[-_]feedback[-_]allocation$/.test(arg));
  if (chosenByUser) return step();
  if (scopes++ === 0) native.eagerFeedback(true);
  try {
    return await step();
  } finally {
    if (--scopes === 0) native.eagerFeedback(false);
  }
}

/** How many scopes are open now (0 once every migration in this process ended). */
export function eagerFeedbackScopes(): number {
  return scopes;
}
