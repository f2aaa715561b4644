// A seeded, deterministic fuzz run inside the unit suite: stream decoder/verifier and the info decoders (npm run fuzz runs longer).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { campaign } from '../fuzz/targets';

test('fuzz: the stream decoder answers every mutated stream with its records or a StreamError', async () => {
  const r = await campaign('stream', 0x5eed, 1000);
  assert.equal(r.cases, 1000);
  assert.equal(Object.keys(r.kinds).length, 7, JSON.stringify(r.kinds));
});

test('fuzz: the region, device and IRQ info decoders throw only ERR_VFIO_BAD_INFO', async () => {
  const r = await campaign('region', 0x5eed, 5000);
  assert.equal(r.cases, 5000);
});
