// Finds VFIO devices in sysfs: resolves what users type (PCI address, mdev UUID, sysfs path) to a device and its IOMMU group.
import { existsSync, readFileSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { basename, join } from 'node:path';
import { VfioError } from './errors';

export interface SysfsDevice {
  kind: 'pci' | 'mdev';
  /** What VFIO_GROUP_GET_DEVICE_FD takes: the PCI address or the mdev UUID. */
  name: string;
  /** The device's directory under /sys/bus/<bus>/devices. */
  path: string;
  /** Bound driver name, or null. */
  driver: string | null;
  /** IOMMU group number, or null when the device has none. */
  group: number | null;
  vendor?: number;
  device?: number;
  subsystemVendor?: number;
  subsystemDevice?: number;
  /** mdev type name (e.g. 'mtty-2') and parent device name. */
  mdevType?: string;
  parent?: string;
}

const PCI_ADDRESS = /^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;
const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** True when a driver name is a VFIO driver: vfio-pci or a vendor variant (mlx5_vfio_pci, ...). */
export function isVfioPciDriver(driver: string | null): boolean {
  return driver !== null && /vfio/.test(driver);
}

function readHex(path: string): number | undefined {
  try {
    return parseInt(readFileSync(path, 'utf8').trim(), 16);
  } catch {
    return undefined;
  }
}

function linkName(path: string): string | null {
  try {
    return basename(readlinkSync(path));
  } catch {
    return null;
  }
}

/** Reads one device directory (PCI or mdev) into a SysfsDevice. */
export function describeDevice(path: string, kind: 'pci' | 'mdev'): SysfsDevice {
  const groupLink = linkName(join(path, 'iommu_group'));
  const dev: SysfsDevice = {
    kind,
    name: basename(path),
    path,
    driver: linkName(join(path, 'driver')),
    group: groupLink !== null && /^\d+$/.test(groupLink) ? Number(groupLink) : null,
  };
  if (kind === 'pci') {
    dev.vendor = readHex(join(path, 'vendor'));
    dev.device = readHex(join(path, 'device'));
    dev.subsystemVendor = readHex(join(path, 'subsystem_vendor'));
    dev.subsystemDevice = readHex(join(path, 'subsystem_device'));
  } else {
    dev.mdevType = linkName(join(path, 'mdev_type')) ?? undefined;
    try {
      // libc's realpath: Node's JS one lstats every component of the sysfs path in turn, a
      // visible share of a cold command's start-up under emulation
      dev.parent = basename(join(realpathSync.native(path), '..'));
    } catch {
      /* parent unknown */
    }
  }
  return dev;
}

/**
 * Resolves a device the way users name it: a PCI address (`0000:3b:00.1` or `3b:00.1`),
 * an mdev UUID, or a sysfs path of either.
 */
export function resolveDevice(spec: string, sysRoot = '/sys'): SysfsDevice {
  const pci = PCI_ADDRESS.exec(spec);
  if (pci) {
    const address = `${(pci[1] ?? '0000').toLowerCase()}:${pci[2].toLowerCase()}:${pci[3].toLowerCase()}.${pci[4]}`;
    const path = join(sysRoot, 'bus/pci/devices', address);
    if (!existsSync(path))
      throw new VfioError('ERR_VFIO_NOT_FOUND', `no PCI device ${address} (${path} does not exist)`);
    return describeDevice(path, 'pci');
  }
  if (UUID.test(spec)) {
    const path = join(sysRoot, 'bus/mdev/devices', spec.toLowerCase());
    if (!existsSync(path)) throw new VfioError('ERR_VFIO_NOT_FOUND', `no mdev device ${spec} (${path} does not exist)`);
    return describeDevice(path, 'mdev');
  }
  if (spec.startsWith('/')) {
    let real: string;
    try {
      real = realpathSync.native(spec);
    } catch {
      throw new VfioError('ERR_VFIO_NOT_FOUND', `no such sysfs path ${spec}`);
    }
    const name = basename(real);
    if (PCI_ADDRESS.test(name) && existsSync(join(sysRoot, 'bus/pci/devices', name)))
      return describeDevice(join(sysRoot, 'bus/pci/devices', name), 'pci');
    if (UUID.test(name) && existsSync(join(sysRoot, 'bus/mdev/devices', name)))
      return describeDevice(join(sysRoot, 'bus/mdev/devices', name), 'mdev');
    throw new VfioError('ERR_VFIO_NOT_FOUND', `${spec} is not a PCI or mdev device directory`);
  }
  throw new VfioError(
    'ERR_VFIO_NOT_FOUND',
    `cannot tell what device '${spec}' is: expected a PCI address (0000:3b:00.1), an mdev UUID or a sysfs path`,
  );
}

function listDir(path: string): string[] {
  try {
    return readdirSync(path).sort();
  } catch {
    return [];
  }
}

/** Devices of a group with their drivers, for 'group not viable' messages. */
export function groupMembers(group: number, sysRoot = '/sys'): { name: string; driver: string | null }[] {
  const dir = join(sysRoot, 'kernel/iommu_groups', String(group), 'devices');
  return listDir(dir).map((name) => ({ name, driver: linkName(join(dir, name, 'driver')) }));
}

/** VFIO devices on this host: PCI devices bound to a vfio driver, and every mdev device. */
export function listSysfsDevices(sysRoot = '/sys'): SysfsDevice[] {
  const out: SysfsDevice[] = [];
  const pciDir = join(sysRoot, 'bus/pci/devices');
  for (const name of listDir(pciDir)) {
    const dev = describeDevice(join(pciDir, name), 'pci');
    if (isVfioPciDriver(dev.driver)) out.push(dev);
  }
  const mdevDir = join(sysRoot, 'bus/mdev/devices');
  for (const name of listDir(mdevDir)) out.push(describeDevice(join(mdevDir, name), 'mdev'));
  return out;
}
