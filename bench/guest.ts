// The benchmark inside the VM guest: our client and the C reference client on the same test-driver devices, plus memcpy.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { qemuVersion, quit, startQemu, waitMigration } from '../test/integration/qemu-util';
import { binArgs, binEnv, VFIO_MIG_BIN } from '../test/support/cli-child';
import { TestDevice, type Kind } from '../test/support/test-driver';
import { allocIoBuffer } from '../lib/buffers';
import { crc32 } from '../lib/migration/stream/crc';

const REF = process.env.BENCH_REF ?? '';
const SIZES_MIB = (process.env.BENCH_SIZES ?? '1,64,256').split(',').map(Number);
const KINDS = (process.env.BENCH_KINDS ?? 'v1,v1-trapped,v2').split(',');
const CHUNK = Number(process.env.BENCH_CHUNK ?? 1 << 20);
const ONE = join(__dirname, 'one.js');
const FLOOR = join(__dirname, 'floor.js');
const CALLS = join(__dirname, 'calls.js');
const OURS_FILE = '/tmp/bench-ours.vfmig';
const REF_FILE = '/tmp/bench-ref.bin';
const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 3));
// Runs of our engine per process: the first is the cold figure, the others show it warm.
const ENGINE_RUNS = String(Math.max(1, Number(process.env.BENCH_ENGINE_RUNS ?? 3)));
// The bin as a user runs it, through its own first lines (cli/node-flags.ts), which start the
// first node on PATH: this one, put first below.
const CLI = VFIO_MIG_BIN;
process.env.PATH = binEnv().PATH;

/** A comma-separated device list, as migrate, floor.ts and the C reference take it. */
function ids(list: TestDevice[]): string {
  return list.map((d) => d.uuid).join(',');
}

/** A migration leaves its sources stopped (committed, or in STOP_COPY): the next run starts from RUNNING. */
function backToRunning(sources: TestDevice[]): void {
  for (const d of sources) execFileSync(CLI, ['state', d.uuid, 'RUNNING']);
}

