// Device and openDevice: an open VFIO device, found by PCI address, mdev UUID or group.
import { native } from './native';
import { SyscallError, VfioError, isSyscallError } from './errors';
import {
  decodeDeviceInfo,
  decodeIrqInfo,
  decodeRegionInfo,
  type DeviceInfo,
  type IrqInfo,
  type RegionInfo,
} from './decode';
import { FdHandle } from './fd-handle';
import type { Container } from './container';
import { leaseGroup, releaseGroup, type Group, type GroupLease } from './group';
import { Region } from './region';
import { isVfioPciDriver, resolveDevice, type SysfsDevice } from './sysfs';

export interface OpenOptions {
  /** sysfs root, for tests. */
  sysRoot?: string;
}

/** An open VFIO device. */
export class Device {
  readonly name: string;
  readonly sysfs: SysfsDevice | null;
  readonly handle: FdHandle;
  readonly info: DeviceInfo;
  readonly #lease: GroupLease | null;
  readonly #regionCache = new Map<number, RegionInfo>();
  #extensions = new Map<string, unknown>();
  #stateEpoch = 0;

  /** Use openDevice(); this wraps an already-open device fd. */
  constructor(fd: number, name: string, sysfs: SysfsDevice | null, lease: GroupLease | null) {
    this.name = name;
    this.sysfs = sysfs;
    this.#lease = lease;
    this.handle = new FdHandle(fd, `VFIO device ${name}`);
    try {
      this.info = decodeDeviceInfo(native.deviceGetInfo(fd));
    } catch (err) {
      this.close();
      throw err;
    }
  }

  get fd(): number {
    return this.handle.fd;
  }
  get closed(): boolean {
    return this.handle.closed;
  }
  get group(): Group | null {
    return this.#lease?.group ?? null;
  }
  /** The container of the device's group (its IOMMU context: DMA mappings, dirty tracking). */
  get container(): Container | null {
    return this.#lease?.container ?? null;
  }

  regionInfo(index: number): RegionInfo {
    let info = this.#regionCache.get(index);
    if (!info) {
      info = decodeRegionInfo(native.deviceGetRegionInfo(this.fd, index));
      this.#regionCache.set(index, info);
    }
    return info;
  }

  /** Every region the device reports; indexes the device does not implement (EINVAL) are left out. */
  regions(): RegionInfo[] {
    return implemented(this.info.numRegions, (i) => this.regionInfo(i));
  }

  region(index: number): Region {
    return new Region(this, this.regionInfo(index));
  }

  irqInfo(index: number): IrqInfo {
    return decodeIrqInfo(native.deviceGetIrqInfo(this.fd, index));
  }

  /** Every IRQ index the device reports; indexes it does not implement (EINVAL) are left out. */
  irqs(): IrqInfo[] {
    return implemented(this.info.numIrqs, (i) => this.irqInfo(i));
  }

  /**
   * Counts the calls through this object that may change the device's migration state (every
   * VFIO_DEVICE_FEATURE and reset): one who knows the state as of a count knows it still while
   * the count stands.
   */
  get stateEpoch(): number {
    return this.#stateEpoch;
  }

  /** VFIO_DEVICE_RESET, off the JS thread. */
  reset(): Promise<void> {
    this.#stateEpoch++;
    return this.handle.run((fd) => native.deviceResetAsync(fd));
  }

  /** VFIO_DEVICE_FEATURE on a caller-built struct, in place; synchronous (probes, GETs). */
  feature(buffer: Uint8Array): number {
    this.#stateEpoch++;
    return native.deviceFeature(this.fd, buffer);
  }

  /** VFIO_DEVICE_FEATURE off the JS thread (state changes can take long). */
  featureAsync(buffer: Uint8Array): Promise<number> {
    this.#stateEpoch++;
    return this.handle.run((fd) => native.deviceFeatureAsync(fd, buffer));
  }

