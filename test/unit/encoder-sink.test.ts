// Host-side test: a sink that errors while no write is awaited (as a file stream destroyed under an in-flight write did in CI on Ctrl-C) must not crash the process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { StreamEncoder } from '../../lib/migration/stream';

test('a sink error between writes is reported by the encoder, never an unhandled error event', async () => {
  const pending: Array<(err?: Error | null) => void> = [];
  const sink = new Writable({
    highWaterMark: 64 << 20,
    write(_chunk, _enc, cb) {
      pending.push(cb); // the write is "in flight"
    },
  });
  const enc = new StreamEncoder(sink, { protocol: 'v1', device: {} });
  await enc.writeRecord(0, Buffer.alloc(1024, 1)); // resolves while the sink still holds it
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);
  process.prependListener('uncaughtException', onUncaught);
  try {
    sink.destroy(new Error('the disk went away'));
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(uncaught, [], 'no unhandled error event');
    await assert.rejects(enc.writeRecord(0, Buffer.alloc(10)), /disk went away|closed|destroyed/);
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});
