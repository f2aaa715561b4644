// Container, Group, Device, Region and Mapping: the typed VFIO device layer over the addon.
import { fstatSync } from 'node:fs';
import { native, type NativeMapping, type RegisterWriteArgs, type Width } from './native';
import { SyscallError, VfioError, isSyscallError } from './errors';
import {
  decodeDeviceInfo,
  decodeIrqInfo,
  decodeRegionInfo,
  type DeviceInfo,
  type IrqInfo,
  type RegionInfo,
  type SparseMmapArea,
} from './region';
import { groupMembers, isVfioPciDriver, resolveDevice, type SysfsDevice } from './sysfs';
import {
  O_RDWR,
  PROT_READ,
  PROT_WRITE,
  VFIO_API_VERSION,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
} from './uapi';

/** Converts a kernel-sized bigint to a number, refusing any loss. */
export function toSafeNumber(value: bigint, what: string): number {
  if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER))
    throw new RangeError(`${what} (${value}) does not fit in a safe integer`);
  return Number(value);
}

/**
 * An fd whose close waits for the async syscalls that use it: closing an fd under a
 * running pread would let the kernel reuse the number for something else.
 */
export class FdHandle {
  #fd: number;
  #inflight = 0;
  #closeRequested = false;
  readonly #closeFd: boolean;
  readonly what: string;

  /** With closeFd false (a borrowed fd such as stdin), close() only stops further use. */
  constructor(fd: number, what: string, options: { closeFd?: boolean } = {}) {
    this.#fd = fd;
    this.what = what;
    this.#closeFd = options.closeFd ?? true;
  }

  get closed(): boolean {
    return this.#closeRequested;
  }

