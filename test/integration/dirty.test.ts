// Dirty tracking in the guest: DMA mappings, the type1 IOMMU's dirty bitmap and device DMA logging, against real DMA by the test driver.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { guestKernel } from './helpers';
import { TestDevice, needsDriver, removeAll, type DmaWrite } from '../support/test-driver';
import {
  DMA_LOGGING_MAX_RANGES,
  DirtyBitmap,
  DmaLog,
  SyscallError,
  VfioError,
  allocDmaMemory,
  probeDmaLogging,
  type Device,
  type Mapping,
} from '../../lib';
import { native } from '../../lib/native';
import { nativeMappingOf } from '../../lib/mapping';
import type { ContainerDma, DmaMapping } from '../../lib/dirty/dma';
import { binArgs } from '../support/cli-child';

const PAGE = 4096n;
const IOVA = 0x100000n;
const PAGES = 64;
const SIZE = BigInt(PAGES) * PAGE;

/**
 * DMA_LOGGING_REPORT needs the kernel's iova_bitmap: part of vfio in 6.1, moved to iommufd
 * (CONFIG_IOMMUFD_DRIVER) in 6.9, which Debian's 6.12 leaves out; there the core fails every report with EOPNOTSUPP.
 */
function kernelReports(): boolean {
  if (guestKernel === '6.1') return true;
  const config = `.cache/vm/${guestKernel}/config`;
  return existsSync(config) && /^CONFIG_IOMMUFD_DRIVER=y/m.test(readFileSync(config, 'utf8'));
}
const reports = kernelReports();

interface Rig {
  dev: TestDevice;
  device: Device;
  dma: ContainerDma;
  mem: Mapping;
  dm: DmaMapping;
}

function rig(kind: 'v2' | 'none' = 'v2'): Rig {
  const dev = new TestDevice(kind);
  const device = dev.open();
  const dma = device.container!.dma;
  const mem = allocDmaMemory(Number(SIZE));
  const dm = dma.map(mem, IOVA);
  return { dev, device, dma, mem, dm };
}

function teardown(r: Rig): void {
  r.device.close(); // releases the DMA mapping with the container
  r.mem.unmap();
  r.dev.remove();
}

/** Pages of [IOVA, +SIZE) that a list of writes touches. */
function pagesOf(writes: readonly DmaWrite[]): number[] {
  const set = new Set<number>();
  for (const w of writes) {
    const first = Number((w.iova - IOVA) / PAGE);
    const last = Number((w.iova + BigInt(w.length ?? 1) - 1n - IOVA) / PAGE);
    for (let p = first; p <= last; p++) set.add(p);
  }
  return [...set].sort((a, b) => a - b);
}

/** Pages whose bytes are not all zero: what really changed in the memory. */
function changedPages(mem: Mapping): number[] {
  const bytes = new Uint8Array(mem.buffer);
  const out: number[] = [];
  for (let p = 0; p < PAGES; p++) {
    if (bytes.subarray(p * 4096, (p + 1) * 4096).some((b) => b !== 0)) out.push(p);
  }
  return out;
}

const errCode = (code: string) => (e: unknown) => e instanceof SyscallError && e.code === code;

