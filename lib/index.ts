// Public API of vfio-migration.
export { SyscallError, VfioError, isSyscallError } from './errors';
export type { VfioErrorCode } from './errors';
export { FdHandle } from './fd-handle';
export { Container } from './container';
export { Group } from './group';
export { Mapping, mapFd } from './mapping';
export { Region } from './region';
export { Device, openDevice } from './device';
export type { OpenOptions } from './device';
export { decodeRegionInfo, decodeDeviceInfo, decodeIrqInfo, parseCapabilityChain, toSafeNumber } from './decode';
export type { RegionInfo, DeviceInfo, IrqInfo, Capability, SparseMmapArea } from './decode';
export { resolveDevice, listSysfsDevices, describeDevice, isVfioPciDriver } from './sysfs';
export type { SysfsDevice } from './sysfs';
export { listDevices } from './list';
export { allocIoBuffer } from './buffers';
export type { ListedDevice } from './list';
export * as uapi from './uapi';
export * from './migration';
