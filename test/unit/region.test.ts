// Host-side tests of the region/device info decoders against byte fixtures, hostile ones included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeDeviceInfo, decodeIrqInfo, decodeRegionInfo } from '../../lib/decode';
import { VfioError } from '../../lib/errors';
import {
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from '../../lib/uapi';

interface CapFixture {
  id: number;
  version?: number;
  body: Buffer;
  /** Override of the `next` field (else: the following cap, or 0). */
  next?: number;
}

/** Builds VFIO_DEVICE_GET_REGION_INFO bytes: the 32-byte struct followed by a capability chain. */
function regionInfo(opts: {
  index?: number;
  flags?: number;
  size?: bigint;
  offset?: bigint;
  caps?: CapFixture[];
  argsz?: number;
  firstCap?: number;
}): Buffer {
  const caps = opts.caps ?? [];
  const parts: Buffer[] = [];
  let at = 32;
  const offsets: number[] = [];
  for (const cap of caps) {
    offsets.push(at);
    at += 8 + cap.body.length;
  }
  caps.forEach((cap, i) => {
    const head = Buffer.alloc(8);
    head.writeUInt16LE(cap.id, 0);
    head.writeUInt16LE(cap.version ?? 1, 2);
    head.writeUInt32LE(cap.next ?? offsets[i + 1] ?? 0, 4);
    parts.push(head, cap.body);
  });
  const fixed = Buffer.alloc(32);
  const total = at;
  fixed.writeUInt32LE(opts.argsz ?? total, 0);
  fixed.writeUInt32LE(
    (opts.flags ?? VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE) |
      (caps.length ? VFIO_REGION_INFO_FLAG_CAPS : 0),
    4,
  );
  fixed.writeUInt32LE(opts.index ?? 9, 8);
  fixed.writeUInt32LE(opts.firstCap ?? (caps.length ? 32 : 0), 12);
  fixed.writeBigUInt64LE(opts.size ?? 0x10000n, 16);
  fixed.writeBigUInt64LE(opts.offset ?? 0x90000000000n, 24);
  return Buffer.concat([fixed, ...parts]);
}

function sparse(areas: [bigint, bigint][]): CapFixture {
  const body = Buffer.alloc(8 + areas.length * 16);
  body.writeUInt32LE(areas.length, 0);
  areas.forEach(([o, s], i) => {
    body.writeBigUInt64LE(o, 8 + i * 16);
    body.writeBigUInt64LE(s, 16 + i * 16);
  });
  return { id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, body };
}

function typeCap(type: number, subtype: number): CapFixture {
  const body = Buffer.alloc(8);
  body.writeUInt32LE(type, 0);
  body.writeUInt32LE(subtype, 4);
  return { id: VFIO_REGION_INFO_CAP_TYPE, body };
}

const bad = (pattern: RegExp) => (e: unknown) =>
  e instanceof VfioError && e.code === 'ERR_VFIO_BAD_INFO' && pattern.test(e.message);

test('a plain region without capabilities', () => {
  const info = decodeRegionInfo(
    regionInfo({ index: 0, flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP, size: 4096n, offset: 0n }),
  );
  assert.equal(info.index, 0);
  assert.equal(info.size, 4096n);
  assert.equal(info.offset, 0n);
  assert.equal(typeof info.size, 'bigint');
  assert.equal(info.readable, true);
  assert.equal(info.writable, false);
  assert.deepEqual(info.capabilities, []);
  assert.deepEqual(info.mmapAreas, [{ offset: 0n, size: 4096n }], 'an mmap-able region without sparse cap maps whole');
});

test('type, sparse mmap, msix-mappable and unknown capabilities decode in chain order', () => {
  const raw = regionInfo({
    flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
    size: 0x3000n,
    caps: [
      typeCap(3, 1),
      sparse([
        [0x1000n, 0x2000n],
        [0x2000n, 0n],
      ]),
      { id: VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, body: Buffer.alloc(0) },
      { id: 77, version: 2, body: Buffer.from([1, 2, 3, 4]) },
    ],
  });
  const info = decodeRegionInfo(raw);
  assert.deepEqual(info.type, { type: 3, subtype: 1 });
  assert.deepEqual(
    info.capabilities.map((c) => c.kind),
    ['type', 'sparse-mmap', 'msix-mappable', 'unknown'],
  );
  const unknown = info.capabilities[3];
  assert.ok(unknown.kind === 'unknown');
  assert.equal(unknown.id, 77);
  assert.equal(unknown.version, 2);
  assert.deepEqual([...unknown.bytes], [1, 2, 3, 4]);
  assert.deepEqual(info.mmapAreas, [{ offset: 0x1000n, size: 0x2000n }], 'zero-size areas are dropped');
});

test('hostile: a capability offset past argsz, inside the fixed struct, or past the buffer', () => {
  const raw = regionInfo({ caps: [typeCap(3, 1)] });
  raw.writeUInt32LE(raw.length - 4, 0); // argsz cuts the capability
  assert.throws(() => decodeRegionInfo(raw), bad(/outside|needs/));
  assert.throws(() => decodeRegionInfo(regionInfo({ caps: [typeCap(3, 1)], firstCap: 8 })), bad(/outside \[32/));
  assert.throws(() => decodeRegionInfo(regionInfo({ caps: [typeCap(3, 1)], firstCap: 4000 })), bad(/outside/));
  assert.throws(
    () => decodeRegionInfo(regionInfo({ caps: [typeCap(3, 1)], argsz: 4096 }).subarray(0, 44)),
    bad(/needs 16 bytes/),
  );
});

test('hostile: capability loops (self and longer) stop with an error', () => {
  assert.throws(
    () => decodeRegionInfo(regionInfo({ caps: [{ ...typeCap(3, 1), next: 32 }] })),
    bad(/loops back to offset 32/),
  );
  assert.throws(
    () => decodeRegionInfo(regionInfo({ caps: [typeCap(3, 1), { ...typeCap(3, 1), next: 32 }] })),
    bad(/loops/),
  );
});

test('hostile: sparse areas: count larger than the capability, areas past the region end', () => {
  const cap = sparse([[0n, 0x1000n]]);
  cap.body.writeUInt32LE(1000, 0);
  assert.throws(
    () => decodeRegionInfo(regionInfo({ flags: VFIO_REGION_INFO_FLAG_MMAP, caps: [cap] })),
    bad(/claims 1000 areas, room for 1/),
  );
  assert.throws(
    () =>
      decodeRegionInfo(
        regionInfo({ flags: VFIO_REGION_INFO_FLAG_MMAP, size: 0x1000n, caps: [sparse([[0x800n, 0x1000n]])] }),
      ),
    bad(/past the region size/),
  );
  const huge = sparse([[0xffffffffffffff00n, 0x1000n]]);
  assert.throws(
    () => decodeRegionInfo(regionInfo({ flags: VFIO_REGION_INFO_FLAG_MMAP, caps: [huge] })),
    bad(/past the region size/),
  );
});

test('hostile: truncated fixed part; unknown capability near the end keeps its bytes', () => {
  assert.throws(() => decodeRegionInfo(Buffer.alloc(20)), bad(/shorter than struct vfio_region_info/));
  const info = decodeRegionInfo(regionInfo({ caps: [{ id: 999, body: Buffer.alloc(0) }] }));
  assert.equal(info.capabilities[0].kind, 'unknown');
});

test('argsz larger than the buffer (the kernel grew it between calls): the walk stays inside the buffer', () => {
  const raw = regionInfo({ caps: [typeCap(3, 1), { ...typeCap(3, 1), next: 4000 }], argsz: 8192 });
  assert.throws(() => decodeRegionInfo(raw), bad(/outside/));
});

test('device info and irq info decode', () => {
  const dev = Buffer.alloc(20);
  dev.writeUInt32LE(20, 0);
  dev.writeUInt32LE(3, 4);
  dev.writeUInt32LE(10, 8);
  dev.writeUInt32LE(5, 12);
  assert.deepEqual(decodeDeviceInfo(dev), { flags: 3, numRegions: 10, numIrqs: 5, capabilities: [] });
  const irq = Buffer.alloc(16);
  irq.writeUInt32LE(16, 0);
  irq.writeUInt32LE(7, 4);
  irq.writeUInt32LE(2, 8);
  irq.writeUInt32LE(1, 12);
  assert.deepEqual(decodeIrqInfo(irq), { index: 2, flags: 7, count: 1 });
  assert.throws(() => decodeIrqInfo(Buffer.alloc(4)), bad(/too short/));
});