describe('dirty tracking: DMA mappings, IOMMU dirty pages, device DMA logging', { skip: needsDriver }, () => {
  after(() => removeAll());

  test('DMA mappings: checked alignment and overlap before the kernel, a reason with each kernel refusal, list and unmap', () => {
    const r = rig();
    try {
      assert.deepEqual(
        r.dma.list().map((m) => [m.iova, m.size]),
        [[IOVA, SIZE]],
      );
      assert.throws(() => r.dma.map(r.mem, IOVA + 100n), /not aligned/);
      assert.throws(() => r.dma.map(r.mem, IOVA + PAGE, { length: 4097 }), /not aligned/);
      assert.throws(() => r.dma.map(r.mem, IOVA + PAGE, { length: 4096 }), /overlaps/);
      assert.throws(() => r.dma.map(r.mem, 0n, { offset: 0, length: Number(SIZE) + 4096 }), /outside the mapping/);
      // The kernel's own refusal of an overlap (bypassing the library's check): EEXIST, explained.
      assert.throws(
        () => nativeMappingOf(r.mem).dmaMap(r.device.container!.fd, 0, 4096, IOVA, 3),
        (e: unknown) => e instanceof SyscallError && e.code === 'EEXIST' && e.ioctl === 'VFIO_IOMMU_MAP_DMA',
      );
      // type1v2 refuses to split a mapping: EINVAL from UNMAP_DMA for half of it.
      assert.throws(() => nativeMappingOf(r.mem).dmaUnmap(r.device.container!.fd, IOVA, PAGE), errCode('EINVAL'));
      const second = r.dma.map(r.mem, 0x10000000n, { offset: 4096, length: 8192, write: false });
      assert.equal(r.dma.list().length, 2);
      assert.equal(r.dma.unmap(second), null, 'no bitmap while tracking is off');
      assert.throws(() => r.dma.unmap(second), /not a live DMA mapping/);
      assert.equal(r.dma.unmap(r.dm), null);
      assert.deepEqual(r.dma.list(), []);
    } finally {
      teardown(r);
    }
  });

  test('memory given to a DMA mapping stays mapped after its Mapping is unmapped, until the DMA unmap', () => {
    const r = rig();
    try {
      const probe = new Uint8Array(r.mem.buffer);
      r.mem.unmap(); // the JS view goes; the kernel may still write through the IOVA
      assert.equal(r.mem.mapped, false);
      assert.equal(probe.byteLength, 0, 'the view was detached');
      r.dev.dmaWrite([{ iova: IOVA + 7n * PAGE, length: 16, byte: 0x77 }]); // lands in memory still mapped
      assert.equal(r.dev.counters()['dma.writes'], 1n);
      assert.equal(r.dma.unmap(r.dm), null); // now the addon may munmap
      assert.notEqual(
        r.dev.trySet('dma_write', `0x${(IOVA + 7n * PAGE).toString(16)}`),
        null,
        'no mapping at that IOVA now',
      );
    } finally {
      teardown(r);
    }
  });

  test('VFIO_IOMMU_GET_INFO: the migration capability gives the dirty page sizes and the bitmap limit', () => {
    const r = rig();
    try {
      const info = r.dma.info();
      assert.ok(info.migration, 'type1 offers dirty tracking');
      assert.ok((info.migration.pageSizes & PAGE) !== 0n, `page sizes 0x${info.migration.pageSizes.toString(16)}`);
      assert.ok(info.migration.maxBitmapBytes > 0n);
      assert.equal(r.dma.dirtyPageSize(), PAGE);
      assert.ok(info.iovaPageSizes !== 0n);
    } finally {
      teardown(r);
    }
  });

  test('real DMA: the device log, the IOMMU bitmap and the bytes that changed all name the same pages', async () => {
    const r = rig();
    try {
      assert.deepEqual(probeDmaLogging(r.device), { supported: true });
      r.dma.startDirtyTracking();
      r.dma.dirtyBitmap(IOVA, SIZE); // start from a clean bitmap
      using log = DmaLog.start(r.device, [{ iova: IOVA, length: SIZE }], PAGE);
      assert.equal(log.pageSize, PAGE);
      const writes: DmaWrite[] = [
        { iova: IOVA, length: 1, byte: 0x11 },
        { iova: IOVA + 3n * PAGE + 100n, length: 8, byte: 0x22 },
        { iova: IOVA + 17n * PAGE, length: 4096, byte: 0x33 },
        { iova: IOVA + 40n * PAGE + 4000n, length: 200, byte: 0x44 }, // crosses into page 41
        { iova: IOVA + 63n * PAGE + 4095n, length: 1, byte: 0x55 },
      ];
      r.dev.dmaWrite(writes);
      const expected = pagesOf(writes);
      assert.deepEqual(expected, [0, 3, 17, 40, 41, 63]);

      // The bytes: exactly what each write put there.
      const bytes = new Uint8Array(r.mem.buffer);
      for (const w of writes) {
        const at = Number(w.iova - IOVA);
        assert.ok(bytes.subarray(at, at + (w.length ?? 1)).every((b) => b === w.byte));
      }
      assert.deepEqual(changedPages(r.mem), expected);

      const driverLog = r.dev.dmaLog();
      assert.ok(driverLog.active);
      assert.deepEqual(
        driverLog.pages,
        expected.map((p) => IOVA + BigInt(p) * PAGE),
      );

      const iommu = r.dma.dirtyBitmap(IOVA, SIZE);
      assert.deepEqual([...iommu.dirtyPages()], expected, 'IOMMU bitmap');
      assert.equal(iommu.count(), expected.length);
      assert.equal(r.dma.dirtyBitmap(IOVA, SIZE).count(), 0, 'the IOMMU cleared what it reported');

      if (reports) {
        const device = await log.report(IOVA, SIZE);
        assert.deepEqual([...device.dirtyPages()], expected, 'device log report');
        assert.ok(device.equals(iommu));
        assert.equal((await log.report(IOVA, SIZE)).count(), 0, 'the report cleared the log');
      } else {
        const into = new DirtyBitmap(IOVA, SIZE, PAGE);
        await assert.rejects(
          log.report(IOVA, SIZE, into),
          (e: unknown) =>
            e instanceof SyscallError && e.code === 'EOPNOTSUPP' && /CONFIG_IOMMUFD_DRIVER/.test(e.message),
        );
        assert.equal(into.count(), PAGES, 'a failed report leaves every page dirty, as the uapi asks');
      }

      // Unmap while tracking hands over the mapping's dirty pages in the same call.
      r.dev.dmaWrite([{ iova: IOVA + 5n * PAGE, byte: 0x66 }]);
      const atUnmap = r.dma.unmap(r.dm);
      assert.ok(atUnmap);
      assert.deepEqual([...atUnmap.dirtyPages()], [5]);
      log.stop();
      assert.equal(r.dev.dmaLog().active, false);
      r.dma.stopDirtyTracking();
    } finally {
      teardown(r);
    }
  });

  test('IOMMU dirty tracking rules: a second start is a no-op, a bitmap needs tracking on, whole mappings and the smallest page size', () => {
    const r = rig();
    const fd = r.device.container!.fd;
    try {
      assert.throws(
        () => r.dma.dirtyBitmap(IOVA, SIZE),
        (e: unknown) => e instanceof VfioError && /not started/.test(e.message),
      );
      const bm = new Uint8Array(8);
      assert.throws(() => native.iommuDirtyBitmap(fd, IOVA, SIZE, PAGE, bm), errCode('EINVAL'), 'kernel: tracking off');
      r.dma.startDirtyTracking();
      r.dma.startDirtyTracking();
      assert.ok(r.dma.tracking);
      assert.throws(() => native.iommuDirtyBitmap(fd, IOVA, SIZE / 2n, PAGE, bm), errCode('EINVAL'), 'half a mapping');
      assert.throws(
        () => native.iommuDirtyBitmap(fd, IOVA, SIZE, 8192n, bm),
        errCode('EINVAL'),
        'not the smallest page size',
      );
      assert.throws(
        () => native.iommuDirtyBitmap(fd, IOVA, SIZE, PAGE, new Uint8Array(4)),
        errCode('EINVAL'),
        'bitmap too small',
      );
      r.dma.stopDirtyTracking();
      r.dma.stopDirtyTracking();
    } finally {
      teardown(r);
    }
  });

  test('DMA logging rules: start twice, too many or bad ranges, page size checks, report outside the logged ranges', async () => {
    const r = rig();
    const fd = r.device.fd;
    try {
      const log = DmaLog.start(r.device, [{ iova: IOVA, length: SIZE / 4n }], PAGE);
      assert.throws(
        () => DmaLog.start(r.device, [{ iova: IOVA, length: SIZE }]),
        (e: unknown) => e instanceof VfioError && e.code === 'ERR_VFIO_BUSY',
      );
      // The driver's own rule, past the library: a start without a stop is EBUSY.
      assert.throws(() => native.deviceDmaLoggingStart(fd, PAGE, new BigUint64Array([IOVA, SIZE])), errCode('EBUSY'));
      if (reports) {
        await assert.rejects(log.report(IOVA + SIZE / 4n, PAGE), errCode('EINVAL'), 'outside the logged range');
        await assert.rejects(log.report(IOVA, SIZE), errCode('EINVAL'), 'partly outside');
        assert.equal((await log.report(IOVA, SIZE / 4n)).count(), 0);
      } else {
        await assert.rejects(log.report(IOVA + SIZE / 4n, PAGE), errCode('EOPNOTSUPP'));
      }
      // The core's page size rule for reports (before any driver): a power of two of at least 4 KiB.
      await assert.rejects(
        native.deviceDmaLoggingReportAsync(fd, IOVA, 3n * PAGE, 3n * PAGE, new Uint8Array(8)),
        errCode('EINVAL'),
      );
      await assert.rejects(log.report(IOVA, SIZE / 4n, new DirtyBitmap(IOVA, SIZE / 4n, 2048n)), RangeError);
      log.stop();
      log.stop();

      // Ranges: none, too many (the library, then the kernel), overlapping, misaligned.
      assert.throws(() => DmaLog.start(r.device, []), RangeError);
      const many = Array.from({ length: DMA_LOGGING_MAX_RANGES + 1 }, (_, i) => ({
        iova: BigInt(i) * 2n * PAGE,
        length: PAGE,
      }));
      assert.throws(() => DmaLog.start(r.device, many), /at most 256/);
      const flat = new BigUint64Array(many.flatMap((m) => [m.iova, m.length]));
      assert.throws(() => native.deviceDmaLoggingStart(fd, PAGE, flat), errCode('E2BIG'));
      assert.throws(() => native.deviceDmaLoggingStart(fd, PAGE, new BigUint64Array(0)), errCode('EINVAL'));
      assert.throws(
        () => native.deviceDmaLoggingStart(fd, PAGE, new BigUint64Array([0n, 2n * PAGE, PAGE, PAGE])),
        errCode('EINVAL'),
      );
      assert.throws(() => native.deviceDmaLoggingStart(fd, PAGE, new BigUint64Array([100n, PAGE])), errCode('EINVAL'));
      assert.throws(
        () =>
          DmaLog.start(r.device, [
            { iova: 0n, length: 2n * PAGE },
            { iova: PAGE, length: PAGE },
          ]),
        /overlaps/,
      );
      assert.throws(() => DmaLog.start(r.device, [{ iova: 0n, length: PAGE }], 3000n), /power of two/);
      // Exactly the maximum is accepted.
      DmaLog.start(r.device, many.slice(0, DMA_LOGGING_MAX_RANGES)).stop();
    } finally {
      teardown(r);
    }
  });

  test('page size negotiation: the driver picks its own page size and the log keeps it; the hint is clamped', async () => {
    const r = rig();
    try {
      r.dev.set('log_page_size', 65536);
      const log = DmaLog.start(r.device, [{ iova: IOVA, length: SIZE }], PAGE);
      assert.equal(log.pageSize, 65536n, 'the page size the driver answered');
      r.dev.dmaWrite([{ iova: IOVA + 3n * PAGE }, { iova: IOVA + 20n * PAGE }]);
      assert.deepEqual(r.dev.dmaLog().pages, [IOVA, IOVA + 16n * PAGE], 'logged at 64 KiB');
      if (reports) {
        const coarse = await log.report(IOVA, SIZE);
        assert.equal(coarse.pageSize, 65536n);
        assert.deepEqual([...coarse.dirtyPages()], [0, 1]);
        r.dev.dmaWrite([{ iova: IOVA + 3n * PAGE }]);
        const fine = await log.report(IOVA, SIZE, new DirtyBitmap(IOVA, SIZE, PAGE));
        assert.deepEqual(
          [...fine.dirtyPages()],
          Array.from({ length: 16 }, (_, i) => i),
          'replicated to 4 KiB bits',
        );
      }
      log.stop();
      r.dev.set('log_page_size', 0);
      const huge = DmaLog.start(r.device, [{ iova: 1n << 30n, length: 1n << 30n }], 1n << 30n);
      assert.equal(huge.pageSize, 2n << 20n, 'a 1 GiB hint gets the driver’s largest, 2 MiB');
      huge.stop();
    } finally {
      teardown(r);
    }
  });

  test('logging across a reset keeps the log (the memory did change) and its start; closing the device stops it', async () => {
    const r = rig();
    try {
      const log = DmaLog.start(r.device, [{ iova: IOVA, length: SIZE }]);
      r.dev.dmaWrite([{ iova: IOVA + 2n * PAGE }]);
      await r.device.reset();
      r.dev.dmaWrite([{ iova: IOVA + 4n * PAGE }]);
      assert.deepEqual(r.dev.dmaLog().pages, [IOVA + 2n * PAGE, IOVA + 4n * PAGE]);
      assert.throws(
        () => native.deviceDmaLoggingStart(r.device.fd, PAGE, new BigUint64Array([IOVA, SIZE])),
        errCode('EBUSY'),
      );
      if (reports) assert.deepEqual([...(await log.report(IOVA, SIZE)).dirtyPages()], [2, 4]);
      assert.ok(log.active);
      r.device.close();
      assert.equal(log.active, false);
      assert.equal(r.dev.dmaLog().active, false, 'the driver ended the log with the open file');
      assert.ok(r.dev.counters()['log.starts']! >= 1n);
      // Writes need the device open: vfio_dma_rw has no container otherwise.
      assert.equal(r.dev.trySet('dma_write', `0x${IOVA.toString(16)}`), 'ENODEV');
      using again = r.dev.open();
      DmaLog.start(again, [{ iova: IOVA, length: SIZE }]).close();
    } finally {
      teardown(r);
    }
  });

  test('vfio-mig info says what each tracker offers (human and --json)', () => {
    const dev = new TestDevice('v2');
    try {
      const human = spawnSync(process.execPath, binArgs('info', dev.uuid), { encoding: 'utf8' });
      assert.equal(human.status, 0, human.stderr);
      assert.match(human.stdout, /^Dirty tracking:$/m);
      assert.match(human.stdout, /device DMA logging: offered/);
      assert.match(human.stdout, /IOMMU dirty pages: page sizes 4 KiB.*, bitmap up to/);
      const json = spawnSync(process.execPath, binArgs('info', dev.uuid, '--json'), { encoding: 'utf8' });
      assert.equal(json.status, 0, json.stderr);
      const dirty = JSON.parse(json.stdout).dirty;
      assert.equal(dirty.dmaLoggingMissing, null);
      assert.ok(BigInt(dirty.iommu.pageSizes) & PAGE);
    } finally {
      dev.remove();
    }
  });
});
