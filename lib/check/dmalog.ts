// The device DMA logging checks (VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT), over a small DMA mapping.
import type { Device } from '../device';
import { native } from '../native';
import type { Mapping } from '../mapping';
import { allocDmaMemory, type DmaMapping } from '../dirty/dma';
import { DirtyBitmap } from '../dirty/bitmap';
import { DmaLog, probeDmaLogging } from '../dirty/logging';
import { layout, VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_SET } from '../uapi';
import { CheckContext, errnoName, hex, refusal } from './context';

export const DMALOG_IDS = [
  'v2.dmalog.stop-unstarted',
  'v2.dmalog.roundtrip',
  'v2.dmalog.start-twice',
  'v2.dmalog.report-outside',
  'v2.dmalog.report-page-size',
  'v2.dmalog.report-stopped',
  'v2.dmalog.start-ranges',
];

const PAGE = 4096n;
const PAGES = 16n;
const SIZE = PAGES * PAGE;
/** Why report rules are skipped on a kernel whose every REPORT fails EOPNOTSUPP. */
export const KERNEL_LACKS_REPORT =
  'kernel lacks report: REPORT fails EOPNOTSUPP before the driver sees it (built without CONFIG_IOMMUFD_DRIVER, as Debian 6.12)';

/** VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, past the library (which tracks its own logs). */
function stopRaw(device: Device): void {
  const buf = Buffer.alloc(layout.vfio_device_feature.size);
  buf.writeUInt32LE(buf.length, layout.vfio_device_feature.fields.argsz);
  buf.writeUInt32LE(
    VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    layout.vfio_device_feature.fields.flags,
  );
  native.deviceFeature(device.fd, buf);
}

/** A START past the library's own checks: the errno, or null when the kernel accepted it (then stopped). */
function rawStart(device: Device, pairs: bigint[]): string | null {
  const err = (() => {
    try {
      native.deviceDmaLoggingStart(device.fd, PAGE, new BigUint64Array(pairs));
      return null;
    } catch (e) {
      return errnoName(e);
    }
  })();
  if (err === null) stopRaw(device);
  return err;
}

/** A REPORT past the library: the errno, or null when it succeeded. */
function rawReport(device: Device, iova: bigint, length: bigint, pageSize: bigint): Promise<string | null> {
  return refusal(() => native.deviceDmaLoggingReportAsync(device.fd, iova, length, pageSize, new Uint8Array(64)));
}

/** An IOVA for SIZE bytes clear of the container's mappings. */
function freeIova(existing: readonly DmaMapping[]): bigint {
  let iova = 0x100000n;
  for (const m of [...existing].sort((a, b) => (a.iova < b.iova ? -1 : 1)))
    if (iova < m.iova + m.size && m.iova < iova + SIZE) iova = ((m.iova + m.size + 0xffffn) / 0x10000n) * 0x10000n;
  return iova;
}

