// ContainerDma: DMA mappings of a VFIO container and the type1 IOMMU's dirty page tracking over them.
import { ftruncateSync } from 'node:fs';
import { native } from '../native';
import { SyscallError, VfioError } from '../errors';
import { Mapping, mmapShared, nativeMappingOf } from '../mapping';
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
} from '../uapi';
import { DirtyBitmap } from './bitmap';
import { decodeIommuInfo, smallestPageSize, type IommuInfo } from './iommu-info';

/** The host page: the alignment of every DMA mapping when the IOMMU does not say. */
const HOST_PAGE = 4096n;

export interface DmaMapOptions {
  /** Byte offset inside the mapping (page aligned); default 0. */
  offset?: number;
  /** Bytes to map (page aligned); default the rest of the mapping. */
  length?: number;
  /** Device may read / write the memory; both default to true. */
  read?: boolean;
  write?: boolean;
}

/** One live DMA mapping: [iova, +size) of the container's IO space backed by `mapping`. */
export interface DmaMapping {
  readonly iova: bigint;
  readonly size: bigint;
  readonly mapping: Mapping;
  readonly offset: number;
  readonly flags: number;
}

// What each kernel refusal means, by ioctl and errno: the SyscallError keeps its code, the message says why.
const HINTS: Record<string, Record<string, string>> = {
  VFIO_IOMMU_MAP_DMA: {
    EEXIST: 'the IOVA range overlaps an existing DMA mapping',
    EINVAL:
      'iova, size or address not aligned to the IOMMU page size, a range outside the usable IOVA space, or no IOMMU set',
    ENOSPC: "the container's DMA mapping limit (vfio_iommu_type1 dma_entry_limit) is reached",
    ENOMEM: 'pinning the pages would exceed RLIMIT_MEMLOCK (ulimit -l)',
    EPERM: 'the locked memory limit does not allow pinning these pages',
    EFAULT: 'the memory is not mapped in this process',
  },
  VFIO_IOMMU_UNMAP_DMA: {
    EINVAL:
      'the range does not match whole DMA mappings (type1v2 refuses to split one), or the bitmap page size or size is wrong, or dirty tracking is off',
  },
  VFIO_IOMMU_DIRTY_PAGES: {
    EINVAL:
      'dirty tracking is off, the range does not cover whole DMA mappings, or the page size is not the smallest the IOMMU supports',
    ENOMEM: 'the kernel could not allocate its dirty bitmaps',
  },
};

function explain(err: unknown): never {
  if (err instanceof SyscallError && err.ioctl) {
    const hint = HINTS[err.ioctl]?.[err.code];
    if (hint) err.message = `${err.message}: ${hint}`;
  }
  throw err;
}

function checkedAligned(value: number | bigint, align: bigint, what: string): bigint {
  const v = typeof value === 'bigint' ? value : BigInt(value);
  if (typeof value === 'number' && !Number.isSafeInteger(value)) throw new RangeError(`${what} must be a safe integer`);
  if (v < 0n) throw new RangeError(`${what} must not be negative`);
  if (v % align !== 0n)
    throw new RangeError(`${what} (0x${v.toString(16)}) is not aligned to the IOMMU page size ${align}`);
  return v;
}

/**
 * Page-aligned memory for DMA: a memfd of `length` bytes mapped shared. The addon owns the
 * mapping, and keeps it mapped while any DMA mapping of it lives, even past unmap().
 */
export function allocDmaMemory(length: number): Mapping {
  if (!Number.isSafeInteger(length) || length <= 0 || BigInt(length) % HOST_PAGE !== 0n) {
    throw new RangeError(`DMA memory length ${length} must be a positive multiple of ${HOST_PAGE}`);
  }
  const fd = native.memfdCreate('vfio-dma');
  try {
    ftruncateSync(fd, length);
    return mmapShared(fd, 0n, length, true, 0n);
  } finally {
    native.close(fd); // the mapping keeps the memory
  }
}

/** DMA mappings and IOMMU dirty tracking of one container (`container.dma`). */
export class ContainerDma {
  readonly #fd: () => number;
  readonly #mappings = new Map<bigint, DmaMapping>();
  #tracking = false;

  /** Use `container.dma`. */
  constructor(fd: () => number) {
    this.#fd = fd;
  }

