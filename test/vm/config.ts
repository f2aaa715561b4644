// The harness's shared ground: project paths, kernel series, the options and result of a guest run, prepare.sh.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

export type Series = '6.12' | '6.1';
export const SERIES: readonly Series[] = ['6.12', '6.1'];
export type Accel = 'kvm' | 'tcg';

/** The project root (the directory holding package.json), from dist/test/vm/ or test/vm/. */
export const PROJECT_ROOT = findRoot(__dirname);
export const CACHE_DIR = join(PROJECT_ROOT, '.cache', 'vm');
export const PREPARE_SCRIPT = join(PROJECT_ROOT, 'test', 'vm', 'prepare.sh');

/** Exit code of the runner when the guest timed out / the harness itself failed. */
export const EXIT_TIMEOUT = 124;
export const EXIT_HARNESS = 125;

/** Where streamed text goes: process.stdout or anything with a write(string). */
export interface TextSink {
  write(text: string): unknown;
}

/**
 * A second NIC (virtio-net) on a link of its own: a QEMU UDP socket netdev between two guests over the
 * host's loopback, each guest sending to the other's port. No host interface, no route out; the guests
 * give it addresses themselves. Either guest may start first (UDP: nothing to connect to).
 */
export interface GuestLink {
  /** The UDP port on 127.0.0.1 this guest receives on, and the peer's. */
  localPort: number;
  peerPort: number;
  /** The NIC's MAC address (the guest finds its interface by it), e.g. 52:54:00:23:10:01. */
  mac: string;
}

export interface GuestOptions {
  /** Argument vector, run with exec semantics at the project root inside the guest. */
  command: readonly string[];
  /** Kernel series, default '6.12'. */
  kernel?: Series;
  /** Kill the guest after this many ms (0 = never). Default 10 minutes. */
  timeoutMs?: number;
  /** Forward this process's stdin (raw) to the guest's terminal, with ttyS0 as controlling tty. */
  interactive?: boolean;
  /** Host directory shared writable with the guest at the same path (env VFIO_MIG_OUT). Default: a temporary one, removed after the run. */
  outDir?: string;
  /** Extra environment for the command. */
  env?: Record<string, string>;
  /** Stream the command's output here while it runs (e.g. process.stdout). Default: not streamed, only returned. */
  echo?: TextSink | null;
  /** Stream the kernel console / init log here (e.g. process.stderr). */
  consoleEcho?: TextSink | null;
  /** Guest memory in MiB (default 2048) and vCPUs (default 2). */
  memoryMiB?: number;
  cpus?: number;
  /** 'auto' (default): KVM only when a probe showed that it really works here. */
  accel?: Accel | 'auto';
  /** Load mtty.ko (default true), the project's modules (default true), bind the e1000e (default true). */
  mtty?: boolean;
  projectModules?: boolean;
  pciDevice?: boolean;
  /** Two QEMU edu devices bound to the project's vfio_mig_edu (default true; VFIO_MIG_EDU). */
  eduDevices?: boolean;
  /** Kernel console at loglevel 7 instead of quiet. */
  verboseKernel?: boolean;
  /** Run `prepare.sh --quiet --kernel <series>` first (default false: the caller prepared). */
  prepare?: boolean;
  /** Aborting kills the guest; the result then says so. */
  signal?: AbortSignal;
  /** A virtio-net NIC on a link to another guest (see GuestLink). */
  link?: GuestLink;
}

export interface GuestResult {
  /** The command's exit status; null when it did not complete (timeout, boot failure, crash). */
  status: number | null;
  /** What went wrong when status is null or the harness failed; undefined on a normal run. */
  error?: string;
  timedOut: boolean;
  /** Everything the command wrote to stdout/stderr (one stream, CR removed). */
  output: string;
  /** Kernel console and /init's log (the second serial port). */
  console: string;
  /** Last /init phase reached (see PHASES in console.ts). */
  phase: string;
  kernel: Series;
  kver: string;
  accel: Accel;
  /** Wall time of the whole run and of the boot up to the start of the command (ms). */
  durationMs: number;
  bootMs: number | null;
  /** PCI address of the e1000e bound to vfio-pci, and the project modules loaded. */
  pci?: string;
  loadedModules: string[];
  outDir: string;
  /** Process id QEMU had (gone by the time the result exists). */
  qemuPid?: number;
}

function findRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'test', 'vm'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`test/vm: no project root (package.json + test/vm/) above ${start}`);
    dir = up;
  }
}

export function seriesDir(kernel: Series): string {
  return join(CACHE_DIR, kernel);
}

/** Throws with a clear message when prepare.sh has not completed for this series. */
export function checkPrepared(kernel: Series): { kver: string; dir: string } {
  const dir = seriesDir(kernel);
  const ready = join(dir, 'ready');
  if (!existsSync(ready)) {
    throw new Error(
      `the ${kernel} guest is not prepared (${ready} missing): run bash test/vm/prepare.sh --kernel ${kernel}`,
    );
  }
  for (const f of ['vmlinux', 'initramfs.cpio', 'kver']) {
    if (!existsSync(join(dir, f)))
      throw new Error(`${join(dir, f)} missing: run bash test/vm/prepare.sh --kernel ${kernel}`);
  }
  return { kver: readFileSync(join(dir, 'kver'), 'utf8').trim(), dir };
}

/** Runs prepare.sh for one series (or all); throws when it fails. */
export function prepare(kernel: Series | 'all', opts: { quiet?: boolean; projectModules?: boolean } = {}): void {
  const args = [PREPARE_SCRIPT, '--kernel', kernel];
  if (opts.quiet) args.push('--quiet');
  if (opts.projectModules === false) args.push('--no-project-modules');
  const r = spawnSync('bash', args, { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`bash test/vm/prepare.sh --kernel ${kernel} failed (${r.status ?? r.signal})`);
}
