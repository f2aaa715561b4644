// The QEMU test harness: boots a fresh Debian guest kernel (6.12 or 6.1) with the
// host's / shared read-only over 9p, real VFIO devices (mtty, an e1000e bound to
// vfio-pci behind intel-iommu, the project's own modules) and runs one command in
// it at the project's path. See test/vm/README.md.
//
//   node dist/test/vm/vm.js [--kernel 6.12|6.1] [--timeout SEC] [options] [--] <command ...>
//
// The exit status of the command comes back through isa-debug-exit; the runner
// exits with it (124 when the guest timed out, 125 when the harness failed).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir, release } from 'node:os';
import { createServer, type Socket } from 'node:net';
import { dirname, join, resolve } from 'node:path';

export type Series = '6.12' | '6.1';
export const SERIES: readonly Series[] = ['6.12', '6.1'];
export type Accel = 'kvm' | 'tcg';

/** The project root (the directory holding package.json), from dist/test/vm/vm.js or test/vm/vm.ts. */
export const PROJECT_ROOT = findRoot(__dirname);
export const CACHE_DIR = join(PROJECT_ROOT, '.cache', 'vm');
export const PREPARE_SCRIPT = join(PROJECT_ROOT, 'test', 'vm', 'prepare.sh');

/** Exit code of the runner when the guest timed out / the harness itself failed. */
export const EXIT_TIMEOUT = 124;
export const EXIT_HARNESS = 125;

/** The e1000e the guest binds to vfio-pci (vendor:device as sysfs prints them). */
const PCI_ID = '0x8086:0x10d3';

const PHASES: Record<string, string> = {
  qemu: 'starting QEMU',
  kernel: 'kernel boot (before /init ran)',
  init: 'the start of /init',
  'mount-root': "loading the virtio/9p modules and mounting the host's / over 9p",
  mounts: 'mounting proc/sys/dev/tmpfs and the results share in the chroot',
  'load-vfio': 'loading vfio, vfio_iommu_type1, mdev, vfio-pci',
  'load-mtty': 'loading mtty.ko',
  'load-project-modules': "loading the project's modules",
  'bind-vfio-pci': 'binding the e1000e to vfio-pci',
  command: 'running the command',
  shutdown: 'powering off after the command',
};

