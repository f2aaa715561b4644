// Host-side unit tests of the overlap helpers (pure logic): emit order, buffer reuse safety, read-ahead.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkBuffers, EmitWindow, readAhead } from '../../lib/migration/pipeline';

test('EmitWindow keeps one emit in flight, in order, and never lets a buffer be refilled under it', async () => {
  const seen: string[] = [];
  let running = 0;
  let maxRunning = 0;
  const window = new EmitWindow(async (phase, payload) => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    const before = Buffer.from(payload).toString();
    await new Promise((r) => setTimeout(r, 2));
    assert.equal(Buffer.from(payload).toString(), before, 'the payload did not change while emitted');
    seen.push(`${phase}:${before}`);
    running--;
  });
  const buffers = new ChunkBuffers();
  for (let i = 0; i < 10; i++) {
    const b = buffers.next(4);
    b.write(`c${i}`.padEnd(4, '.'));
    await window.push(i, b.subarray(0, 4));
  }
  await window.flush();
  assert.deepEqual(
    seen,
    Array.from({ length: 10 }, (_, i) => `${i}:${`c${i}`.padEnd(4, '.')}`),
  );
  assert.equal(maxRunning, 1);
});

test('EmitWindow surfaces an emit failure at the next push or flush', async () => {
  const window = new EmitWindow(async (phase) => {
    if (phase === 1) throw new Error('sink broke');
  });
  await window.push(0, Buffer.alloc(1));
  await window.push(1, Buffer.alloc(1));
  await assert.rejects(window.push(2, Buffer.alloc(1)), /sink broke/);
});

test('readAhead yields everything in order, surfaces source errors, and lets go on early exit', async () => {
  async function* numbers(n: number, failAt = -1) {
    for (let i = 0; i < n; i++) {
      if (i === failAt) throw new Error(`bad item ${i}`);
      yield i;
    }
  }
  const got: number[] = [];
  for await (const x of readAhead(numbers(5))) got.push(x);
  assert.deepEqual(got, [0, 1, 2, 3, 4]);
  const partial: number[] = [];
  await assert.rejects(async () => {
    for await (const x of readAhead(numbers(5, 3))) partial.push(x);
  }, /bad item 3/);
  assert.deepEqual(partial, [0, 1, 2]);
  let released = false;
  async function* tracked() {
    try {
      yield 1;
      yield 2;
      yield 3;
    } finally {
      released = true;
    }
  }
  for await (const x of readAhead(tracked())) if (x === 1) break;
  await new Promise((r) => setImmediate(r));
  assert.equal(released, true);
});
