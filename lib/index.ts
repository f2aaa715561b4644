// Public API of vfio-migration.
export { SyscallError, VfioError, isSyscallError } from './errors';
export type { VfioErrorCode } from './errors';
export { Container, Group, Device, Region, Mapping, FdHandle, openDevice, mapFd, toSafeNumber } from './device';
export type { OpenOptions } from './device';
export { decodeRegionInfo, decodeDeviceInfo, decodeIrqInfo, parseCapabilityChain } from './region';
export type { RegionInfo, DeviceInfo, IrqInfo, Capability, SparseMmapArea } from './region';
export { resolveDevice, listSysfsDevices, describeDevice, isVfioPciDriver } from './sysfs';
export type { SysfsDevice } from './sysfs';
export { listDevices } from './list';
export type { ListedDevice } from './list';
export * as uapi from './uapi';
export * from './migration';
export { printable } from './printable';