/** Where streamed text goes: process.stdout or anything with a write(string). */
export interface TextSink {
  write(text: string): unknown;
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
  /** Kernel console at loglevel 7 instead of quiet. */
  verboseKernel?: boolean;
  /** Run `prepare.sh --quiet --kernel <series>` first (default false: the caller prepared). */
  prepare?: boolean;
  /** Aborting kills the guest; the result then says so. */
  signal?: AbortSignal;
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
  /** Last /init phase reached (see PHASES). */
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

/** Quotes one word for /bin/sh. */
export function shQuote(word: string): string {
  if (word !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Removes carriage returns (the guest's tty turns \n into \r\n). */
export function stripCR(text: string): string {
  return text.replace(/\r/g, '');
}

/** QEMU exits with (value << 1) | 1 when the guest writes value to isa-debug-exit. */
export function statusFromQemuExit(code: number | null): number | null {
  if (code === null || (code & 1) === 0) return null;
  return code >> 1;
}

/** Seconds before the timeout at which the guest reports what it is doing (the report itself takes a few). */
function dumpMargin(timeoutMs: number): number {
  return timeoutMs >= 60_000 ? 15 : 8;
}

function lastLines(text: string, n: number): string {
  const lines = text.replace(/\n+$/, '').split('\n');
  return lines.slice(-n).join('\n');
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `  | ${l}`)
    .join('\n');
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

// ------------------------------------------------------------------ QEMU processes
// Every QEMU this process starts is killed when it exits or gets a fatal signal;
// QEMU also gets SIGKILL from the kernel if this process dies (setpriv --pdeathsig).
const live = new Set<ChildProcess>();
const liveRunDirs = new Set<string>();
const FATAL_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function killAll(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  for (const dir of liveRunDirs) rmSync(dir, { recursive: true, force: true });
  liveRunDirs.clear();
}

/** Run directories left by runners that were killed outright (SIGKILL), older than a day. */
function sweepStaleRunDirs(): void {
  try {
    const day = Date.now() - 24 * 3600_000;
    for (const name of readdirSync(tmpdir())) {
      if (!name.startsWith('vfio-mig-vm-')) continue;
      const p = join(tmpdir(), name);
      if (statSync(p).mtimeMs < day) rmSync(p, { recursive: true, force: true });
    }
  } catch {
    /* best effort */
  }
}

function onSignal(sig: NodeJS.Signals): void {
  killAll();
  live.clear();
  uninstallHandlers();
  restoreTty();
  // default action now: terminate with the signal
  process.kill(process.pid, sig);
}

let handlersInstalled = false;
function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', killAll);
  for (const s of FATAL_SIGNALS) process.on(s, onSignal);
}
function uninstallHandlers(): void {
  if (!handlersInstalled) return;
  handlersInstalled = false;
  process.off('exit', killAll);
  for (const s of FATAL_SIGNALS) process.off(s, onSignal);
}

let rawTty = false;
function restoreTty(): void {
  if (rawTty && process.stdin.isTTY) {
    process.stdin.setRawMode(false);
    rawTty = false;
  }
}

let setprivOk: boolean | undefined;
function hasSetpriv(): boolean {
  if (setprivOk === undefined) {
    const r = spawnSync('setpriv', ['--pdeathsig', 'SIGKILL', 'true'], { stdio: 'ignore' });
    setprivOk = r.status === 0;
  }
  return setprivOk;
}

function qemuEscape(path: string): string {
  return path.replace(/,/g, ',,');
}

// ------------------------------------------------------------------ accelerator
const ACCEL_MEMO = join(CACHE_DIR, 'accel.json');

function kvmFingerprint(): string {
  let qemu = '';
  try {
    const q = spawnSync('sh', ['-c', 'command -v qemu-system-x86_64'], { encoding: 'utf8' });
    qemu = `${q.stdout.trim()}@${statSync(q.stdout.trim()).mtimeMs}`;
  } catch {
    /* no qemu: the boot reports it */
  }
  let cpu = '';
  try {
    cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '';
  } catch {
    /* not Linux */
  }
  return `${release()}|${qemu}|${cpu}`;
}

function kvmAccessible(): boolean {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The accelerator to use: VFIO_MIG_VM_ACCEL (kvm|tcg) when set; TCG without a
 * usable /dev/kvm; otherwise the remembered verdict of a probe that boots the
 * guest with KVM and runs node in it (a KVM that crawls or faults fails it).
 */
export async function detectAccel(kernel: Series = '6.12'): Promise<Accel> {
  const forced = process.env.VFIO_MIG_VM_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return forced;
  if (!kvmAccessible()) return 'tcg';
  const fp = kvmFingerprint();
  try {
    const memo = JSON.parse(readFileSync(ACCEL_MEMO, 'utf8')) as { fingerprint?: string; accel?: Accel };
    if (memo.fingerprint === fp && (memo.accel === 'kvm' || memo.accel === 'tcg')) return memo.accel;
  } catch {
    /* no verdict yet */
  }
  const started = Date.now();
  const r = await runInGuest({
    kernel,
    accel: 'kvm',
    command: ['node', '-e', 'process.exit(42)'],
    timeoutMs: 30_000,
    mtty: false,
    projectModules: false,
    pciDevice: true,
  });
  const ok = r.status === 42 && Date.now() - started < 25_000;
  const verdict: Accel = ok ? 'kvm' : 'tcg';
  if (!ok && r.phase === 'qemu' && !/kvm/i.test(r.error ?? '')) {
    // QEMU did not even start the guest, for a reason that is not KVM: no verdict
    process.stderr.write(`vm: KVM probe inconclusive (${(r.error ?? '').split('\n').slice(-1)[0]}); using TCG\n`);
    return 'tcg';
  }
  process.stderr.write(
    `vm: KVM probe ${ok ? 'passed' : `failed (${r.error ?? `status ${r.status}`}`.split('\n')[0] + ')'}: using ${verdict.toUpperCase()} (remembered in ${ACCEL_MEMO})\n`,
  );
  mkdirSync(CACHE_DIR, { recursive: true });
  writeFileSync(
    ACCEL_MEMO,
    JSON.stringify({ fingerprint: fp, accel: verdict, probedAt: new Date().toISOString() }) + '\n',
  );
  return verdict;
}

// ------------------------------------------------------------------ the run
function buildCommandScript(opts: GuestOptions, kernel: Series): string {
  const env: Record<string, string> = {
    PATH: [dirname(process.execPath), ...(process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':')]
      .filter((p, i, a) => p && a.indexOf(p) === i)
      .join(':'),
    HOME: '/tmp/home',
    TMPDIR: '/tmp',
    LANG: process.env.LANG ?? 'C.UTF-8',
    TERM: opts.interactive ? (process.env.TERM ?? 'vt100') : 'dumb',
  };
  if (!opts.interactive) env.NO_COLOR = '1';
  if (process.env.CI !== undefined) env.CI = process.env.CI;
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('VFIO_MIG_') && v !== undefined && !k.startsWith('VFIO_MIG_VM_')) env[k] = v;
  }
  Object.assign(env, opts.env ?? {});
  const lines = [
    '# written by test/vm/vm.ts; run by the guest /init in the chroot',
    ...Object.entries(env).map(([k, v]) => `export ${k}=${shQuote(v)}`),
    '# set by /init: VFIO_MIG_GUEST, VFIO_MIG_KERNEL, VFIO_MIG_KVER, VFIO_MIG_OUT, VFIO_MIG_PCI, VFIO_MIG_MTTY, VFIO_MIG_TEST_DRIVER',
    '. /run/vm/env',
    `export VFIO_MIG_CACHE=${shQuote(seriesDir(kernel))}`,
    `cd ${shQuote(PROJECT_ROOT)} || exit ${EXIT_HARNESS}`,
  ];
  if (opts.interactive && process.stdout.isTTY) {
    lines.push(`stty rows ${process.stdout.rows} cols ${process.stdout.columns} 2>/dev/null`);
  }
  lines.push(`exec ${opts.command.map(shQuote).join(' ')}`);
  return lines.join('\n') + '\n';
}

/**
 * Boots a fresh guest, runs the command, powers off. Never leaves QEMU running. A kernel that
 * dies while booting, before /init ran (seen about once in 15 TCG boots: an oops in interrupt
 * context during boot, nothing of ours involved), is booted again, up to twice: the command had
 * not started, so nothing is run twice.
 */
export async function runInGuest(opts: GuestOptions): Promise<GuestResult> {
  for (let attempt = 1; ; attempt++) {
    const result = await runInGuestOnce(opts);
    const diedBooting =
      result.status === null && !result.timedOut && result.phase === 'kernel' && /Kernel panic/.test(result.console);
    if (!diedBooting || attempt === 3) return result;
    process.stderr.write(
      `# vm: the ${result.kernel} kernel died while booting (before /init ran): booting again (attempt ${attempt + 1} of 3)\n`,
    );
  }
}

async function runInGuestOnce(opts: GuestOptions): Promise<GuestResult> {
  const kernel: Series = opts.kernel ?? '6.12';
  if (!SERIES.includes(kernel)) throw new Error(`unknown kernel series ${kernel} (6.12 or 6.1)`);
  if (opts.command.length === 0) throw new Error('runInGuest: empty command');
  if (/\s/.test(PROJECT_ROOT))
    throw new Error(`the project path has whitespace, which the harness does not support: ${PROJECT_ROOT}`);
  if (opts.prepare) prepare(kernel, { quiet: true, projectModules: opts.projectModules });
  const { kver, dir } = checkPrepared(kernel);
  const accel: Accel = opts.accel === 'kvm' || opts.accel === 'tcg' ? opts.accel : await detectAccel(kernel);
  const timeoutMs = opts.timeoutMs ?? 10 * 60_000;
  const started = Date.now();

  sweepStaleRunDirs();
  const runDir = mkdtempSync(join(tmpdir(), 'vfio-mig-vm-'));
  liveRunDirs.add(runDir);
  // /init opens these host paths before it chroots: a symlink on the way (e.g. .cache -> a shared
  // cache elsewhere) points into the initramfs there, so it gets the resolved paths
  const outDir = resolve(opts.outDir ?? join(runDir, 'out'));
  mkdirSync(outDir, { recursive: true });
  const guestOutDir = realpathSync(outDir);
  const modules =
    opts.projectModules === false
      ? []
      : (existsSync(join(dir, 'project-modules.list')) ? readFileSync(join(dir, 'project-modules.list'), 'utf8') : '')
          .split('\n')
          .filter((l) => l.trim() !== '' && existsSync(l))
          .map((l) => realpathSync(l));
  const mtty = opts.mtty !== false && existsSync(join(dir, 'mtty.ko')) ? realpathSync(join(dir, 'mtty.ko')) : '';
  // Paths under /tmp or /run that must stay visible once the guest mounts tmpfs there.
  const keep = [PROJECT_ROOT, dirname(process.execPath)].filter((p) => /^\/(tmp|run)(\/|$)/.test(p));
  const guestEnv = [
    `VM_OUT=${shQuote(guestOutDir)}`,
    `VM_MTTY=${shQuote(mtty)}`,
    `VM_MODULES=${shQuote(modules.join(' '))}`,
    `VM_PCI_ID=${opts.pciDevice === false ? "''" : PCI_ID}`,
    `VM_INTERACTIVE=${opts.interactive ? 1 : 0}`,
    `VM_KEEP=${shQuote(keep.join(' '))}`,
    // seconds of guest uptime after which /init reports what every process is doing
    `VM_DUMP_AT=${timeoutMs >= 20_000 ? Math.floor(timeoutMs / 1000) - dumpMargin(timeoutMs) : 0}`,
  ];
  writeFileSync(join(runDir, 'guest.env'), guestEnv.join('\n') + '\n');
  writeFileSync(join(runDir, 'cmd.sh'), buildCommandScript(opts, kernel));
  const ctlPath = join(runDir, 'console.sock');
  if (/\s/.test(runDir)) throw new Error(`the run directory ${runDir} has whitespace (TMPDIR?)`);

  const append = [
    'console=ttyS1',
    opts.verboseKernel ? 'loglevel=7' : 'quiet',
    'panic=-1',
    'oops=panic',
    'intel_iommu=on',
    'iommu=pt',
    `vmrun=${realpathSync(runDir)}`,
    ...(process.env.VFIO_MIG_VM_APPEND ?? '').split(/\s+/).filter(Boolean),
  ];
  const qemuArgs = [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-machine',
    accel === 'kvm' ? 'q35,kernel-irqchip=split' : 'q35',
    '-accel',
    accel,
    '-cpu',
    accel === 'kvm' ? (process.env.VFIO_MIG_VM_CPU ?? 'host') : (process.env.VFIO_MIG_VM_CPU ?? 'max'),
    '-m',
    String(opts.memoryMiB ?? 2048),
    '-smp',
    String(opts.cpus ?? 2),
    '-kernel',
    join(dir, 'vmlinux'),
    '-initrd',
    join(dir, 'initramfs.cpio'),
    '-append',
    append.join(' '),
    // the IOMMU first, so every PCI device sits behind it
    '-device',
    'intel-iommu,intremap=on',
    '-netdev',
    'hubport,id=n0,hubid=0',
    '-device',
    'e1000e,netdev=n0',
    '-virtfs',
    'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs',
    `local,path=${qemuEscape(guestOutDir)},mount_tag=vmout,security_model=none,multidevs=remap`,
    '-chardev',
    'stdio,id=con0,signal=off',
    '-serial',
    'chardev:con0',
    // QEMU connects to our Unix socket before the guest starts: nothing is lost
    '-chardev',
    `socket,id=ctl,path=${qemuEscape(ctlPath)},server=off`,
    '-serial',
    'chardev:ctl',
    '-device',
    'isa-debug-exit,iobase=0xf4,iosize=0x04',
  ];
  const argv = hasSetpriv()
    ? ['setpriv', '--pdeathsig', 'SIGKILL', '--', 'qemu-system-x86_64', ...qemuArgs]
    : ['qemu-system-x86_64', ...qemuArgs];

  let output = '';
  let consoleLog = '';
  let qemuStderr = '';
  let phase = 'qemu';
  let bootMs: number | null = null;
  let guestStatus: number | null = null;
  let guestError: string | undefined;
  let pci: string | undefined;
  const loaded: string[] = [];
  let timedOut = false;
  let aborted = false;
  const MAX_KEEP = 64 * 1024 * 1024;

  const ctlServer = createServer();
  let ctlSocket: Socket | undefined;
  await new Promise<void>((res, rej) => {
    ctlServer.once('error', rej);
    ctlServer.listen(ctlPath, () => res());
  });
  ctlServer.on('connection', (sock) => {
    if (ctlSocket) {
      sock.destroy();
      return;
    }
    ctlSocket = sock;
    sock.setEncoding('utf8');
    sock.on('data', onCtlData);
    sock.on('error', () => undefined);
  });

  const child = spawn(argv[0], argv.slice(1), {
    stdio: [opts.interactive ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  installHandlers();

  if (opts.interactive && child.stdin) {
    if (process.stdin.isTTY) {
      process.stdin.setRawMode(true);
      rawTty = true;
    }
    process.stdin.on('data', (d: Buffer) => child.stdin?.write(d));
    process.stdin.resume();
    child.stdin.on('error', () => undefined);
  }

  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    if (phase === 'qemu' || phase === 'kernel') phase = 'kernel';
    const text = opts.interactive ? chunk : stripCR(chunk);
    output += text;
    if (output.length > MAX_KEEP) output = output.slice(-MAX_KEEP / 2);
    opts.echo?.write(text);
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    qemuStderr += chunk;
  });
  // known and harmless: the e1000e's network is deliberately not connected
  const qemuSaid = (): string =>
    qemuStderr
      .split('\n')
      .filter((l) => l.trim() && !/warning: hub \d+ is not connected to host network/.test(l))
      .join('\n');
  let ctlPartial = '';
  function onCtlData(chunk: string): void {
    if (phase === 'qemu') phase = 'kernel';
    const text = stripCR(chunk);
    consoleLog += text;
    if (consoleLog.length > MAX_KEEP) consoleLog = consoleLog.slice(-MAX_KEEP / 2);
    opts.consoleEcho?.write(text);
    ctlPartial += text;
    const lines = ctlPartial.split('\n');
    ctlPartial = lines.pop() ?? '';
    for (const line of lines) handleCtl(line);
  }
  function handleCtl(line: string): void {
    const m = /@@vm (\w+) ?(.*)$/.exec(line);
    if (!m) return;
    const [, kind, rest] = m;
    if (kind === 'phase') {
      phase = rest.trim();
      if (phase === 'command') bootMs = Date.now() - started;
    } else if (kind === 'exit') {
      guestStatus = Number.parseInt(rest, 10);
    } else if (kind === 'error') {
      guestError = rest;
    } else if (kind === 'info') {
      const [key, value] = rest.split(' ');
      if (key === 'pci') pci = value;
      if (key === 'loaded') loaded.push(value);
    }
  }

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; spawnError?: Error }>((res) => {
    child.on('error', (err) => res({ code: null, signal: null, spawnError: err }));
    child.on('close', (code, signal) => res({ code, signal }));
  });

  let killTimer: NodeJS.Timeout | undefined;
  const kill = (): void => {
    child.kill('SIGTERM');
    killTimer = setTimeout(() => child.kill('SIGKILL'), 2000);
  };
  const timer =
    timeoutMs > 0
      ? setTimeout(() => {
          timedOut = true;
          kill();
        }, timeoutMs)
      : undefined;
  const onAbort = (): void => {
    aborted = true;
    kill();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();

  const { code, signal, spawnError } = await exited;
  // the console socket may still hold the last bytes
  if (ctlSocket && !ctlSocket.readableEnded) {
    const sock = ctlSocket;
    await new Promise<void>((res) => {
      const t = setTimeout(res, 500);
      sock.once('end', () => {
        clearTimeout(t);
        res();
      });
      sock.once('close', () => {
        clearTimeout(t);
        res();
      });
    });
  }
  ctlSocket?.destroy();
  ctlServer.close();
  if (timer) clearTimeout(timer);
  if (killTimer) clearTimeout(killTimer);
  opts.signal?.removeEventListener('abort', onAbort);
  live.delete(child);
  if (live.size === 0) uninstallHandlers();
  if (opts.interactive) {
    process.stdin.pause();
    process.stdin.removeAllListeners('data');
    restoreTty();
  }
  if (ctlPartial) handleCtl(ctlPartial);

  let status: number | null = null;
  let error: string | undefined;
  const hangReport = (): string => {
    const begin = consoleLog.lastIndexOf('@@vm hang-report begin');
    if (begin < 0) return '';
    const report = consoleLog.slice(begin).split('\n');
    return `what the guest was doing ${Math.floor(timeoutMs / 1000) - dumpMargin(timeoutMs)} s into the run (/init's hang report):\n${indent(report.slice(0, 250).join('\n'))}`;
  };
  const where = (): string =>
    [
      `phase reached: ${phase} (${PHASES[phase] ?? phase})`,
      consoleLog.trim()
        ? `last console lines (kernel + /init):\n${indent(lastLines(consoleLog.replace(/@@vm hang-report begin[\s\S]*$/, ''), 15))}`
        : 'no console output at all',
      output.trim() ? `last output lines:\n${indent(lastLines(output, 15))}` : 'no output from the command',
      qemuSaid() ? `QEMU said:\n${indent(lastLines(qemuSaid(), 10))}` : '',
      timedOut ? hangReport() : '',
    ]
      .filter(Boolean)
      .join('\n');
  const fromQemu = statusFromQemuExit(code);
  if (spawnError) {
    error = `could not start QEMU (${argv[0]}): ${spawnError.message}`;
  } else if (timedOut) {
    error = `the ${kernel} guest timed out after ${Math.round(timeoutMs / 1000)} s and was killed\n${where()}`;
  } else if (aborted) {
    error = `the ${kernel} guest was aborted\n${where()}`;
  } else if (guestError !== undefined) {
    error = `the ${kernel} guest's /init failed: ${guestError}\n${where()}`;
  } else if (guestStatus !== null) {
    status = guestStatus;
    if (fromQemu !== null && fromQemu !== (guestStatus & 0x7f)) {
      error = `guest reported status ${guestStatus} but QEMU exited with ${code}`;
    }
  } else if (fromQemu !== null && phase === 'command') {
    // the status line was lost, the debug-exit port still carries 7 bits
    status = fromQemu;
  } else {
    const how = signal
      ? `was killed by ${signal}`
      : code === 0
        ? 'powered off without handing back a status (kernel panic?)'
        : `exited with code ${code}`;
    error = `QEMU ${how}\n${where()}`;
  }

  // the run directory (and the default results share inside it) goes away
  rmSync(runDir, { recursive: true, force: true });
  liveRunDirs.delete(runDir);

  return {
    status,
    error,
    timedOut,
    output,
    console: consoleLog,
    phase,
    kernel,
    kver,
    accel,
    durationMs: Date.now() - started,
    bootMs,
    pci,
    loadedModules: loaded,
    outDir,
    qemuPid: child.pid,
  };
}

// ------------------------------------------------------------------ CLI
const USAGE = `usage: npm run vm -- [options] [--] <command ...>
       node dist/test/vm/vm.js [options] [--] <command ...>

Boots a fresh guest and runs the command at the project's path; exits with its status
(${EXIT_TIMEOUT} when the guest timed out, ${EXIT_HARNESS} when the harness failed).
Without a command, and with a terminal, starts an interactive shell.

options:
  --kernel 6.12|6.1     guest kernel series (default 6.12)
  --timeout SEC         kill the guest after SEC seconds (default 600; 0 = never;
                        an interactive session has none unless given)
  --out DIR             host directory the guest can write to (VFIO_MIG_OUT, same path)
  --env KEY=VALUE       extra environment for the command (repeatable)
  --mem MIB, --smp N    guest memory (2048) and vCPUs (2)
  --accel auto|kvm|tcg  accelerator (auto: KVM only when a probe proved it works)
  -i, --interactive     forward stdin to the guest's terminal (default when stdin and stdout are TTYs)
  --batch               never interactive
  --no-mtty, --no-project-modules, --no-pci
                        do not load mtty / the project's modules, do not bind the e1000e
  --no-prepare          do not run prepare.sh first
  --verbose             show the kernel console and /init's log on stderr
  -h, --help            this text`;

interface CliOptions extends GuestOptions {
  noPrepare: boolean;
  verbose: boolean;
}

export function parseArgs(args: readonly string[]): CliOptions | 'help' {
  // options come first ("--opt=value" or "--opt value"); the command starts at the first non-option
  const o: CliOptions = { command: [], noPrepare: false, verbose: false };
  let interactive: boolean | undefined;
  let timeout: number | undefined;
  const env: Record<string, string> = {};
  let i = 0;
  let inline: string | undefined;
  const value = (name: string): string => {
    const v = inline ?? args[++i];
    inline = undefined;
    if (v === undefined) throw new Error(`${name} needs a value`);
    return v;
  };
  for (; i < args.length; i++) {
    let a = args[i];
    inline = undefined;
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    if (eq > 0) {
      inline = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-') || a === '-') break;
    switch (a) {
      case '-h':
      case '--help':
        return 'help';
      case '--kernel': {
        const k = value(a);
        if (k !== '6.12' && k !== '6.1') throw new Error(`--kernel: 6.12 or 6.1, not ${k}`);
        o.kernel = k;
        break;
      }
      case '--timeout': {
        const t = Number(value(a));
        if (!Number.isFinite(t) || t < 0) throw new Error('--timeout: seconds, 0 for none');
        timeout = t;
        break;
      }
      case '--out':
        o.outDir = resolve(value(a));
        break;
      case '--env': {
        const kv = value(a);
        const k = kv.indexOf('=');
        if (k <= 0) throw new Error(`--env: KEY=VALUE, not ${kv}`);
        env[kv.slice(0, k)] = kv.slice(k + 1);
        break;
      }
      case '--mem':
        o.memoryMiB = Number(value(a));
        if (!Number.isInteger(o.memoryMiB) || o.memoryMiB < 256) throw new Error('--mem: MiB, at least 256');
        break;
      case '--smp':
        o.cpus = Number(value(a));
        if (!Number.isInteger(o.cpus) || o.cpus < 1) throw new Error('--smp: a positive integer');
        break;
      case '--accel': {
        const v = value(a);
        if (v !== 'auto' && v !== 'kvm' && v !== 'tcg') throw new Error('--accel: auto, kvm or tcg');
        o.accel = v;
        break;
      }
      case '-i':
      case '--interactive':
        interactive = true;
        break;
      case '--batch':
        interactive = false;
        break;
      case '--no-mtty':
        o.mtty = false;
        break;
      case '--no-project-modules':
        o.projectModules = false;
        break;
      case '--no-pci':
        o.pciDevice = false;
        break;
      case '--no-prepare':
        o.noPrepare = true;
        break;
      case '--verbose':
        o.verbose = true;
        break;
      default:
        throw new Error(`unknown option ${a}`);
    }
    if (inline !== undefined) throw new Error(`${a} takes no value`);
  }
  o.command = args.slice(i);
  const tty = Boolean(process.stdin.isTTY && process.stdout.isTTY);
  o.interactive = interactive ?? tty;
  if (o.command.length === 0) {
    if (!o.interactive) throw new Error('no command given (and no terminal for an interactive shell)');
    o.command = ['/bin/sh', '-l'];
  }
  o.timeoutMs = timeout !== undefined ? timeout * 1000 : o.interactive ? 0 : 600_000;
  if (Object.keys(env).length) o.env = env;
  return o;
}

async function main(): Promise<number> {
  let o: CliOptions | 'help';
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`vm: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (o === 'help') {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const kernel = o.kernel ?? '6.12';
  try {
    if (!o.noPrepare) prepare(kernel, { quiet: true, projectModules: o.projectModules });
    const r = await runInGuest({
      ...o,
      kernel,
      echo: process.stdout,
      consoleEcho: o.verbose ? process.stderr : null,
      verboseKernel: o.verbose,
    });
    if (o.verbose || r.error) {
      process.stderr.write(
        `vm: ${r.kernel} (${r.kver}, ${r.accel.toUpperCase()}): boot ${r.bootMs === null ? '-' : (r.bootMs / 1000).toFixed(1) + ' s'}, total ${(r.durationMs / 1000).toFixed(1)} s\n`,
      );
    }
    if (r.error) process.stderr.write(`vm: ${r.error}\n`);
    if (r.status !== null) return r.status;
    return r.timedOut ? EXIT_TIMEOUT : EXIT_HARNESS;
  } catch (err) {
    process.stderr.write(`vm: ${(err as Error).message}\n`);
    return EXIT_HARNESS;
  }
}

if (require.main === module) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`vm: ${String(err)}\n`);
      process.exitCode = EXIT_HARNESS;
    },
  );
}