  /** VFIO_IOMMU_GET_INFO, decoded (page sizes, IOVA ranges, DMA mappings left, dirty tracking). */
  info(): IommuInfo {
    return decodeIommuInfo(native.iommuGetInfo(this.#fd()));
  }

  #pageSize(): bigint {
    return smallestPageSize(this.info().iovaPageSizes) ?? HOST_PAGE;
  }

  /** Maps [offset, +length) of `mapping` at `iova`; sizes and alignment are checked before the kernel sees them. */
  map(mapping: Mapping, iova: bigint, options: DmaMapOptions = {}): DmaMapping {
    if (!(mapping instanceof Mapping)) throw new TypeError('mapping must be a Mapping (allocDmaMemory, mapFd)');
    if (typeof iova !== 'bigint') throw new TypeError('iova must be a bigint');
    if (!mapping.mapped) throw new VfioError('ERR_VFIO_CLOSED', 'the mapping is unmapped');
    const page = this.#pageSize();
    const offset = options.offset ?? 0;
    const length = options.length ?? mapping.length - offset;
    checkedAligned(iova, page, 'iova');
    checkedAligned(offset, page, 'offset');
    const size = checkedAligned(length, page, 'length');
    if (size === 0n) throw new RangeError('length must be greater than 0');
    if (offset + length > mapping.length) {
      throw new RangeError(`[${offset}, +${length}) lies outside the mapping of ${mapping.length} bytes`);
    }
    if (iova + size > 2n ** 64n) throw new RangeError('the IOVA range wraps past 2^64');
    for (const m of this.#mappings.values()) {
      if (iova < m.iova + m.size && m.iova < iova + size) {
        throw new RangeError(`[0x${iova.toString(16)}, +${size}) overlaps the DMA mapping at 0x${m.iova.toString(16)}`);
      }
    }
    const flags =
      (options.read === false ? 0 : VFIO_DMA_MAP_FLAG_READ) | (options.write === false ? 0 : VFIO_DMA_MAP_FLAG_WRITE);
    if (flags === 0) throw new RangeError('a DMA mapping needs read or write access');
    try {
      nativeMappingOf(mapping).dmaMap(this.#fd(), offset, length, iova, flags);
    } catch (err) {
      explain(err);
    }
    const dm: DmaMapping = Object.freeze({ iova, size, mapping, offset, flags });
    this.#mappings.set(iova, dm);
    return dm;
  }

  /**
   * Unmaps one DMA mapping. While dirty tracking is on, the kernel hands over the mapping's dirty
   * pages in the same call (VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) and they are returned; else null.
   */
  unmap(dm: DmaMapping): DirtyBitmap | null {
    if (this.#mappings.get(dm.iova) !== dm) throw new RangeError('not a live DMA mapping of this container');
    const map = nativeMappingOf(dm.mapping);
    let bitmap: DirtyBitmap | null = null;
    try {
      if (this.#tracking) {
        bitmap = new DirtyBitmap(dm.iova, dm.size, this.dirtyPageSize());
        map.dmaUnmap(this.#fd(), dm.iova, dm.size, bitmap.bytes, bitmap.pageSize);
      } else {
        map.dmaUnmap(this.#fd(), dm.iova, dm.size);
      }
    } catch (err) {
      explain(err);
    }
    this.#mappings.delete(dm.iova);
    return bitmap;
  }

  /** The live DMA mappings, by IOVA. */
  list(): DmaMapping[] {
    return [...this.#mappings.values()].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  }

  get tracking(): boolean {
    return this.#tracking;
  }

  /** The page size of dirty bitmaps: the smallest the IOMMU's migration capability offers. */
  dirtyPageSize(): bigint {
    const migration = this.info().migration;
    const size = migration ? smallestPageSize(migration.pageSizes) : null;
    if (!size) {
      throw new VfioError(
        'ERR_VFIO_API',
        'the IOMMU cannot track dirty pages (no migration capability in VFIO_IOMMU_GET_INFO)',
      );
    }
    return size;
  }

  /** VFIO_IOMMU_DIRTY_PAGES start. The kernel accepts a second start as a no-op; so does this. */
  startDirtyTracking(): void {
    this.dirtyPageSize(); // says clearly when the IOMMU has no dirty tracking
    try {
      native.iommuDirtyPages(this.#fd(), VFIO_IOMMU_DIRTY_PAGES_FLAG_START);
    } catch (err) {
      explain(err);
    }
    this.#tracking = true;
  }

  stopDirtyTracking(): void {
    native.iommuDirtyPages(this.#fd(), VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP);
    this.#tracking = false;
  }

  /**
   * The dirty pages of [iova, +length), which must cover whole DMA mappings; the kernel clears
   * what it reports. `into` (same range, the dirty page size) is reused when given; it is cleared first.
   */
  dirtyBitmap(iova: bigint, length: bigint, into?: DirtyBitmap): DirtyBitmap {
    if (!this.#tracking) throw new VfioError('ERR_VFIO_API', 'IOMMU dirty tracking is not started');
    const info = this.info();
    const pageSize = smallestPageSize(info.migration?.pageSizes ?? 0n) ?? HOST_PAGE;
    const bitmap = into ?? new DirtyBitmap(iova, length, pageSize);
    if (bitmap.iova !== iova || bitmap.length !== length || bitmap.pageSize !== pageSize) {
      throw new RangeError('the bitmap given does not cover this range at the IOMMU dirty page size');
    }
    const max = info.migration?.maxBitmapBytes ?? 0n;
    if (max > 0n && BigInt(bitmap.bytes.length) > max) {
      throw new RangeError(
        `a bitmap of ${bitmap.bytes.length} bytes exceeds the IOMMU's limit of ${max}: ask for a smaller range`,
      );
    }
    bitmap.clear();
    try {
      native.iommuDirtyBitmap(this.#fd(), iova, length, pageSize, bitmap.bytes);
    } catch (err) {
      explain(err);
    }
    return bitmap;
  }

  /** At container close: the kernel drops every DMA mapping with the container; release the memory holds. */
  releaseAll(): void {
    for (const dm of this.#mappings.values()) {
      try {
        nativeMappingOf(dm.mapping).dmaUnmap(this.#fd(), dm.iova, dm.size);
      } catch {
        nativeMappingOf(dm.mapping).dmaRelease();
      }
    }
    this.#mappings.clear();
    this.#tracking = false;
  }
}