/** Wall time of a whole command as a user runs it: from spawn to exit, process start included. */
function timed(cmd: string, args: string[]): number {
  const start = process.hrtime.bigint();
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/** Whole commands, cold: ours (the CLI) and the C reference doing the same work. */
export interface Whole {
  oursSaveMs: number;
  oursLoadMs: number;
  oursPipeMs: number;
  refSaveMs: number;
  refLoadMs: number;
  refPipeMs: number;
}

function wholeCommands(proto: string, src: string, dst: string): Whole {
  const oursSaveMs = timed(CLI, ['save', src, '-o', OURS_FILE, '--quiet']);
  const oursLoadMs = timed(CLI, ['load', dst, '-i', OURS_FILE, '--quiet']);
  rmSync(OURS_FILE, { force: true });
  const pipe = `"${CLI}" save ${src} -o - --quiet | "${CLI}" load ${dst} -i - --quiet`;
  const oursPipeMs = timed('bash', ['-o', 'pipefail', '-c', pipe]);
  const refSaveMs = timed(REF, [`${proto}-save`, src, REF_FILE]);
  execFileSync(CLI, ['state', src, 'RUNNING']);
  const refLoadMs = timed(REF, [`${proto}-load`, dst, REF_FILE]);
  rmSync(REF_FILE, { force: true });
  const refPipeMs = timed(REF, [`${proto}-pipe`, src, dst]);
  execFileSync(CLI, ['state', src, 'RUNNING']);
  return { oursSaveMs, oursLoadMs, oursPipeMs, refSaveMs, refLoadMs, refPipeMs };
}

/** The workload of a live migration's sources in the four-device rows: bytes each dirties per second. */
const LIVE_DIRTY_RATE = 4 << 20;

/**
 * The slow-device rows: every arc of every device takes this long in the driver (arc_delay_us),
 * as a real device's firmware takes time to quiesce, save and load its state; the test driver's
 * own arcs take microseconds.
 */
const SLOW_ARC_US = 5000;

/** `vfio-mig migrate A B` as a user runs it (cold, --json report on stdout) and its wall time. */
function migrateCold(
  sources: string[],
  destinations: string[],
  args: string[] = [],
): { ms: number; cpuMs: number; report: MigrateReport } {
  // GNU time reports the command's CPU time (user + system: the driver's copies run in our
  // syscalls), which says how many vCPUs it kept busy.
  const cpuFile = '/tmp/bench-migrate-cpu';
  const timeCmd = existsSync('/usr/bin/time') ? ['/usr/bin/time', '-f', '%U %S', '-o', cpuFile] : [];
  const argv = [...timeCmd, CLI, 'migrate', sources.join(','), destinations.join(','), '--quiet', '--json', ...args];
  const start = process.hrtime.bigint();
  const out = execFileSync(argv[0]!, argv.slice(1), {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 22,
  });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  let cpuMs = NaN;
  if (timeCmd.length) {
    const [user, system] = readFileSync(cpuFile, 'utf8').trim().split(/\s+/).map(Number);
    cpuMs = (user! + system!) * 1000;
  }
  return { ms, cpuMs, report: JSON.parse(out) as MigrateReport };
}

export interface MigrateReport {
  downtimeMs: number;
  /** The command's JS thread on a CPU during the downtime (absent before it was reported). */
  downtimeCpuMs?: number;
  elapsedMs: number;
  phases: Record<string, number>;
}

/** One migrate row: ours cold against the C reference's device-to-device pipe, both every run. */
export interface MigrateRow {
  kind: string;
  /**
   * 'live': migrate's default (pre-copy while the sources run a workload that dirties them);
   * 'stop-copy': --no-precopy, idle sources, the whole state moved while stopped. Absent in runs
   * saved before the two were told apart, which were all 'stop-copy'.
   */
  mode?: 'live' | 'stop-copy';
  /** Bytes per second each source dirtied while it ran (four-device rows). */
  dirtyRate?: number;
  /** Microseconds each arc of each device took in the driver (the slow-device rows; else 0 or absent). */
  arcDelayUs?: number;
  mib: number;
  devices: number;
  oursMs: number[];
  refMs: number[];
  /**
   * v2 rows: the C reference migrating the same pair live in one process (`ref v2-live`), every
   * run; absent for v1 and in runs saved before it existed.
   */
  refLiveMs?: number[];
  downtimeMs: number[];
  /** The command's JS thread on a CPU during each run's downtime (absent in older saved runs). */
  downtimeCpuMs?: number[];
  /** CPU time (user + system) of each run's whole command. */
  cpuMs: number[];
  phases: Record<string, number>[];
  exact: boolean;
}

/**
 * migrate, whole command: for each type and size, one device against the C reference moving the
 * same state device to device; then four v2 devices of 64 MiB in one command, whose downtime is
 * compared with one device's (the stop-copy data of the four moves concurrently).
 */
async function migrateRows(): Promise<void> {
  for (const mib of SIZES_MIB.filter((m) => m >= 64)) {
    for (const kind of KINDS) {
      const source = new TestDevice(kind as Kind, { chunkSize: CHUNK, stateSize: mib << 20 });
      const dest = new TestDevice(kind as Kind, { chunkSize: CHUNK, stateSize: mib << 20 });
      try {
        source.set('mutate', '0x5eed');
        const ref = `${kind === 'v2' ? 'v2' : 'v1'}-pipe`;
        const refLive = kind === 'v2' ? 'v2-live' : undefined;
        console.log(`@@migrate ${JSON.stringify(migrateRuns(kind, mib, [source], [dest], { ref, refLive }))}`);
      } finally {
        source.remove();
        dest.remove();
      }
    }
  }
  if (!KINDS.includes('v2') || !SIZES_MIB.includes(64)) return;
  // Four devices in one command against one device, downtime side by side in the same run: live
  // (the default pre-copy, each source running a workload that dirties it) and stop-copy only.
  const make = () => new TestDevice('v2', { chunkSize: CHUNK, stateSize: 64 << 20 });
  const sources = [make(), make(), make(), make()];
  const dests = [make(), make(), make(), make()];
  try {
    sources.forEach((d, i) => d.set('mutate', String(0x100 + i)));
    for (const mode of ['live', 'stop-copy'] as const) {
      // A source dirties itself only while RUNNING: once committed (stopped) it holds still.
      const dirtyRate = mode === 'live' ? LIVE_DIRTY_RATE : 0;
      for (const d of sources) d.set('dirty_rate', String(dirtyRate));
      const args = mode === 'live' ? [] : ['--no-precopy'];
      const rows = oneAndFourInTurn(sources, dests, args);
      for (const count of [1, 4]) {
        console.log(`@@migrate-n ${JSON.stringify({ ...rows.get(count)!, mode, dirtyRate })}`);
        // The same devices' downtime calls with no protocol (floor.ts, and the C reference in its
        // two ways), for the live rows.
        if (mode === 'live') {
          console.log(`@@floor ${JSON.stringify(floorRuns(sources.slice(0, count), dests.slice(0, count)))}`);
          for (const way of ['v2-live', 'v2-live-threads'] as const)
            console.log(
              `@@ref-live ${JSON.stringify(refLiveRuns(way, sources.slice(0, count), dests.slice(0, count)))}`,
            );
          console.log(`@@calls ${JSON.stringify(callsRuns(sources.slice(0, count), dests.slice(0, count)))}`);
        }
      }
    }
    slowDeviceRows(sources, dests);
  } finally {
    for (const d of [...sources, ...dests]) d.remove();
  }
}

/**
 * The live rows again with devices whose every arc takes SLOW_ARC_US in the driver: ours, and the
 * C client in its two ways. A downtime's arcs of several devices that run at once cost the
 * slowest device's time; arcs taken one device after another cost the sum.
 */
function slowDeviceRows(sources: TestDevice[], dests: TestDevice[]): void {
  const all = [...sources, ...dests];
  for (const d of sources) d.set('dirty_rate', String(LIVE_DIRTY_RATE));
  for (const d of all) d.set('arc_delay_us', SLOW_ARC_US);
  try {
    const rows = oneAndFourInTurn(sources, dests);
    for (const count of [1, 4]) {
      const row = { ...rows.get(count)!, mode: 'live', dirtyRate: LIVE_DIRTY_RATE, arcDelayUs: SLOW_ARC_US };
      console.log(`@@migrate-n ${JSON.stringify(row)}`);
      for (const way of ['v2-live', 'v2-live-threads'] as const) {
        const ref = refLiveRuns(way, sources.slice(0, count), dests.slice(0, count));
        console.log(`@@ref-live ${JSON.stringify({ ...ref, arcDelayUs: SLOW_ARC_US })}`);
      }
    }
  } finally {
    for (const d of all) d.set('arc_delay_us', 0);
  }
}

/** Runs of the four-device rows (and their one-device rows), one count and the other in turn. */
const MULTI_REPEAT = Math.max(7, REPEAT);

/**
 * MULTI_REPEAT cold migrations of the first device pair and of the first four, taking turns, by
 * device count. One device and four take turns so that a slow spell of the emulator falls on
 * both: with each count's three runs in one block, the ratio of their medians went from 1.53x to
 * 2.00x between two runs of unchanged code (December 3, 22:54 and 23:52).
 */
function oneAndFourInTurn(sources: TestDevice[], dests: TestDevice[], args: string[] = []): Map<number, MigrateRow> {
  const rows = new Map<number, MigrateRow>();
  for (let rep = 0; rep < MULTI_REPEAT; rep++)
    for (const count of [1, 4]) {
      const run = migrateRuns('v2', 64, sources.slice(0, count), dests.slice(0, count), { args, repeat: 1 });
      const row = rows.get(count);
      rows.set(count, row ? joinRuns(row, run) : run);
    }
  return rows;
}

interface MigrateRunsOptions {
  /** A C reference mode moving the first pair device to device after each of our runs. */
  ref?: string;
  /** A C reference live mode (`v2-live`) for the first pair, after that. */
  refLive?: string;
  /** migrate's own arguments. */
  args?: string[];
  /** Runs (default REPEAT). */
  repeat?: number;
}

/**
 * Cold migrations of `sources` to `dests` (paired in order), each followed by the C reference
 * modes `options` names.
 */
function migrateRuns(
  kind: string,
  mib: number,
  sources: TestDevice[],
  dests: TestDevice[],
  { ref, refLive, args = [], repeat = REPEAT }: MigrateRunsOptions = {},
): MigrateRow {
  const row: MigrateRow = {
    kind,
    mib,
    devices: sources.length,
    oursMs: [],
    refMs: [],
    ...(refLive ? { refLiveMs: [] } : {}),
    downtimeMs: [],
    downtimeCpuMs: [],
    cpuMs: [],
    phases: [],
    exact: true,
  };
  for (let rep = 0; rep < repeat; rep++) {
    const r = migrateCold(
      sources.map((d) => d.uuid),
      dests.map((d) => d.uuid),
      args,
    );
    row.exact &&= sources.every((d, i) => d.checksum() === dests[i]!.checksum());
    row.oursMs.push(r.ms);
    row.downtimeMs.push(r.report.downtimeMs);
    row.downtimeCpuMs!.push(r.report.downtimeCpuMs ?? NaN);
    row.cpuMs.push(r.cpuMs);
    row.phases.push(r.report.phases);
    backToRunning(sources);
    if (ref) {
      row.refMs.push(timed(REF, [ref, sources[0]!.uuid, dests[0]!.uuid]));
      backToRunning(sources);
    }
    if (refLive) {
      const out = refLiveRun(refLive, sources.slice(0, 1), dests.slice(0, 1));
      row.refLiveMs!.push(out.ms);
      backToRunning(sources);
    }
  }
  return row;
}

/** Two rows of the same migration, their runs in one. */
function joinRuns(a: MigrateRow, b: MigrateRow): MigrateRow {
  return {
    ...a,
    oursMs: [...a.oursMs, ...b.oursMs],
    refMs: [...a.refMs, ...b.refMs],
    downtimeMs: [...a.downtimeMs, ...b.downtimeMs],
    downtimeCpuMs: [...(a.downtimeCpuMs ?? []), ...(b.downtimeCpuMs ?? [])],
    cpuMs: [...a.cpuMs, ...b.cpuMs],
    phases: [...a.phases, ...b.phases],
    exact: a.exact && b.exact,
  };
}

/** What one `ref v2-live` run printed, and its whole time measured here (spawn to exit). */
interface RefLiveOut {
  downtimeMs: number;
  ms: number;
}

function refLiveRun(way: string, sources: TestDevice[], dests: TestDevice[]): RefLiveOut {
  const start = process.hrtime.bigint();
  const out = execFileSync(REF, [way, ids(sources), ids(dests)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  const r = JSON.parse(out.trim()) as { downtimeMs: number; exact: boolean };
  // A baseline that loses state would flatter itself: the run stops here.
  if (!r.exact) throw new Error(`ref ${way}: a destination's state differs from its source's`);
  return { downtimeMs: r.downtimeMs, ms };
}

/** The C reference's live migration of some pairs (ref v2-live, one way), every run. */
export interface RefLiveRow {
  way: 'v2-live' | 'v2-live-threads';
  devices: number;
  downtimeMs: number[];
  /** Microseconds each arc of each device took in the driver (the slow-device rows; else 0 or absent). */
  arcDelayUs?: number;
}

/**
 * Cold runs (at least five: each takes a second or two) of the C reference migrating these pairs
 * live device to device in one process: the same pre-copy and the same downtime device calls as
 * floor.ts, in C, either one thread doing the pairs in turn at each step or a thread per pair.
 * What a client with no protocol and no runtime makes of several devices' downtime in this guest.
 */
function refLiveRuns(way: RefLiveRow['way'], sources: TestDevice[], dests: TestDevice[]): RefLiveRow {
  const row: RefLiveRow = { way, devices: sources.length, downtimeMs: [] };
  for (let rep = 0; rep < Math.max(5, REPEAT); rep++) {
    row.downtimeMs.push(refLiveRun(way, sources, dests).downtimeMs);
    backToRunning(sources);
  }
  return row;
}

/** What floor.ts measured for one device count, every run. */
export interface FloorRow {
  devices: number;
  downtimeMs: number[];
  cpuMs: number[];
  exact: boolean;
}

/**
 * Cold runs of floor.ts (at least five: a run takes seconds): a live downtime's device calls on
 * these pairs, with no protocol. In V8's interpreter only (--no-opt --no-sparkplug): the
 * script's own few lines run at their slowest but never get compiled, and compiling them (their
 * tier-up falls at the end of a one-device pre-copy) landed in the downtime of some runs (one
 * device 5 ms in the interpreter; 5-41 ms with either compiler on, in the test guest).
 */
function floorRuns(sources: TestDevice[], dests: TestDevice[]): FloorRow {
  const row: FloorRow = { devices: sources.length, downtimeMs: [], cpuMs: [], exact: true };
  for (let rep = 0; rep < Math.max(5, REPEAT); rep++) {
    const out = execFileSync(process.execPath, ['--no-opt', '--no-sparkplug', FLOOR, ids(sources), ids(dests)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const r = JSON.parse(out.trim().split('\n').pop()!) as { downtimeMs: number; cpuMs?: number; exact: boolean };
    row.downtimeMs.push(r.downtimeMs);
    row.cpuMs.push(r.cpuMs ?? NaN);
    row.exact &&= r.exact;
    backToRunning(sources);
  }
  return row;
}

/** JS function entries inside a cold migrate's downtime (calls.ts), every run. */
export interface CallsRow {
  devices: number;
  calls: number[];
}

/**
 * Cold migrates of these pairs with calls.ts preloaded, three times (the count barely varies:
 * only with how the reads and messages happen to interleave).
 */
function callsRuns(sources: TestDevice[], dests: TestDevice[]): CallsRow {
  const row: CallsRow = { devices: sources.length, calls: [] };
  const out = '/tmp/bench-calls.json';
  for (let rep = 0; rep < 3; rep++) {
    rmSync(out, { force: true });
    execFileSync(
      process.execPath,
      ['-r', CALLS, ...binArgs('migrate', ids(sources), ids(dests), '--quiet', '--json')],
      {
        stdio: ['ignore', 'ignore', 'inherit'],
        env: { ...process.env, VFIO_MIG_CALLS_OUT: out },
      },
    );
    const r = JSON.parse(readFileSync(out, 'utf8')) as { calls: number; marks: number };
    // Four reads of the clock frame the downtime (migrate's two, receive's two); else no count.
    if (r.marks === 4) row.calls.push(r.calls);
    else
      console.error(
        `bench: calls.ts read the clock ${r.marks} times in a migrate of ${row.devices} (4 frame the downtime): no count`,
      );
    backToRunning(sources);
  }
  return row;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)]!;
}

export interface Op {
  ms: number;
  stopCopyMs?: number;
  bytes: number;
  maxRssKb?: number;
  idleRssKb?: number;
  loopDelayMaxMs?: number;
  runsMs?: number[];
  /** Our op repeated in the same process after the first, cold run (one.ts): every such run. */
  warmMs?: number[];
  /** The worst loop delay during those warm runs, and the longest GC pause during all runs. */
  warmLoopDelayMaxMs?: number;
  gcMaxMs?: number;
}

/**
 * The run with the median time, with the worst event-loop delay and the largest RSS growth of all
 * runs (those are limits, so the worst case is the one to report), and every run's time.
 */
function summarize(ops: Op[]): Op {
  const sorted = [...ops].sort((a, b) => a.ms - b.ms);
  const median = { ...sorted[Math.floor((sorted.length - 1) / 2)]! };
  const worst = (pick: (o: Op) => number | undefined) => {
    const values = ops.map(pick).filter((d): d is number => d !== undefined);
    return values.length ? Math.max(...values) : undefined;
  };
  median.loopDelayMaxMs = worst((o) => o.loopDelayMaxMs);
  median.warmLoopDelayMaxMs = worst((o) => o.warmLoopDelayMaxMs);
  median.gcMaxMs = worst((o) => o.gcMaxMs);
  const growth = ops.filter((o) => o.maxRssKb !== undefined);
  if (growth.length) {
    const worst = growth.reduce((a, b) => (b.maxRssKb! - b.idleRssKb! > a.maxRssKb! - a.idleRssKb! ? b : a));
    median.maxRssKb = worst.maxRssKb;
    median.idleRssKb = worst.idleRssKb;
  }
  median.runsMs = ops.map((o) => Math.round(o.ms));
  const warm = ops.flatMap((o) => o.warmMs ?? []);
  median.warmMs = warm.map(Math.round);
  return median;
}

/** The CRC-32 of `size` bytes in 1 MiB pieces, as the stream checks them (ms, best of three). */
function crcMs(size: number): number {
  const piece = allocIoBuffer(1 << 20).fill(0x5a);
  let best = Infinity;
  for (let rep = 0; rep < 3; rep++) {
    const start = process.hrtime.bigint();
    for (let at = 0; at < size; at += piece.length) crc32(piece.subarray(0, Math.min(piece.length, size - at)));
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e6);
  }
  return best;
}

const run = (cmd: string, args: string[]) =>
  JSON.parse(
    execFileSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 20 })
      .trim()
      .split('\n')
      .pop()!,
  );

