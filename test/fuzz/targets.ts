// Fuzz targets: the stream decoder/verifier and the region, device and IRQ info decoders, over seeded mutations.
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { VfioError } from '../../lib/errors';
import { StreamEncoder, StreamError, verifyStream, type StreamHeader } from '../../lib/migration/stream';
import { FIXED_HEADER_SIZE, RECORD_HEADER, RECORD_HEADER_SIZE, TRAILER } from '../../lib/migration/stream/format';
import { decodeDeviceInfo, decodeIrqInfo, decodeRegionInfo } from '../../lib/decode';
import {
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
} from '../../lib/uapi';

/** A seeded PRNG (mulberry32): rand(n) is an integer in [0, n). */
export type Rand = (n: number) => number;
export function prng(seed: number): Rand {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const pick = <T>(rand: Rand, items: readonly T[]): T => items[rand(items.length)]!;

/** How long one case may take before it counts as a hang. */
export const CASE_TIME_LIMIT_MS = 5000;

// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f-\x9f]/;

// --------------------------------------------------------------------------------------------
// Stream decoder and verifier
// --------------------------------------------------------------------------------------------

interface Original {
  bytes: Buffer;
  header: StreamHeader;
  records: { phase: number; payload: Buffer }[];
  /** Offset of each record header, the trailer's last. */
  heads: number[];
}

async function original(rand: Rand): Promise<Original> {
  const header: StreamHeader = {
    protocol: pick(rand, ['v1', 'v2'] as const),
    device: { kind: 'pci', vendor: '0x1af4', device: '0x1041', driver: 'vfio-pci' },
    migration: { regionIndex: 9, mmapAreas: [{ offset: '0', size: '4096' }] },
    tool: { name: 'vfio-migration', version: 'fuzz' },
    created: '2026-12-01T00:00:00.000Z',
  };
  const records = Array.from({ length: rand(5) }, () => {
    const payload = Buffer.alloc(pick(rand, [0, 1, 7, 64, 300, 5000]));
    for (let i = 0; i < payload.length; i++) payload[i] = rand(256);
    return { phase: pick(rand, [0, 1, 2, 0xffffffff]), payload };
  });
  const parts: Buffer[] = [];
  const encoder = new StreamEncoder(async (c) => void parts.push(Buffer.from(c)), header);
  for (const r of records) await encoder.writeRecord(r.phase, r.payload);
  await encoder.finish();
  const bytes = Buffer.concat(parts);
  const heads: number[] = [];
  let at = FIXED_HEADER_SIZE + bytes.readUInt32LE(12) + 4;
  for (const r of records) {
    heads.push(at);
    at += RECORD_HEADER_SIZE + r.payload.length;
  }
  heads.push(at);
  return { bytes, header, records, heads };
}

/** Rewrites the CRC of the record header at `at`, so that a lie in it passes the header check. */
function resealHead(b: Buffer, at: number): void {
  b.writeUInt32LE(crc32(b.subarray(at, at + RECORD_HEADER.headerCrc)), at + RECORD_HEADER.headerCrc);
}

function sealedHeader(json: Buffer): Buffer {
  const fixed = Buffer.alloc(FIXED_HEADER_SIZE);
  Buffer.from('VFIOMIG\0', 'latin1').copy(fixed);
  fixed.writeUInt16LE(1, 8);
  fixed.writeUInt32LE(json.length, 12);
  const head = Buffer.concat([fixed, json]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(head));
  return Buffer.concat([head, crc]);
}

const HOSTILE_JSON: ((rand: Rand) => string)[] = [
  (r) => `{"protocol":${'['.repeat(1 + r(100_000))}0${']'.repeat(1 + r(10))},"device":{}}`,
  (r) => `{"protocol":"v1","device":{},"x":${'{"a":'.repeat(1 + r(5000))}1${'}'.repeat(1 + r(5000))}}`,
  () => '{"protocol":"v1","device":{},"created":{"toString":1}}',
  () => '{"protocol":"v1","device":{"vendor":{"valueOf":null}},"tool":{"name":[],"version":"1"}}',
  () => '{"protocol":"v2","device":{"kind":"mdev","mdevType":"\\u001b]0;x\\u0007\\u009b2J\\u202e"}}',
  () => '{"__proto__":{"protocol":"v1"},"device":{}}',
  (r) => `{"protocol":"v1","device":{"a":"${'x'.repeat(r(40_000))}"}}`,
  (r) => `{"protocol":"v1","device":{${Array.from({ length: r(600) }, (_, i) => `"k${i}":${i}`).join(',')}}}`,
  () => '{"protocol":"v1","device":{},"protocol":"v3"}',
  (r) => `{"protocol":"v1","device":{}${' '.repeat(r(10))}`,
  () => '\ufeff{"protocol":"v1","device":{}}',
  () => '{"protocol":"v1","device":{"a":1e999,"b":-0,"c":"\\ud800"}}',
];

type Mutation = 'bitflip' | 'truncate' | 'length' | 'trailer' | 'json' | 'splice' | 'append';
const MUTATIONS: readonly Mutation[] = ['bitflip', 'truncate', 'length', 'trailer', 'json', 'splice', 'append'];

function mutate(rand: Rand, o: Original, kind: Mutation): Buffer {
  const b = Buffer.from(o.bytes);
  const headerEnd = o.heads[0]!;
  switch (kind) {
    case 'bitflip': {
      for (let i = 1 + rand(4); i > 0; i--) {
        const pos = rand(b.length);
        b[pos]! ^= 1 << rand(8);
      }
      return b;
    }
    case 'truncate': {
      // Anywhere, or right around a boundary (inside the fixed header, at a record or payload start).
      const near = pick(rand, [0, FIXED_HEADER_SIZE, headerEnd, ...o.heads, ...o.heads.map((h) => h + 32)]);
      const cut = rand(2) ? rand(b.length) : Math.max(0, Math.min(b.length - 1, near + rand(5) - 2));
      return b.subarray(0, cut);
    }
    case 'length': {
      const at = pick(rand, o.heads);
      const lie = pick(rand, [
        1n << 30n,
        (1n << 30n) + 1n,
        (1n << 64n) - 1n,
        BigInt(rand(1 << 20)),
        b.readBigUInt64LE(at + RECORD_HEADER.length) + BigInt(rand(3)) - 1n,
        BigInt(b.length),
      ]);
      b.writeBigUInt64LE(lie < 0n ? 0n : lie, at + RECORD_HEADER.length);
      resealHead(b, at);
      return b;
    }
    case 'trailer': {
      const at = o.heads.at(-1)!;
      const body = at + RECORD_HEADER_SIZE;
      const field = pick(rand, ['records', 'payloadBytes', 'streamCrc', 'sequence', 'phase'] as const);
      if (field === 'records') b.writeBigUInt64LE(BigInt(rand(8)), body + TRAILER.records);
      else if (field === 'payloadBytes') b.writeBigUInt64LE(BigInt(rand(20_000)), body + TRAILER.payloadBytes);
      else if (field === 'streamCrc') b.writeUInt32LE(rand(2 ** 32), body + TRAILER.streamCrc);
      else if (field === 'sequence') b.writeBigUInt64LE(BigInt(rand(8)), at + RECORD_HEADER.sequence);
      else b.writeUInt32LE(pick(rand, [0, 1, 0xffffffff]), at + RECORD_HEADER.phase);
      // Every CRC that covers the lie is made right again, so only the reader's rules can catch it.
      b.writeUInt32LE(crc32(b.subarray(body, body + 20)), at + RECORD_HEADER.payloadCrc);
      resealHead(b, at);
      return b;
    }
    case 'json': {
      const json = Buffer.from(pick(rand, HOSTILE_JSON)(rand), 'utf8');
      return Buffer.concat([sealedHeader(json), b.subarray(headerEnd)]);
    }
    case 'splice': {
      // Drop, duplicate or swap whole records (their own CRCs stay right).
      const spans = o.heads.slice(0, -1).map((h, i) => b.subarray(h, o.heads[i + 1]));
      if (spans.length === 0) return Buffer.concat([b, b.subarray(headerEnd)]);
      const i = rand(spans.length);
      const j = rand(spans.length);
      const out = [...spans];
      const op = rand(3);
      if (op === 0) out.splice(i, 1);
      else if (op === 1) out.splice(i, 0, spans[i]!);
      else [out[i], out[j]] = [out[j]!, out[i]!];
      return Buffer.concat([b.subarray(0, headerEnd), ...out, b.subarray(o.heads.at(-1))]);
    }
    case 'append':
      return Buffer.concat([b, Buffer.from(Array.from({ length: 1 + rand(40) }, () => rand(256)))]);
  }
}

function* chunks(rand: Rand, b: Buffer): Generator<Buffer> {
  const size = pick(rand, [1, 3, 7, 64, 4096, b.length || 1]);
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

function withinTime<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: no answer within ${CASE_TIME_LIMIT_MS} ms`)),
      CASE_TIME_LIMIT_MS,
    );
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

/**
 * One case: a valid stream, mutated one way, verified. It must verify, or fail with a StreamError
 * whose offset lies in the data and whose message is printable; and a stream that verifies must
 * carry the original's records (and, unless the header was replaced, its header).
 */
export async function streamCase(rand: Rand): Promise<Mutation> {
  const o = await original(rand);
  const kind = pick(rand, MUTATIONS);
  const bytes = mutate(rand, o, kind);
  let result;
  try {
    const source = (async function* () {
      yield* chunks(rand, bytes);
    })();
    result = await withinTime(verifyStream(source), `${kind} case`);
  } catch (err) {
    if (!(err instanceof StreamError)) throw new Error(`${kind}: not a StreamError: ${String(err)}`, { cause: err });
    assert.ok(err.offset >= 0 && err.offset <= bytes.length, `${kind}: offset ${err.offset} outside the data`);
    assert.doesNotMatch(err.message, CONTROL, `${kind}: control characters in ${JSON.stringify(err.message)}`);
    return kind;
  }
  // Accepted: no false accept. Only the unchanged stream, or the original records behind a replaced
  // (valid) header, may verify.
  if (!bytes.equals(o.bytes)) {
    const originalBody = o.bytes.subarray(o.heads[0]);
    const body = bytes.subarray(bytes.length - originalBody.length);
    assert.ok(kind === 'json' && body.equals(originalBody), `${kind}: a changed stream verified`);
  } else {
    assert.deepEqual(result.header, o.header);
  }
  assert.equal(result.records, BigInt(o.records.length), `${kind}: record count`);
  assert.equal(
    result.payloadBytes,
    o.records.reduce((n, r) => n + BigInt(r.payload.length), 0n),
    `${kind}: payload bytes`,
  );
  return kind;
}

// --------------------------------------------------------------------------------------------
// Region, device and IRQ info decoders
// --------------------------------------------------------------------------------------------

function randomCapChain(rand: Rand, fixedSize: number): { bytes: Buffer; first: number } {
  const count = rand(6);
  const parts: Buffer[] = [];
  const offsets: number[] = [];
  let at = fixedSize;
  const bodies = Array.from({ length: count }, () => {
    const id = pick(rand, [
      VFIO_REGION_INFO_CAP_SPARSE_MMAP,
      VFIO_REGION_INFO_CAP_TYPE,
      VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
      rand(0x10000),
    ]);
    const body = Buffer.alloc(pick(rand, [0, 4, 8, 24, 40, rand(100)]));
    for (let i = 0; i < body.length; i++) body[i] = rand(4) ? rand(256) : 0;
    if (id === VFIO_REGION_INFO_CAP_SPARSE_MMAP && body.length >= 4) {
      body.writeUInt32LE(pick(rand, [0, 1, 2, rand(2 ** 32)]), 0);
    }
    offsets.push(at);
    at += 8 + body.length;
    return { id, body };
  });
  bodies.forEach(({ id, body }, i) => {
    const head = Buffer.alloc(8);
    head.writeUInt16LE(id, 0);
    head.writeUInt16LE(rand(3), 2);
    // The next link: the following cap, the end, a cycle, or out of bounds.
    const next = pick(rand, [
      offsets[i + 1] ?? 0,
      offsets[i + 1] ?? 0,
      offsets[rand(offsets.length)]!,
      rand(at + 64),
      rand(2 ** 32),
      (offsets[i] ?? 0) + 1,
    ]);
    head.writeUInt32LE(next, 4);
    parts.push(head, body);
  });
  return { bytes: Buffer.concat(parts), first: pick(rand, [offsets[0] ?? 0, rand(at + 16), 0, fixedSize - 1]) };
}

/** One case per decoder: random fixed fields and capability chains; only VfioError ERR_VFIO_BAD_INFO may come out. */
export function regionCase(rand: Rand): string {
  const target = pick(rand, ['region', 'device', 'irq'] as const);
  const fixedSize = target === 'region' ? 32 : target === 'device' ? 24 : 16;
  const chain = randomCapChain(rand, fixedSize);
  const fixed = Buffer.alloc(fixedSize);
  for (let i = 0; i < fixedSize; i++) fixed[i] = rand(256);
  const total = fixedSize + chain.bytes.length;
  fixed.writeUInt32LE(pick(rand, [total, rand(total + 1), rand(2 ** 32), fixedSize]), 0);
  if (target === 'region') {
    fixed.writeUInt32LE(rand(16) | (rand(2) ? VFIO_REGION_INFO_FLAG_CAPS | VFIO_REGION_INFO_FLAG_MMAP : 0), 4);
    fixed.writeUInt32LE(chain.first, 12);
    fixed.writeBigUInt64LE(pick(rand, [0n, 4096n, 0x10000n, (1n << 64n) - 1n]), 16);
  } else if (target === 'device') {
    fixed.writeUInt32LE(rand(2) ? VFIO_DEVICE_FLAGS_CAPS : rand(256), 4);
    fixed.writeUInt32LE(chain.first, 16);
  }
  let raw = Buffer.concat([fixed, chain.bytes]);
  if (rand(4) === 0) raw = raw.subarray(0, rand(raw.length + 1));
  const started = Date.now();
  try {
    if (target === 'region') decodeRegionInfo(raw);
    else if (target === 'device') decodeDeviceInfo(raw);
    else decodeIrqInfo(raw);
  } catch (err) {
    if (!(err instanceof VfioError) || err.code !== 'ERR_VFIO_BAD_INFO') {
      throw new Error(`${target}: not a VfioError ERR_VFIO_BAD_INFO: ${String(err)}`, { cause: err });
    }
  }
  assert.ok(Date.now() - started < CASE_TIME_LIMIT_MS, `${target}: took ${Date.now() - started} ms`);
  return target;
}

/** Runs `cases` cases of a target from `seed` (case i uses seed + i), stopping at `deadline` (ms since epoch). */
export async function campaign(
  target: 'stream' | 'region',
  seed: number,
  cases: number,
  deadline = Infinity,
): Promise<{ cases: number; kinds: Record<string, number> }> {
  const kinds: Record<string, number> = {};
  let n = 0;
  for (; n < cases && Date.now() < deadline; n++) {
    const rand = prng(seed + n);
    let kind: string;
    try {
      kind = target === 'stream' ? await streamCase(rand) : regionCase(rand);
    } catch (err) {
      throw new Error(
        `fuzz ${target}: case seed ${seed + n} failed (replay: --target ${target} --seed ${seed + n} --cases 1): ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    kinds[kind] = (kinds[kind] ?? 0) + 1;
  }
  return { cases: n, kinds };
}
