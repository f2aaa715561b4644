// Host-side tests: the encoder's record-buffer reuse for file and socket sinks never corrupts a record.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StreamDecoder, StreamEncoder } from '../../lib/migration/stream';

const payloadOf = (i: number, size: number) => Buffer.alloc(size, i & 0xff);

async function roundTrip(
  makeSink: () => { sink: NodeJS.WritableStream; done: () => Promise<AsyncIterable<Buffer>> },
  recycle?: boolean,
) {
  // Yield to the event loop between records so that write callbacks run and buffers can come back.
  const { sink, done } = makeSink();
  const enc = new StreamEncoder(sink, { protocol: 'v2', device: {} }, { recycle });
  const chunk = Buffer.alloc(256 * 1024);
  for (let i = 0; i < 200; i++) {
    chunk.fill(i & 0xff); // the caller reuses its buffer, as the engines do
    await enc.writeRecord(1, chunk);
    await new Promise((r) => setImmediate(r));
  }
  await enc.finish();
  const dec = new StreamDecoder(await done());
  await dec.readHeader();
  let i = 0;
  for await (const r of dec.records()) {
    assert.ok(r.payload.equals(payloadOf(i, 256 * 1024)), `record ${i} intact`);
    i++;
  }
  assert.equal(i, 200);
}

test('file sink: records written from recycled buffers read back intact', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfmig-recycle-'));
  try {
    const path = join(dir, 's.vfmig');
    await roundTrip(() => {
      const sink = createWriteStream(path, { highWaterMark: 1 << 20 });
      return { sink, done: () => new Promise((resolve) => sink.end(() => resolve(createReadStream(path)))) };
    });
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('an in-process PassThrough is not recycled by default (it keeps chunks after the callback)', async () => {
  await roundTrip(() => {
    const sink = new PassThrough({ highWaterMark: 1 << 30 });
    const chunks: Buffer[] = [];
    sink.on('data', (c: Buffer) => chunks.push(c));
    return {
      sink,
      done: async () =>
        (async function* () {
          yield* chunks;
        })(),
    };
  });
});

test('forcing recycle onto a PassThrough would corrupt records: the check above can fail', async () => {
  await assert.rejects(
    roundTrip(() => {
      const sink = new PassThrough({ highWaterMark: 1 << 30 });
      const chunks: Buffer[] = [];
      sink.on('data', (c: Buffer) => chunks.push(c));
      return {
        sink,
        done: async () =>
          (async function* () {
            yield* chunks;
          })(),
      };
    }, true),
  );
});

test("a sink function's records are reused only once released, and never while a holder keeps them", async () => {
  const { releaseRecord } = await import('../../lib/migration/stream/sink');
  const kept: Buffer[] = [];
  const released = new Set<ArrayBufferLike>();
  let reused = 0;
  // Records 0-9 are released once "written", as an in-process destination does; 10-19 are kept.
  let n = 0;
  const enc = new StreamEncoder(
    async (record) => {
      if (released.has(record.buffer)) reused++;
      const i = n++;
      if (i === 0) return; // the stream header
      if (i <= 10) {
        released.add(record.buffer);
        releaseRecord(record);
      } else if (record.length > 1000) kept.push(record); // not the trailer
    },
    { protocol: 'v2', device: {} },
  );
  const chunk = Buffer.alloc(256 * 1024);
  for (let i = 0; i < 30; i++) {
    chunk.fill(i & 0xff);
    await enc.writeRecord(1, chunk);
  }
  await enc.finish();
  assert.ok(reused >= 5, `only ${reused} records reused released memory`);
  // The kept ones still hold their own payloads: none was handed out again.
  assert.equal(kept.length, 20);
  kept.forEach((record, j) => {
    const i = 10 + j;
    assert.ok(record.subarray(32).equals(payloadOf(i, 256 * 1024)), `kept record ${i} intact`);
  });
  // Releasing memory the encoder never made is a no-op.
  releaseRecord(Buffer.alloc(16));
});

test('a payload read into payloadBuffer() leaves in its own record, uncopied, and decodes intact', async () => {
  const { releaseRecord } = await import('../../lib/migration/stream/sink');
  const chunks: Buffer[] = [];
  const size = 256 * 1024;
  const enc = new StreamEncoder(
    async (record) => {
      chunks.push(Buffer.from(record)); // what a pipe would carry
      releaseRecord(record); // and the record goes back, as an in-process destination hands it
    },
    { protocol: 'v2', device: {} },
  );
  const read: Buffer[] = [];
  for (let i = 0; i < 8; i++) {
    const room = enc.payloadBuffer(size);
    assert.ok(room, 'a sink function offers payload buffers for large payloads');
    assert.ok(room.length >= size);
    room.fill(i + 1, 0, size - i); // short reads too: the record takes what was read
    read.push(room);
    await enc.writeRecord(1, room.subarray(0, size - i));
  }
  await enc.finish();
  // In place: records 1.. reuse released memory, so fewer distinct buffers than records.
  assert.ok(new Set(read.map((b) => b.buffer)).size < read.length, 'released records were reused');
  assert.equal(enc.payloadBuffer(1000), undefined, 'small payloads are copied as before');
  const dec = new StreamDecoder(
    (async function* () {
      yield* chunks;
    })(),
  );
  await dec.readHeader();
  let i = 0;
  for await (const r of dec.records()) {
    assert.ok(r.payload.equals(Buffer.alloc(size - i, i + 1)), `record ${i} intact`);
    i++;
  }
  assert.equal(i, 8);
});

test('payloadBuffer() memory is the record the sink receives (a mutation after the write shows in it)', async () => {
  const got: Buffer[] = [];
  const enc = new StreamEncoder(
    async (record) => {
      got.push(record);
    },
    { protocol: 'v2', device: {} },
  );
  const room = enc.payloadBuffer(128 * 1024)!;
  room.fill(7);
  await enc.writeRecord(1, room);
  const record = got[got.length - 1]!;
  assert.equal(record.buffer, room.buffer, 'the same memory');
  assert.equal(record.byteOffset + 32, room.byteOffset, 'the payload sits right behind the record header');
  // A Writable sink has no payload buffers: its records are the encoder's copies.
  const w = new PassThrough();
  w.resume();
  assert.equal(new StreamEncoder(w, { protocol: 'v2', device: {} }).payloadBuffer(1 << 20), undefined);
});

test('a payload buffer a copy pass took and never emitted goes back to the encoder (CopyPass.unusedBuffer)', async () => {
  const { encoderWindow } = await import('../../lib/migration/pipeline');
  const enc = new StreamEncoder(async () => undefined, { protocol: 'v2', device: {} });
  const pass = encoderWindow(enc).passTo(0);
  const size = 256 * 1024;
  // A pass that ends on ENOMSG has read nothing into the buffer it took: it gives it back.
  const taken = pass.buffer!(size)!;
  pass.unusedBuffer!(taken);
  assert.equal(pass.buffer!(size)!.buffer, taken.buffer, 'the next pass reads into the same memory');
  // Without the give-back, each pass would take fresh memory.
  assert.notEqual(pass.buffer!(size)!.buffer, taken.buffer);
  // Memory of no encoder's is ignored.
  pass.unusedBuffer!(Buffer.alloc(size));
  await enc.finish();
});
