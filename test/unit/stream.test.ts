// Unit tests of the .vfmig stream codec: byte layout, round trips, and every kind of corruption.
import assert from 'node:assert/strict';
import { PassThrough, Readable, Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { crc32 } from 'node:zlib';

import {
  PHASE_STOP_COPY,
  STREAM_MAGIC,
  STREAM_VERSION,
  StreamDecoder,
  StreamEncoder,
  StreamError,
  type StreamHeader,
  type StreamRecord,
  verifyStream,
} from '../../lib/migration/stream';

const HEADER: StreamHeader = {
  protocol: 'v1',
  device: { vendor: 0x1af4, device: 0x1041, driver: 'vfio-test' },
  tool: { name: 'vfio-migration', version: 'test' },
  created: '2025-01-01T00:00:00.000Z',
};

// --- A reference writer, written from the format description alone, independent of the encoder.
// It also crafts streams that are wrong in exactly one way with every checksum right, which is
// what it takes to reach the checks behind the checksums.

interface RawRecord {
  kind?: number;
  reserved?: number;
  phase: number;
  sequence?: bigint;
  length?: bigint;
  payload: Buffer;
}

interface RawStream {
  magic?: Buffer;
  version?: number;
  flags?: number;
  json?: Buffer;
  jsonLength?: number;
  records: RawRecord[];
  trailer?: {
    phase?: number;
    sequence?: bigint;
    length?: bigint;
    records?: bigint;
    payloadBytes?: bigint;
    streamCrc?: number;
    body?: Buffer;
  } | null;
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
}
function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}
function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

function rawRecordHeader(
  kind: number,
  phase: number,
  sequence: bigint,
  length: bigint,
  payloadCrc: number,
  reserved = 0,
): Buffer {
  const h = Buffer.concat([
    Buffer.from([kind, reserved & 0xff]),
    u16(reserved >>> 8),
    u32(phase),
    u64(sequence),
    u64(length),
    u32(payloadCrc),
  ]);
  return Buffer.concat([h, u32(crc32(h))]);
}

interface Layout {
  bytes: Buffer;
  headerEnd: number;
  /** Offset of each DATA record's header; then the trailer's. */
  records: number[];
  trailer: number;
}

function buildStream(s: RawStream): Layout {
  const json = s.json ?? Buffer.from(JSON.stringify(HEADER));
  const fixed = Buffer.concat([
    s.magic ?? STREAM_MAGIC,
    u16(s.version ?? 1),
    u16(s.flags ?? 0),
    u32(s.jsonLength ?? json.length),
    json,
  ]);
  const parts = [fixed, u32(crc32(fixed))];
  let offset = fixed.length + 4;
  const headerEnd = offset;
  const records: number[] = [];
  let payloadBytes = 0n;
  s.records.forEach((r, i) => {
    records.push(offset);
    const h = rawRecordHeader(
      r.kind ?? 1,
      r.phase,
      r.sequence ?? BigInt(i),
      r.length ?? BigInt(r.payload.length),
      crc32(r.payload),
      r.reserved ?? 0,
    );
    parts.push(h, r.payload);
    offset += h.length + r.payload.length;
    payloadBytes += BigInt(r.payload.length);
  });
  const trailer = offset;
  if (s.trailer !== null) {
    const t = s.trailer ?? {};
    const streamCrc = crc32(Buffer.concat(parts));
    const body =
      t.body ??
      Buffer.concat([
        u64(t.records ?? BigInt(s.records.length)),
        u64(t.payloadBytes ?? payloadBytes),
        u32(t.streamCrc ?? streamCrc),
      ]);
    parts.push(
      rawRecordHeader(
        0xff,
        t.phase ?? 0,
        t.sequence ?? BigInt(s.records.length),
        t.length ?? BigInt(body.length),
        crc32(body),
      ),
      body,
    );
  }
  return { bytes: Buffer.concat(parts), headerEnd, records, trailer };
}

// --- Helpers

/** A seeded PRNG (mulberry32), so that a failing case can be replayed from its seed. */
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

function randomBytes(rand: (n: number) => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = rand(256);
  return b;
}

async function encode(records: { phase: number; payload: Buffer }[], header: StreamHeader = HEADER): Promise<Buffer> {
  const parts: Buffer[] = [];
  const encoder = new StreamEncoder(async (chunk) => {
    parts.push(chunk);
  }, header);
  for (const r of records) await encoder.writeRecord(r.phase, r.payload);
  await encoder.finish();
  return Buffer.concat(parts);
}

/** Yields `bytes` in chunks of the given sizes, cycling through them. */
async function* chunked(
  bytes: Buffer,
  sizes: number[] | ((i: number) => number) = [bytes.length || 1],
): AsyncGenerator<Buffer> {
  const size = typeof sizes === 'function' ? sizes : (i: number) => sizes[i % sizes.length]!;
  for (let offset = 0, i = 0; offset < bytes.length; i++) {
    const n = Math.max(1, size(i));
    yield bytes.subarray(offset, offset + n);
    offset += n;
  }
}

interface Decoded {
  header?: StreamHeader;
  records: StreamRecord[];
  error?: unknown;
}

