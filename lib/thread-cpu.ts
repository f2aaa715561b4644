// The calling thread's time on a CPU, from Linux's /proc/thread-self/schedstat: how much of a span was this thread's own work.
import { readFileSync } from 'node:fs';

const SCHEDSTAT = '/proc/thread-self/schedstat';

/**
 * Nanoseconds the calling thread has spent on a CPU (schedstat's first field: user and kernel
 * time, counted by the scheduler, so with none of the tick rounding of /proc/<pid>/stat), or
 * undefined where the kernel does not give it (not Linux, or built without CONFIG_SCHED_INFO).
 * A procfs read: no disk, no wait.
 */
export function threadCpuNs(path = SCHEDSTAT): bigint | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'latin1');
  } catch {
    return undefined;
  }
  return parseSchedstat(text);
}

/** The first field of a schedstat line ("<on-cpu ns> <run-queue wait ns> <timeslices>"), or undefined. */
export function parseSchedstat(text: string): bigint | undefined {
  const m = /^(\d+) \d+ \d+\s*$/.exec(text);
  return m ? BigInt(m[1]!) : undefined;
}

/** Milliseconds (one decimal) between two threadCpuNs() readings; undefined when either is missing. */
export function cpuMsBetween(from: bigint | undefined, to: bigint | undefined): number | undefined {
  if (from === undefined || to === undefined || to < from) return undefined;
  return Math.round(Number(to - from) / 1e5) / 10;
}
