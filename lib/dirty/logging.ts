// Device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT): the device's own record of the pages it wrote.
import { native } from '../native';
import { SyscallError, VfioError, isSyscallError } from '../errors';
import type { Device } from '../device';
import {
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  layout,
} from '../uapi';
import { DirtyBitmap } from './bitmap';

/** The core guarantees a page of ranges (LOG_MAX_RANGES: 4096 / 16); more is E2BIG. */
export const DMA_LOGGING_MAX_RANGES = 256;

export interface IovaSpan {
  iova: bigint;
  length: bigint;
}

export type DmaLoggingSupport = { supported: true } | { supported: false; reason: string };

const SLOT = 'dma-logging';

function featureHeader(flags: number): Buffer {
  const buf = Buffer.alloc(layout.vfio_device_feature.size);
  buf.writeUInt32LE(buf.length, layout.vfio_device_feature.fields.argsz);
  buf.writeUInt32LE(flags, layout.vfio_device_feature.fields.flags);
  return buf;
}

/**
 * Whether the device logs its DMA: VFIO_DEVICE_FEATURE_PROBE of DMA_LOGGING_START. ENOTTY means
 * the device's driver has no vfio_log_ops (or the kernel has no DMA logging at all).
 */
export function probeDmaLogging(device: Device): DmaLoggingSupport {
  try {
    device.feature(
      featureHeader(VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START),
    );
    return { supported: true };
  } catch (err) {
    if (isSyscallError(err, 'ENOTTY')) {
      return {
        supported: false,
        reason: `device ${device.name} does not offer DMA logging (its driver has no vfio_log_ops)`,
      };
    }
    throw err;
  }
}

// The ranges the kernel is given: aligned, non-overlapping, within the 64-bit space, at most a page of them.
function checkRanges(ranges: readonly IovaSpan[], pageSize: bigint): BigUint64Array {
  if (!Array.isArray(ranges) || ranges.length === 0) throw new RangeError('DMA logging needs at least one IOVA range');
  if (ranges.length > DMA_LOGGING_MAX_RANGES) {
    throw new RangeError(
      `${ranges.length} ranges: the kernel guarantees at most ${DMA_LOGGING_MAX_RANGES} (merge neighbours)`,
    );
  }
  const sorted = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  const out = new BigUint64Array(sorted.length * 2);
  let end = -1n;
  sorted.forEach((r, i) => {
    if (typeof r.iova !== 'bigint' || typeof r.length !== 'bigint')
      throw new TypeError('iova and length must be bigints');
    if (r.iova < 0n || r.iova % pageSize !== 0n || r.length <= 0n || r.length % pageSize !== 0n) {
      throw new RangeError(
        `range [0x${r.iova.toString(16)}, +${r.length}) is not a non-empty range aligned to the page size ${pageSize}`,
      );
    }
    if (r.iova + r.length > 2n ** 64n - 1n) throw new RangeError('range extends past the 64-bit IOVA space');
    if (r.iova <= end) throw new RangeError(`range at 0x${r.iova.toString(16)} overlaps another`);
    end = r.iova + r.length - 1n;
    out[2 * i] = r.iova;
    out[2 * i + 1] = r.length;
  });
  return out;
}

const REPORT_HINTS: Record<string, string> = {
  EOPNOTSUPP:
    'the kernel cannot report device DMA logs: it was built without CONFIG_IOMMUFD_DRIVER, which holds the iova_bitmap the report needs (Debian 6.12 is; 6.1 has it in vfio)',
  EINVAL:
    'logging is not started, the range is outside the logged ranges, or the page size is not a power of two of at least 4096',
  EOVERFLOW: 'the range wraps past the end of the IOVA space',
};

/**
 * Device DMA logging, started: one per device at a time. `report()` reads and clears the log
 * of a range; `stop()` (or close, or closing the device) ends it. The page size is the one the
 * driver chose, which may differ from the one asked for.
 */
export class DmaLog {
  readonly device: Device;
  readonly ranges: readonly IovaSpan[];
  /** The page size the driver negotiated. */
  readonly pageSize: bigint;
  #active = true;