/** Decodes everything it can; the records yielded before an error are kept. */
async function decode(source: AsyncIterable<Buffer | Uint8Array>, options?: { maxPayload?: number }): Promise<Decoded> {
  const decoder = new StreamDecoder(source, options);
  const out: Decoded = { records: [] };
  try {
    out.header = await decoder.readHeader();
    for await (const r of decoder.records()) out.records.push({ ...r, payload: Buffer.from(r.payload) });
  } catch (error) {
    out.error = error;
  }
  return out;
}

async function decodeError(
  bytes: Buffer | AsyncIterable<Buffer>,
  options?: { maxPayload?: number },
): Promise<StreamError> {
  const { error } = await decode(Buffer.isBuffer(bytes) ? chunked(bytes) : bytes, options);
  assert.ok(error instanceof StreamError, `expected a StreamError, got ${String(error)}`);
  return error;
}

function assertError(
  err: StreamError,
  code: string,
  offset: number,
  record: bigint | undefined,
  ...message: RegExp[]
): void {
  assert.equal(err.code, code, err.message);
  assert.equal(err.offset, offset, err.message);
  assert.equal(err.record, record, err.message);
  assert.equal(err.name, 'StreamError');
  for (const m of message) assert.match(err.message, m);
}

const SMALL_RECORDS = [
  { phase: 0, payload: Buffer.from('first pre-copy record') },
  { phase: 0, payload: Buffer.alloc(0) },
  { phase: 1, payload: Buffer.from([1, 2, 3, 4, 5, 6, 7]) },
  { phase: PHASE_STOP_COPY, payload: Buffer.from('the last record, after the device stopped') },
];

// --- Tests

describe('stream format: layout', () => {
  it('exports the format constants', () => {
    assert.deepEqual(STREAM_MAGIC, Buffer.from('VFIOMIG\0', 'latin1'));
    assert.equal(STREAM_VERSION, 1);
    assert.equal(PHASE_STOP_COPY, 0xffffffff);
  });

  it('writes exactly the bytes of the reference writer', async () => {
    const bytes = await encode(SMALL_RECORDS);
    assert.deepEqual(bytes, buildStream({ records: SMALL_RECORDS }).bytes);
  });

  it('puts the fields where the format says', async () => {
    const bytes = await encode([{ phase: 7, payload: Buffer.from('abc') }]);
    const json = Buffer.from(JSON.stringify(HEADER));
    assert.equal(bytes.toString('latin1', 0, 8), 'VFIOMIG\0');
    assert.equal(bytes.readUInt16LE(8), 1);
    assert.equal(bytes.readUInt16LE(10), 0);
    assert.equal(bytes.readUInt32LE(12), json.length);
    assert.deepEqual(bytes.subarray(16, 16 + json.length), json);
    const r = 16 + json.length + 4;
    assert.equal(bytes.readUInt32LE(r - 4), crc32(bytes.subarray(0, r - 4)));
    assert.equal(bytes[r], 1);
    assert.equal(bytes.readUInt32LE(r + 4), 7);
    assert.equal(bytes.readBigUInt64LE(r + 8), 0n);
    assert.equal(bytes.readBigUInt64LE(r + 16), 3n);
    assert.equal(bytes.readUInt32LE(r + 24), crc32(Buffer.from('abc')));
    assert.equal(bytes.readUInt32LE(r + 28), crc32(bytes.subarray(r, r + 28)));
    const t = r + 32 + 3;
    assert.equal(bytes[t], 0xff);
    assert.equal(bytes.readUInt32LE(t + 4), 0);
    assert.equal(bytes.readBigUInt64LE(t + 8), 1n);
    assert.equal(bytes.readBigUInt64LE(t + 16), 20n);
    assert.equal(bytes.readBigUInt64LE(t + 32), 1n);
    assert.equal(bytes.readBigUInt64LE(t + 40), 3n);
    assert.equal(bytes.readUInt32LE(t + 48), crc32(bytes.subarray(0, t)));
    assert.equal(bytes.length, t + 52);
  });

  it('keeps the running stream checksum right across large payloads of many sizes', async () => {
    // Large payloads take the CRC-combination path; its result must equal a plain CRC of the bytes.
    const rand = prng(7);
    const records = [5000, 4096, 4095, 65536, 65536, 100_003, 1 << 20, 3].map((n, i) => ({
      phase: i,
      payload: randomBytes(rand, n),
    }));
    const bytes = await encode(records);
    const trailer = bytes.length - 52;
    assert.equal(bytes.readUInt32LE(trailer + 48), crc32(bytes.subarray(0, trailer)));
    assert.deepEqual(bytes, buildStream({ records }).bytes);
  });
});

