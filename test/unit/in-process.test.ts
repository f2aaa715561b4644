// Host-side tests: a stream between two ends in this process goes without payload checksums, and no other stream does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { channelPair } from '../../lib/migration';
import { StreamDecoder, StreamEncoder, StreamError } from '../../lib/migration/stream';
import { isInProcess } from '../../lib/migration/wire';

async function encode(checksums: boolean, payloads: Buffer[]): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  const enc = new StreamEncoder(
    async (chunk) => {
      chunks.push(Buffer.from(chunk));
    },
    { protocol: 'v2', device: {} },
    { checksums },
  );
  for (const p of payloads) await enc.writeRecord(1, p);
  await enc.finish();
  return chunks;
}

async function decode(chunks: Buffer[], checksums?: boolean): Promise<Buffer[]> {
  const dec = new StreamDecoder(
    (async function* () {
      yield* chunks;
    })(),
    { checksums },
  );
  await dec.readHeader();
  const out: Buffer[] = [];
  for await (const r of dec.records()) out.push(Buffer.from(r.payload));
  return out;
}

const payloads = [Buffer.alloc(100, 1), Buffer.alloc(300 * 1024, 2), Buffer.alloc(5000, 3)];

test('channelPair ends are in-process; any other channel is not', () => {
  const [a, b] = channelPair();
  assert.ok(isInProcess(a) && isInProcess(b));
  const duplex = new PassThrough();
  assert.equal(isInProcess(duplex), false);
  const ends = a as { readable: AsyncIterable<Buffer>; writable: NodeJS.WritableStream };
  assert.equal(isInProcess({ ...ends }), false, 'a copy of the ends is not');
});

test('without checksums: the payload CRC fields are 0, and a decoder made the same way reads every record', async () => {
  const chunks = await encode(false, payloads);
  // Each record header's payload CRC (offset 24) is 0; with checksums it is the payload's CRC.
  const records = chunks.slice(1, 1 + payloads.length);
  for (const r of records) assert.equal(r.readUInt32LE(24), 0);
  const checked = (await encode(true, payloads)).slice(1, 1 + payloads.length);
  for (const r of checked) assert.notEqual(r.readUInt32LE(24), 0);
  const got = await decode(chunks, false);
  assert.deepEqual(got, payloads);
});

test('a stream without checksums never passes an ordinary decoder (it fails closed at the first record)', async () => {
  const chunks = await encode(false, payloads);
  await assert.rejects(decode(chunks), (err: StreamError) => {
    assert.equal(err.code, 'ERR_STREAM_CHECKSUM');
    assert.match(err.message, /record 0/);
    return true;
  });
});

test('a decoder without checksums still verifies the headers, the sequence and the trailer', async () => {
  const chunks = await encode(false, payloads);
  // A flipped bit in a record header: its own CRC catches it.
  const bad = chunks.map((c) => Buffer.from(c));
  bad[2]![3]! ^= 1;
  await assert.rejects(decode(bad, false), StreamError);
  // A record dropped: the sequence catches it.
  await assert.rejects(decode([...chunks.slice(0, 2), ...chunks.slice(3)], false), /sequence/);
  // A payload byte changed in a small record: the stream CRC in the trailer covers it.
  const small = chunks.map((c) => Buffer.from(c));
  small[1]![40]! ^= 1;
  await assert.rejects(decode(small, false), (err: StreamError) => err.code === 'ERR_STREAM_CHECKSUM');
});
