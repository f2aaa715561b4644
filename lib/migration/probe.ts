// Which migration protocol a device offers: v2 (VFIO_DEVICE_FEATURE_MIGRATION) or v1 (a region of type (3, 1)).
import type { Device } from '../device';
import { isSyscallError } from '../errors';
import type { RegionInfo } from '../decode';
import {
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
  VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
  layout,
} from '../uapi';

export type MigrationProbe =
  | { protocol: 'v2'; flags: bigint; stopCopy: boolean; p2p: boolean; preCopy: boolean }
  | { protocol: 'v1'; region: RegionInfo };

/** Reads VFIO_DEVICE_FEATURE_MIGRATION; null when the device has none (ENOTTY). */
export function probeV2Flags(device: Device): bigint | null {
  const head = layout.vfio_device_feature;
  const buf = Buffer.alloc(head.size + layout.vfio_device_feature_migration.size);
  buf.writeUInt32LE(buf.length, head.fields.argsz);
  buf.writeUInt32LE(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, head.fields.flags);
  try {
    device.feature(buf);
  } catch (err) {
    // ENOTTY: no migration feature; EINVAL/EOPNOTSUPP: kernels without VFIO_DEVICE_FEATURE at all.
    if (isSyscallError(err, 'ENOTTY') || isSyscallError(err, 'EINVAL') || isSyscallError(err, 'EOPNOTSUPP'))
      return null;
    throw err;
  }
  return buf.readBigUInt64LE(head.size + layout.vfio_device_feature_migration.fields.flags);
}

/** Finds the v1 migration region by its type capability, on any region index. */
export function findV1Region(device: Device): RegionInfo | null {
  for (const info of device.regions()) {
    if (
      info.type?.type === VFIO_REGION_TYPE_MIGRATION_DEPRECATED &&
      info.type.subtype === VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED
    )
      return info;
  }
  return null;
}

/** v2 wins when a device offers both: it is the protocol current kernels maintain. */
export function probeMigration(device: Device): MigrationProbe | null {
  const flags = probeV2Flags(device);
  if (flags !== null) {
    return {
      protocol: 'v2',
      flags,
      stopCopy: (flags & BigInt(VFIO_MIGRATION_STOP_COPY)) !== 0n,
      p2p: (flags & BigInt(VFIO_MIGRATION_P2P)) !== 0n,
      preCopy: (flags & BigInt(VFIO_MIGRATION_PRE_COPY)) !== 0n,
    };
  }
  const region = findV1Region(device);
  return region ? { protocol: 'v1', region } : null;
}