describe('stream format: round trips', () => {
  it('decodes the header and the records the encoder wrote', async () => {
    const bytes = await encode(SMALL_RECORDS);
    const decoder = new StreamDecoder(chunked(bytes));
    assert.deepEqual(await decoder.readHeader(), HEADER);
    assert.deepEqual(await decoder.readHeader(), HEADER, 'readHeader() again returns the same header');
    const records: StreamRecord[] = [];
    for await (const r of decoder.records()) {
      assert.equal(decoder.totals, undefined, 'totals only once the trailer is verified');
      records.push(r);
    }
    assert.deepEqual(
      records,
      SMALL_RECORDS.map((r, i) => ({ phase: r.phase, sequence: BigInt(i), payload: r.payload })),
    );
    assert.deepEqual(decoder.totals, {
      records: 4n,
      payloadBytes: BigInt(SMALL_RECORDS.reduce((n, r) => n + r.payload.length, 0)),
    });
    assert.equal(decoder.bytesRead, bytes.length);
  });

  it('round-trips an empty stream: header and trailer only', async () => {
    const parts: Buffer[] = [];
    const encoder = new StreamEncoder(async (c) => void parts.push(c), HEADER);
    assert.deepEqual(await encoder.finish(), { records: 0n, payloadBytes: 0n });
    const bytes = Buffer.concat(parts);
    assert.equal(bytes.length, 16 + JSON.stringify(HEADER).length + 4 + 32 + 20);
    assert.deepEqual(bytes, buildStream({ records: [] }).bytes);
    const { header, records, error } = await decode(chunked(bytes, [1]));
    assert.equal(error, undefined);
    assert.deepEqual(header, HEADER);
    assert.deepEqual(records, []);
    const result = await verifyStream(chunked(bytes));
    assert.deepEqual(result, {
      header: HEADER,
      records: 0n,
      payloadBytes: 0n,
      phases: [],
      streamBytes: BigInt(bytes.length),
    });
  });

  it('round-trips random streams through random re-chunking (property)', async () => {
    for (let seed = 1; seed <= 60; seed++) {
      const rand = prng(seed);
      const count = rand(4) === 0 ? 0 : rand(24);
      const big = rand(3) === 0;
      const records: { phase: number; payload: Buffer }[] = [];
      let phase = 0;
      for (let i = 0; i < count; i++) {
        if (rand(4) === 0) phase = rand(5) === 0 ? PHASE_STOP_COPY : phase === PHASE_STOP_COPY ? phase : phase + 1;
        const size = [0, 1, rand(64), rand(5000), big ? rand(200_000) : rand(300)][rand(5)]!;
        records.push({ phase, payload: randomBytes(rand, size) });
      }
      const header: StreamHeader = {
        protocol: rand(2) ? 'v1' : 'v2',
        device: { seed, name: 'ü' },
        regions: [{ index: rand(9) }],
      };
      const bytes = await encode(records, header);
      const total = bytes.length;
      // Chunkings: single bytes (small streams only, for time), random small, random large, one chunk.
      const mode = total < 20_000 ? rand(4) : 1 + rand(3);
      const sizes = mode === 0 ? [1] : mode === 1 ? () => 1 + rand(64) : mode === 2 ? () => 1 + rand(150_000) : [total];
      // Some sources yield plain Uint8Arrays, as a web stream would.
      const plain = rand(2) === 0;
      const source = plain
        ? (async function* () {
            for await (const c of chunked(bytes, sizes)) yield new Uint8Array(c);
          })()
        : chunked(bytes, sizes);
      const got = await decode(source);
      const what = `seed ${seed} (${count} records, ${total} bytes, chunking mode ${mode})`;
      assert.equal(got.error, undefined, `${what}: ${String(got.error)}`);
      assert.deepEqual(got.header, header, what);
      assert.equal(got.records.length, records.length, what);
      got.records.forEach((r, i) => {
        assert.equal(r.phase, records[i]!.phase, what);
        assert.equal(r.sequence, BigInt(i), what);
        assert.ok(r.payload.equals(records[i]!.payload), `${what}: payload of record ${i}`);
      });
    }
  });

  it('keeps the stream checksum right over empty payloads with no memory behind them', async () => {
    // zlib.crc32(view, running) returns 0 for an empty view of an ArrayBuffer without memory.
    const records = [
      { phase: 0, payload: Buffer.from('x') },
      { phase: 0, payload: new Uint8Array(0) as Buffer },
      { phase: 0, payload: new Uint8Array(new ArrayBuffer(0)) as Buffer },
    ];
    const bytes = await encode(records);
    assert.deepEqual(
      bytes,
      buildStream({ records: records.map((r) => ({ ...r, payload: Buffer.from(r.payload) })) }).bytes,
    );
    for (let round = 0; round < 2; round++) {
      const decoder = new StreamDecoder(chunked(bytes));
      const payloads: Buffer[] = [];
      for await (const r of decoder.records()) payloads.push(r.payload);
      // Comparing touches each payload's .buffer, which is what once made the next round fail.
      assert.deepEqual(payloads, [Buffer.from('x'), Buffer.alloc(0), Buffer.alloc(0)]);
    }
  });

  it('summarises a stream with verifyStream', async () => {
    const records = [
      { phase: 0, payload: Buffer.alloc(10) },
      { phase: 0, payload: Buffer.alloc(5) },
      { phase: 1, payload: Buffer.alloc(3) },
      { phase: PHASE_STOP_COPY, payload: Buffer.alloc(100) },
      { phase: PHASE_STOP_COPY, payload: Buffer.alloc(0) },
    ];
    const bytes = await encode(records);
    assert.deepEqual(await verifyStream(chunked(bytes, [3, 17])), {
      header: HEADER,
      records: 5n,
      payloadBytes: 118n,
      phases: [
        { phase: 0, records: 2, bytes: 15n },
        { phase: 1, records: 1, bytes: 3n },
        { phase: PHASE_STOP_COPY, records: 2, bytes: 100n },
      ],
      streamBytes: BigInt(bytes.length),
    });
  });

  it('verifyStream rejects what the decoder rejects, and honours an AbortSignal', async () => {
    const bytes = await encode(SMALL_RECORDS);
    await assert.rejects(verifyStream(chunked(bytes.subarray(0, bytes.length - 1))), { code: 'ERR_STREAM_TRUNCATED' });
    const controller = new AbortController();
    controller.abort(new Error('stop'));
    await assert.rejects(verifyStream(chunked(bytes), { signal: controller.signal }), /stop/);
  });

  it("does not keep the caller's payload buffer: it may be reused once writeRecord resolves", async () => {
    const parts: Buffer[] = [];
    const encoder = new StreamEncoder(async (c) => void parts.push(c), HEADER);
    const reused = Buffer.alloc(70_000);
    const expected: Buffer[] = [];
    for (let i = 0; i < 5; i++) {
      reused.fill(i + 1);
      const view = reused.subarray(i, 60_000 + i);
      expected.push(Buffer.from(view));
      await encoder.writeRecord(0, view);
    }
    reused.fill(0xee);
    await encoder.finish();
    const { records, error } = await decode(chunked(Buffer.concat(parts)));
    assert.equal(error, undefined);
    assert.deepEqual(
      records.map((r) => r.payload),
      expected,
    );
  });

  it('serialises calls made without waiting', async () => {
    const parts: Buffer[] = [];
    const encoder = new StreamEncoder(async (c) => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      parts.push(c);
    }, HEADER);
    const writes = SMALL_RECORDS.map((r) => encoder.writeRecord(r.phase, r.payload));
    const totals = encoder.finish();
    await Promise.all(writes);
    assert.deepEqual(await totals, {
      records: 4n,
      payloadBytes: BigInt(SMALL_RECORDS.reduce((n, r) => n + r.payload.length, 0)),
    });
    assert.deepEqual(Buffer.concat(parts), buildStream({ records: SMALL_RECORDS }).bytes);
    assert.equal(encoder.finish(), encoder.finish(), 'finish() again returns the same promise');
  });
});

