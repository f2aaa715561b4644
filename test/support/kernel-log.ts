// The kernel log check shared by the suite runner (dmesg.txt after a guest run) and the after-suite checks.
import { spawnSync } from 'node:child_process';

/**
 * A line of the kernel log that means the kernel is unhappy: warnings, BUGs, oopses, stack dumps,
 * lockdep, hung tasks, sanitizers, refcount and list corruption.
 */
export const KERNEL_PROBLEM =
  /\b(?:WARNING:|BUG:|Oops|general protection fault|Kernel panic|kernel BUG|Call Trace:|possible circular locking|INFO: task .* blocked|UBSAN:|KASAN:|refcount_t:|list_add corruption|list_del corruption)/;

/** The lines of a kernel log that match KERNEL_PROBLEM. */
export function kernelLogProblems(log: string): string[] {
  return log.split('\n').filter((l) => KERNEL_PROBLEM.test(l));
}

/** This machine's kernel log (dmesg, or busybox's where util-linux is missing). */
export function readDmesg(): string {
  const r = spawnSync('dmesg', [], { encoding: 'utf8' });
  if (r.status === 0) return r.stdout;
  const b = spawnSync('busybox', ['dmesg'], { encoding: 'utf8' });
  return b.stdout ?? '';
}
