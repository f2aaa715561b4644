// Host tests of DirtyBitmap (kernel layout, count, iteration, merge) and of the VFIO_IOMMU_GET_INFO decoder, hostile input included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DirtyBitmap } from '../../lib/dirty/bitmap';
import { decodeIommuInfo } from '../../lib/dirty/iommu-info';
import { allocDmaMemory } from '../../lib/dirty/dma';
import { nativeMappingOf } from '../../lib/mapping';
import { VfioError } from '../../lib/errors';
import { VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES } from '../../lib/uapi';

const PAGE = 4096n;

// Reference: the uapi's formula, bitmap[(addr - iova) / page_size / 64] & (1 << (page % 64)), on u64 words.
function kernelBit(bytes: Uint8Array, index: number): boolean {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const word = view.getBigUint64(Math.floor(index / 64) * 8, true);
  return (word & (1n << BigInt(index % 64))) !== 0n;
}

test('DirtyBitmap: geometry is checked (alignment, power-of-two page size, non-empty, size limit)', () => {
  assert.throws(() => new DirtyBitmap(0n, 0n, PAGE), RangeError);
  assert.throws(() => new DirtyBitmap(0n, PAGE, 3000n), /power of two/);
  assert.throws(() => new DirtyBitmap(100n, PAGE, PAGE), /aligned/);
  assert.throws(() => new DirtyBitmap(0n, PAGE + 1n, PAGE), /multiple/);
  assert.throws(() => new DirtyBitmap(0n, 2n ** 50n, PAGE), /limit/);
  assert.throws(() => new DirtyBitmap(2n ** 64n - PAGE, 2n * PAGE, PAGE), /64-bit/);
  assert.throws(() => new DirtyBitmap(0 as unknown as bigint, PAGE, PAGE), TypeError);
  const b = new DirtyBitmap(0x100000n, 65n * PAGE, PAGE);
  assert.equal(b.pages, 65);
  assert.equal(b.bytes.length, 16, 'whole u64 words, as the kernel writes them');
  assert.equal(b.bytes.byteOffset % 8, 0);
});

test('DirtyBitmap: set/isDirty follow the kernel layout bit for bit; count, forEachDirty, dirtyPages, dirtyRuns agree', () => {
  const pages = 1000;
  const b = new DirtyBitmap(0x40000000n, BigInt(pages) * PAGE, PAGE);
  const chosen = [0, 1, 2, 7, 8, 31, 32, 33, 63, 64, 65, 127, 128, 500, 501, 502, 998, 999];
  for (const i of chosen) b.set(i);
  for (let i = 0; i < pages; i++) {
    assert.equal(b.isDirty(i), chosen.includes(i), `page ${i}`);
    assert.equal(kernelBit(b.bytes, i), chosen.includes(i), `kernel bit ${i}`);
  }
  assert.equal(b.count(), chosen.length);
  const seen: number[] = [];
  b.forEachDirty((i) => seen.push(i));
  assert.deepEqual(seen, chosen);
  assert.deepEqual([...b.dirtyPages()], chosen);
  assert.deepEqual(
    [...b.dirtyRuns()],
    [
      [0, 3],
      [7, 2],
      [31, 3],
      [63, 3],
      [127, 2],
      [500, 3],
      [998, 2],
    ],
  );
  assert.equal(b.iovaOf(2), 0x40000000n + 2n * PAGE);
  assert.equal(b.indexOf(0x40000000n + 999n * PAGE + 5n), 999);
  assert.throws(() => b.indexOf(0x40000000n + 1000n * PAGE), RangeError);
  assert.throws(() => b.set(1000), RangeError);
  assert.throws(() => b.isDirty(-1), RangeError);
  b.clear();
  assert.equal(b.count(), 0);
  b.setAll();
  assert.equal(b.count(), pages);
});

test('DirtyBitmap: bits the kernel set past the last page are not counted or iterated', () => {
  const b = new DirtyBitmap(0n, 3n * PAGE, PAGE);
  b.bytes[0] = 0xff; // pages 0-2 plus five bits past the end
  assert.equal(b.count(), 8, 'count is of the bitmap words as the kernel left them');
  const seen: number[] = [];
  b.forEachDirty((i) => seen.push(i));
  assert.deepEqual(seen, [0, 1, 2]);
});

test('DirtyBitmap: merge ORs a sub-range at word and at bit offsets, refuses other page sizes and outside ranges', () => {
  const big = new DirtyBitmap(0n, 256n * PAGE, PAGE);
  big.set(3);
  const atWord = new DirtyBitmap(64n * PAGE, 64n * PAGE, PAGE);
  atWord.set(0);
  atWord.set(63);
  const atBit = new DirtyBitmap(5n * PAGE, 40n * PAGE, PAGE);
  atBit.set(0);
  atBit.set(39);
  big.merge(atWord).merge(atBit);
  assert.deepEqual([...big.dirtyPages()], [3, 5, 44, 64, 127]);
  assert.throws(() => big.merge(new DirtyBitmap(0n, 2n * 8192n, 8192n)), /page size/);
  assert.throws(() => big.merge(new DirtyBitmap(255n * PAGE, 2n * PAGE, PAGE)), /outside/);
  const copy = new DirtyBitmap(0n, 256n * PAGE, PAGE).merge(big);
  assert.ok(copy.equals(big));
  copy.set(200);
  assert.ok(!copy.equals(big));
});

