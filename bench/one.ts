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

async function main(): Promise<void> {
  const [op, uuid, file] = process.argv.slice(2);
  if (op === 'idle') return idle(Number(uuid));
  const idleRssKb = process.resourceUsage().maxRSS;
  const delay = monitorEventLoopDelay({ resolution: 5 });
  using device = openDevice(uuid);
  const migration = requireMigration(device);
  delay.enable();
  const start = process.hrtime.bigint();
  let stopCopyMs: number | undefined;
  let bytes: bigint;
  if (op === 'save') {
    const out = createWriteStream(file, { highWaterMark: 1 << 20 });
    const r = await migration.save(out, { leave: 'running' });
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    stopCopyMs = r.stopCopyMs;
    bytes = r.bytes;
  } else if (op === 'load') {
    // As the CLI does: the decoder reads the file into buffers it reuses.
    const r = await migration.load(FdSource.open(file));
    bytes = r.bytes;
  } else {
    throw new Error(`unknown op ${op}`);
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  delay.disable();
  process.stdout.write(
    `${JSON.stringify({ ms, stopCopyMs, bytes: Number(bytes), maxRssKb: process.resourceUsage().maxRSS, idleRssKb, loopDelayMaxMs: delay.max / 1e6, loopDelayP99Ms: delay.percentile(99) / 1e6 })}\n`,
  );
}

main().catch((err) => {
  process.stderr.write(`bench one: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