/** QEMU 7.2's v1 client saving the same device: QMP migrate to a file, QEMU's own timings. */
async function qemuSave(
  uuid: string,
): Promise<{ ms: number; downtimeMs: number; totalTimeMs: number; bytes: number } | { skipped: string }> {
  if (!qemuVersion || Number(qemuVersion[1]) >= 8)
    return { skipped: 'QEMU with a v1 client (5.2-7.2) is not installed' };
  const file = '/tmp/bench-qemu.mig';
  const vm = await startQemu('/tmp', `bench-${uuid.slice(0, 8)}`, uuid, []);
  try {
    const start = process.hrtime.bigint();
    await vm.qmp.cmd('migrate', { uri: `exec:cat > ${file}` });
    const info = await waitMigration(vm, 'benchmark');
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    const ram = (info.ram ?? {}) as { transferred?: number };
    return {
      ms,
      downtimeMs: Number(info.downtime ?? NaN),
      totalTimeMs: Number(info['total-time'] ?? NaN),
      bytes: Number(ram.transferred ?? 0),
    };
  } finally {
    await quit(vm);
    rmSync(file, { force: true });
  }
}

async function main(): Promise<void> {
  const results: unknown[] = [];
  // Start-up alone: a bare Node process, and the CLI loading its modules and the addon.
  const startup = { nodeMs: [] as number[], cliMs: [] as number[] };
  for (let i = 0; i < Math.max(3, REPEAT); i++) {
    startup.nodeMs.push(timed(process.execPath, ['-e', '0']));
    startup.cliMs.push(timed(CLI, ['list', '--no-probe', '--quiet']));
  }
  console.log(
    `@@startup ${JSON.stringify({ nodeMs: median(startup.nodeMs), cliMs: median(startup.cliMs), runs: startup })}`,
  );
  for (const mib of SIZES_MIB) {
    const size = mib << 20;
    const memcpy = run(REF, ['memcpy', String(size)]);
    const crc = crcMs(size);
    for (const kind of KINDS) {
      const source = new TestDevice(kind as Kind, { chunkSize: CHUNK, stateSize: size });
      const dest = new TestDevice(kind as Kind, { chunkSize: CHUNK, stateSize: size });
      const [src, dst] = [source.uuid, dest.uuid];
      try {
        source.set('mutate', '0x5eed');
        const proto = kind === 'v2' ? 'v2' : 'v1';
        const runs: { ours: { save: Op; load: Op }; ref: { save: Op; load: Op } }[] = [];
        const wholes: Whole[] = [];
        let exact = true;
        const idleDelays: number[] = [];
        // One untimed round first: the emulator backs guest memory on its first touch (the
        // devices' state buffers, the files' page cache), which would fall on whoever ran first.
        execFileSync(REF, [`${proto}-save`, src, REF_FILE]);
        execFileSync(CLI, ['state', src, 'RUNNING']);
        execFileSync(REF, [`${proto}-load`, dst, REF_FILE]);
        rmSync(REF_FILE, { force: true });
        // Ours and the reference take turns, REPEAT times: a slow spell of the emulator hits both.
        for (let rep = 0; rep < REPEAT; rep++) {
          const ours = {
            save: run(process.execPath, [ONE, 'save', src, OURS_FILE, ENGINE_RUNS]),
            load: run(process.execPath, [ONE, 'load', dst, OURS_FILE, ENGINE_RUNS]),
          };
          exact &&= source.checksum() === dest.checksum();
          rmSync(OURS_FILE, { force: true });
          // Baseline for the loop delay: an idle Node process while the reference saves.
          const idle = spawn(process.execPath, [ONE, 'idle', String(Math.max(200, Math.round(ours.save.ms)))], {
            stdio: ['ignore', 'pipe', 'inherit'],
          });
          const idleOut = new Promise<string>((resolve) => {
            let text = '';
            idle.stdout.on('data', (d: Buffer) => (text += d.toString()));
            idle.on('close', () => resolve(text));
          });
          const refSave = run(REF, [`${proto}-save`, src, REF_FILE]);
          idleDelays.push(JSON.parse((await idleOut).trim().split('\n').pop()!).loopDelayMaxMs);
          // The reference leaves the source stopped; the driver needs RUNNING for the next save.
          execFileSync(CLI, ['state', src, 'RUNNING']);
          const refLoad = run(REF, [`${proto}-load`, dst, REF_FILE]);
          rmSync(REF_FILE, { force: true });
          execFileSync(CLI, ['state', src, 'RUNNING']);
          runs.push({ ours, ref: { save: refSave, load: refLoad } });
          wholes.push(wholeCommands(proto, src, dst));
          exact &&= source.checksum() === dest.checksum();
        }
        const whole = Object.fromEntries(
          (Object.keys(wholes[0]!) as (keyof Whole)[]).map((k) => [k, median(wholes.map((w) => w[k]))]),
        ) as unknown as Whole;
        const wholeRuns = wholes;
        const pick = (side: 'ours' | 'ref', op: 'save' | 'load') => summarize(runs.map((r) => r[side][op]));
        const ours = { save: pick('ours', 'save'), load: pick('ours', 'load') };
        const refSave = pick('ref', 'save');
        const refLoad = pick('ref', 'load');
        const qemu = kind === 'v2' ? { skipped: 'QEMU 7.2 has no v2 client' } : await qemuSave(src);
        const row = {
          kind,
          mib,
          memcpyMs: memcpy.ms,
          crcMs: crc,
          ours,
          ref: { save: refSave, load: refLoad },
          qemu,
          whole,
          wholeRuns,
          exact,
          idleLoopDelayMaxMs: Math.max(...idleDelays),
        };
        results.push(row);
        console.log(`@@bench ${JSON.stringify(row)}`);
      } finally {
        for (const d of [source, dest]) d.remove();
      }
    }
  }
  await migrateRows();
  console.log(`@@bench-done ${results.length}`);
}

main().catch((err) => {
  console.error(`bench guest: ${err instanceof Error ? err.stack : String(err)}`);
  process.exit(1);
});
