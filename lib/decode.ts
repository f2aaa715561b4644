// Decoders for device, region and IRQ info, with a bounds-checked walk of the capability chain, and the lossless bigint-to-number conversion of kernel values.
import { VfioError } from './errors';
import {
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_DEVICE_FLAGS_CAPS,
  layout,
} from './uapi';

export interface SparseMmapArea {
  offset: bigint;
  size: bigint;
}

export type Capability =
  | { kind: 'sparse-mmap'; id: 1; version: number; areas: SparseMmapArea[] }
  | { kind: 'type'; id: 2; version: number; type: number; subtype: number }
  | { kind: 'msix-mappable'; id: 3; version: number }
  | { kind: 'unknown'; id: number; version: number; bytes: Buffer };

export interface RegionInfo {
  index: number;
  flags: number;
  size: bigint;
  offset: bigint;
  argsz: number;
  readable: boolean;
  writable: boolean;
  mmapable: boolean;
  capabilities: Capability[];
  /** Sparse areas (from the capability) or, for a plain mmap-able region, the whole region. */
  mmapAreas: SparseMmapArea[];
  type?: { type: number; subtype: number };
}

export interface DeviceInfo {
  flags: number;
  numRegions: number;
  numIrqs: number;
  capabilities: Capability[];
}

export interface IrqInfo {
  index: number;
  flags: number;
  count: number;
}

/** Converts a kernel-sized bigint to a number, refusing any loss. */
export function toSafeNumber(value: bigint, what: string): number {
  if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER))
    throw new RangeError(`${what} (${value}) does not fit in a safe integer`);
  return Number(value);
}

/** A chain longer than this is treated as hostile even without a detected loop. */
const MAX_CAPABILITIES = 64;

/** Decodes one capability at `at` whose bytes end at `capEnd` (the chain walk has checked both). */
export type CapabilityDecoder<T> = (
  raw: Buffer,
  at: number,
  capEnd: number,
  id: number,
  version: number,
  what: string,
) => T;

/** Throws when capability `id` at `at` has fewer than `bytes` bytes before `capEnd`. */
export function needCapabilityBytes(at: number, bytes: number, capEnd: number, id: number, what: string): void {
  if (at + bytes > capEnd)
    throw badInfo(what, `capability ${id} at offset ${at} needs ${bytes} bytes, has ${capEnd - at}`);
}

/**
 * A capability's trailing array of `count` (u64, u64) pairs starting at `first` (sparse mmap
 * areas, IOVA ranges): the count the kernel gave is checked against the room the capability has.
 */
export function readU64Pairs(
  raw: Buffer,
  first: number,
  count: number,
  capEnd: number,
  what: string,
  claim: { capability: string; items: string },
): [bigint, bigint][] {
  const room = Math.floor((capEnd - first) / 16);
  if (count > room) throw badInfo(what, `${claim.capability} claims ${count} ${claim.items}, room for ${room}`);
  const pairs: [bigint, bigint][] = [];
  for (let i = 0; i < count; i++)
    pairs.push([raw.readBigUInt64LE(first + i * 16), raw.readBigUInt64LE(first + i * 16 + 8)]);
  return pairs;
}

export function badInfo(what: string, detail: string): VfioError {
  return new VfioError('ERR_VFIO_BAD_INFO', `${what}: ${detail}`);
}

/**
 * Walks a capability chain that starts at `first` inside `raw`. Every hop is checked to lie
 * past the fixed struct (`fixedSize`) and inside both the buffer and the kernel's argsz; a
 * loop or an over-long chain is an error, never an endless walk.
 */
export function parseCapabilityChain<T = Capability>(
  raw: Buffer,
  first: number,
  argsz: number,
  fixedSize: number,
  what: string,
  decode: CapabilityDecoder<T> = decodeCapability as unknown as CapabilityDecoder<T>,
): T[] {
  const end = Math.min(argsz, raw.length);
  const caps: T[] = [];
  const seen = new Set<number>();
  const headerSize = layout.vfio_info_cap_header.size;
  let offset = first;
  while (offset !== 0) {
    if (seen.has(offset)) throw badInfo(what, `capability chain loops back to offset ${offset}`);
    if (caps.length >= MAX_CAPABILITIES) throw badInfo(what, `capability chain longer than ${MAX_CAPABILITIES}`);
    if (offset < fixedSize || offset + headerSize > end) {
      throw badInfo(what, `capability at offset ${offset} lies outside [${fixedSize}, ${end})`);
    }
    seen.add(offset);
    const id = raw.readUInt16LE(offset);
    const version = raw.readUInt16LE(offset + 2);
    const next = raw.readUInt32LE(offset + 4);
    // A capability extends to the next one when that follows it, else to the end of the data.
    const capEnd = next > offset && next <= end ? next : end;
    caps.push(decode(raw, offset, capEnd, id, version, what));
    offset = next;
  }
  return caps;
}

