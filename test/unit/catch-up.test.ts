// Unit tests of the joint pre-copy catch-up before a multi-device stop, against in-process model engines (no kernel).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitWindow } from '../../lib/migration/pipeline';
import { CATCH_UP_ROUNDS, catchUpPasses, type PrecopyLane } from '../../lib/migration/steps';
import type { CopyPass, MigrationEngine, PendingData } from '../../lib/migration/types';

/**
 * A running device that holds `pending` bytes and dirties `dirtyPerPass(n)` more while its n-th
 * pass runs (the work of the others, on shared CPUs, makes each pass take longer).
 */
function lane(pending: number, dirtyPerPass: (pass: number) => number) {
  const phases: number[] = [];
  let passes = 0;
  const engine = {
    async pending(): Promise<PendingData> {
      return { bytes: BigInt(pending), initialDone: true };
    },
    async copy(pass: CopyPass): Promise<number> {
      assert.equal(pass.stage, 'precopy');
      const moved = Math.min(pending, Number(pass.budget));
      await pass.emit(Buffer.alloc(moved));
      pending = pending - moved + dirtyPerPass(passes++);
      return moved;
    },
  } as unknown as MigrationEngine;
  const out = new EmitWindow(async (phase) => void phases.push(phase));
  const l: PrecopyLane = { engine, out, report: () => undefined, iterations: 2, bytes: 1000 };
  return { l, phases, left: () => pending, passes: () => passes };
}

test('model: joint passes take what the devices dirtied while waiting, until the total stops shrinking', async () => {
  // What each holds after its own pre-copy, and what a pass lets through: 4000 -> 400 -> 40 -> ...
  const a = lane(4000, (n) => [400, 40, 4][n] ?? 0);
  const b = lane(3000, (n) => [300, 30, 3][n] ?? 0);
  await catchUpPasses([a.l, b.l], undefined);
  assert.equal(a.passes(), CATCH_UP_ROUNDS, 'passes while the total shrinks, at most CATCH_UP_ROUNDS');
  assert.equal(a.left(), 4);
  assert.equal(b.left(), 3);
  assert.equal(a.l.iterations, 2 + CATCH_UP_ROUNDS);
  assert.equal(a.l.bytes, 1000 + 4000 + 400 + 40);
  // Their records continue the pre-copy phases, one phase per pass.
  assert.deepEqual(a.phases, [2, 3, 4]);
});

test('model: no pass when nothing is pending; a pass that frees nothing ends the catch-up', async () => {
  const idle = lane(0, () => 0);
  await catchUpPasses([idle.l], undefined);
  assert.equal(idle.passes(), 0);
  // A workload that dirties as fast as a pass moves: one pass, then the total no longer shrinks.
  const busy = lane(500, () => 500);
  const quiet = lane(0, () => 0);
  await catchUpPasses([busy.l, quiet.l], undefined);
  assert.equal(busy.passes(), 1);
  assert.equal(quiet.passes(), 0, 'a device with nothing pending is left alone');
});

test('model: an abort ends the catch-up with an error naming it', async () => {
  const a = lane(100, () => 100);
  const ac = new AbortController();
  ac.abort(new Error('Ctrl-C'));
  await assert.rejects(catchUpPasses([a.l], ac.signal), /catch-up/);
});
