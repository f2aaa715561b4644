// The migration layer's public face: `device.migration` (installed by ./attach) and everything the package exports from it.
export { createMigration, requireMigration } from './attach';
export { Migration, verify, deviceIdentity, identityMismatches, stopDevices } from './session';
export { MigrationError } from './errors';
export type { MigrationErrorCode, Recovery } from './errors';
export type {
  Progress,
  PrecopyPolicy,
  SaveOptions,
  LoadOptions,
  SaveResult,
  LoadResult,
  Phase,
  ProgressPhase,
  MigrationEngine,
} from './types';
export { DEFAULT_PRECOPY_ITERATIONS } from './policy';
export { V1Engine, V1_ARCS, checkV1Transition, isValidV1State, v1StateName, splitByAreas } from './v1';
export { V2Engine, v2Path, v2StateName, supportedStates } from './v2';
export type { V2Support } from './v2';
export { probeMigration } from './probe';
export type { MigrationProbe } from './probe';
export {
  StreamEncoder,
  StreamDecoder,
  StreamError,
  verifyStream,
  PHASE_STOP_COPY,
  STREAM_MAGIC,
  STREAM_VERSION,
} from './stream';
export type { StreamHeader, StreamRecord, StreamSink, StreamSource, VerifyResult } from './stream';
export { FdSource, isByteSource } from './source';
export type { ByteSource } from './source';
export { migrate, DEFAULT_MIGRATE_PRECOPY, DEFAULT_MIGRATE_TIMEOUT_MS } from './migrate';
export type { MigrateOptions, MigrateResult, DevicePhases } from './migrate';
export { receive, helloProblem, RECEIVE_QUEUE_BYTES } from './receive';
export type { ReceiveOptions, ReceiveResult } from './receive';
export { migrateLocal, channelPair } from './local';
export { MigrateError } from './txn';
export type { Side, DeviceOutcome } from './txn';
export { WIRE_VERSION, WIRE_MAGIC, FRAME, WireEnd, WireError } from './wire';
export type { Channel, Frame } from './wire';
