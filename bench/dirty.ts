// Guest-side bench of dirty tracking: what reading the dirty pages of a 1 GiB range costs through the IOMMU and through device DMA logging.
// Run in the VM: npm run vm -- [--kernel 6.1] node dist/bench/dirty.js   (BENCH_DIRTY_PAGES, BENCH_REPEAT to change)
import { performance } from 'node:perf_hooks';
import { DmaLog, SyscallError, allocDmaMemory } from '../lib';
import { TestDevice, needsDriver } from '../test/support/test-driver';

const GIB = 1n << 30n;
const IOVA = 1n << 32n;
const PAGE = 4096n;
const dirty = Number(process.env.BENCH_DIRTY_PAGES ?? 1024);
const repeat = Number(process.env.BENCH_REPEAT ?? 9);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Dirties `dirty` pages spread over the range, by real DMA (one sysfs write, at most a page of text, per 128 pages). */
function dirtyPages(dev: TestDevice): void {
  const stride = (GIB / PAGE / BigInt(dirty)) * PAGE;
  for (let i = 0; i < dirty; i += 128) {
    const batch = [];
    for (let j = i; j < Math.min(dirty, i + 128); j++) batch.push({ iova: IOVA + BigInt(j) * stride });
    dev.dmaWrite(batch);
  }
}

async function main(): Promise<void> {
  if (needsDriver) throw new Error(`bench/dirty: ${needsDriver}`);
  const dev = new TestDevice('v2');
  const device = dev.open();
  const mem = allocDmaMemory(Number(GIB));
  const dma = device.container!.dma;
  const dm = dma.map(mem, IOVA);
  const rows: string[] = [];
  try {
    dma.startDirtyTracking();
    dma.dirtyBitmap(IOVA, GIB);
    const log = DmaLog.start(device, [{ iova: IOVA, length: GIB }], PAGE);
    const iommuMs: number[] = [];
    const deviceMs: number[] = [];
    const walkMs: number[] = [];
    let deviceNote = '';
    for (let r = 0; r < repeat; r++) {
      dirtyPages(dev);
      let t = performance.now();
      const bm = dma.dirtyBitmap(IOVA, GIB);
      iommuMs.push(performance.now() - t);
      if (bm.count() !== dirty) throw new Error(`IOMMU reported ${bm.count()} pages, ${dirty} written`);
      t = performance.now();
      let n = 0;
      bm.forEachDirty(() => n++);
      walkMs.push(performance.now() - t);
      if (!deviceNote) {
        t = performance.now();
        try {
          const rep = await log.report(IOVA, GIB);
          deviceMs.push(performance.now() - t);
          if (rep.count() !== dirty) throw new Error(`device reported ${rep.count()} pages, ${dirty} written`);
        } catch (err) {
          if (!(err instanceof SyscallError)) throw err;
          deviceNote = `unavailable on this kernel (${err.code})`;
        }
      }
    }
    log.stop();
    dma.stopDirtyTracking();
    const f = (xs: number[]) => `${median(xs).toFixed(2)} ms`;
    rows.push(`| IOMMU (VFIO_IOMMU_DIRTY_PAGES get-bitmap) | ${f(iommuMs)} |`);
    rows.push(`| device DMA logging (DMA_LOGGING_REPORT) | ${deviceNote || f(deviceMs)} |`);
    rows.push(`| walking the bitmap (DirtyBitmap.forEachDirty) | ${f(walkMs)} |`);
  } finally {
    dma.unmap(dm);
    device.close();
    mem.unmap();
    dev.remove();
  }
  console.log(
    `kernel ${process.env.VFIO_MIG_KERNEL ?? '?'}: 1 GiB range, 4 KiB pages, ${dirty} dirty, median of ${repeat}`,
  );
  console.log('| mechanism | one report |\n|---|---|');
  for (const r of rows) console.log(r);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