function decodeCapability(
  raw: Buffer,
  at: number,
  capEnd: number,
  id: number,
  version: number,
  what: string,
): Capability {
  const need = (bytes: number) => needCapabilityBytes(at, bytes, capEnd, id, what);
  switch (id) {
    case VFIO_REGION_INFO_CAP_SPARSE_MMAP: {
      const l = layout.vfio_region_info_cap_sparse_mmap;
      need(l.size);
      const count = raw.readUInt32LE(at + l.fields.nr_areas);
      const areas = readU64Pairs(raw, at + l.fields.areas, count, capEnd, what, {
        capability: 'sparse mmap capability',
        items: 'areas',
      }).map(([offset, size]): SparseMmapArea => ({ offset, size }));
      return { kind: 'sparse-mmap', id, version, areas };
    }
    case VFIO_REGION_INFO_CAP_TYPE: {
      const l = layout.vfio_region_info_cap_type;
      need(l.size);
      return {
        kind: 'type',
        id,
        version,
        type: raw.readUInt32LE(at + l.fields.type),
        subtype: raw.readUInt32LE(at + l.fields.subtype),
      };
    }
    case VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
      return { kind: 'msix-mappable', id, version };
    default:
      return {
        kind: 'unknown',
        id,
        version,
        bytes: Buffer.from(raw.subarray(at + layout.vfio_info_cap_header.size, capEnd)),
      };
  }
}

/** Decodes the raw bytes of VFIO_DEVICE_GET_REGION_INFO (fixed part plus capability chain). */
export function decodeRegionInfo(raw: Buffer): RegionInfo {
  const l = layout.vfio_region_info;
  if (raw.length < l.size) throw badInfo('region info', `${raw.length} bytes, shorter than struct vfio_region_info`);
  const f = l.fields;
  const index = raw.readUInt32LE(f.index);
  const what = `region ${index} info`;
  const argsz = raw.readUInt32LE(f.argsz);
  const flags = raw.readUInt32LE(f.flags);
  const size = raw.readBigUInt64LE(f.size);
  const offset = raw.readBigUInt64LE(f.offset);
  const capOffset = raw.readUInt32LE(f.cap_offset);
  const capabilities =
    flags & VFIO_REGION_INFO_FLAG_CAPS && capOffset !== 0
      ? parseCapabilityChain(raw, capOffset, argsz, l.size, what)
      : [];
  const mmapable = (flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0;
  const sparse = capabilities.find((c) => c.kind === 'sparse-mmap');
  let mmapAreas: SparseMmapArea[] = [];
  if (mmapable) {
    // Zero-size areas describe nothing; areas past the region's end are the kernel's mistake, refused here.
    mmapAreas = sparse ? sparse.areas.filter((a) => a.size > 0n) : size > 0n ? [{ offset: 0n, size }] : [];
    for (const a of mmapAreas) {
      if (a.offset + a.size > size) {
        throw badInfo(what, `sparse mmap area [${a.offset}, +${a.size}) extends past the region size ${size}`);
      }
    }
  }
  const typeCap = capabilities.find((c) => c.kind === 'type');
  return {
    index,
    flags,
    size,
    offset,
    argsz,
    readable: (flags & VFIO_REGION_INFO_FLAG_READ) !== 0,
    writable: (flags & VFIO_REGION_INFO_FLAG_WRITE) !== 0,
    mmapable,
    capabilities,
    mmapAreas,
    type: typeCap ? { type: typeCap.type, subtype: typeCap.subtype } : undefined,
  };
}

/** Decodes the raw bytes of VFIO_DEVICE_GET_INFO. */
export function decodeDeviceInfo(raw: Buffer): DeviceInfo {
  const l = layout.vfio_device_info;
  // Kernels before 4.19-ish return the struct without cap_offset; treat missing bytes as no caps.
  if (raw.length < l.fields.cap_offset) throw badInfo('device info', `${raw.length} bytes, too short`);
  const argsz = raw.readUInt32LE(l.fields.argsz);
  const flags = raw.readUInt32LE(l.fields.flags);
  const capOffset = raw.length >= l.size ? raw.readUInt32LE(l.fields.cap_offset) : 0;
  return {
    flags,
    numRegions: raw.readUInt32LE(l.fields.num_regions),
    numIrqs: raw.readUInt32LE(l.fields.num_irqs),
    capabilities:
      flags & VFIO_DEVICE_FLAGS_CAPS && capOffset
        ? parseCapabilityChain(raw, capOffset, argsz, l.size, 'device info')
        : [],
  };
}

export function decodeIrqInfo(raw: Buffer): IrqInfo {
  const l = layout.vfio_irq_info;
  if (raw.length < l.size) throw badInfo('irq info', `${raw.length} bytes, too short`);
  return {
    index: raw.readUInt32LE(l.fields.index),
    flags: raw.readUInt32LE(l.fields.flags),
    count: raw.readUInt32LE(l.fields.count),
  };
}
