// The calling thread's time on a CPU (the kernel's thread CPU clock): how much of a span was this thread's own work.
import { tenths } from './clock';
import { native } from './native';

/**
 * Nanoseconds the calling thread has spent on a CPU, user and kernel time, current to the call
 * (CLOCK_THREAD_CPUTIME_ID, read by the addon), or undefined where the kernel gives no such clock.
 */
export function threadCpuNs(): bigint | undefined {
  return native.threadCpuNs();
}

/** Milliseconds (one decimal) between two threadCpuNs() readings; undefined when either is missing. */
export function cpuMsBetween(from: bigint | undefined, to: bigint | undefined): number | undefined {
  if (from === undefined || to === undefined || to < from) return undefined;
  return tenths(Number(to - from) / 1e6);
}