describe('stream format: encoder and sinks', () => {
  it('writes to a Writable, waits for drain, and does not end it', async () => {
    const chunks: Buffer[] = [];
    let maxBuffered = 0;
    const sink = new Writable({
      highWaterMark: 1024,
      write(chunk: Buffer, _encoding, callback) {
        chunks.push(chunk);
        setTimeout(callback, 1);
      },
    });
    const encoder = new StreamEncoder(sink, HEADER);
    await encoder.writeHeader();
    const records = Array.from({ length: 20 }, (_, i) => ({ phase: i >> 2, payload: Buffer.alloc(300 + i * 100, i) }));
    for (const r of records) {
      await encoder.writeRecord(r.phase, r.payload);
      maxBuffered = Math.max(maxBuffered, sink.writableLength);
    }
    await encoder.finish();
    assert.equal(sink.writableLength, 0, 'finish() waits until the sink took the trailer');
    assert.equal(sink.writableEnded, false, 'finish() does not end the sink');
    // Backpressure: what the sink holds is at most its high-water mark plus the last record.
    assert.ok(maxBuffered <= 1024 + 32 + 2300, `the sink held ${maxBuffered} bytes`);
    assert.deepEqual(Buffer.concat(chunks), buildStream({ records }).bytes);
  });

  it('streams through a PassThrough into a decoder running concurrently', async () => {
    const pipe = new PassThrough({ highWaterMark: 4096 });
    const records = Array.from({ length: 50 }, (_, i) => ({
      phase: i < 40 ? 0 : PHASE_STOP_COPY,
      payload: Buffer.alloc(i * 997, i),
    }));
    const writer = (async () => {
      const encoder = new StreamEncoder(pipe, HEADER);
      for (const r of records) await encoder.writeRecord(r.phase, r.payload);
      await encoder.finish();
      pipe.end();
    })();
    const [got] = await Promise.all([decode(pipe), writer]);
    assert.equal(got.error, undefined);
    assert.deepEqual(
      got.records.map((r) => r.payload),
      records.map((r) => r.payload),
    );
  });

  it('reports a sink error, and refuses to go on after it', async () => {
    let writes = 0;
    const sink = new Writable({
      write(_chunk, _encoding, callback) {
        callback(++writes === 3 ? new Error('disk full') : null);
      },
    });
    sink.on('error', () => {});
    const encoder = new StreamEncoder(sink, HEADER);
    await encoder.writeRecord(0, Buffer.alloc(10));
    await assert.rejects(
      (async () => {
        await encoder.writeRecord(0, Buffer.alloc(10));
        await encoder.writeRecord(0, Buffer.alloc(10));
      })(),
      /disk full/,
    );
    await assert.rejects(encoder.finish(), /disk full/);
  });

  it('reports an error of an async sink function and refuses to go on after it', async () => {
    const encoder = new StreamEncoder(async () => {
      throw new Error('network down');
    }, HEADER);
    await assert.rejects(encoder.writeHeader(), /network down/);
    await assert.rejects(encoder.writeRecord(0, Buffer.alloc(1)), /network down/);
  });

  it('rejects a write to a destroyed sink instead of hanging', async () => {
    const sink = new Writable({ write: (_c, _e, cb) => cb() });
    sink.destroy();
    const encoder = new StreamEncoder(sink, HEADER);
    await assert.rejects(encoder.writeHeader(), /closed|destroyed/);
  });

  it('checks its arguments', async () => {
    const sink = async (): Promise<void> => {};
    assert.throws(() => new StreamEncoder(sink, { protocol: 'v3', device: {} } as unknown as StreamHeader), TypeError);
    assert.throws(() => new StreamEncoder(sink, { protocol: 'v1' } as unknown as StreamHeader), TypeError);
    assert.throws(() => new StreamEncoder(sink, { protocol: 'v1', device: {}, x: 1n }), TypeError);
    assert.throws(() => new StreamEncoder(sink, { protocol: 'v1', device: {}, pad: 'x'.repeat(1 << 20) }), RangeError);
    assert.throws(() => new StreamEncoder({} as NodeJS.WritableStream, HEADER), TypeError);
    const encoder = new StreamEncoder(sink, HEADER, { maxPayload: 8 });
    await assert.rejects(encoder.writeRecord(-1, Buffer.alloc(1)), RangeError);
    await assert.rejects(encoder.writeRecord(2 ** 32, Buffer.alloc(1)), RangeError);
    await assert.rejects(encoder.writeRecord(1.5, Buffer.alloc(1)), RangeError);
    await assert.rejects(encoder.writeRecord(0, 'text' as unknown as Buffer), TypeError);
    await assert.rejects(encoder.writeRecord(0, Buffer.alloc(9)), RangeError);
    // Argument errors do not break the encoder.
    await encoder.writeRecord(0, Buffer.alloc(8));
    await encoder.finish();
    await assert.rejects(encoder.writeRecord(0, Buffer.alloc(1)), /after finish/);
    assert.throws(() => new StreamDecoder(chunked(Buffer.alloc(0)), { maxPayload: -1 }), RangeError);
    assert.throws(() => new StreamDecoder([] as unknown as AsyncIterable<Buffer>), TypeError);
  });

  it('accepts a header JSON of exactly 1 MiB', async () => {
    // Strings are at most HEADER_LIMITS.string (16 Ki) characters: the MiB is 64 of them, the last cut to fit.
    const pad = Array.from({ length: 64 }, () => 'x'.repeat(16 * 1024));
    const over = JSON.stringify({ protocol: 'v1', device: {}, pad }).length - (1 << 20);
    pad[63] = pad[63]!.slice(over);
    const header: StreamHeader = { protocol: 'v1', device: {}, pad };
    const bytes = await encode([], header);
    assert.equal(bytes.readUInt32LE(12), 1 << 20);
    assert.deepEqual((await decode(chunked(bytes, [70_000]))).header, header);
  });
});

