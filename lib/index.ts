// Public API of vfio-migration.
export { SyscallError, VfioError, isSyscallError } from './errors';
export type { VfioErrorCode } from './errors';
export { Container } from './container';
export { Group } from './group';
export { Mapping, mapFd } from './mapping';
export { Region } from './region';
export { Device, openDevice } from './device';
export type { OpenOptions } from './device';
export { decodeRegionInfo, decodeDeviceInfo, decodeIrqInfo } from './decode';
export type { RegionInfo, DeviceInfo, IrqInfo, Capability, SparseMmapArea } from './decode';
export { resolveDevice, listSysfsDevices, describeDevice, isVfioPciDriver } from './sysfs';
export type { SysfsDevice } from './sysfs';
export { listDevices } from './list';
export { DirtyBitmap } from './dirty/bitmap';
export { ContainerDma, allocDmaMemory } from './dirty/dma';
export type { DmaMapping, DmaMapOptions } from './dirty/dma';
export { decodeIommuInfo } from './dirty/iommu-info';
export type { IommuInfo, IommuMigrationInfo, IommuCapability, IovaRange } from './dirty/iommu-info';
export { DmaLog, probeDmaLogging, DMA_LOGGING_MAX_RANGES } from './dirty/logging';
export type { IovaSpan, DmaLoggingSupport } from './dirty/logging';
export { allocIoBuffer } from './buffers';
export type { ListedDevice } from './list';
export * as uapi from './uapi';
// Migration: the public surface only. The protocol engines and their state tables (V1Engine,
// V2Engine, V1_ARCS, v2Path, ...) are internals of lib/migration/ and lib/check/; tests import
// them from there.
export {
  Migration,
  createMigration,
  requireMigration,
  verify,
  deviceIdentity,
  identityMismatches,
  stopDevices,
  MigrationError,
  DEFAULT_PRECOPY_ITERATIONS,
  probeMigration,
  StreamEncoder,
  StreamDecoder,
  StreamError,
  verifyStream,
  PHASE_STOP_COPY,
  STREAM_MAGIC,
  STREAM_VERSION,
  FdSource,
  isByteSource,
  v1StateName,
  v2StateName,
  migrate,
  DEFAULT_MIGRATE_PRECOPY,
  DEFAULT_MIGRATE_TIMEOUT_MS,
  receive,
  migrateLocal,
  channelPair,
  MigrateError,
} from './migration';
export type {
  MigrationErrorCode,
  Recovery,
  Progress,
  PrecopyPolicy,
  SaveOptions,
  LoadOptions,
  SaveResult,
  LoadResult,
  Phase,
  ProgressPhase,
  MigrationEngine,
  MigrationProbe,
  StreamHeader,
  StreamRecord,
  StreamSink,
  StreamSource,
  VerifyResult,
  ByteSource,
  V2Support,
  MigrateOptions,
  MigrateResult,
  DevicePhases,
  ReceiveOptions,
  ReceiveResult,
  Channel,
} from './migration';
export { printable } from './printable';
export * from './check';
