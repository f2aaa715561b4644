// Host tests (real V8, in child processes) of GcHold: I/O buffers that push V8 past its old-generation limit run no mark-compact while held.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { canHoldMajorGc } from '../../lib/gc-hold';

const GC_HOLD = join(__dirname, '../../lib/gc-hold.js');
const V8_MAJOR = Number(process.versions.v8.split('.')[0]);
// Objects it takes to reach the limit past the buffers, measured: V8 11 and 12 (Node 20, 22) run
// a mark-compact unheld with 300k in every run and none held. V8 13 (Node 24) needs more: with
// 900k, 32 of 40 unheld runs had one and none of 120 held runs; with a million 2 of 40 held runs
// had one too (incremental marking finalized past the hint's margin). V8 14 (Node 26): 700k.
const OBJECTS = V8_MAJOR >= 14 ? 700_000 : V8_MAJOR >= 13 ? 900_000 : 300_000;
// V8 14 runs incremental marking while loading too and now and then finalizes it: there the hint
// holds off most mark-compacts, not every one (700k objects: 26 of 30 unheld runs had one and 0
// of 30 held; 800k: 3 of 30 held; 900k under load: 9 of 20 held). So there the held tests
// compare ten held runs with ten unheld; elsewhere no held run may have one.
const EVERY_RUN = V8_MAJOR < 14;
const BUFFERS = join(__dirname, '../../lib/buffers.js');

/**
 * Mark-compacts (V8's --trace-gc) of a child that holds 16 MiB of I/O buffers and then keeps
 * OBJECTS small objects alive: their promotion allocates old-space pages, where V8 compares the
 * heap plus that native memory with its limit (measured on Node 20, 22, 24 and 26: see
 * OBJECTS). `steps` runs between the buffers and the objects, with holds a and b.
 */
function markCompacts(steps: string, after = ''): number {
  const script = `
    const { GcHold } = require(${JSON.stringify(GC_HOLD)});
    const { allocIoBuffer } = require(${JSON.stringify(BUFFERS)});
    const a = new GcHold(), b = new GcHold();
    const keep = [];
    for (let i = 0; i < 16; i++) keep.push(allocIoBuffer(1 << 20));
    ${steps}
    const live = [];
    for (let i = 0; i < ${OBJECTS}; i++) live.push({ a: i, b: [i, i + 1] });
    ${after}
  `;
  const out = execFileSync(process.execPath, ['--trace-gc', '-e', script], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes('Mark-Compact')).length;
}

const why = canHoldMajorGc() ? false : 'this V8 has neither Isolate::SetIsLoading nor Isolate::SetRAILMode';

test('unheld (the control): the buffers and objects run a mark-compact', { skip: why }, () => {
  // Without this the held tests below would prove nothing.
  // Up to five runs: V8 13 skips it in about one run of five.
  const runs: number[] = [];
  while (runs.length < 5 && !runs.some((n) => n > 0)) runs.push(markCompacts(''));
  assert.ok(
    runs.some((n) => n > 0),
    `no mark-compact in ${runs.length} runs: V8's limits changed; the test needs more memory`,
  );
});

/** Asserts that `steps` hold off the mark-compacts: none in three runs, or (V8 14) under half as many as unheld in ten runs each. */
function assertHeldOff(steps: string, label: string): void {
  if (EVERY_RUN) {
    for (let run = 0; run < 3; run++) assert.equal(markCompacts(steps), 0, `${label}, run ${run}`);
    return;
  }
  let held = 0;
  let unheld = 0;
  for (let run = 0; run < 10; run++) {
    held += markCompacts(steps);
    unheld += markCompacts('');
  }
  assert.ok(held * 2 < unheld, `${label}: ${held} mark-compacts held against ${unheld} unheld, in ten runs each`);
}

test('held: no mark-compact, in three runs (V8 14: far fewer than unheld)', { skip: why }, () => {
  assertHeldOff('a.take();', 'held');
});

test('nested holds: the hint lasts until the last holder releases, and twice releasing is once', { skip: why }, () => {
  assertHeldOff('a.take(); b.take(); a.release(); a.release();', 'b still held');
  // After the last release V8's heuristics are back: the same objects, and as many again, collect.
  const released = markCompacts(
    'a.take(); b.take(); a.release(); b.release();',
    `const more = []; for (let i = 0; i < ${OBJECTS}; i++) more.push({ i });`,
  );
  assert.ok(released > 0, 'no mark-compact after both holds were released');
});