  /**
   * VFIO_DEVICE_FEATURE on each of `devices` with its own buffer, all at once off the JS thread
   * (a slow device's arc overlaps the others'), settled together: one entry per device, the
   * ioctl's return value or the error it failed with.
   */
  static featuresAsync(devices: readonly Device[], buffers: Uint8Array[]): Promise<(number | Error)[]> {
    for (const d of devices) d.#stateEpoch++;
    return FdHandle.runAll(
      devices.map((d) => d.handle),
      (fds) => native.deviceFeaturesAsync(fds, buffers),
    );
  }

  /** Per-device slot for higher layers (the migration layer caches its probe here). */
  extension<T>(key: string, create: () => T): T {
    if (!this.#extensions.has(key)) this.#extensions.set(key, create());
    return this.#extensions.get(key) as T;
  }

  close(): void {
    if (this.handle.closed) return;
    for (const ext of this.#extensions.values()) {
      const closable = ext as { close?: () => void } | null;
      if (closable && typeof closable.close === 'function') closable.close();
    }
    this.handle.close();
    if (this.#lease) releaseGroup(this.#lease);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Opens a device by PCI address, mdev UUID or sysfs path, or by `{ group, name }`.
 * Errors say what to do: which driver to bind, which group member is in the way, which file needs access.
 */
export function openDevice(spec: string | { group: number; name: string }, options: OpenOptions = {}): Device {
  const sysRoot = options.sysRoot ?? '/sys';
  let sysfs: SysfsDevice | null = null;
  let group: number;
  let name: string;
  if (typeof spec === 'string') {
    sysfs = resolveDevice(spec, sysRoot);
    if (sysfs.kind === 'pci' && !isVfioPciDriver(sysfs.driver)) {
      throw new VfioError(
        'ERR_VFIO_NOT_BOUND',
        `PCI device ${sysfs.name} is ${sysfs.driver ? `bound to ${sysfs.driver}` : 'not bound to any driver'}, not to vfio-pci: ` +
          `echo vfio-pci > ${sysfs.path}/driver_override; echo ${sysfs.name} > ${sysfs.path}/driver/unbind; echo ${sysfs.name} > /sys/bus/pci/drivers_probe`,
      );
    }
    if (sysfs.kind === 'mdev' && !sysfs.driver) {
      throw new VfioError(
        'ERR_VFIO_NOT_BOUND',
        `mdev device ${sysfs.name} is not bound to a driver (is its parent's vendor driver loaded?)`,
      );
    }
    if (sysfs.group === null) {
      throw new VfioError(
        'ERR_VFIO_NOT_BOUND',
        `${sysfs.kind} device ${sysfs.name} has no IOMMU group (${sysfs.path}/iommu_group is missing): is an IOMMU enabled (intel_iommu=on) or, for mdev, vfio_iommu_type1 loaded?`,
      );
    }
    group = sysfs.group;
    name = sysfs.name;
  } else {
    if (!Number.isInteger(spec.group) || spec.group < 0) throw new RangeError('group must be a non-negative integer');
    if (typeof spec.name !== 'string' || spec.name === '') throw new TypeError('name must be a non-empty string');
    group = spec.group;
    name = spec.name;
  }
  const lease = leaseGroup(group, sysRoot);
  let fd: number;
  try {
    fd = lease.group.getDeviceFd(name);
  } catch (err) {
    releaseGroup(lease);
    if (err instanceof SyscallError && err.code === 'EBUSY') {
      throw new VfioError('ERR_VFIO_BUSY', `device ${name} is already open (by this or another process)`, {
        cause: err,
      });
    }
    throw err;
  }
  return new Device(fd, name, sysfs, lease);
}

/** The infos of indexes 0..count-1, leaving out those the device does not implement (EINVAL). */
function implemented<T>(count: number, info: (index: number) => T): T[] {
  const out: T[] = [];
  for (let i = 0; i < count; i++) {
    try {
      out.push(info(i));
    } catch (err) {
      if (!isSyscallError(err, 'EINVAL')) throw err;
    }
  }
  return out;
}
