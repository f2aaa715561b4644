// Integration soak (VM guest): many save/load round trips in one process and across processes; fds, driver allocations and RSS stay flat.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import { FdSource, openDevice, requireMigration } from '../../lib';
import { openOutput } from '../../cli/output';
import { TestDevice, liveAllocs, needsDriver, type Kind } from '../support/test-driver';
import { openFdCount } from './helpers';
import { binArgs } from '../support/cli-child';

const TMP = '/tmp/vfio-mig-soak';

// Issue 17 asks for a thousand round trips. Under TCG (no KVM on the CI machine) one in-process
// round trip of a 256 KiB state took 130-260 ms (150 in 19 s on a quiet host, 200 in 52 s with
// other guests running) and one round trip through two CLI processes 4-13 s, nearly all of it
// Node's start-up. The counts below keep the file near 40 s of guest time on a quiet host and
// under 100 s on a busy one; VFIO_MIG_SOAK_SCALE multiplies them for a longer campaign (5 gives
// the thousand in one process).
const SCALE = Number(process.env.VFIO_MIG_SOAK_SCALE ?? '1') || 1;
const IN_PROCESS = Math.round(200 * SCALE);
const ACROSS_PROCESSES = Math.round(3 * SCALE);
// RSS is compared after a warm-up: the first ~30 round trips grow it by ~15 MiB while malloc's
// mmap threshold and arenas settle (measured on the host with the v1 model: 53 -> 70 MiB by the
// 30th, then 70 +- 2 MiB up to the 1000th; V8's heap and external memory stay flat throughout).
const WARMUP = 40;
const STATE = 256 << 10;
// In the second half of the measured round trips RSS may move this much (the host moved +-2
// MiB; guests 0.9-2.9 MiB): a leak of half a state (128 KiB) per round trip adds 10 MiB there.
const RSS_TOLERANCE = 8 << 20;

const gc: () => void = (() => {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

/** RSS once garbage is collected and the finalizers of native buffers have run (they run later). */
async function rss(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 20));
  }
  return process.memoryUsage().rss;
}