describe('stream format: corruption', () => {
  const records = [
    { phase: 0, payload: Buffer.from('0123456789') },
    { phase: 0, payload: Buffer.alloc(0) },
    { phase: 1, payload: Buffer.from('abcdefghijklmnopqrstuvwxyz') },
    { phase: PHASE_STOP_COPY, payload: Buffer.from([0xff, 0, 0x80]) },
  ];
  const layout = buildStream({ records, json: Buffer.from('{"protocol":"v2","device":{"id":1}}') });
  const json = 16;
  const { bytes } = layout;

  /**
   * Which structure byte `pos` belongs to: the stream header, record i's header or payload, or the
   * trailer's; `start` is where that structure starts, `recordStart` where its record starts.
   */
  function whereIs(pos: number): {
    part: 'header' | 'record' | 'payload' | 'trailer';
    record?: bigint;
    start: number;
    recordStart: number;
  } {
    if (pos < layout.headerEnd) return { part: 'header', start: 0, recordStart: 0 };
    const t = layout.trailer;
    if (pos >= t)
      return { part: 'trailer', record: BigInt(records.length), start: pos < t + 32 ? t : t + 32, recordStart: t };
    let i = layout.records.length - 1;
    while (layout.records[i]! > pos) i--;
    const r = layout.records[i]!;
    return {
      part: pos < r + 32 ? 'record' : 'payload',
      record: BigInt(i),
      start: pos < r + 32 ? r : r + 32,
      recordStart: r,
    };
  }

  it('the reference stream is valid', async () => {
    const got = await decode(chunked(bytes));
    assert.equal(got.error, undefined);
    assert.equal(got.records.length, records.length);
  });

  it('rejects every single flipped bit, and never yields a corrupt payload', async () => {
    for (let pos = 0; pos < bytes.length; pos++) {
      for (let bit = 0; bit < 8; bit++) {
        const bad = Buffer.from(bytes);
        bad[pos]! ^= 1 << bit;
        const got = await decode(chunked(bad, [pos % 2 ? 1 : 13]));
        const what = `bit ${bit} of byte ${pos}`;
        assert.ok(got.error instanceof StreamError, `${what}: accepted (${String(got.error)})`);
        got.records.forEach((r, i) =>
          assert.ok(r.payload.equals(records[i]!.payload), `${what}: corrupt payload of record ${i} yielded`),
        );
        const err = got.error;
        const where = whereIs(pos);
        if (where.part === 'header') {
          // The fixed fields are judged before the checksum, so that a newer version is called that.
          const code =
            pos < 8
              ? 'ERR_STREAM_BAD_MAGIC'
              : pos < 10
                ? 'ERR_STREAM_VERSION'
                : pos < 12
                  ? 'ERR_STREAM_FORMAT'
                  : undefined;
          if (code !== undefined) assertError(err, code, pos < 8 ? 0 : pos < 10 ? 8 : 10, undefined);
          else if (pos < json)
            assert.ok(
              ['ERR_STREAM_FORMAT', 'ERR_STREAM_CHECKSUM', 'ERR_STREAM_TRUNCATED'].includes(err.code),
              `${what}: ${err.message}`,
            );
          else assertError(err, 'ERR_STREAM_CHECKSUM', 0, undefined, /stream header/, /checksum mismatch/);
          assert.equal(got.header, undefined, what);
        } else {
          // Every record byte is under a checksum, which the decoder tests before anything else.
          assertError(
            err,
            'ERR_STREAM_CHECKSUM',
            where.start,
            where.record,
            /checksum mismatch/,
            new RegExp(`offset ${where.recordStart}:`),
          );
          if (where.part !== 'trailer')
            assert.equal(got.records.length, Number(where.record), `${what}: records before the bad one are yielded`);
        }
      }
    }
  });

  it('rejects a stream cut anywhere as truncated, naming where', async () => {
    for (let cut = 0; cut < bytes.length; cut++) {
      const what = `cut at ${cut}`;
      const err = await decodeError(chunked(bytes.subarray(0, cut), [cut % 3 ? 7 : 1]));
      assert.equal(err.code, 'ERR_STREAM_TRUNCATED', `${what}: ${err.message}`);
      assert.equal(err.offset, cut, what);
      if (cut < layout.headerEnd) {
        assert.equal(err.record, undefined, what);
        assert.match(err.message, cut === 0 ? /empty/ : /stream header/, what);
      } else if (cut === layout.headerEnd || layout.records.includes(cut) || cut === layout.trailer) {
        assertError(
          err,
          'ERR_STREAM_TRUNCATED',
          cut,
          undefined,
          /^no trailer: the stream is incomplete/,
          new RegExp(`offset ${cut}`),
        );
      } else {
        const where = whereIs(cut);
        assert.equal(err.record, where.record, what);
        // Until its header has been read, the trailer is just the next record.
        const inside =
          where.part === 'trailer' && where.start > where.recordStart
            ? 'the trailer'
            : `the ${where.part === 'payload' ? 'payload' : 'header'} of record ${where.record}`;
        assert.match(
          err.message,
          new RegExp(
            `ends at offset ${cut}, inside ${inside} \\(at offset ${where.recordStart}\\)|ends at offset ${cut}, inside ${inside} \\(\\d+ bytes at offset ${where.start}\\)`,
          ),
          what,
        );
      }
    }
  });

  it('rejects a bad magic', async () => {
    for (const magic of [
      Buffer.from('VFIOMIG1'),
      Buffer.from('vfiomig\0'),
      Buffer.alloc(8),
      Buffer.from('\0VFIOMIG'),
    ]) {
      assertError(
        await decodeError(buildStream({ magic, records }).bytes),
        'ERR_STREAM_BAD_MAGIC',
        0,
        undefined,
        /bad magic/,
        /not a vfio-migration stream/,
      );
    }
    // Too short to hold a header, but plainly something else.
    assertError(await decodeError(Buffer.from('{"a":1}')), 'ERR_STREAM_BAD_MAGIC', 0, undefined);
    assertError(await decodeError(Buffer.from('VFIO')), 'ERR_STREAM_TRUNCATED', 4, undefined, /stream header/);
    assertError(await decodeError(Buffer.alloc(0)), 'ERR_STREAM_TRUNCATED', 0, undefined, /empty/);
  });

  it('rejects a wrong version', async () => {
    for (const version of [0, 2, 0xffff]) {
      const err = await decodeError(buildStream({ version, records }).bytes);
      assertError(err, 'ERR_STREAM_VERSION', 8, undefined, new RegExp(`version ${version}`), /reads version 1/);
    }
  });

  it('rejects nonzero flags', async () => {
    assertError(
      await decodeError(buildStream({ flags: 4, records }).bytes),
      'ERR_STREAM_FORMAT',
      10,
      undefined,
      /unsupported flags 0x4/,
    );
  });

  it('rejects a JSON length of 0 or over 1 MiB before reading it', async () => {
    for (const jsonLength of [0, (1 << 20) + 1, 0xffffffff]) {
      const err = await decodeError(buildStream({ jsonLength, records }).bytes);
      assertError(err, 'ERR_STREAM_FORMAT', 12, undefined, new RegExp(`JSON length ${jsonLength} is out of range`));
    }
  });

  it('rejects a header that is not the JSON it should be', async () => {
    const cases: [string | Buffer, RegExp][] = [
      ['{"protocol":"v1",', /not valid UTF-8 JSON/],
      [Buffer.from([0x7b, 0xff, 0x7d]), /not valid UTF-8 JSON/],
      ['[1,2]', /must be a JSON object, got an array/],
      ['null', /must be a JSON object, got null/],
      ['{"device":{}}', /protocol must be 'v1' or 'v2', got nothing/],
      ['{"protocol":"v3","device":{}}', /protocol must be 'v1' or 'v2', got "v3"/],
      ['{"protocol":"v1"}', /device must be an object/],
      ['{"protocol":"v1","device":null}', /device must be an object/],
      ['{"protocol":"v1","device":[]}', /device must be an object/],
    ];
    for (const [json, message] of cases) {
      const err = await decodeError(buildStream({ json: Buffer.from(json), records }).bytes);
      assertError(err, 'ERR_STREAM_FORMAT', 16, undefined, /stream header at offset 16/, message);
    }
  });

  it('rejects an unknown record kind and nonzero reserved bytes', async () => {
    for (const kind of [0, 2, 0x7f, 0xfe]) {
      const bad = buildStream({ records: records.map((r, i) => (i === 2 ? { ...r, kind } : r)) });
      const err = await decodeError(bad.bytes);
      assertError(
        err,
        'ERR_STREAM_FORMAT',
        bad.records[2]!,
        2n,
        new RegExp(`record 2 at offset ${bad.records[2]}: unknown record kind 0x${kind.toString(16)}`),
      );
    }
    for (const reserved of [1, 0x100, 0x8000_00]) {
      const bad = buildStream({ records: records.map((r, i) => (i === 1 ? { ...r, reserved } : r)) });
      assertError(await decodeError(bad.bytes), 'ERR_STREAM_FORMAT', bad.records[1]!, 1n, /reserved/);
    }
  });

  it('rejects a payload length over maxPayload before reading or allocating it', async () => {
    for (const length of [(1n << 30n) + 1n, (1n << 64n) - 1n]) {
      // A header claiming a huge payload, then nothing: the limit is what is reported, not truncation.
      const bad = buildStream({
        records: [records[0]!, { phase: 0, payload: Buffer.alloc(0), length }],
        trailer: null,
      });
      const before = process.memoryUsage().arrayBuffers;
      const err = await decodeError(bad.bytes);
      assertError(
        err,
        'ERR_STREAM_LIMIT',
        bad.records[1]!,
        1n,
        new RegExp(`payload length ${length} is larger than maxPayload \\(1073741824\\)`),
      );
      assert.ok(process.memoryUsage().arrayBuffers - before < 1 << 20);
    }
    const limited = buildStream({
      records: [
        { phase: 0, payload: Buffer.alloc(16) },
        { phase: 0, payload: Buffer.alloc(17) },
      ],
    });
    assertError(
      await decodeError(limited.bytes, { maxPayload: 16 }),
      'ERR_STREAM_LIMIT',
      limited.records[1]!,
      1n,
      /maxPayload \(16\)/,
    );
    assert.equal((await decode(chunked(limited.bytes), { maxPayload: 17 })).error, undefined);
  });

  it('rejects reordered, duplicated and dropped records', async () => {
    const at = (s: Layout, i: number): number => s.records[i]!;
    // Swapped: each record keeps its own (valid) sequence number.
    const swapped = buildStream({
      records: [records[0]!, { ...records[2]!, sequence: 2n }, { ...records[1]!, sequence: 1n }, records[3]!],
    });
    assertError(
      await decodeError(swapped.bytes),
      'ERR_STREAM_SEQUENCE',
      at(swapped, 1),
      1n,
      /record 1 at offset \d+: sequence number 2, expected 1/,
      /reordered, dropped or duplicated/,
    );
    const duplicated = buildStream({
      records: [records[0]!, records[1]!, { ...records[1]!, sequence: 1n }, { ...records[2]!, sequence: 2n }],
    });
    assertError(
      await decodeError(duplicated.bytes),
      'ERR_STREAM_SEQUENCE',
      at(duplicated, 2),
      2n,
      /sequence number 1, expected 2/,
    );
    const dropped = buildStream({
      records: [records[0]!, { ...records[2]!, sequence: 2n }, { ...records[3]!, sequence: 3n }],
      trailer: { sequence: 4n, records: 4n },
    });
    assertError(
      await decodeError(dropped.bytes),
      'ERR_STREAM_SEQUENCE',
      at(dropped, 1),
      1n,
      /sequence number 2, expected 1/,
    );
    // The last record dropped: only the trailer can tell.
    const lastDropped = buildStream({ records: records.slice(0, 3), trailer: { sequence: 4n, records: 4n } });
    assertError(
      await decodeError(lastDropped.bytes),
      'ERR_STREAM_SEQUENCE',
      lastDropped.trailer,
      3n,
      /trailer at offset \d+: it counts 4 records, but 3 were read/,
    );
    // Records cut out of the encoded stream, whole, at their boundaries.
    const full = buildStream({ records });
    assert.deepEqual(full.bytes, await encode(records));
    const cut = Buffer.concat([full.bytes.subarray(0, full.records[1]), full.bytes.subarray(full.records[2])]);
    assertError(await decodeError(cut), 'ERR_STREAM_SEQUENCE', full.records[1]!, 1n);
  });

  it('rejects trailing data after the trailer', async () => {
    const empty = buildStream({ records: [] });
    for (const extra of [Buffer.from([0]), Buffer.from('garbage'), empty.bytes.subarray(empty.headerEnd)]) {
      const err = await decodeError(Buffer.concat([bytes, extra]));
      assertError(
        err,
        'ERR_STREAM_FORMAT',
        bytes.length,
        undefined,
        new RegExp(`trailing data after trailer, at offset ${bytes.length}`),
      );
    }
    // Also when the extra bytes come as a chunk of their own, after an empty one.
    const err = await decodeError(chunked(Buffer.concat([bytes, Buffer.from('x')]), [bytes.length, 0, 1]));
    assert.equal(err.code, 'ERR_STREAM_FORMAT');
  });

  it('rejects a trailer whose totals or checksum are wrong', async () => {
    const t = layout.trailer;
    const cases: [RawStream['trailer'], string, number, RegExp][] = [
      [
        { records: 5n },
        'ERR_STREAM_TRAILER',
        t,
        /trailer's totals \(5 records, 39 payload bytes\) differ from the stream's \(4 records, 39 payload bytes\)/,
      ],
      [{ payloadBytes: 40n }, 'ERR_STREAM_TRAILER', t, /40 payload bytes/],
      [
        { streamCrc: 0x12345678 },
        'ERR_STREAM_CHECKSUM',
        t,
        /stream checksum mismatch \(over offsets 0 to \d+; stored 0x12345678/,
      ],
      [{ phase: 1 }, 'ERR_STREAM_TRAILER', t, /malformed trailer \(phase 1/],
      [{ phase: PHASE_STOP_COPY }, 'ERR_STREAM_TRAILER', t, /malformed trailer/],
      [{ length: 19n, body: Buffer.alloc(19) }, 'ERR_STREAM_TRAILER', t, /payload length 19/],
      [{ length: 21n, body: Buffer.alloc(21) }, 'ERR_STREAM_TRAILER', t, /payload length 21/],
      [{ sequence: 3n }, 'ERR_STREAM_SEQUENCE', t, /counts 3 records, but 4 were read/],
    ];
    for (const [trailer, code, offset, message] of cases) {
      const bad = buildStream({ records, json: Buffer.from('{"protocol":"v2","device":{"id":1}}'), trailer });
      const got = await decode(chunked(bad.bytes, [5]));
      assert.ok(got.error instanceof StreamError, String(got.error));
      assertError(got.error, code, offset, 4n, message);
      assert.equal(got.records.length, 4, 'every record came before the trailer');
    }
  });

  it('verifies a payload before yielding it', async () => {
    const bad = Buffer.from(bytes);
    bad[layout.records[2]! + 32 + 5]! ^= 0x10;
    const decoder = new StreamDecoder(chunked(bad));
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const r of decoder.records()) seen.push(r.payload.toString('latin1'));
      })(),
      (err: StreamError) => {
        assertError(
          err,
          'ERR_STREAM_CHECKSUM',
          layout.records[2]! + 32,
          2n,
          /record 2 at offset \d+: payload checksum mismatch \(26 bytes at offset/,
        );
        return true;
      },
    );
    assert.deepEqual(seen, ['0123456789', '']);
    assert.equal(decoder.totals, undefined);
  });

  it('releases the source on an error and on an early break', async () => {
    for (const input of [Buffer.concat([bytes.subarray(0, 100), Buffer.from('x')]), bytes]) {
      const source = Readable.from(chunked(Buffer.concat([input, Buffer.alloc(1000)]), [50]), { objectMode: false });
      const decoder = new StreamDecoder(source);
      try {
        for await (const _ of decoder.records()) break;
      } catch (err) {
        assert.ok(err instanceof StreamError);
      }
      assert.ok(source.destroyed, 'the source Readable is destroyed');
    }
    const decoder = new StreamDecoder(chunked(bytes));
    for await (const _ of decoder.records()) break;
    await assert.rejects(decoder.records().next(), /only once/);
  });

  it('rejects a source that yields strings', async () => {
    const source = (async function* () {
      yield 'VFIOMIG';
    })() as unknown as AsyncIterable<Buffer>;
    await assert.rejects(new StreamDecoder(source).readHeader(), /yielded a string/);
  });
});

