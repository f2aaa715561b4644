// npm run bench: builds the C reference client, runs bench/guest.js in the VM, prints the table and writes bench/RESULTS.md.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { runInGuest } from '../test/vm/vm';
import type { CallsRow, FloorRow, MigrateRow, Op, RefLiveRow, Whole } from './guest';
import { ratioChart, type Bar } from './chart';

const ROOT = join(__dirname, '../..');

interface Qemu {
  ms?: number;
  downtimeMs?: number;
  totalTimeMs?: number;
  skipped?: string;
}
interface Row {
  kind: string;
  mib: number;
  memcpyMs: number;
  /** The CRC-32 of the whole state, in the guest, on one thread. */
  crcMs?: number;
  ours: { save: Op; load: Op };
  ref: { save: Op; load: Op };
  qemu: Qemu;
  whole?: Whole;
  wholeRuns?: Whole[];
  exact: boolean;
  idleLoopDelayMaxMs?: number;
}

const mibs = (op: Op, mib: number) => (mib * 1000) / op.ms;
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)]!;
}
// The guest's vCPUs: also the bound on how many devices' CPU-bound stop-copy can overlap.
const GUEST_CPUS = 2;
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '-');
const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '-');

/** What the guests printed in one run: kept so that the report can be written again without a rerun. */
interface RawRun {
  date: string;
  durationMs: number;
  sizes: string;
  repeat: string;
  main: { status: number | null; output: string; accel: string };
  dirty: { kernel: string; status: number | null; output: string }[];
}

const RAW_RUN = join(ROOT, '.cache/bench/last-run.json');

/** Boots the guests and measures; the raw outputs are also saved to RAW_RUN. */
async function measure(): Promise<RawRun> {
  const refDir = join(ROOT, '.cache/bench');
  mkdirSync(refDir, { recursive: true });
  const ref = join(refDir, 'ref');
  execFileSync('gcc', ['-O2', '-Wall', '-pthread', '-o', ref, join(ROOT, 'bench/ref/ref.c')], { stdio: 'inherit' });
  const sizes = process.env.BENCH_SIZES ?? '64,256';
  const repeat = process.env.BENCH_REPEAT ?? '3';
  const command = [
    'env',
    `BENCH_REF=${ref}`,
    `BENCH_SIZES=${sizes}`,
    `BENCH_REPEAT=${repeat}`,
    `BENCH_KINDS=${process.env.BENCH_KINDS ?? 'v1,v1-trapped,v2'}`,
    'sh',
    '-c',
    // the engine, whole commands and migrate; then where one command's time goes (profiled)
    `"${process.execPath}" "${join(ROOT, 'dist/bench/guest.js')}" && "${process.execPath}" "${join(ROOT, 'dist/bench/split.js')}"`,
  ];
  const started = Date.now();
  const r = await runInGuest({
    kernel: '6.12',
    command,
    timeoutMs: 3600_000,
    memoryMiB: 4096,
    cpus: GUEST_CPUS,
    echo: process.stderr,
    prepare: true,
  });
  const dirty: RawRun['dirty'] = [];
  if (r.status === 0) {
    for (const kernel of ['6.12', '6.1'] as const) {
      const d = await runInGuest({
        kernel,
        command: [process.execPath, join(ROOT, 'dist/bench/dirty.js')],
        timeoutMs: 900_000,
        echo: process.stderr,
        prepare: true,
      });
      dirty.push({ kernel, status: d.status, output: d.output });
    }
  }
  const raw: RawRun = {
    date: new Date().toISOString(),
    durationMs: Date.now() - started,
    sizes,
    repeat,
    main: { status: r.status, output: r.output, accel: r.accel },
    dirty,
  };
  writeFileSync(RAW_RUN, JSON.stringify(raw));
  return raw;
}