  /** The fd for a synchronous call; throws once closed. */
  get fd(): number {
    if (this.#closeRequested) throw new VfioError('ERR_VFIO_CLOSED', `${this.what} is closed`);
    return this.#fd;
  }

  /** Runs an async syscall with the fd pinned open until it settles. */
  async run<T>(call: (fd: number) => Promise<T>): Promise<T> {
    const fd = this.fd;
    this.#inflight++;
    try {
      return await call(fd);
    } finally {
      this.#inflight--;
      if (this.#closeRequested && this.#inflight === 0) this.#release();
    }
  }

  close(): void {
    if (this.#closeRequested) return;
    this.#closeRequested = true;
    if (this.#inflight === 0) this.#release();
  }

  #release(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    if (this.#closeFd) native.close(fd);
  }
}

function openNode(path: string, hint: string): number {
  try {
    return native.open(path, O_RDWR);
  } catch (err) {
    if (isSyscallError(err, 'EACCES') || isSyscallError(err, 'EPERM')) {
      throw new VfioError(
        'ERR_VFIO_PERMISSION',
        `permission denied opening ${path}: run as root or give this user read/write access to ${path} (${hint})`,
        { cause: err },
      );
    }
    if (isSyscallError(err, 'ENOENT')) {
      throw new VfioError('ERR_VFIO_NOT_FOUND', `${path} does not exist (${hint})`, { cause: err });
    }
    if (isSyscallError(err, 'EBUSY')) {
      throw new VfioError('ERR_VFIO_BUSY', `${path} is in use by another process (${hint})`, { cause: err });
    }
    throw err;
  }
}

/** A VFIO container (/dev/vfio/vfio): the IOMMU context the groups attach to. */
export class Container {
  readonly #handle: FdHandle;
  iommuType: number | null = null;

  constructor(path = '/dev/vfio/vfio') {
    const fd = openNode(path, 'is the vfio module loaded?');
    this.#handle = new FdHandle(fd, 'VFIO container');
    try {
      const version = native.getApiVersion(fd);
      if (version !== VFIO_API_VERSION)
        throw new VfioError('ERR_VFIO_API', `VFIO API version ${version}, expected ${VFIO_API_VERSION}`);
    } catch (err) {
      this.close();
      throw err;
    }
  }

  get fd(): number {
    return this.#handle.fd;
  }

  checkExtension(extension: number): number {
    return native.checkExtension(this.fd, extension);
  }

  /** Picks the best type1 IOMMU model the container offers (needs a group attached). */
  setIommu(): number {
    for (const type of [VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU]) {
      if (this.checkExtension(type) > 0) {
        native.setIommu(this.fd, type);
        this.iommuType = type;
        return type;
      }
    }
    throw new VfioError('ERR_VFIO_API', 'the VFIO container offers no type1 IOMMU (is vfio_iommu_type1 loaded?)');
  }

  close(): void {
    this.#handle.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A VFIO group (/dev/vfio/N). */
export class Group {
  readonly number: number;
  readonly #handle: FdHandle;
  #container: Container | null = null;

  constructor(number: number, devRoot = '/dev/vfio') {
    this.number = number;
    this.#handle = new FdHandle(openNode(`${devRoot}/${number}`, `IOMMU group ${number}`), `VFIO group ${number}`);
  }

  get fd(): number {
    return this.#handle.fd;
  }

  get viable(): boolean {
    return (native.groupGetStatus(this.fd) & VFIO_GROUP_FLAGS_VIABLE) !== 0;
  }

  get container(): Container | null {
    return this.#container;
  }

  setContainer(container: Container): void {
    native.groupSetContainer(this.fd, container.fd);
    this.#container = container;
  }

  unsetContainer(): void {
    if (!this.#container) return;
    native.groupUnsetContainer(this.fd);
    this.#container = null;
  }

  /** Returns a device fd (O_CLOEXEC) for the named device in this group. */
  getDeviceFd(name: string): number {
    return native.groupGetDeviceFd(this.fd, name);
  }

  close(): void {
    this.#handle.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A group with its container, shared by every device this process opens in that group. */
interface GroupLease {
  group: Group;
  container: Container;
  users: number;
}
const openGroups = new Map<number, GroupLease>();

function leaseGroup(number: number, sysRoot: string): GroupLease {
  const existing = openGroups.get(number);
  if (existing) {
    existing.users++;
    return existing;
  }
  const group = new Group(number);
  let container: Container | null = null;
  try {
    if (!group.viable) {
      const members = groupMembers(number, sysRoot)
        .map((m) => `${m.name} (${m.driver ? `bound to ${m.driver}` : 'no driver'})`)
        .join(', ');
      throw new VfioError(
        'ERR_VFIO_GROUP_NOT_VIABLE',
        `IOMMU group ${number} is not viable: every device in it must be bound to a VFIO driver or to none; members: ${members || 'unknown'}`,
      );
    }
    container = new Container();
    group.setContainer(container);
    container.setIommu();
  } catch (err) {
    container?.close();
    group.close();
    throw err;
  }
  const lease = { group, container, users: 1 };
  openGroups.set(number, lease);
  return lease;
}

function releaseGroup(lease: GroupLease): void {
  if (--lease.users > 0) return;
  openGroups.delete(lease.group.number);
  lease.group.close();
  lease.container.close();
}

export interface OpenOptions {
  /** sysfs root, for tests. */
  sysRoot?: string;
}

/** A mapping of part of a region: width-exact volatile accessors and a zero-copy view. */
export class Mapping {
  readonly #map: NativeMapping;
  /** Where the mapping starts inside its region. */
  readonly regionOffset: bigint;

  constructor(map: NativeMapping, regionOffset: bigint) {
    this.#map = map;
    this.regionOffset = regionOffset;
  }

  get length(): number {
    return this.#map.length;
  }
  get mapped(): boolean {
    return this.#map.mapped;
  }
  get writable(): boolean {
    return this.#map.writable;
  }
  /**
   * Zero-copy view; detached (length 0) after unmap. Refused on a read-only mapping: an ArrayBuffer
   * cannot be made read-only and a store through it would kill the process.
   */
  get buffer(): ArrayBuffer {
    if (!this.writable)
      throw new TypeError(
        'mapping is read-only: it has no buffer view (a store through it would crash the process); use read() or readInto()',
      );
    return this.#map.buffer;
  }
  /** A store into a read-only mapping is a SIGSEGV (on a pool thread for writeFrom): refused before native. */
  #checkWritable(what: string): void {
    if (!this.writable) throw new TypeError(`mapping is read-only (mapped without PROT_WRITE): ${what} is not allowed`);
  }
  read(offset: number, width: 1 | 2 | 4): number;
  read(offset: number, width: 8): bigint;
  read(offset: number, width: Width): number | bigint {
    return this.#map.read(offset, width);
  }
  write(offset: number, width: 1 | 2 | 4, value: number): void;
  write(offset: number, width: 8, value: bigint): void;
  write(offset: number, width: Width, value: number | bigint): void {
    this.#checkWritable('write()');
    this.#map.write(offset, width, value);
  }
  /** Copies out of the mapping off the JS thread. */
  readInto(offset: number, target: Uint8Array, targetOffset = 0, length = target.length - targetOffset): Promise<void> {
    return this.#map.readInto(offset, target, targetOffset, length);
  }
  /** Copies into the mapping off the JS thread; `then` is a register pwrite done after it in the same job (see Region.writeMappedThen). */
  writeFrom(
    offset: number,
    source: Uint8Array,
    sourceOffset = 0,
    length = source.length - sourceOffset,
    then?: RegisterWriteArgs,
  ): Promise<void> {
    this.#checkWritable('writeFrom()');
    return then
      ? this.#map.writeFrom(offset, source, sourceOffset, length, ...then)
      : this.#map.writeFrom(offset, source, sourceOffset, length);
  }
  unmap(): void {
    this.#map.unmap();
  }
  [Symbol.dispose](): void {
    this.unmap();
  }
}

/**
 * Opens an mmap directly on an fd (ordinary files, memfds; device regions go through Region.mmap).
 * A regular file must cover the whole range: an access past its end would be a SIGBUS. Other fds
 * (a device has no meaningful st_size) are mapped as asked.
 */
export function mapFd(fd: number, offset: bigint, length: number, writable = true): Mapping {
  const st = fstatSync(fd, { bigint: true });
  if (st.isFile() && offset + BigInt(length) > st.size) {
    throw new RangeError(`mapping [${offset}, +${length}) extends past the end of the file (${st.size} bytes)`);
  }
  const map = new native.Mapping(fd, offset, length, PROT_READ | (writable ? PROT_WRITE : 0));
  return new Mapping(map, 0n);
}

/** A register write (region-relative offset) that a bulk write carries out right after its data. */
export interface Doorbell {
  offset: number | bigint;
  width: Width;
  value: number | bigint;
}

/** One region of a device, addressed by region-relative offsets that are checked against its size. */
export class Region {
  readonly device: Device;
  readonly info: RegionInfo;

  constructor(device: Device, info: RegionInfo) {
    this.device = device;
    this.info = info;
  }

  get index(): number {
    return this.info.index;
  }
  get size(): bigint {
    return this.info.size;
  }

  #at(offset: number | bigint, length: number | bigint): bigint {
    const start = BigInt(offset);
    const len = BigInt(length);
    if (start < 0n || len < 0n || start + len > this.info.size) {
      throw new RangeError(`region ${this.index}: access [${start}, +${len}) is outside its ${this.info.size} bytes`);
    }
    return this.info.offset + start;
  }

  /** One pread of exactly `width` bytes (a register). */
  read(offset: number | bigint, width: 1 | 2 | 4): number;
  read(offset: number | bigint, width: 8): bigint;
  read(offset: number | bigint, width: Width): number | bigint {
    return native.preadWidth(this.device.fd, this.#at(offset, width), width);
  }
  readAsync(offset: number | bigint, width: 1 | 2 | 4): Promise<number>;
  readAsync(offset: number | bigint, width: 8): Promise<bigint>;
  readAsync(offset: number | bigint, width: Width): Promise<number | bigint> {
    const at = this.#at(offset, width);
    return this.device.handle.run((fd) => native.preadWidthAsync(fd, at, width));
  }
  write(offset: number | bigint, width: 1 | 2 | 4, value: number): void;
  write(offset: number | bigint, width: 8, value: bigint): void;
  write(offset: number | bigint, width: Width, value: number | bigint): void {
    native.pwriteWidth(this.device.fd, this.#at(offset, width), width, value);
  }
  writeAsync(offset: number | bigint, width: 1 | 2 | 4, value: number): Promise<void>;
  writeAsync(offset: number | bigint, width: 8, value: bigint): Promise<void>;
  writeAsync(offset: number | bigint, width: Width, value: number | bigint): Promise<void> {
    const at = this.#at(offset, width);
    return this.device.handle.run((fd) => native.pwriteWidthAsync(fd, at, width, value));
  }

  /** Reads exactly target.length bytes from offset, off the JS thread, in as few preads as the kernel allows. */
  async readBulk(
    offset: number | bigint,
    target: Uint8Array,
    targetOffset = 0,
    length = target.length - targetOffset,
  ): Promise<void> {
    const at = this.#at(offset, length);
    let done = 0;
    while (done < length) {
      const n = await this.device.handle.run((fd) =>
        native.preadAsync(fd, target, targetOffset + done, length - done, at + BigInt(done)),
      );
      if (n === 0)
        throw new VfioError(
          'ERR_VFIO_BAD_INFO',
          `region ${this.index}: pread at ${BigInt(offset) + BigInt(done)} returned end of region`,
        );
      done += n;
    }
  }

  /**
   * Writes exactly `length` bytes at offset and then the register `doorbell`, in one job off the
   * JS thread: one thread hop instead of two. A failure of the register write has stage 'register'.
   */
  writeBulkThen(
    offset: number | bigint,
    source: Uint8Array,
    sourceOffset: number,
    length: number,
    doorbell: Doorbell,
  ): Promise<void> {
    const at = this.#at(offset, length);
    const reg = this.#at(doorbell.offset, doorbell.width);
    return this.device.handle.run((fd) =>
      native.pwriteAllAsync(fd, source, sourceOffset, length, at, fd, reg, doorbell.width, doorbell.value),
    );
  }

  /** Copies into `map` (a mapping of this region) at `mapOffset`, then writes the register `doorbell`, in one job off the JS thread. */
  writeMappedThen(
    map: Mapping,
    mapOffset: number,
    source: Uint8Array,
    sourceOffset: number,
    length: number,
    doorbell: Doorbell,
  ): Promise<void> {
    const reg = this.#at(doorbell.offset, doorbell.width);
    return this.device.handle.run((fd) =>
      map.writeFrom(mapOffset, source, sourceOffset, length, [fd, reg, doorbell.width, doorbell.value]),
    );
  }

  /** Writes exactly `length` bytes at offset, off the JS thread. */
  async writeBulk(
    offset: number | bigint,
    source: Uint8Array,
    sourceOffset = 0,
    length = source.length - sourceOffset,
  ): Promise<void> {
    const at = this.#at(offset, length);
    let done = 0;
    while (done < length) {
      const n = await this.device.handle.run((fd) =>
        native.pwriteAsync(fd, source, sourceOffset + done, length - done, at + BigInt(done)),
      );
      if (n === 0)
        throw new VfioError(
          'ERR_VFIO_BAD_INFO',
          `region ${this.index}: pwrite at ${BigInt(offset) + BigInt(done)} wrote nothing`,
        );
      done += n;
    }
  }

  /** Maps [offset, +length) of the region; the range must lie inside one mmap-able area. */
  mmap(offset: bigint, length: bigint, writable = this.info.writable): Mapping {
    const area = this.info.mmapAreas.find(
      (a: SparseMmapArea) => offset >= a.offset && offset + length <= a.offset + a.size,
    );
    if (!area) throw new RangeError(`region ${this.index}: [${offset}, +${length}) is not inside an mmap-able area`);
    const map = new native.Mapping(
      this.device.fd,
      this.#at(offset, length),
      toSafeNumber(length, 'mapping length'),
      PROT_READ | (writable ? PROT_WRITE : 0),
    );
    return new Mapping(map, offset);
  }
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
    const out: RegionInfo[] = [];
    for (let i = 0; i < this.info.numRegions; i++) {
      try {
        out.push(this.regionInfo(i));
      } catch (err) {
        if (!isSyscallError(err, 'EINVAL')) throw err;
      }
    }
    return out;
  }

  region(index: number): Region {
    return new Region(this, this.regionInfo(index));
  }

  irqInfo(index: number): IrqInfo {
    return decodeIrqInfo(native.deviceGetIrqInfo(this.fd, index));
  }

  irqs(): IrqInfo[] {
    const out: IrqInfo[] = [];
    for (let i = 0; i < this.info.numIrqs; i++) {
      try {
        out.push(this.irqInfo(i));
      } catch (err) {
        if (!isSyscallError(err, 'EINVAL')) throw err;
      }
    }
    return out;
  }

  /** VFIO_DEVICE_RESET, off the JS thread. */
  reset(): Promise<void> {
    return this.handle.run((fd) => native.deviceResetAsync(fd));
  }

  /** VFIO_DEVICE_FEATURE on a caller-built struct, in place; synchronous (probes, GETs). */
  feature(buffer: Uint8Array): number {
    return native.deviceFeature(this.fd, buffer);
  }

  /** VFIO_DEVICE_FEATURE off the JS thread (state changes can take long). */
  featureAsync(buffer: Uint8Array): Promise<number> {
    return this.handle.run((fd) => native.deviceFeatureAsync(fd, buffer));
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