describe('stream format: memory', () => {
  it('decodes a 64 MiB stream in 1 MiB records without accumulating memory', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const RECORD = 1 << 20;
    const COUNT = 64;
    // The stream is produced as it is consumed, through a PassThrough, so that it never exists whole.
    const pipe = new PassThrough({ highWaterMark: 256 * 1024 });
    const payload = Buffer.alloc(RECORD);
    const writer = (async () => {
      const encoder = new StreamEncoder(pipe, HEADER);
      for (let i = 0; i < COUNT; i++) {
        payload.fill(i);
        await encoder.writeRecord(i < COUNT - 4 ? i >> 4 : PHASE_STOP_COPY, payload);
      }
      await encoder.finish();
      pipe.end();
    })();
    gc();
    const baseline = process.memoryUsage().arrayBuffers;
    let peak = 0;
    let count = 0;
    const decoder = new StreamDecoder(pipe);
    for await (const r of decoder.records()) {
      assert.equal(r.payload.length, RECORD);
      assert.equal(r.payload[RECORD - 1], count);
      count++;
      if (count % 4 === 0) {
        gc();
        peak = Math.max(peak, process.memoryUsage().arrayBuffers - baseline);
      }
    }
    await writer;
    assert.equal(count, COUNT);
    assert.deepEqual(decoder.totals, { records: BigInt(COUNT), payloadBytes: BigInt(COUNT * RECORD) });
    // A few records' worth (the one being read, the one yielded, those in the pipe; the GC frees
    // array buffers with some lag), where keeping them all would be 64.
    assert.ok(peak < 16 * RECORD, `array buffers grew by ${peak} bytes`);
  });
});
