// npm run test:vm: first the harness tier on the host (dist/test/vm/*.test.js: the harness boots
// guests and reports their status, timeouts and failures truthfully), the host unit tests again
// under each other Node release prepare.sh unpacked (.cache/vm/node/<major>), then the integration
// suite (dist/test/integration, node:test) inside a fresh guest, once per kernel (6.12 then 6.1),
// and once more on 6.12 under the newest other Node (--no-other-nodes: neither of those); fails
// when any of them fails.
//
//   node dist/test/vm/run-suite.js [--kernel 6.12|6.1|all] [--timeout SEC] [--parallel|--sequential]
//                                  [--no-prepare] [--no-harness] [--no-other-nodes] [-- <run-tests flags>]
//
// With two or more host CPUs the two guests run side by side (output lines are
// prefixed with the kernel; --sequential or VFIO_MIG_VM_PARALLEL=0 runs 6.12 then 6.1).
// After the suite, in the same guest, the after-suite checks run (dist/test/after-suite: the test
// driver leaks nothing, unloads cleanly, the kernel log is quiet): after it by construction, not
// by file name. Then the guest's dmesg is checked: a WARNING, BUG or Oops fails the run.
// Output, kernel console and dmesg of each run stay in .cache/vm/results/<kernel>[-node<major>]/.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, relative } from 'node:path';
import { kernelLogProblems } from '../support/kernel-log';
import {
  EXIT_HARNESS,
  PROJECT_ROOT,
  prepare,
  runInGuest,
  SERIES,
  type GuestResult,
  type Series,
  shQuote,
  type TextSink,
} from './vm';

const SUITE_DIR = join(PROJECT_ROOT, 'dist', 'test', 'integration');
const HARNESS_DIR = join(PROJECT_ROOT, 'dist', 'test', 'vm');
const UNIT_DIR = join(PROJECT_ROOT, 'dist', 'test', 'unit');
/** Run in the guest once the suite has ended, whatever its verdict (paths relative to the project root). */
const AFTER_SUITE_DIR = 'dist/test/after-suite';
/** The line the guest prints between the suite's output and the after-suite checks'. */
const AFTER_SUITE_MARK = '=== after the suite: dist/test/after-suite ===';
const RESULTS_DIR = join(PROJECT_ROOT, '.cache', 'vm', 'results');

interface KernelRun {
  kernel: Series;
  /** The guest's node for the suite: undefined for the host's own (PATH), else another release's binary. */
  node?: { major: string; path: string };
  ok: boolean;
  reason?: string;
  result?: GuestResult;
  /** The suite's and the after-suite checks' together, and the after-suite checks' alone. */
  counts: Partial<Record<'tests' | 'pass' | 'fail' | 'skipped' | 'todo' | 'cancelled', number>>;
  afterCounts: KernelRun['counts'];
  prepareMs: number;
  dmesgProblems: string[];
}

function collectTests(dir: string, out: string[] = []): string[] {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) collectTests(p, out);
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

