// Host-side unit tests (no kernel) of ChunkReader's exact-length reads: whole chunks, views, copies, large reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkReader } from '../../lib/migration/stream/reader';

async function* chunksOf(list: Buffer[]): AsyncGenerator<Buffer> {
  for (const c of list) yield c;
}

test('ChunkReader: a read of exactly one whole chunk returns that chunk, small or large; other reads are views or copies with the right bytes', async () => {
  const header = Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]);
  const body = Buffer.alloc(100, 9);
  const big = Buffer.alloc(128 * 1024, 7); // past the direct-read size
  const split = Buffer.from('abcdefgh');
  const reader = new ChunkReader(chunksOf([header, body, big, split, Buffer.from('ij')]));

  assert.equal(await reader.read(8), header, 'a whole small chunk is returned as it is');
  assert.equal(await reader.read(100), body);
  assert.equal(await reader.read(big.length), big, 'a whole large chunk too');
  const part = await reader.read(3);
  assert.notEqual(part, split);
  assert.equal(part!.toString(), 'abc');
  assert.equal(part!.buffer, split.buffer, 'a part of one chunk is a view, not a copy');
  const across = await reader.read(6);
  assert.equal(across!.toString(), 'defghi', 'a read across chunks is copied');
  assert.equal(reader.position, 8 + 100 + big.length + 9);
  assert.equal((await reader.read(1))!.toString(), 'j');
  assert.equal(await reader.read(1), null, 'the end of the source');
  assert.equal(reader.buffered, 0);
});

test('ChunkReader: after a whole-chunk take the next chunk is read from its start', async () => {
  const reader = new ChunkReader(chunksOf([Buffer.from('1234'), Buffer.from('5678'), Buffer.from('9')]));
  assert.equal(await reader.fill(9), true);
  assert.equal(reader.take(4).toString(), '1234');
  assert.equal(reader.take(2).toString(), '56');
  assert.equal(reader.take(3).toString(), '789');
  assert.equal(reader.buffered, 0);
});
