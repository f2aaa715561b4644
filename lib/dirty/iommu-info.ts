// Decoder of VFIO_IOMMU_GET_INFO (struct vfio_iommu_type1_info and its bounds-checked capability chain).
import { badInfo, needCapabilityBytes, parseCapabilityChain, readU64Pairs } from '../decode';
import {
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  layout,
} from '../uapi';

export interface IovaRange {
  start: bigint;
  /** Inclusive, as the kernel gives it. */
  end: bigint;
}

/** The type1 IOMMU's dirty page tracking: present when the IOMMU driver can track (VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION). */
export interface IommuMigrationInfo {
  flags: number;
  /** Bitmap of the page sizes dirty tracking supports (bit n: 2^n bytes). */
  pageSizes: bigint;
  /** The largest bitmap, in bytes, one get-bitmap or unmap may ask for. */
  maxBitmapBytes: bigint;
}

export type IommuCapability =
  | { kind: 'iova-range'; id: 1; version: number; ranges: IovaRange[] }
  | ({ kind: 'migration'; id: 2; version: number } & IommuMigrationInfo)
  | { kind: 'dma-avail'; id: 3; version: number; avail: number }
  | { kind: 'unknown'; id: number; version: number; bytes: Buffer };

export interface IommuInfo {
  flags: number;
  /** Bitmap of the IOMMU's mapping page sizes (0 when VFIO_IOMMU_INFO_PGSIZES is not set). */
  iovaPageSizes: bigint;
  /** Usable IOVA ranges; null when the kernel does not say. */
  iovaRanges: IovaRange[] | null;
  /** DMA mappings still allowed (dma_entry_limit); null when the kernel does not say. */
  dmaAvail: number | null;
  /** Null when the IOMMU cannot track dirty pages. */
  migration: IommuMigrationInfo | null;
  capabilities: IommuCapability[];
}

/** Smallest page size in a page-size bitmap, or null when it is empty. */
export function smallestPageSize(bitmap: bigint): bigint | null {
  if (bitmap <= 0n) return null;
  return bitmap & -bitmap;
}

function decodeIommuCapability(
  raw: Buffer,
  at: number,
  capEnd: number,
  id: number,
  version: number,
  what: string,
): IommuCapability {
  const need = (bytes: number) => needCapabilityBytes(at, bytes, capEnd, id, what);
  switch (id) {
    case VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: {
      const l = layout.vfio_iommu_type1_info_cap_iova_range;
      need(l.size);
      const count = raw.readUInt32LE(at + l.fields.nr_iovas);
      const ranges = readU64Pairs(raw, at + l.fields.iova_ranges, count, capEnd, what, {
        capability: 'IOVA range capability',
        items: 'ranges',
      }).map(([start, end]): IovaRange => ({ start, end }));
      return { kind: 'iova-range', id, version, ranges };
    }
    case VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: {
      const l = layout.vfio_iommu_type1_info_cap_migration;
      need(l.size);
      return {
        kind: 'migration',
        id,
        version,
        flags: raw.readUInt32LE(at + l.fields.flags),
        pageSizes: raw.readBigUInt64LE(at + l.fields.pgsize_bitmap),
        maxBitmapBytes: raw.readBigUInt64LE(at + l.fields.max_dirty_bitmap_size),
      };
    }
    case VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: {
      const l = layout.vfio_iommu_type1_info_dma_avail;
      need(l.size);
      return { kind: 'dma-avail', id, version, avail: raw.readUInt32LE(at + l.fields.avail) };
    }
    default:
      return {
        kind: 'unknown',
        id,
        version,
        bytes: Buffer.from(raw.subarray(at + layout.vfio_info_cap_header.size, capEnd)),
      };
  }
}

/** Decodes the raw bytes of VFIO_IOMMU_GET_INFO. */
export function decodeIommuInfo(raw: Buffer): IommuInfo {
  const l = layout.vfio_iommu_type1_info;
  const what = 'IOMMU info';
  // Kernels before 5.x end the struct at iova_pgsizes; missing bytes mean no capabilities.
  if (raw.length < l.fields.cap_offset) throw badInfo(what, `${raw.length} bytes, too short`);
  const argsz = raw.readUInt32LE(l.fields.argsz);
  const flags = raw.readUInt32LE(l.fields.flags);
  const iovaPageSizes = flags & VFIO_IOMMU_INFO_PGSIZES ? raw.readBigUInt64LE(l.fields.iova_pgsizes) : 0n;
  const capOffset = raw.length >= l.size && flags & VFIO_IOMMU_INFO_CAPS ? raw.readUInt32LE(l.fields.cap_offset) : 0;
  const capabilities = parseCapabilityChain(raw, capOffset, argsz, l.size, what, decodeIommuCapability);
  let iovaRanges: IovaRange[] | null = null;
  let dmaAvail: number | null = null;
  let migration: IommuMigrationInfo | null = null;
  for (const cap of capabilities) {
    if (cap.kind === 'iova-range') iovaRanges = cap.ranges;
    else if (cap.kind === 'dma-avail') dmaAvail = cap.avail;
    else if (cap.kind === 'migration') {
      migration = { flags: cap.flags, pageSizes: cap.pageSizes, maxBitmapBytes: cap.maxBitmapBytes };
    }
  }
  return { flags, iovaPageSizes, iovaRanges, dmaAvail, migration, capabilities };
}