/** node:test's closing counts, from the spec ("ℹ tests 3") or tap ("# tests 3") reporter. */
export function parseCounts(output: string): KernelRun['counts'] {
  const counts: KernelRun['counts'] = {};
  for (const m of output.matchAll(/^(?:ℹ|#) (tests|pass|fail|skipped|todo|cancelled) (\d+)\s*$/gm)) {
    counts[m[1] as keyof KernelRun['counts']] = Number(m[2]);
  }
  return counts;
}

/** One failed test as node:test's spec reporter lists it at the end: where, which, and why. */
export interface FailedTest {
  location: string;
  name: string;
  /** The error's first lines, joined (the stack and the error's properties left out). */
  message: string;
}

/**
 * The failed tests of a spec reporter's closing "failing tests" section, innermost first as the
 * reporter lists them. CI shows only the tail of a run, so the summary repeats these.
 */
export function failedTests(output: string): FailedTest[] {
  const at = output.lastIndexOf('\u2716 failing tests:');
  if (at < 0) return [];
  const lines = output.slice(at).split('\n').slice(1);
  const found: FailedTest[] = [];
  for (let i = 0; i < lines.length; i++) {
    const where = /^test at (\S+)\s*$/.exec(lines[i]!);
    const head = where ? /^\u2716 (.*?)(?: \([\d.]+m?s\))?\s*$/.exec(lines[i + 1] ?? '') : null;
    if (!where || !head) continue;
    // The message's lines up to the stack, at most three ("Expected values to be strictly equal:" says little alone).
    const message: string[] = [];
    for (let j = i + 2; j < lines.length && message.length < 3; j++) {
      const line = lines[j]!.trim();
      if (line.startsWith('at ') || line.startsWith('test at ') || line.startsWith('\u2716 ')) break;
      if (line) message.push(line);
    }
    found.push({ location: where[1]!, name: head[1]!, message: message.join(' / ') });
    i += 1;
  }
  return found;
}

type Counts = KernelRun['counts'];

/** The sum of two sets of counts (the suite's and the after-suite checks'). */
function addCounts(a: Counts, b: Counts): Counts {
  const sum: Counts = { ...a };
  for (const [k, v] of Object.entries(b) as [keyof Counts, number][]) sum[k] = (sum[k] ?? 0) + v;
  return sum;
}

/** Writes complete lines with a prefix (output of guests that run side by side). */
class LinePrefixer implements TextSink {
  private partial = '';
  constructor(
    private readonly prefix: string,
    private readonly out: TextSink,
  ) {}
  write(text: string): boolean {
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop() ?? '';
    if (lines.length) this.out.write(lines.map((l) => this.prefix + l + '\n').join(''));
    return true;
  }
  flush(): void {
    if (this.partial) this.out.write(this.prefix + this.partial + '\n');
    this.partial = '';
  }
}

async function runKernel(run: KernelRun, echo: TextSink, timeoutSec: number, extra: string[]): Promise<void> {
  const kernel = run.kernel;
  const out = join(RESULTS_DIR, runLabel(run));
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  echo.write(`=== integration suite on ${kernel}${run.node ? ` under Node ${run.node.major}` : ''} ===\n`);
  // The tests start every command with their own node (process.execPath): the whole suite runs
  // under this one, with the addon and dist/ as the host's Node built them.
  const node = run.node ? shQuote(run.node.path) : 'node';
  // the suite, then the after-suite checks (without the run-tests flags: a name pattern must not
  // filter them away), then the kernel log (also when the suite failed)
  const script = [
    `${node} scripts/run-tests.js ${extra.map(shQuote).join(' ')} dist/test/integration`,
    's=$?',
    `echo ${shQuote(AFTER_SUITE_MARK)}`,
    `${node} scripts/run-tests.js ${AFTER_SUITE_DIR}`,
    'a=$?',
    'dmesg > "$VFIO_MIG_OUT/dmesg.txt" 2>&1',
    '[ $s -ne 0 ] && exit $s',
    'exit $a',
  ].join('; ');
  const r = await runInGuest({
    kernel,
    command: ['sh', '-c', script],
    timeoutMs: timeoutSec * 1000,
    echo,
    outDir: out,
  });
  run.result = r;
  writeFileSync(join(out, 'output.txt'), r.output);
  writeFileSync(join(out, 'console.txt'), r.console);
  const mark = r.output.indexOf(`\n${AFTER_SUITE_MARK}\n`);
  const suiteCounts = parseCounts(mark < 0 ? r.output : r.output.slice(0, mark));
  run.afterCounts = mark < 0 ? {} : parseCounts(r.output.slice(mark));
  run.counts = addCounts(suiteCounts, run.afterCounts);
  const dmesgFile = join(out, 'dmesg.txt');
  if (existsSync(dmesgFile)) run.dmesgProblems = kernelLogProblems(readFileSync(dmesgFile, 'utf8'));
  if (r.error) run.reason = r.error;
  else if (r.status !== 0 && suiteCounts.fail === 0 && run.afterCounts.fail)
    run.reason = `the after-suite checks failed (${run.afterCounts.fail}), status ${r.status}`;
  else if (r.status !== 0) run.reason = `the suite exited with status ${r.status}`;
  else if (mark < 0) run.reason = 'the after-suite checks did not run';
  else if (!run.counts.pass) run.reason = 'no test passed (all skipped?)';
  else if (run.dmesgProblems.length)
    run.reason = `the kernel log has ${run.dmesgProblems.length} problem line(s) (${dmesgFile})`;
  run.ok = run.reason === undefined;
  if (echo instanceof LinePrefixer) echo.flush();
  echo.write(`=== ${runLabel(run)}: ${run.ok ? 'PASS' : `FAIL: ${run.reason}`}\n`);
  if (run.dmesgProblems.length) echo.write(run.dmesgProblems.map((l) => `  | ${l}`).join('\n') + '\n');
  if (echo instanceof LinePrefixer) echo.flush();
}

/** The kernel, and the other Node when there is one: names the results directory and the output. */
function runLabel(run: KernelRun): string {
  return run.node ? `${run.kernel}-node${run.node.major}` : run.kernel;
}

/** A suite run not started yet, on `kernel` under the host's node or `node`. */
function kernelRun(kernel: Series, node?: KernelRun['node']): KernelRun {
  return { kernel, node, ok: false, counts: {}, afterCounts: {}, prepareMs: 0, dmesgProblems: [] };
}

/** The summary lines of a host tier: its verdict and counts, and its reason when it failed. */
function hostTierLines(name: string, run: HostTierRun): string[] {
  const c = run.counts;
  const line =
    `  ${name.padEnd(29)}${run.ok ? 'PASS' : 'FAIL'}  ` +
    `tests ${c.tests ?? '-'}, pass ${c.pass ?? '-'}, fail ${c.fail ?? '-'}, skipped ${c.skipped ?? '-'}  |  run ${fmt(run.durationMs)}`;
  return !run.ok && run.reason ? [line, `        ${run.reason}`] : [line];
}

interface HostTierRun {
  ok: boolean;
  reason?: string;
  counts: KernelRun['counts'];
  durationMs: number;
}

/** The harness tier: node:test over dist/test/vm on the host (its tests boot guests themselves). */
function runHarness(): Promise<HostTierRun> {
  return runHostTier('harness tier on the host (test/vm/*.test.ts)', 'harness', process.execPath, HARNESS_DIR);
}

/** Other Node releases prepare.sh unpacked (.cache/vm/node/<major>/bin/node), by major. */
function otherNodes(): { major: string; node: string }[] {
  const dir = join(PROJECT_ROOT, '.cache', 'vm', 'node');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((major) => /^\d+$/.test(major) && existsSync(join(dir, major, 'bin', 'node')))
    .sort((a, b) => Number(a) - Number(b))
    .map((major) => ({ major, node: join(dir, major, 'bin', 'node') }));
}

/**
 * The unit tests again under another Node release, with the addon and dist/ as built for the
 * host's Node: what a user who switched Node without rebuilding runs (the addon's V8 hints
 * resolve the running Node's own API; the code caches are the build's Node's).
 */
function runUnderNode(major: string, node: string): Promise<HostTierRun> {
  // The user code caches its commands write (the build's is for another Node) stay in the results.
  const xdg = join(RESULTS_DIR, `node-${major}`, 'xdg-cache');
  return runHostTier(`unit tests under Node ${major} (${node})`, `node-${major}`, node, UNIT_DIR, {
    XDG_CACHE_HOME: xdg,
  });
}

/** node:test over `dir` on the host with the `node` binary; output kept in results/<outName>. */
async function runHostTier(
  title: string,
  outName: string,
  node: string,
  dir: string,
  env: NodeJS.ProcessEnv = {},
): Promise<HostTierRun> {
  const out = join(RESULTS_DIR, outName);
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  process.stdout.write(`=== ${title} ===\n`);
  const started = Date.now();
  const child = spawn(node, [join(PROJECT_ROOT, 'scripts', 'run-tests.js'), dir], {
    cwd: PROJECT_ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    output += d;
    process.stdout.write(d);
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    output += d;
    process.stderr.write(d);
  });
  const code = await new Promise<number | null>((res) => {
    child.on('error', () => res(null));
    child.on('close', (c) => res(c));
  });
  writeFileSync(join(out, 'output.txt'), output);
  const counts = parseCounts(output);
  let reason: string | undefined;
  if (code !== 0) reason = `${title} exited with ${code ?? 'an error'}`;
  else if (!counts.pass) reason = `no test passed in ${title} (all skipped?)`;
  process.stdout.write(`=== ${title}: ${reason === undefined ? 'PASS' : `FAIL: ${reason}`}\n`);
  return { ok: reason === undefined, reason, counts, durationMs: Date.now() - started };
}

function fmt(ms: number | null | undefined): string {
  return ms === null || ms === undefined ? '-' : `${(ms / 1000).toFixed(1)} s`;
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  let kernels: Series[] = [...SERIES];
  // Generous: the suite grows, and a loaded 2-core CI machine runs TCG guests slowly; CI has 90 minutes.
  let timeoutSec = 30 * 60;
  let doPrepare = true;
  let harness = true;
  let withOtherNodes = true;
  // both kernels at once when the host has the cores: a guest running the suite keeps
  // about one host core busy, so two side by side take little longer than one
  let parallel =
    process.env.VFIO_MIG_VM_PARALLEL !== undefined
      ? process.env.VFIO_MIG_VM_PARALLEL === '1'
      : availableParallelism() >= 2;
  const extra: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--') {
      extra.push(...args.slice(i + 1));
      break;
    } else if (a === '--kernel' || a.startsWith('--kernel=')) {
      const k = a.includes('=') ? a.slice(9) : args[++i];
      if (k === 'all') kernels = [...SERIES];
      else if (k === '6.12' || k === '6.1') kernels = [k];
      else throw new Error(`--kernel: 6.12, 6.1 or all, not ${k}`);
    } else if (a === '--timeout' || a.startsWith('--timeout=')) {
      timeoutSec = Number(a.includes('=') ? a.slice(10) : args[++i]);
      if (!Number.isFinite(timeoutSec) || timeoutSec <= 0) throw new Error('--timeout: seconds');
    } else if (a === '--no-prepare') {
      doPrepare = false;
    } else if (a === '--no-harness') {
      harness = false;
    } else if (a === '--no-other-nodes') {
      withOtherNodes = false;
    } else if (a === '--parallel') {
      parallel = true;
    } else if (a === '--sequential') {
      parallel = false;
    } else if (a === '-h' || a === '--help') {
      process.stdout.write(
        'usage: node dist/test/vm/run-suite.js [--kernel 6.12|6.1|all] [--timeout SEC] [--parallel|--sequential] [--no-prepare] [--no-harness] [--no-other-nodes] [-- <run-tests flags>]\n',
      );
      return 0;
    } else {
      throw new Error(`unknown argument ${a}`);
    }
  }

  const tests = collectTests(SUITE_DIR);
  if (tests.length === 0) {
    process.stderr.write(
      `test:vm: no *.test.js under ${relative(PROJECT_ROOT, SUITE_DIR)}: the integration suite is missing or not built (npm run build)\n`,
    );
    return 1;
  }
  const afterTests = collectTests(join(PROJECT_ROOT, AFTER_SUITE_DIR));
  if (afterTests.length === 0) {
    process.stderr.write(`test:vm: no *.test.js under ${AFTER_SUITE_DIR}: not built (npm run build)\n`);
    return 1;
  }
  process.stdout.write(
    `test:vm: ${tests.length} integration test file(s) and ${afterTests.length} after-suite check file(s), kernels ${kernels.join(', ')}\n`,
  );

  const started = Date.now();
  const runs: KernelRun[] = kernels.map((kernel) => kernelRun(kernel));
  // prepare first (it holds a lock anyway), then boot
  for (const run of runs) {
    const t0 = Date.now();
    try {
      if (doPrepare) prepare(run.kernel, {});
    } catch (err) {
      run.reason = (err as Error).message;
      process.stdout.write(`=== ${run.kernel}: prepare failed: ${run.reason}\n`);
    }
    run.prepareMs = Date.now() - t0;
  }
  // the harness first: when it misreports, the guest suites' verdicts mean nothing
  const harnessRun = harness ? await runHarness() : undefined;
  const nodes = withOtherNodes ? otherNodes() : [];
  const nodeRuns: { major: string; run: HostTierRun }[] = [];
  if (withOtherNodes && nodes.length === 0)
    process.stdout.write(
      '=== no other Node release in .cache/vm/node (prepare.sh warned why): those runs are skipped\n',
    );
  for (const { major, node } of nodes) nodeRuns.push({ major, run: await runUnderNode(major, node) });
  const ready = runs.filter((r) => r.reason === undefined);
  if (parallel && ready.length > 1) {
    process.stdout.write(
      `test:vm: booting ${ready.map((r) => r.kernel).join(' and ')} side by side; lines are prefixed with the kernel\n`,
    );
    await Promise.all(
      ready.map((run) => runKernel(run, new LinePrefixer(`[${run.kernel}] `, process.stdout), timeoutSec, extra)),
    );
  } else {
    for (const run of ready) await runKernel(run, process.stdout, timeoutSec, extra);
  }
  // Then the suite once more on the first kernel, under the newest other Node: the release most
  // users run, with the addon and dist/ as built here.
  const newest = nodes.at(-1);
  if (newest && ready[0]) {
    const run = kernelRun(ready[0].kernel, { major: newest.major, path: newest.node });
    runs.push(run);
    await runKernel(run, process.stdout, timeoutSec, extra);
  }

  const total = Date.now() - started;
  const lines = [
    '',
    `test:vm summary (${harnessRun ? 'the harness tier on the host, then ' : ''}the integration suite in the guest, one boot per kernel${parallel && ready.length > 1 ? ', side by side' : ''}):`,
  ];
  for (const run of runs) {
    const r = run.result;
    const c = run.counts;
    const suiteMs = r && r.bootMs !== null ? r.durationMs - r.bootMs : null;
    lines.push(
      `  ${runLabel(run).padEnd(12)} ${(r?.kver ?? '').padEnd(22)} ${run.ok ? 'PASS' : 'FAIL'}  ` +
        `tests ${c.tests ?? '-'}${run.afterCounts.tests !== undefined ? ` (${run.afterCounts.tests} after the suite)` : ''}, pass ${c.pass ?? '-'}, fail ${c.fail ?? '-'}, skipped ${c.skipped ?? '-'}  |  ` +
        `prepare ${fmt(run.prepareMs)}, boot ${fmt(r?.bootMs)}, suite ${fmt(suiteMs)}, run ${fmt(r?.durationMs)}` +
        (r ? ` (${r.accel.toUpperCase()})` : ''),
    );
    if (!run.ok && run.reason) lines.push(`        ${run.reason.split('\n')[0]}`);
    const failures = r ? failedTests(r.output) : [];
    for (const f of failures.slice(0, 8)) {
      lines.push(`        \u2716 ${f.name}  (${f.location})`);
      if (f.message) lines.push(`          ${f.message.slice(0, 300)}`);
    }
    if (failures.length > 8) lines.push(`        ... and ${failures.length - 8} more in the log`);
  }
  if (harnessRun) lines.push(...hostTierLines('harness (host)', harnessRun));
  for (const { major, run } of nodeRuns) lines.push(...hostTierLines(`unit tests, Node ${major}`, run));
  const ok = runs.every((r) => r.ok) && (harnessRun?.ok ?? true) && nodeRuns.every(({ run }) => run.ok);
  lines.push(
    `  ${ok ? 'all passed' : 'FAILED'} in ${fmt(total)}; logs and dmesg in ${relative(PROJECT_ROOT, RESULTS_DIR)}/<kernel>/`,
  );
  // The plain closing line CI reads: every kernel's suite and the harness tier, added up.
  const all = [
    ...runs.map((r) => r.counts),
    ...(harnessRun ? [harnessRun.counts] : []),
    ...nodeRuns.map(({ run }) => run.counts),
  ];
  const sum = (k: 'pass' | 'fail' | 'skipped') => all.reduce((n, c) => n + (c[k] ?? 0), 0);
  const failed = Math.max(sum('fail'), ok ? 0 : 1);
  lines.push(`${sum('pass')} passed, ${failed} failed, ${sum('skipped')} skipped`);
  process.stdout.write(lines.join('\n') + '\n');
  return ok ? 0 : 1;
}

if (require.main === module) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`test:vm: ${(err as Error).message ?? String(err)}\n`);
      process.exitCode = EXIT_HARNESS;
    },
  );
}