test('DirtyBitmap: a 1 GiB range of 4 KiB pages counts and iterates without growing the heap per page', () => {
  const b = new DirtyBitmap(0n, 1n << 30n, PAGE);
  assert.equal(b.pages, 262144);
  for (let i = 0; i < b.pages; i += 3) b.set(i);
  global.gc?.();
  const before = process.memoryUsage().heapUsed;
  let n = 0;
  b.forEachDirty(() => n++);
  const grown = process.memoryUsage().heapUsed - before;
  assert.equal(n, Math.ceil(262144 / 3));
  assert.equal(b.count(), n);
  assert.ok(grown < 4 << 20, `heap grew ${grown} bytes for ${n} pages`);
});

// struct vfio_iommu_type1_info (24 bytes) followed by capabilities.
function iommuInfo(
  caps: { id: number; body: Buffer; next?: number }[],
  flags = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS,
) {
  const parts: Buffer[] = [];
  let at = 24;
  const offsets: number[] = [];
  for (const c of caps) {
    offsets.push(at);
    at += 8 + c.body.length;
  }
  const head = Buffer.alloc(24);
  head.writeUInt32LE(at, 0);
  head.writeUInt32LE(flags, 4);
  head.writeBigUInt64LE(0x40201000n, 8);
  head.writeUInt32LE(caps.length ? 24 : 0, 16);
  parts.push(head);
  caps.forEach((c, i) => {
    const h = Buffer.alloc(8);
    h.writeUInt16LE(c.id, 0);
    h.writeUInt16LE(1, 2);
    h.writeUInt32LE(c.next ?? (i + 1 < caps.length ? offsets[i + 1] : 0), 4);
    parts.push(h, c.body);
  });
  return Buffer.concat(parts);
}

function migrationBody(pgsizes: bigint, max: bigint): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(0, 0);
  b.writeBigUInt64LE(pgsizes, 8);
  b.writeBigUInt64LE(max, 16);
  return b;
}

test('decodeIommuInfo: page sizes, IOVA ranges, DMA entries left and the migration capability', () => {
  const ranges = Buffer.alloc(8 + 32);
  ranges.writeUInt32LE(2, 0);
  ranges.writeBigUInt64LE(0n, 8);
  ranges.writeBigUInt64LE(0xfedfffffn, 16);
  ranges.writeBigUInt64LE(0xfef00000n, 24);
  ranges.writeBigUInt64LE(0xffffffffffffn, 32);
  const avail = Buffer.alloc(4);
  avail.writeUInt32LE(65535, 0);
  const info = decodeIommuInfo(
    iommuInfo([
      { id: 1, body: ranges },
      { id: 2, body: migrationBody(0x1000n, 1n << 27n) },
      { id: 3, body: avail },
    ]),
  );
  assert.equal(info.iovaPageSizes, 0x40201000n);
  assert.deepEqual(info.iovaRanges, [
    { start: 0n, end: 0xfedfffffn },
    { start: 0xfef00000n, end: 0xffffffffffffn },
  ]);
  assert.equal(info.dmaAvail, 65535);
  assert.deepEqual(info.migration, { flags: 0, pageSizes: 0x1000n, maxBitmapBytes: 1n << 27n });
  const none = decodeIommuInfo(iommuInfo([], VFIO_IOMMU_INFO_PGSIZES));
  assert.equal(none.migration, null);
  assert.equal(none.iovaRanges, null);
});

test('decodeIommuInfo: hostile chains (loop, outside argsz, truncated capability, too many ranges) are errors', () => {
  const bad = (raw: Buffer, re: RegExp) =>
    assert.throws(
      () => decodeIommuInfo(raw),
      (e: unknown) => e instanceof VfioError && e.code === 'ERR_VFIO_BAD_INFO' && re.test(e.message),
    );
  bad(iommuInfo([{ id: 2, body: migrationBody(1n, 1n), next: 24 }]), /loops/);
  const outside = iommuInfo([{ id: 2, body: migrationBody(1n, 1n) }]);
  outside.writeUInt32LE(4096, 16);
  bad(outside, /outside/);
  bad(iommuInfo([{ id: 2, body: Buffer.alloc(8) }]), /needs 32 bytes/);
  const lying = Buffer.alloc(8 + 16);
  lying.writeUInt32LE(1000, 0);
  bad(iommuInfo([{ id: 1, body: lying }]), /claims 1000 ranges/);
  bad(Buffer.alloc(8), /too short/);
});

test('allocDmaMemory: page-sized lengths only; the memory is a shared, writable, zeroed mapping', () => {
  assert.throws(() => allocDmaMemory(0), RangeError);
  assert.throws(() => allocDmaMemory(4097), RangeError);
  const m = allocDmaMemory(8192);
  try {
    assert.equal(m.length, 8192);
    assert.ok(new Uint8Array(m.buffer).every((b) => b === 0));
    m.write(4096, 4, 0xdeadbeef);
    assert.equal(m.read(4096, 4), 0xdeadbeef);
  } finally {
    m.unmap();
  }
});

test('DMA methods of a native Mapping: type-tagged receiver, no unmap without a DMA mapping, release is a no-op then', () => {
  const m = allocDmaMemory(4096);
  const map = nativeMappingOf(m);
  try {
    assert.throws(() => map.dmaUnmap.call({} as never, 0, 0n, 4096n), TypeError);
    assert.throws(() => map.dmaRelease.call({} as never), TypeError);
    assert.throws(() => map.dmaUnmap(0, 0n, 4096n), /no DMA mapping/);
    map.dmaRelease();
    assert.throws(() => map.dmaMap(-1, 0, 4096, 0n, 3), RangeError, 'a bad fd is refused before the ioctl');
    assert.throws(() => map.dmaMap(0, 4096, 4096, 0n, 3), /outside the mapping/);
    assert.throws(() => nativeMappingOf({} as never), TypeError);
  } finally {
    m.unmap();
  }
  assert.throws(() => map.dmaMap(0, 0, 4096, 0n, 3), /unmapped/);
});