async function rules(ctx: CheckContext, device: Device, iova: bigint): Promise<void> {
  const range = { iova: hex(iova), length: Number(SIZE) };
  await ctx.step(['v2.dmalog.stop-unstarted'], 'STOP without START', async () => {
    const err = await refusal(() => stopRaw(device));
    if (err === null) ctx.pass('v2.dmalog.stop-unstarted', 'STOP with no logging running accepted', { errno: null });
    else ctx.fail('v2.dmalog.stop-unstarted', `STOP with no logging running failed with ${err}`, { errno: err });
  });

  await ctx.step(['v2.dmalog.roundtrip'], 'START, REPORT, STOP', async () => {
    const log = DmaLog.start(device, [{ iova, length: SIZE }], PAGE); // refuses a page size not a power of two
    const err = await refusal(() => log.report(iova, SIZE, new DirtyBitmap(iova, SIZE, PAGE)));
    log.stop();
    const ev = { ...range, pageSize: Number(log.pageSize), report: err };
    if (err === 'EOPNOTSUPP')
      ctx.skip('v2.dmalog.roundtrip', `${KERNEL_LACKS_REPORT}; START answered page size ${log.pageSize}, STOP ok`, ev);
    else if (err) ctx.fail('v2.dmalog.roundtrip', `REPORT of the logged range failed with ${err}`, ev);
    else ctx.pass('v2.dmalog.roundtrip', `page size ${log.pageSize}; REPORT of ${SIZE} bytes and STOP succeeded`, ev);
  });

  await ctx.step(['v2.dmalog.start-twice'], 'second START', async () => {
    const log = DmaLog.start(device, [{ iova, length: SIZE }], PAGE);
    const err = (() => {
      try {
        native.deviceDmaLoggingStart(device.fd, PAGE, new BigUint64Array([iova, SIZE]));
        return null;
      } catch (e) {
        return errnoName(e);
      }
    })();
    log.stop();
    if (err === null) ctx.fail('v2.dmalog.start-twice', 'a second START before STOP was accepted', { errno: null });
    else ctx.pass('v2.dmalog.start-twice', `a second START before STOP fails with ${err}`, { errno: err });
  });

  await ctx.step(['v2.dmalog.report-outside', 'v2.dmalog.report-page-size'], 'REPORT checks', async () => {
    const half = SIZE / 2n;
    const log = DmaLog.start(device, [{ iova, length: half }], PAGE);
    try {
      const past = await rawReport(device, iova + half, PAGE, PAGE);
      const straddle = await rawReport(device, iova, SIZE, PAGE);
      const oev = { logged: `${hex(iova)}+${half}`, past, straddle };
      if (past === 'EOPNOTSUPP' || straddle === 'EOPNOTSUPP')
        ctx.skip('v2.dmalog.report-outside', KERNEL_LACKS_REPORT, oev);
      else if (past === null || straddle === null)
        ctx.fail(
          'v2.dmalog.report-outside',
          `REPORT ${past === null ? 'past the logged range' : 'straddling the end of the logged range'} succeeded`,
          oev,
        );
      else ctx.pass('v2.dmalog.report-outside', `refused: past the range ${past}, straddling its end ${straddle}`, oev);

      const odd = await rawReport(device, iova, 3n * PAGE, 3n * PAGE);
      const small = await rawReport(device, iova, 2n * PAGE, 2048n);
      const pev = { pageSize12k: odd, pageSize2k: small };
      if (odd === 'EINVAL' && small === 'EINVAL')
        ctx.pass('v2.dmalog.report-page-size', 'page sizes 12 KiB and 2 KiB fail EINVAL', pev);
      else if (odd === 'EOPNOTSUPP' || small === 'EOPNOTSUPP')
        ctx.skip('v2.dmalog.report-page-size', KERNEL_LACKS_REPORT, pev);
      else
        ctx.fail(
          'v2.dmalog.report-page-size',
          `REPORT at 12 KiB pages: ${odd ?? 'succeeded'}; at 2 KiB: ${small ?? 'succeeded'} (EINVAL expected)`,
          pev,
        );
    } finally {
      log.stop();
    }
  });

  await ctx.step(['v2.dmalog.report-stopped'], 'REPORT after STOP', async () => {
    const err = await rawReport(device, iova, SIZE, PAGE);
    const ev = { ...range, errno: err };
    if (err === 'EOPNOTSUPP') ctx.skip('v2.dmalog.report-stopped', KERNEL_LACKS_REPORT, ev);
    else if (err === null) ctx.fail('v2.dmalog.report-stopped', 'REPORT with logging stopped succeeded', ev);
    else if (err === 'EINVAL') ctx.pass('v2.dmalog.report-stopped', 'REPORT with logging stopped fails EINVAL', ev);
    else ctx.warn('v2.dmalog.report-stopped', `REPORT with logging stopped fails with ${err}, not EINVAL`, ev);
  });

  await ctx.step(['v2.dmalog.start-ranges'], 'START with bad ranges', async () => {
    const tries: [string, bigint[]][] = [
      ['no ranges', []],
      ['overlapping ranges', [iova, 2n * PAGE, iova + PAGE, PAGE]],
      ['a misaligned range', [iova + 100n, PAGE]],
    ];
    const seen = tries.map(([what, pairs]) => [what, rawStart(device, pairs)] as const);
    const ev = Object.fromEntries(seen.map(([what, err]) => [what, err]));
    const accepted = seen.filter(([, err]) => err === null).map(([what]) => what);
    if (accepted.length) ctx.fail('v2.dmalog.start-ranges', `START accepted ${accepted.join(', ')}`, ev);
    else ctx.pass('v2.dmalog.start-ranges', `refused: ${seen.map(([w, e]) => `${w} ${e}`).join(', ')}`, ev);
  });
}

/** The DMA logging rules: skipped with the reason when the device does not log DMA or no memory can be mapped. */
export async function checkDmaLogging(ctx: CheckContext, device: Device): Promise<void> {
  if (!ctx.wants(...DMALOG_IDS)) return;
  const skipAll = (why: string): void => DMALOG_IDS.forEach((id) => ctx.skip(id, why));
  let support: ReturnType<typeof probeDmaLogging> | undefined;
  await ctx.step(DMALOG_IDS, 'VFIO_DEVICE_FEATURE_PROBE of DMA_LOGGING_START', async () => {
    support = probeDmaLogging(device);
  });
  if (!support) return;
  if (!support.supported) return skipAll(`${support.reason} (VFIO_DEVICE_FEATURE_PROBE: ENOTTY)`);
  const container = device.container;
  if (!container) return skipAll('the device has no VFIO container to map DMA memory in');
  let mem: Mapping | undefined;
  let dm: DmaMapping;
  try {
    mem = allocDmaMemory(Number(SIZE));
    dm = container.dma.map(mem, freeIova(container.dma.list()));
  } catch (err) {
    mem?.unmap();
    return skipAll(`no DMA mapping for the checks: ${errnoName(err)}`);
  }
  try {
    await rules(ctx, device, dm.iova);
  } finally {
    try {
      container.dma.unmap(dm);
    } finally {
      mem.unmap();
    }
  }
}