async function main(): Promise<void> {
  // --render: the report again from the last run's saved outputs (after a change to the report).
  const raw: RawRun = process.argv.includes('--render')
    ? (JSON.parse(readFileSync(RAW_RUN, 'utf8')) as RawRun)
    : await measure();
  const { sizes, repeat } = raw;
  const r = raw.main;
  const tagged = <T>(tag: string): T[] =>
    r.output
      .split('\n')
      .filter((l: string) => l.includes(`${tag} `))
      .map((l: string) => JSON.parse(l.slice(l.indexOf(`${tag} `) + tag.length + 1)) as T);
  const rows = tagged<Row>('@@bench');
  const migrates = tagged<MigrateRow>('@@migrate');
  const multi = tagged<MigrateRow>('@@migrate-n');
  const floors = tagged<FloorRow>('@@floor');
  const refLives = tagged<RefLiveRow>('@@ref-live');
  const callRows = tagged<CallsRow>('@@calls');
  const splits = tagged<{ kind: string; mib: number; op: string; ms: number; split: Record<string, number> }>(
    '@@split',
  );
  if (r.status !== 0 || rows.length === 0) {
    console.error(r.output.split('\n').slice(-40).join('\n'));
    throw new Error(`the guest benchmark failed (status ${r.status})`);
  }
  const lines = [
    '| type | state | op | ours MiB/s | ref (C) MiB/s | ours / ref | ours warm MiB/s | warm / ref | QEMU 7.2 ms | ours / QEMU | stop-copy ours ms | stop-copy ref ms | QEMU downtime ms | memcpy MiB/s | ours / memcpy | worst loop delay ms | idle Node loop delay ms | peak RSS growth MiB | exact |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const row of rows) {
    const memcpy = (row.mib * 1000) / row.memcpyMs;
    for (const op of ['save', 'load'] as const) {
      const o = row.ours[op];
      const c = row.ref[op];
      lines.push(
        `| ${row.kind} | ${row.mib} MiB | ${op} | ${f1(mibs(o, row.mib))} | ${f1(mibs(c, row.mib))} | ${f2(c.ms / o.ms)} | ${f1(o.warmMs?.length ? (row.mib * 1000) / median(o.warmMs) : NaN)} | ${f2(o.warmMs?.length ? c.ms / median(o.warmMs) : NaN)} | ${op === 'save' ? (row.qemu.ms !== undefined ? f1(row.qemu.ms) : 'n/a') : ''} | ${op === 'save' && row.qemu.ms !== undefined ? f2(row.qemu.ms / o.ms) : ''} | ${op === 'save' ? f1(o.stopCopyMs ?? NaN) : ''} | ${op === 'save' ? f1(c.stopCopyMs ?? NaN) : ''} | ${op === 'save' && row.qemu.downtimeMs !== undefined ? f1(row.qemu.downtimeMs) : ''} | ${f1(memcpy)} | ${f2(mibs(o, row.mib) / memcpy)} | ${f1(o.loopDelayMaxMs ?? NaN)} | ${f1(row.idleLoopDelayMaxMs ?? NaN)} | ${f1(((o.maxRssKb ?? 0) - (o.idleRssKb ?? 0)) / 1024)} | ${row.exact ? 'yes' : 'NO'} |`,
      );
    }
  }
  const table = lines.join('\n');
  // Dirty tracking: what one report of a 1 GiB range costs through each mechanism, per kernel.
  const dirtyTables: string[] = [];
  for (const d of raw.dirty) {
    const kernel = d.kernel;
    const out = d.output.split('\n').map((l: string) => l.replace(/\r$/, ''));
    const title = out.find((l: string) => l.startsWith('kernel ')) ?? `kernel ${kernel}`;
    const rowsOf = out.filter((l: string) => l.startsWith('|'));
    dirtyTables.push(
      d.status === 0 ? `${title}\n\n${rowsOf.join('\n')}` : `${kernel}: the dirty bench failed (status ${d.status})`,
    );
  }
  const startupLine = r.output.split('\n').find((l: string) => l.includes('@@startup '));
  const startup = startupLine
    ? (JSON.parse(startupLine.slice(startupLine.indexOf('@@startup ') + 10)) as { nodeMs: number; cliMs: number })
    : undefined;
  const whole = [
    '| type | state | command | ours ms (cold) | C reference ms (cold) | ours / ref | ratio spread (worst-best pairing) | ours, every run | ref, every run |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  const bars: Bar[] = [];
  const wholeRatios: number[] = [];
  // The best ratio a cold command could reach if everything after its start-up took no longer
  // than the C client's whole run: ref / (ref + start-up), start-up being vfio-mig list --no-probe.
  const ceiling = (refMs: number) => (startup ? refMs / (refMs + startup.cliMs) : NaN);
  const wholeCeilings: { ratio: number; ceiling: number }[] = [];
  for (const row of rows) {
    if (!row.whole) continue;
    const w = row.whole;
    const runs = (key: keyof Whole) => (row.wholeRuns ?? []).map((x) => Math.round(x[key])).join(', ');
    const pairs: [string, keyof Whole, keyof Whole][] = [
      ['save to a file', 'oursSaveMs', 'refSaveMs'],
      ['load from a file', 'oursLoadMs', 'refLoadMs'],
      ['save \\| load (pipe) vs C device to device', 'oursPipeMs', 'refPipeMs'],
    ];
    for (const [name, ours, ref] of pairs) {
      const ratios = (row.wholeRuns ?? []).map((x) => x[ref] / x[ours]);
      const ratio = w[ref] / w[ours];
      wholeRatios.push(ratio);
      wholeCeilings.push({ ratio, ceiling: ceiling(w[ref]) });
      whole.push(
        `| ${row.kind} | ${row.mib} MiB | ${name} | ${f1(w[ours])} | ${f1(w[ref])} | ${f2(ratio)} | ${f2(Math.min(...ratios))}-${f2(Math.max(...ratios))} | ${runs(ours)} | ${runs(ref)} |`,
      );
      bars.push({
        group: `${row.kind}, ${row.mib} MiB`,
        label: name.replace(' vs C device to device', '').replace('\\|', '|'),
        ratio,
        low: Math.min(...ratios),
        high: Math.max(...ratios),
      });
    }
  }
  // migrate, cold, against the C reference moving the same state device to device: through a pipe
  // between two processes and (v2) live in one process; judged against the faster of the two.
  const migrateTable = [
    '| type | state | ours ms (cold, median) | C through a pipe ms | C live, one process ms | ours / the faster C | ratio spread | downtime ms (median) | ours, every run | C through a pipe, every run | C live, every run |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  const migrateRatios: number[] = [];
  const migrateCeilings: { ratio: number; ceiling: number }[] = [];
  for (const m of migrates) {
    const live = m.refLiveMs ?? [];
    // Each run's C time: the faster of the two ways in that run.
    const refRuns = m.refMs.map((ms, i) => Math.min(ms, live[i] ?? Infinity));
    const refMs = Math.min(median(m.refMs), live.length ? median(live) : Infinity);
    const ratios = m.oursMs.map((o, i) => refRuns[i]! / o);
    const ratio = refMs / median(m.oursMs);
    migrateRatios.push(ratio);
    migrateCeilings.push({ ratio, ceiling: ceiling(refMs) });
    migrateTable.push(
      `| ${m.kind} | ${m.mib} MiB | ${f1(median(m.oursMs))} | ${f1(median(m.refMs))} | ${live.length ? f1(median(live)) : '-'} | ${f2(ratio)} | ${f2(Math.min(...ratios))}-${f2(Math.max(...ratios))} | ${f1(median(m.downtimeMs))} | ${m.oursMs.map(Math.round).join(', ')} | ${m.refMs.map(Math.round).join(', ')} | ${live.map(Math.round).join(', ') || '-'} |`,
    );
    bars.push({
      group: `${m.kind}, ${m.mib} MiB`,
      label: 'migrate A B',
      ratio,
      low: Math.min(...ratios),
      high: Math.max(...ratios),
    });
  }
  bars.sort((a, b) => a.group.localeCompare(b.group, 'en', { numeric: true }));
  const phaseNames = ['helloMs', 'precopyMs', 'switchoverAckMs', 'catchUpMs', 'stopCopyMs', 'validateMs', 'resumeMs'];
  const migratePrecopied = migrates.some((m) => m.phases.some((p) => (p['precopyMs'] ?? 0) > 0));
  // 'live-slow': the live rows with devices whose every arc takes arcDelayUs in the driver.
  const modeOf = (m: MigrateRow) => (m.arcDelayUs ? 'live-slow' : (m.mode ?? 'stop-copy'));
  const slowArcMs = (x: { arcDelayUs?: number }) => f1((x.arcDelayUs ?? 0) / 1000);
  const modeName = (m: MigrateRow) =>
    modeOf(m) === 'live'
      ? 'live (default pre-copy)'
      : modeOf(m) === 'live-slow'
        ? `live, every arc of every device ${slowArcMs(m)} ms in the driver`
        : 'stop-copy only (--no-precopy)';
  const multiTable = [
    `| mode | devices (v2, 64 MiB each) | downtime ms (median) | downtime, every run | JS thread on a CPU in the downtime ms (median) | whole command ms (median) | vCPUs busy (CPU time / wall) | ${phaseNames.map((p) => p.replace(/Ms$/, ' ms')).join(' | ')} |`,
    `|---|---|---|---|---|---|---|${phaseNames.map(() => '---').join('|')}|`,
  ];
  // The command's own work in the downtime (its JS thread's CPU clock; NaN in runs saved before).
  const downtimeCpu = (m: MigrateRow) => median((m.downtimeCpuMs ?? []).filter(Number.isFinite));
  // Average vCPUs the whole command kept busy.
  const busy = (m: MigrateRow) => median((m.cpuMs ?? []).map((c, i) => c / m.oursMs[i]!));
  for (const m of multi) {
    const phase = (name: string) => median(m.phases.map((p) => p[name] ?? NaN));
    multiTable.push(
      `| ${modeName(m)} | ${m.devices} | ${f1(median(m.downtimeMs))} | ${m.downtimeMs.map(f1).join(', ')} | ${f1(downtimeCpu(m))} | ${f1(median(m.oursMs))} | ${f2(busy(m))} | ${phaseNames.map((p) => f1(phase(p))).join(' | ')} |`,
    );
  }
  // The live downtime's device calls alone (floor.ts), beside the live rows.
  const floorOf = (n: number) => floors.find((f) => f.devices === n);
  for (const f of floors) {
    multiTable.push(
      `| device calls alone, no protocol (bench/floor.ts)${f.exact ? '' : ' (the state did NOT arrive whole)'} | ${f.devices} | ${f1(median(f.downtimeMs))} | ${f.downtimeMs.map(Math.round).join(', ')} | ${f1(median(f.cpuMs.filter(Number.isFinite)))} | - | - |${phaseNames.map(() => ' - ').join('|')}|`,
    );
  }
  // The C reference's live downtime of the same devices (ref v2-live), in its two ways.
  const refLiveOf = (way: RefLiveRow['way'], n: number, slow = false) =>
    refLives.find((c) => c.way === way && c.devices === n && !!c.arcDelayUs === slow);
  const refWayName = (c: RefLiveRow) =>
    (c.way === 'v2-live'
      ? 'C client, one thread (ref v2-live)'
      : 'C client, a thread per device (ref v2-live-threads)') +
    (c.arcDelayUs ? `, every arc ${slowArcMs(c)} ms in the driver` : '');
  for (const c of refLives) {
    multiTable.push(
      `| ${refWayName(c)} | ${c.devices} | ${f2(median(c.downtimeMs))} | ${c.downtimeMs.map((x) => x.toFixed(2)).join(', ')} | - | - | - |${phaseNames.map(() => ' - ').join('|')}|`,
    );
  }
  // Downtime of four devices over one's, per mode; the target is judged on migrate's default (live).
  const nDevices = (mode: string, n: number) => multi.find((m) => modeOf(m) === mode && m.devices === n);
  const ratioOf = (mode: string) => {
    const a = nDevices(mode, 1);
    const b = nDevices(mode, 4);
    return a && b ? median(b.downtimeMs) / median(a.downtimeMs) : NaN;
  };
  const one = nDevices('stop-copy', 1);
  const four = nDevices('stop-copy', 4);
  const stopCopyRatio = ratioOf('stop-copy');
  const liveRatio = ratioOf('live');
  // Devices whose arcs take time: ours against the C client's two ways, the same devices and run.
  const slowRatio = ratioOf('live-slow');
  const slowRow = nDevices('live-slow', 1);
  const refSlowRatio = (way: RefLiveRow['way']) => {
    const a = refLiveOf(way, 1, true);
    const b = refLiveOf(way, 4, true);
    return a && b ? median(b.downtimeMs) / median(a.downtimeMs) : NaN;
  };
  const slowText =
    slowRow && Number.isFinite(slowRatio)
      ? `; devices whose every arc takes ${slowArcMs(slowRow)} ms: ${f2(slowRatio)}x (the C client ${f2(refSlowRatio('v2-live'))}x from one thread, ${f2(refSlowRatio('v2-live-threads'))}x with a thread per device)`
      : '';
  const downtimeRatio = Number.isFinite(liveRatio) ? liveRatio : stopCopyRatio;
  // Where one command's time goes.
  const categories = [
    'node start',
    'start-up',
    'device I/O',
    'checksums',
    'copies',
    'stream and protocol',
    'gc',
    'waiting',
  ];
  const splitTable = [
    `| type | command | wall ms (profiled) | ${categories.join(' | ')} |`,
    `|---|---|---|${categories.map(() => '---').join('|')}|`,
  ];
  for (const x of splits)
    splitTable.push(
      `| ${x.kind} | ${x.op} ${x.mib} MiB | ${f1(x.ms)} | ${categories.map((c) => f1(x.split[c] ?? 0)).join(' | ')} |`,
    );
  // The targets of issue 16 and 14, judged on this run.
  const engineRatios = rows.flatMap((row) => (['save', 'load'] as const).map((op) => row.ref[op].ms / row.ours[op].ms));
  const delays = rows
    .filter((row) => row.mib >= 256)
    .flatMap((row) =>
      (['save', 'load'] as const).map((op) => (row.ours[op].loopDelayMaxMs ?? NaN) - (row.idleLoopDelayMaxMs ?? NaN)),
    );
  const verdict = (ok: boolean) => (ok ? 'met' : '**not met**');
  const warmRatios = rows.flatMap((row) =>
    (['save', 'load'] as const)
      .filter((op) => row.ours[op].warmMs?.length)
      .map((op) => row.ref[op].ms / median(row.ours[op].warmMs!)),
  );
  // Work the C client does not do: every byte's CRC-32, written by a save and checked by a load.
  const largest = rows.filter((row) => row.crcMs !== undefined).sort((a, b) => b.mib - a.mib)[0];
  const crcWhy = largest
    ? `; a load checks a CRC-32 of every byte and a save computes one, which the C client does not: ${f1(largest.crcMs!)} ms of one CPU for ${largest.mib} MiB in this guest, ${f2(largest.crcMs! / largest.ref.load.ms)}x the C client's whole ${largest.kind} load`
    : '';
  // Only the rows that miss a target need a reason; a row can beat its start-up ceiling (the
  // ceiling assumes the rest takes as long as the C client's whole run).
  const range = (values: number[]) => `${f2(Math.min(...values))}-${f2(Math.max(...values))}`;
  const wholeMissed = wholeCeilings.filter((c) => c.ratio < 0.8);
  const capped = wholeMissed.filter((c) => c.ceiling < 0.8);
  const reachable = wholeMissed.filter((c) => c.ceiling >= 0.8).map((c) => c.ratio);
  const startupText = startup ? `${f1(startup.cliMs)} ms (a bare Node ${f1(startup.nodeMs)} ms)` : '?';
  const wholeWhy = capped.length
    ? `${wholeMissed.length} of ${wholeCeilings.length} rows miss it; start-up alone, ${startupText}, caps ${capped.length} of those below 0.8: with no time beyond the C client's whole run they would reach at most ${range(capped.map((c) => c.ceiling))}` +
      (reachable.length ? `; the other rows that miss it reach ${range(reachable)}` : '') +
      crcWhy
    : crcWhy;
  const migrateMet = migrateCeilings.filter((c) => c.ratio >= 1).map((c) => c.ratio);
  const migrateMissed = migrateCeilings.filter((c) => c.ratio < 1);
  const migrateCapped = migrateMissed.filter((c) => c.ceiling < 1).map((c) => c.ceiling);
  const migrateUncapped = migrateMissed.filter((c) => c.ceiling >= 1).map((c) => c.ratio);
  const migrateWhy =
    (migrateMet.length
      ? `${migrateMet.length} of ${migrateCeilings.length} rows meet it (${range(migrateMet)}); `
      : '') +
    (migrateCapped.length
      ? `start-up alone, ${startupText}, caps ${migrateCapped.length} of the ${migrateMissed.length} that miss it below 1.0 (at most ${range(migrateCapped)})`
      : '') +
    (migrateUncapped.length ? `; the others that miss it reach ${range(migrateUncapped)}` : '');
  const engineWhy = warmRatios.length
    ? `warm, the same op repeated in its process: worst ${f2(Math.min(...warmRatios))}, best ${f2(Math.max(...warmRatios))}; the rest of the cold gap is V8 warming up under emulation`
    : '';
  const liveOne = nDevices('live', 1);
  const liveFour = nDevices('live', 4);
  const livePhase = (m: MigrateRow, name: string) => median(m.phases.map((p) => p[name] ?? NaN));
  // Measured: how much of each downtime the command's one JS thread was running, and what an
  // extra device added to it (1.3x of one device's downtime allows this much per extra device).
  const liveCpuWhy =
    liveOne && liveFour && Number.isFinite(downtimeCpu(liveOne)) && Number.isFinite(downtimeCpu(liveFour))
      ? `; the command's JS thread was on a CPU for ${f1(downtimeCpu(liveOne))} ms of one device's downtime and ${f1(downtimeCpu(liveFour))} ms of four's: ${f1((downtimeCpu(liveFour) - downtimeCpu(liveOne)) / 3)} ms per extra device, where 1.3x allows ${f1((0.3 * median(liveOne.downtimeMs)) / 3)} ms of downtime per extra device`
      : '';
  // What the protocol adds to the device calls' own downtime (floor.ts, the same devices, same run).
  const floorOne = floorOf(1);
  const floorFour = floorOf(4);
  // The floor is the fastest run of each count: the slower one-device runs' JS thread was busy
  // longer than the device calls need (the script's own process's work, named below from the run).
  const fastest = (f: FloorRow) => Math.min(...f.downtimeMs);
  const slack = (f: FloorRow) => median(f.downtimeMs) - fastest(f);
  const floorWhy =
    liveOne && liveFour && floorOne && floorFour
      ? `; the same device calls with no protocol (bench/floor.ts: the arcs, the data_fd reads and writes, nothing else; the fastest of its runs: the median one-device run took ${f1(slack(floorOne))} ms longer, the median four-device run ${f1(slack(floorFour))} ms) take ${f1(fastest(floorOne))} ms for one device and ${f1(fastest(floorFour))} ms for four (${f2(fastest(floorFour) / fastest(floorOne))}x), so the protocol (records, stream checks, channel, messages, the engines' state tracking) adds ${f1(median(liveOne.downtimeMs) - fastest(floorOne))} ms to one device's downtime and ${f1(median(liveFour.downtimeMs) - fastest(floorFour))} ms to four's: ${f1((median(liveFour.downtimeMs) - fastest(floorFour) - (median(liveOne.downtimeMs) - fastest(floorOne))) / 3)} ms per extra device, against ${f1((fastest(floorFour) - fastest(floorOne)) / 3)} ms for the device calls themselves`
      : '';
  // JS function entries in the downtime (calls.ts): what the code does, whatever the guest's speed.
  const callsOf = (n: number) => callRows.find((c) => c.devices === n && c.calls.length > 0);
  const callsOne = callsOf(1);
  const callsFour = callsOf(4);
  // The same ratio for the C reference: what the target asks of a client with next to no fixed cost.
  const refRatioText = (way: RefLiveRow['way']) => {
    const a = refLiveOf(way, 1);
    const b = refLiveOf(way, 4);
    if (!a || !b) return '';
    const [x, y] = [median(a.downtimeMs), median(b.downtimeMs)];
    return `${way === 'v2-live' ? 'one thread' : 'a thread per device'} ${f2(x)} ms for one device and ${f2(y)} ms for four (${f2(y / x)}x)`;
  };
  const refWays = (['v2-live', 'v2-live-threads'] as const).map(refRatioText).filter(Boolean);
  // A straight line through our one- and four-device downtimes: what an extra device adds, and
  // what does not grow with the devices.
  const perDevice = liveOne && liveFour ? (median(liveFour.downtimeMs) - median(liveOne.downtimeMs)) / 3 : NaN;
  const fixedPart = liveOne ? median(liveOne.downtimeMs) - perDevice : NaN;
  const refLiveWhy = refWays.length
    ? `; the C reference migrating the same devices live in one process, with the same pre-copy and the same downtime device calls and nothing else, takes ${refWays.join(', ')}: its downtime is almost all per-device work, so a client with next to no fixed cost is far above 1.3x; the ratio rewards what one device's downtime spends whatever the number of devices, and ours spends about ${f1(fixedPart)} ms that way (a straight line through our two: ${f1(perDevice)} ms per device on top)`
    : '';
  const callsWhy =
    callsOne && callsFour
      ? `; JS function entries inside the downtime (bench/calls.ts, counted by V8's precise coverage, so not subject to the emulator's noise; medians of ${callsOne.calls.length} and ${callsFour.calls.length} runs): ${median(callsOne.calls)} for one device, ${median(callsFour.calls)} for four, ${Math.round((median(callsFour.calls) - median(callsOne.calls)) / 3)} per extra device`
      : '';
  const liveWhy =
    liveOne && liveFour
      ? `live, the downtime of one device is ${f1(median(liveOne.downtimeMs))} ms and of four ${f1(median(liveFour.downtimeMs))} ms: stop-and-copy ${f1(livePhase(liveOne, 'stopCopyMs'))} against ${f1(livePhase(liveFour, 'stopCopyMs'))}, validation ${f1(livePhase(liveOne, 'validateMs'))} against ${f1(livePhase(liveFour, 'validateMs'))}, resume ${f1(livePhase(liveOne, 'resumeMs'))} against ${f1(livePhase(liveFour, 'resumeMs'))} ms; what is left after pre-copy is a few ioctls per device and the JS between them, and four devices do them on ${GUEST_CPUS} vCPUs${liveCpuWhy}${floorWhy}${callsWhy}${refLiveWhy}`
      : '';
  const downtimeWhy =
    one && four
      ? `the stop-copy is CPU work (the driver's copies run in our syscalls, then the checksum and the write): one device's command keeps ${f2(busy(one))} vCPUs busy on average and four devices' ${f2(busy(four))}, of the guest's ${GUEST_CPUS}; four devices' work cannot overlap on more CPUs than there are`
      : '';
  // What the loop delays of the 256 MiB rows are made of: the same op warm (no first-call
  // compiles), and the longest garbage-collection pause.
  const big = rows
    .filter((row) => row.mib >= 256)
    .flatMap((row) => (['save', 'load'] as const).map((op) => ({ row, o: row.ours[op] })));
  const warmExcess = big.map(({ row, o }) => (o.warmLoopDelayMaxMs ?? NaN) - (row.idleLoopDelayMaxMs ?? NaN));
  const gcMax = Math.max(...big.map(({ o }) => o.gcMaxMs ?? NaN));
  const coldExcess = big.map(({ row, o }) => (o.loopDelayMaxMs ?? NaN) - (row.idleLoopDelayMaxMs ?? NaN));
  const delayWhy = big.length
    ? `the excess is from ${f1(Math.min(...coldExcess))} to ${f1(Math.max(...coldExcess))} ms (median ${f1(median(coldExcess))}) cold, from ${f1(Math.min(...warmExcess))} to ${f1(Math.max(...warmExcess))} ms (median ${f1(median(warmExcess))}) with the same ops repeated warm in their process; garbage-collection pauses, each a stop of the loop, reach ${f1(gcMax)} ms; the worst of all runs is a single stall, not the usual delay`
    : '';
  const targets = [
    '| target | this run | verdict | why not, from this run |',
    '|---|---|---|---|',
    `| whole commands (save, load, pipe) at least 0.8x of the C client | worst ${f2(Math.min(...wholeRatios))}, best ${f2(Math.max(...wholeRatios))} | ${verdict(Math.min(...wholeRatios) >= 0.8)} | ${Math.min(...wholeRatios) >= 0.8 ? '' : wholeWhy} |`,
    `| the engine alone at least 1.0x on every path | worst ${f2(Math.min(...engineRatios))}, best ${f2(Math.max(...engineRatios))} | ${verdict(Math.min(...engineRatios) >= 1)} | ${Math.min(...engineRatios) >= 1 ? '' : engineWhy} |`,
    `| worst loop delay of a 256 MiB save or load within 5 ms of an idle Node process | worst excess ${f1(Math.max(...delays))} ms | ${delays.length ? verdict(Math.max(...delays) <= 5) : 'not measured (no 256 MiB rows)'} | ${delays.length && Math.max(...delays) > 5 ? delayWhy : ''} |`,
    `| cold migrate A B at least as fast as the C client device to device | worst ${f2(Math.min(...migrateRatios))}, best ${f2(Math.max(...migrateRatios))} | ${migrateRatios.length ? verdict(Math.min(...migrateRatios) >= 1) : 'not measured'} | ${migrateRatios.length && Math.min(...migrateRatios) < 1 ? migrateWhy : ''} |`,
    `| four 64 MiB devices: downtime at most 1.3x that of one | ${Number.isFinite(liveRatio) ? `live (the default) ${f2(liveRatio)}x; ` : ''}stop-copy only ${f2(stopCopyRatio)}x${slowText} | ${Number.isFinite(downtimeRatio) ? `${verdict(downtimeRatio <= 1.3)}${Number.isFinite(liveRatio) ? ' (live, the default)' : ''}` : 'not measured'} | ${[downtimeRatio > 1.3 && Number.isFinite(liveRatio) ? liveWhy : '', stopCopyRatio > 1.3 ? `stop-copy only: ${downtimeWhy}` : ''].filter(Boolean).join('; ')} |`,
  ];
  writeFileSync(
    join(ROOT, 'bench/chart.svg'),
    ratioChart(`vfio-mig against the C client, whole commands (${r.accel} guest)`, bars),
  );
  console.log(whole.join('\n'));
  const everyRun = ['| type | state | op | ours, every run (ms) | ref (C), every run (ms) |', '|---|---|---|---|---|'];
  for (const row of rows) {
    for (const op of ['save', 'load'] as const)
      everyRun.push(
        `| ${row.kind} | ${row.mib} MiB | ${op} | ${(row.ours[op].runsMs ?? []).join(', ')} | ${(row.ref[op].runsMs ?? []).join(', ')} |`,
      );
  }
  console.log(table);
  const doc = `# Benchmark results

Date: ${raw.date}
Machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, ${Math.round(totalmem() / 2 ** 30)} GiB; guest: Debian 6.12 kernel under QEMU (${r.accel}), 4 GiB, 2 vCPUs.
Node: ${process.version} (${process.execPath}), for every command in the guest as for this runner.
Command: \`npm run bench\` (BENCH_SIZES=${sizes} BENCH_REPEAT=${repeat}); ${(raw.durationMs / 1000).toFixed(0)} s.

Every figure is measured in the same run, inside the guest, against the project's test driver
(chunk_size 1 MiB). "ref (C)" is bench/ref/ref.c, a minimal client doing the same protocol steps
and nothing else (no checksums, no stream format), with v2 data_fd reads of 1 MiB, its fastest
(ours read 4 MiB). "ours / ref" is the ratio of elapsed times (1.0 = as fast as the reference;
above 1 = faster). "memcpy" is a plain copy of the same number of bytes in the guest: the
physical ceiling. Event-loop delay and RSS are measured in the process running our save or load (RSS growth over the process's own idle
peak). Absolute numbers are TCG-emulated; the ratios are the point. Each time is the median of
${repeat} runs, ours and the reference taking turns (every run is listed below); the loop delay and
the RSS growth are the worst of those runs. "idle Node loop delay" is the baseline for the loop
delay: the worst delay of a Node process that does nothing, in the same guest, while the
reference saves the same state (the emulator's own stalls).

## Whole commands, as a user runs them

Each command timed from spawn to exit in the guest (process start, module and addon loading,
device open and close included): \`vfio-mig save DEV -o FILE\`, \`vfio-mig load DEV -i FILE\`, and
\`vfio-mig save A -o - | vfio-mig load B -i -\`, against the C reference doing the same (save to a
file, load from a file, and device to device through a pipe between its two halves). Start-up alone:
a bare \`node -e 0\` takes ${startup ? f1(startup.nodeMs) : '?'} ms, and \`vfio-mig list --no-probe\` (the CLI loading its
modules and the addon, no device) ${startup ? f1(startup.cliMs) : '?'} ms. The engine-only rows below show where the rest goes.

![ours against the C client](chart.svg)

${targets.join('\n')}

${whole.join('\n')}

## migrate, as a user runs it

\`vfio-mig migrate A B --json\` timed from spawn to exit (both ends in one process, the destination
validating everything before the commit), against the C reference moving the same state device to
device two ways: a saving child writing into a pipe its loading parent reads, all of it while
stopped (\`ref v1-pipe\`/\`v2-pipe\`), and, for v2, a live migration in one process
(\`ref v2-live\`: the source pre-copied while it runs, then stopped, its rest moved, the
destination resumed; one thread, each read written before the next read). The ratio is against
the faster of the two. Downtime is our command's own report: first source stop to the last
destination RUNNING. ${migratePrecopied ? 'Our command runs as by default: it pre-copies while the (idle) source runs, so the state moves before the stop and the downtime is short. The same bytes move every way.' : 'Our command moved the whole state while the source was stopped (no pre-copy), as the pipe reference does.'}

${migrateTable.join('\n')}

Four v2 devices of 64 MiB in one command against one, in the same run, two ways. Live, as
\`migrate\` runs by default: the sources pre-copy while they run a workload that dirties
${f1((liveOne?.dirtyRate ?? NaN) / (1 << 20))} MiB/s each, and only what it dirtied since moves while they are stopped.
Stop-copy only (\`--no-precopy\`, idle sources): the whole state moves while stopped, the four
devices' data concurrently. Downtime of four / downtime of one: live ${f2(liveRatio)}x, stop-copy
only ${f2(stopCopyRatio)}x. ${floors.length ? `The "device calls alone" rows are the live rows' downtime without the protocol: bench/floor.ts, a process of its own per run (in V8's interpreter only, \`node --no-opt --no-sparkplug\`, so that compiling its own few lines does not land in the downtime), pre-copies the same devices with raw data_fd reads and writes, then makes only the downtime's device calls (the stop arcs, the stop-copy data read to its end and written, RESUMING -> STOP, RUNNING_P2P, RUNNING), timed from the first stop to the last RUNNING. ` : ''}${refLives.length ? `The "C client" rows are the same live migration of the same devices by the C reference (\`ref v2-live\`, a process of its own per run, timed the same way): the same pre-copy and downtime device calls, from one thread taking the devices in turn at each step, or from a thread per device. ` : ''}${slowRow ? `The rows "every arc ${slowArcMs(slowRow)} ms in the driver" are the live rows again with devices whose every state change takes that long (the test driver's arc_delay_us: it sleeps in the arc, as a real device's firmware takes time to quiesce, save and load its state, where the test driver's own arcs take microseconds): the downtime's arcs of several devices that run at once cost the slowest device's time, arcs taken one device after another their sum. Downtime of four / downtime of one there: ${f2(slowRatio)}x. ` : ''}Phases (medians, ms):

${multiTable.join('\n')}

## Where the time of one command goes

Each command run once more with \`node --cpu-prof\` (10 ms samples) and its main thread's samples
sorted: "node start" is Node's own bootstrap before the profile, "start-up" module and addon
loading, "device I/O" the addon's synchronous calls, "checksums" CRC-32 on the JS thread,
"copies" buffer copies, "waiting" the idle loop (the thread pool reading or writing the device or
the file, a pipe's other end). Times in ms; the profiler itself slows the command a little.

${splitTable.join('\n')}

## Dirty tracking

One read of the dirty pages of a 1 GiB range (4 KiB pages, dirtied by real DMA from the test
driver before each read), through the IOMMU and through the device's own DMA logging
(bench/dirty.ts, in its own guest per kernel):

${dirtyTables.join('\n\n')}

## The engine alone

Each op runs in a fresh process, as a command would: its first run, timed from the device open, is
the figure ("ours"). The same process then repeats the op ${process.env.BENCH_ENGINE_RUNS ?? 3}-1 more times: "ours warm" is
the median of those repeats, where V8 has already compiled and optimized the engine's code. The
distance between the two is what a cold process spends warming up, under emulation; the
reference, in C, has nothing to warm. Before the timed runs of each type and size, one untimed
round of the reference backs the guest memory the devices and files use (the emulator allocates
it on first touch, which would otherwise fall on whoever ran first).

${table}

${everyRun.join('\n')}

"QEMU 7.2" is Debian's qemu-system-x86_64 in the guest (-machine q35 -S -nodefaults -m 64, vfio-pci
sysfsdev=..., x-enable-migration=on) saving the same device with a QMP migrate to a file; its time runs
from the migrate command to status completed and includes QEMU's own overhead (its 64 MiB of
mostly-zero guest RAM, device config); "ours / QEMU" is QEMU's time over ours (above 1 = we are
faster). QEMU has no v2 client (n/a), and no load is compared (QEMU's restore needs its own stream).
`;
  writeFileSync(join(ROOT, 'bench/RESULTS.md'), doc);
  console.log('\nwrote bench/RESULTS.md');
}

main().catch((err) => {
  console.error(`bench: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