  private constructor(device: Device, ranges: IovaSpan[], pageSize: bigint) {
    this.device = device;
    this.ranges = Object.freeze(ranges.map((r) => Object.freeze({ ...r })));
    this.pageSize = pageSize;
  }

  /**
   * VFIO_DEVICE_FEATURE_DMA_LOGGING_START for `ranges` at `pageSize` (a hint; the driver may
   * choose another). Refused before the kernel when this device already logs through this process.
   */
  static start(device: Device, ranges: readonly IovaSpan[], pageSize = 4096n): DmaLog {
    if (typeof pageSize !== 'bigint' || pageSize < 4096n || (pageSize & (pageSize - 1n)) !== 0n) {
      throw new RangeError(`page size ${pageSize} is not a power of two of at least 4096`);
    }
    const pairs = checkRanges(ranges, pageSize);
    const slot = device.extension(SLOT, () => new LogSlot());
    if (slot.log?.active) {
      throw new VfioError(
        'ERR_VFIO_BUSY',
        `device ${device.name} already logs DMA: stop that log before starting another`,
      );
    }
    let negotiated: bigint;
    try {
      negotiated = native.deviceDmaLoggingStart(device.fd, pageSize, pairs);
    } catch (err) {
      if (isSyscallError(err, 'ENOTTY')) {
        throw new VfioError(
          'ERR_VFIO_API',
          `device ${device.name} does not offer DMA logging (ENOTTY: no vfio_log_ops)`,
          { cause: err },
        );
      }
      if (err instanceof SyscallError && err.code === 'E2BIG') err.message += `: more ranges than the kernel takes`;
      if (err instanceof SyscallError && err.code === 'EBUSY')
        err.message += `: the device already logs (start without stop)`;
      throw err;
    }
    if (negotiated <= 0n || (negotiated & (negotiated - 1n)) !== 0n) {
      native.deviceFeature(device.fd, featureHeader(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP));
      throw new VfioError('ERR_VFIO_BAD_INFO', `the driver answered DMA logging start with page size ${negotiated}`);
    }
    const log = new DmaLog(device, [...ranges], negotiated);
    slot.log = log;
    return log;
  }

  get active(): boolean {
    return this.#active && !this.device.closed;
  }

  /**
   * Reads and clears the device's log of [iova, +length) into a bitmap (at the negotiated page
   * size unless `into` says otherwise; bits already set in `into` are kept). If it fails, the
   * uapi says to treat every page as dirty: the error's `bitmap` is the given one with all bits set.
   */
  async report(iova: bigint, length: bigint, into?: DirtyBitmap): Promise<DirtyBitmap> {
    if (!this.active) throw new VfioError('ERR_VFIO_CLOSED', 'DMA logging is stopped');
    const bitmap = into ?? new DirtyBitmap(iova, length, this.pageSize);
    if (bitmap.iova !== iova || bitmap.length !== length) throw new RangeError('the bitmap given covers another range');
    if (bitmap.pageSize < 4096n) throw new RangeError('the kernel reports at page sizes of at least 4096');
    try {
      await this.device.handle.run((fd) =>
        native.deviceDmaLoggingReportAsync(fd, iova, length, bitmap.pageSize, bitmap.bytes),
      );
    } catch (err) {
      if (err instanceof SyscallError) {
        const hint = REPORT_HINTS[err.code];
        if (hint) err.message += `: ${hint}`;
        bitmap.setAll();
        Object.assign(err, { bitmap });
      }
      throw err;
    }
    return bitmap;
  }

  /** VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP; idempotent. */
  stop(): void {
    if (!this.#active) return;
    this.#active = false;
    if (this.device.closed) return;
    native.deviceFeature(this.device.fd, featureHeader(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP));
  }

  close(): void {
    this.stop();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

// The device's slot: stops the running log when the device closes.
class LogSlot {
  log: DmaLog | null = null;
  close(): void {
    this.log?.stop();
    this.log = null;
  }
}
