// One benchmark operation in its own process (so peak RSS is its own): our save or load, with event-loop delay and RSS.
import { createWriteStream } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { FdSource, openDevice, requireMigration } from '../lib';

/** The baseline: the worst event-loop delay of a Node process doing nothing for `ms` in the same guest. */
async function idle(ms: number): Promise<void> {
  const delay = monitorEventLoopDelay({ resolution: 5 });
  delay.enable();
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
    const out = createWriteStream(file, { highWaterMark: 1 << 20 });
    const r = await migration.save(out, { leave: 'running' });
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    return { stopCopyMs: r.stopCopyMs, bytes: r.bytes };
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
  const delay = monitorEventLoopDelay({ resolution: 5 });
  using device = openDevice(uuid);
  const migration = requireMigration(device);
  delay.enable();
  let start = process.hrtime.bigint();
  const first = await once(migration, op, file!);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  delay.disable();
  const maxRssKb = process.resourceUsage().maxRSS;
  const warmMs: number[] = [];
  for (let i = 1; i < runs; i++) {
    start = process.hrtime.bigint();
    await once(migration, op, file!);
    warmMs.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  process.stdout.write(
    `${JSON.stringify({ ms, warmMs, stopCopyMs: first.stopCopyMs, bytes: Number(first.bytes), maxRssKb, idleRssKb, loopDelayMaxMs: delay.max / 1e6, loopDelayP99Ms: delay.percentile(99) / 1e6 })}\n`,
  );
}

main().catch((err) => {
  process.stderr.write(`bench one: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