describe('soak: save/load round trips', { skip: needsDriver }, () => {
  const devices: TestDevice[] = [];
  before(() => mkdirSync(TMP, { recursive: true }));
  after(() => {
    devices.forEach((d) => d.remove());
    rmSync(TMP, { recursive: true, force: true });
  });
  const pair = (kind: Kind) => {
    const a = new TestDevice(kind, { stateSize: STATE, chunkSize: 64 << 10 });
    devices.push(a);
    const b = new TestDevice(kind, { stateSize: STATE, chunkSize: 64 << 10 });
    devices.push(b);
    return [a, b] as const;
  };

  test(`${IN_PROCESS} round trips in one process (v1 and v2 alternating): fds, live_allocs and RSS flat`, async () => {
    const pairs = [pair('v1'), pair('v2')];
    const file = join(TMP, 'inproc.vfmig');
    const roundTrip = async (i: number) => {
      const [a, b] = pairs[i % 2]!;
      a.set('mutate', String(i + 1));
      const sum = a.get('checksum');
      {
        using src = openDevice(a.uuid);
        // The CLI's path: an atomic output, committed inside save().
        const out = openOutput(file);
        try {
          await requireMigration(src).save(out.sink, { leave: 'running', commit: out.commit });
        } finally {
          out.discard();
        }
      }
      {
        using dst = openDevice(b.uuid);
        await requireMigration(dst).load(FdSource.open(file));
      }
      assert.equal(b.get('checksum'), sum, `round trip ${i}`);
    };
    const started = Date.now();
    const initialRss = await rss();
    for (let i = 0; i < WARMUP; i++) await roundTrip(i); // warm-up: buffers, pools, JIT, malloc
    const before = { fds: openFdCount(), allocs: liveAllocs(), rss: await rss() };
    const half = WARMUP + Math.floor((IN_PROCESS - WARMUP) / 2);
    for (let i = WARMUP; i < half; i++) await roundTrip(i);
    const middle = await rss();
    for (let i = half; i < IN_PROCESS; i++) await roundTrip(i);
    const end = { fds: openFdCount(), allocs: liveAllocs(), rss: await rss() };
    const ms = Date.now() - started;
    console.log(
      `soak in-process: ${IN_PROCESS} round trips in ${ms} ms; fds ${before.fds} -> ${end.fds}; live_allocs ${before.allocs} -> ${end.allocs}; RSS ${(initialRss / 2 ** 20).toFixed(1)} at the start, ${(before.rss / 2 ** 20).toFixed(1)} after ${WARMUP} (warm-up), ${(middle / 2 ** 20).toFixed(1)} half-way, ${(end.rss / 2 ** 20).toFixed(1)} MiB at the end`,
    );
    assert.equal(end.fds, before.fds, 'fds leaked');
    assert.equal(end.allocs, before.allocs, "the test driver's live allocations grew");
    // A leak grows RSS by the same amount in each half; the allocator's settling happens early and
    // stops, though not always within the warm-up (a loaded CI guest on 6.1: 60.6 MiB after it,
    // 75.5 half-way, 78.4 at the end; quiet runs plateau at 74-78 MiB). So the second half is judged:
    // a leak of 128 KiB per round trip would add 10 MiB there.
    let grown = end.rss - middle;
    if (grown >= RSS_TOLERANCE) {
      // Settling can reach into the second half on a loaded guest (a CI run on 6.12: 61.4 MiB
      // after the warm-up, 64.7 half-way, 73.1 at the end, within the plateau above), while a
      // leak grows every stretch alike: judge one more stretch of the same length instead.
      const more = IN_PROCESS - half;
      for (let i = IN_PROCESS; i < IN_PROCESS + more; i++) await roundTrip(i);
      const last = await rss();
      console.log(`soak in-process: ${more} more round trips, RSS ${(last / 2 ** 20).toFixed(1)} MiB`);
      grown = last - end.rss;
    }
    assert.ok(grown < RSS_TOLERANCE, `RSS grew by ${grown} bytes in the last stretch of round trips`);
  });

  test(`${ACROSS_PROCESSES} round trips through vfio-mig processes: live_allocs flat, devices RUNNING`, () => {
    const [a, b] = pair('v2');
    const file = join(TMP, 'cli.vfmig');
    let before = { allocs: 0, fds: 0 };
    const started = Date.now();
    for (let i = -1; i < ACROSS_PROCESSES; i++) {
      // Round trip -1 is the warm-up: the state pages of both new devices are allocated on first use.
      if (i === 0) before = { allocs: liveAllocs(), fds: openFdCount() };
      a.set('mutate', String(1000 + i));
      const sum = a.get('checksum');
      const save = spawnSync(process.execPath, binArgs('save', a.uuid, '-o', file, '--quiet'), { encoding: 'utf8' });
      assert.equal(save.status, 0, save.stderr);
      const load = spawnSync(process.execPath, binArgs('load', b.uuid, '-i', file, '--quiet'), { encoding: 'utf8' });
      assert.equal(load.status, 0, load.stderr);
      assert.equal(b.get('checksum'), sum, `round trip ${i}`);
    }
    const end = { allocs: liveAllocs(), fds: openFdCount() };
    console.log(
      `soak across processes: ${ACROSS_PROCESSES} round trips in ${Date.now() - started} ms; live_allocs ${before.allocs} -> ${end.allocs}; fds of this process ${before.fds} -> ${end.fds}`,
    );
    assert.equal(end.allocs, before.allocs, "the test driver's live allocations grew");
    assert.equal(end.fds, before.fds, 'fds leaked');
    const counters = a.counters();
    assert.equal(counters.opens, counters.closes, 'every open of the source was closed');
  });
});
