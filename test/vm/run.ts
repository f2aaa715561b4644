// One guest run, start to end: prepare the run directory, pick the accelerator, build QEMU's
// arguments, supervise QEMU, read the console protocol, and say what happened.
import { spawnSync } from 'node:child_process';
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import {
  CACHE_DIR,
  checkPrepared,
  prepare,
  PROJECT_ROOT,
  SERIES,
  seriesDir,
  type Accel,
  type GuestOptions,
  type GuestResult,
  type Series,
} from './config';
import { GuestConsole, verdict } from './console';
import { commandEnv, commandScript, guestEnvFile, qemuArgs, qemuArgv } from './qemu-args';
import { hasSetpriv, holdRunDir, releaseRunDir, RUN_DIR_PREFIX, superviseQemu, sweepStaleRunDirs } from './supervise';

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
  const runDir = mkdtempSync(join(tmpdir(), RUN_DIR_PREFIX));
  holdRunDir(runDir);
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
  writeFileSync(
    join(runDir, 'guest.env'),
    guestEnvFile({
      outDir: guestOutDir,
      mtty,
      modules,
      pciDevice: opts.pciDevice !== false,
      eduDevices: opts.eduDevices !== false,
      interactive: Boolean(opts.interactive),
      // paths under /tmp or /run that must stay visible once the guest mounts tmpfs there
      keep: [PROJECT_ROOT, dirname(process.execPath)].filter((p) => /^\/(tmp|run)(\/|$)/.test(p)),
      timeoutMs,
    }),
  );
  writeFileSync(
    join(runDir, 'cmd.sh'),
    commandScript({
      command: opts.command,
      env: commandEnv(opts, process.env, process.execPath),
      cacheDir: seriesDir(kernel),
      projectRoot: PROJECT_ROOT,
      tty:
        opts.interactive && process.stdout.isTTY
          ? { rows: process.stdout.rows, columns: process.stdout.columns }
          : undefined,
    }),
  );
  const ctlPath = join(runDir, 'console.sock');
  if (/\s/.test(runDir)) throw new Error(`the run directory ${runDir} has whitespace (TMPDIR?)`);

  const argv = qemuArgv(
    qemuArgs({
      accel,
      kernelDir: dir,
      memoryMiB: opts.memoryMiB ?? 2048,
      cpus: opts.cpus ?? 2,
      verboseKernel: Boolean(opts.verboseKernel),
      runDir: realpathSync(runDir),
      outDir: guestOutDir,
      ctlPath,
      extraAppend: process.env.VFIO_MIG_VM_APPEND,
      cpuModel: process.env.VFIO_MIG_VM_CPU,
      link: opts.link,
      eduDevices: opts.eduDevices !== false,
    }),
    hasSetpriv(),
  );

  const con = new GuestConsole(started, opts);
  const end = await superviseQemu(argv, {
    ctlPath,
    interactive: opts.interactive,
    timeoutMs,
    signal: opts.signal,
    onOutput: (chunk) => con.onOutput(chunk),
    onConsole: (chunk) => con.onConsole(chunk),
  });
  con.end();
  const { status, error } = verdict(con, end, { kernel, timeoutMs, qemu: argv[0] });

  // the run directory (and the default results share inside it) goes away
  releaseRunDir(runDir);

  return {
    status,
    error,
    timedOut: end.timedOut,
    output: con.output,
    console: con.log,
    phase: con.phase,
    kernel,
    kver,
    accel,
    durationMs: Date.now() - started,
    bootMs: con.bootMs,
    pci: con.pci,
    loadedModules: con.loaded,
    outDir,
    qemuPid: end.pid,
  };
}
