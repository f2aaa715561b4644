// Unit tests of MemoryPipe (no kernel): one direction of the in-process channel, as a writable stream and an async iterable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryPipe, MEMORY_PIPE_CHUNKS, MEMORY_PIPE_HELD_BYTES } from '../../lib/migration/memory-pipe';

const tick = () => new Promise((r) => setImmediate(r));

test('MemoryPipe: chunks come out as they went in (the same objects, in order), then the end', async () => {
  const pipe = new MemoryPipe();
  const chunks = [Buffer.from('a'), Buffer.from('bc'), Buffer.alloc(0), Buffer.from('def')];
  for (const c of chunks) pipe.write(c);
  pipe.end();
  assert.equal(pipe.writableEnded, true);
  const got: Uint8Array[] = [];
  for await (const c of pipe) got.push(c);
  assert.equal(got.length, chunks.length);
  got.forEach((c, i) => assert.equal(c, chunks[i], 'handed over by reference'));
});

test('MemoryPipe: MEMORY_PIPE_CHUNKS queued, later writes held and called back as the reader makes room; false and drain at MEMORY_PIPE_HELD_BYTES held', async () => {
  const pipe = new MemoryPipe();
  const called: number[] = [];
  const accepted: boolean[] = [];
  const big = Buffer.alloc(MEMORY_PIPE_HELD_BYTES, 7);
  const chunks = [...Array.from({ length: MEMORY_PIPE_CHUNKS + 1 }, (_, i) => Buffer.from([i])), big];
  chunks.forEach((c, i) => accepted.push(pipe.write(c, () => called.push(i))));
  assert.deepEqual(accepted, [...Array(MEMORY_PIPE_CHUNKS + 1).fill(true), false], 'held bytes reach the mark');
  await tick();
  assert.deepEqual(
    called,
    chunks.slice(0, MEMORY_PIPE_CHUNKS).map((_, i) => i),
    'held writes wait',
  );
  let drained = 0;
  pipe.on('drain', () => drained++);
  const it = pipe[Symbol.asyncIterator]();
  assert.equal((await it.next()).value, chunks[0]);
  await tick();
  assert.equal(called.length, MEMORY_PIPE_CHUNKS + 1, 'the first held write is queued');
  assert.equal(drained, 0, 'one still held');
  await it.next();
  await tick();
  assert.equal(called.length, MEMORY_PIPE_CHUNKS + 2);
  assert.equal(drained, 1);
  pipe.end();
  const rest: Uint8Array[] = [];
  for (let r = await it.next(); !r.done; r = await it.next()) rest.push(r.value);
  assert.deepEqual(rest, chunks.slice(2));
});

test('MemoryPipe: write callbacks come on a later tick, never inside write(), in order, those of one burst in one tick', async () => {
  const pipe = new MemoryPipe();
  const order: string[] = [];
  pipe.write(Buffer.from('a'), () => order.push('a'));
  // A tick queued between two writes runs after both callbacks: the burst shares the first tick.
  process.nextTick(() => order.push('tick'));
  pipe.write(Buffer.from('b'), () => order.push('b'));
  assert.equal(order.length, 0, 'not called back inside write()');
  await new Promise<void>((r) => process.nextTick(r));
  assert.deepEqual(order, ['a', 'b', 'tick']);
  // The next burst gets a tick of its own (the list was emptied), and a write inside a callback
  // is called back on a later tick, after the callbacks already due. (Room for every chunk:
  // the reader takes the first two.)
  const it = pipe[Symbol.asyncIterator]();
  await it.next();
  await it.next();
  pipe.write(Buffer.from('c'), () => {
    order.push('c');
    pipe.write(Buffer.from('e'), () => order.push('e'));
  });
  pipe.write(Buffer.from('d'), () => order.push('d'));
  await tick();
  assert.deepEqual(order, ['a', 'b', 'tick', 'c', 'd', 'e']);
});

test('MemoryPipe: a reader waits for the writer; the end wakes it', async () => {
  const pipe = new MemoryPipe();
  const it = pipe[Symbol.asyncIterator]();
  const first = it.next();
  const second = first.then(() => it.next());
  setImmediate(() => pipe.write(Buffer.from('x')));
  assert.deepEqual((await first).value, Buffer.from('x'));
  setImmediate(() => pipe.end());
  assert.equal((await second).done, true);
});

test('MemoryPipe: destroy fails the reader (premature close), the waiting writes, and later writes; close is emitted', async () => {
  const pipe = new MemoryPipe();
  const errors: (Error | null | undefined)[] = [];
  for (let i = 0; i < MEMORY_PIPE_CHUNKS + 1; i++) pipe.write(Buffer.from([i]), (err) => errors.push(err));
  let closed = false;
  pipe.on('close', () => (closed = true));
  const it = pipe[Symbol.asyncIterator]();
  pipe.destroy();
  assert.equal(pipe.destroyed, true);
  await assert.rejects(it.next(), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
  await tick();
  assert.ok(closed);
  assert.equal(
    errors.filter((e) => (e as NodeJS.ErrnoException | undefined)?.code === 'ERR_STREAM_DESTROYED').length,
    1,
    'the write still waiting',
  );
  let late: Error | null | undefined;
  assert.equal(
    pipe.write(Buffer.from('z'), (err) => (late = err)),
    false,
  );
  await tick();
  assert.equal((late as NodeJS.ErrnoException).code, 'ERR_STREAM_DESTROYED');
  pipe.destroy();
});

test('MemoryPipe: a reader that stops (iterator return, as a closed reader does) destroys the pipe for its writer', async () => {
  const pipe = new MemoryPipe();
  pipe.write(Buffer.from('a'));
  let closed = false;
  pipe.on('close', () => (closed = true));
  for await (const c of pipe) {
    assert.deepEqual(c, Buffer.from('a'));
    break;
  }
  await tick();
  assert.ok(pipe.destroyed && closed);
});
