// Unit tests of FrameQueue (no kernel): one direction of the in-process channel, frames handed over as objects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FrameQueue, FRAME_QUEUE_FRAMES, FRAME_QUEUE_HELD_BYTES } from '../../lib/migration/frame-queue';
import { channelPair } from '../../lib/migration/local';
import { FRAME, WireEnd, type Frame } from '../../lib/migration/wire';

const frame = (n: number, size = 1): Frame => ({ type: FRAME.data, device: n, payload: Buffer.alloc(size, n) });
const tick = () => new Promise<void>((resolve) => process.nextTick(resolve));

test('FrameQueue: frames come out as they went in (the same objects, in order), then the end', async () => {
  const q = new FrameQueue();
  const sent = [frame(1), frame(2), frame(3)];
  for (const f of sent) void q.push(f, false);
  q.end();
  const got: Frame[] = [];
  for (let f = await q.next(); f; f = await q.next()) got.push(f);
  assert.equal(got.length, 3);
  got.forEach((f, i) => assert.equal(f, sent[i], 'the very object'));
  assert.equal(await q.next(), null, 'the end stays the end');
});

test('FrameQueue: FRAME_QUEUE_FRAMES queued; later ones held; a send waits only once FRAME_QUEUE_HELD_BYTES are held, a flushed one until its frame is queued', async () => {
  const q = new FrameQueue();
  for (let i = 0; i < FRAME_QUEUE_FRAMES; i++) assert.equal(q.push(frame(i), false), undefined, 'queued: go on');
  assert.equal(q.push(frame(10, 100), false), undefined, 'held, under the mark: go on');
  let flushedQueued = false;
  const flushed = q.push(frame(11), true)!.then(() => (flushedQueued = true));
  let drained = false;
  const big = q.push(frame(12, FRAME_QUEUE_HELD_BYTES), false);
  assert.ok(big, 'the mark reached: wait');
  void big!.then(() => (drained = true));
  await tick();
  await tick();
  assert.equal(flushedQueued, false, 'a held message waits for its frame to be queued');
  assert.equal(q.take()!.device, 0);
  await tick();
  assert.equal(drained, false, 'frames still held');
  assert.equal(q.take()!.device, 1);
  await flushed;
  assert.equal(q.take()!.device, 10);
  assert.equal(q.take()!.device, 11);
  await tick();
  await tick();
  assert.equal(drained, true, 'every held frame is queued: the sender goes on');
  assert.equal(q.take()!.device, 12);
  assert.equal(q.take(), undefined);
});

test('FrameQueue: a flushed send goes on at a later tick, never inside push(); those of one burst in one tick', async () => {
  const q = new FrameQueue();
  const order: string[] = [];
  void q.push(frame(1), true)!.then(() => order.push('a'));
  void q.push(frame(2), true)!.then(() => order.push('b'));
  order.push('sync');
  await Promise.resolve();
  assert.deepEqual(order, ['sync'], 'not even a promise reaction later');
  await tick();
  await Promise.resolve();
  assert.deepEqual(order, ['sync', 'a', 'b']);
});

test('FrameQueue: a waiting reader gets the next frame at once; the end wakes it with null', async () => {
  const q = new FrameQueue();
  const waiting = q.next();
  const f = frame(5);
  void q.push(f, false);
  assert.equal(await waiting, f);
  const ended = q.next();
  q.end();
  assert.equal(await ended, null);
});

test('FrameQueue: destroy fails the reader (premature close), the waiting sends, and later sends', async () => {
  const q = new FrameQueue();
  for (let i = 0; i < FRAME_QUEUE_FRAMES; i++) void q.push(frame(i), false);
  const held = q.push(frame(9), true)!;
  q.destroy();
  await assert.rejects(held, { code: 'ERR_STREAM_DESTROYED' });
  await assert.rejects(q.next(), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
  assert.throws(() => q.push(frame(1), false), /the stream sink is closed/);
  const r = new FrameQueue();
  const reading = r.next();
  r.destroy();
  await assert.rejects(reading, { code: 'ERR_STREAM_PREMATURE_CLOSE' });
});

test('FrameQueue: a reader that stops early destroys the queue for its sender; one that read to the end does not', async () => {
  const q = new FrameQueue();
  void q.push(frame(1), false);
  q.stopReading(new Error('closed'));
  assert.equal(q.destroyed, true);
  assert.throws(() => q.push(frame(2), false), /the stream sink is closed/);
  const done = new FrameQueue();
  void done.push(frame(1), false);
  done.end();
  await done.next();
  assert.equal(await done.next(), null);
  done.stopReading(new Error('closed'));
  assert.equal(done.destroyed, false);
});

test('channelPair: WireEnds on its ends hand each frame over as the same object, count bytes as the wire would, and refuse use as a byte stream', async () => {
  const [a, b] = channelPair();
  const sender = new WireEnd(a);
  const receiver = new WireEnd(b);
  await sender.writePreamble();
  assert.equal(await receiver.readPreamble(), 1);
  const payload = Buffer.alloc(3000, 7);
  await sender.send(FRAME.data, 2, payload);
  await sender.sendMessage(FRAME.commit, 0, { ok: true });
  const got = (await receiver.read())!;
  assert.equal(got.payload, payload, 'the very buffer');
  assert.equal(got.device, 2);
  assert.equal((await receiver.read())!.type, FRAME.commit);
  assert.equal(sender.bytesOut, receiver.bytesIn);
  assert.equal(receiver.bytesIn, 12 + 8 + 3000 + 8 + '{"ok":true}'.length);
  sender.close('done');
  assert.equal(await receiver.read(), null, 'a clean end between frames');
  assert.throws(() => (a as { readable: unknown }).readable, /carries frames, not bytes/);
  assert.throws(() => new WireEnd({ ...(b as object) } as never), /channel must be a Duplex/);
});

test('channelPair: closing one end fails its own pending read with the reason, and the peer then cannot send', async () => {
  const [a, b] = channelPair();
  const left = new WireEnd(a);
  const right = new WireEnd(b);
  const pending = left.read();
  left.close('the migration failed');
  await assert.rejects(pending, { code: 'ERR_WIRE_CLOSED', message: 'the migration failed' });
  await assert.rejects(right.send(FRAME.data, 0, Buffer.alloc(1)), /the stream sink is closed/);
  assert.equal(await right.read(), null, 'the closed end ended its side');
});

test('channelPair: destroying one end fails the peer reader at once, even with frames queued', async () => {
  const [a, b] = channelPair();
  const left = new WireEnd(a);
  const right = new WireEnd(b);
  await left.send(FRAME.data, 0, Buffer.alloc(1));
  left.destroy('a source device failed');
  await assert.rejects(right.read(), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
});
