// One benchmark operation in its own process (so peak RSS is its own): our save or load, with event-loop delay and RSS.
import { close, constants, open } from 'node:fs';
import { promisify } from 'node:util';
import { monitorEventLoopDelay, PerformanceObserver, type IntervalHistogram } from 'node:perf_hooks';
import { FdSource, openDevice, requireMigration } from '../lib';
import { FileSink } from '../lib/migration/stream';

const RESOLUTION_MS = 5;

/**
 * An enabled loop-delay histogram. Its first sample only sets a baseline, so it is given two
 * samples' time before the measured work starts: else a stall at the very start would not count.
 */
async function startDelayMonitor(): Promise<IntervalHistogram> {
  const delay = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  delay.enable();
  await new Promise((resolve) => setTimeout(resolve, 3 * RESOLUTION_MS));
  delay.reset();
  return delay;
}

/** The baseline: the worst event-loop delay of a Node process doing nothing for `ms` in the same guest. */
async function idle(ms: number): Promise<void> {
  const delay = await startDelayMonitor();
  await new Promise((resolve) => setTimeout(resolve, ms));
  delay.disable();
  process.stdout.write(
    `${JSON.stringify({ ms, loopDelayMaxMs: delay.max / 1e6, loopDelayP99Ms: delay.percentile(99) / 1e6 })}\n`,
  );
}

/** One save or load; the caller times it. */
async function once(
  migration: ReturnType<typeof requireMigration>,
  op: string,
  file: string,
): Promise<{ stopCopyMs?: number; bytes: bigint }> {
  if (op === 'save') {
    // As the CLI does: the encoder writes the file itself (FileSink), each record in one writev.
    // (libuv opens every file O_CLOEXEC.) Opened and closed on the thread pool, as a program
    // would: truncating the last run's file frees its pages inside open(), a stall of over 100 ms
    // of this loop in the guest (December 3), which the warm runs' loop delay then reported as ours.
    const fd = await promisify(open)(file, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o600);
    try {
      const r = await migration.save(new FileSink(fd), { leave: 'running' });
      return { stopCopyMs: r.stopCopyMs, bytes: r.bytes };
    } finally {
      await promisify(close)(fd);
    }
  }
  if (op === 'load') {
    // As the CLI does: the decoder reads the file into buffers it reuses.
    return { bytes: (await migration.load(FdSource.open(file))).bytes };
  }
  throw new Error(`unknown op ${op}`);
}

/**
 * `one save|load DEVICE FILE [RUNS]`: the op once, cold (the figure the bench reports, with its
 * loop delay and RSS), then RUNS-1 more times in the same process: "warm", where V8 has compiled
 * and optimized the engine's code, which shows what the first run spends on warming up.
 */
async function main(): Promise<void> {
  const [op, uuid, file, runsArg] = process.argv.slice(2);
  if (op === 'idle') return idle(Number(uuid));
  const runs = Math.max(1, Number(runsArg ?? 1));
  const idleRssKb = process.resourceUsage().maxRSS;
  using device = openDevice(uuid);
  const migration = requireMigration(device);
  // The longest garbage-collection pause during the measured runs: one cause of loop delay.
  let gcMaxMs = 0;
  let measuring = false;
  const gc = new PerformanceObserver((list) => {
    if (measuring) for (const e of list.getEntries()) gcMaxMs = Math.max(gcMaxMs, e.duration);
  });
  gc.observe({ entryTypes: ['gc'] });
  const delay = await startDelayMonitor();
  measuring = true;
  let start = process.hrtime.bigint();
  const first = await once(migration, op, file!);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  delay.disable();
  const maxRssKb = process.resourceUsage().maxRSS;
  // The warm runs' worst delay: what is left once V8 has compiled the code (no first-call compiles).
  const warmDelay = await startDelayMonitor();
  const warmMs: number[] = [];
  for (let i = 1; i < runs; i++) {
    start = process.hrtime.bigint();
    await once(migration, op, file!);
    warmMs.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  warmDelay.disable();
  measuring = false;
  gc.disconnect();
  const result = {
    ms,
    warmMs,
    stopCopyMs: first.stopCopyMs,
    bytes: Number(first.bytes),
    maxRssKb,
    idleRssKb,
    loopDelayMaxMs: delay.max / 1e6,
    loopDelayP99Ms: delay.percentile(99) / 1e6,
    warmLoopDelayMaxMs: runs > 1 ? warmDelay.max / 1e6 : undefined,
    gcMaxMs,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((err) => {
  process.stderr.write(`bench one: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
