// The migration layer: picks the device's protocol and installs `device.migration`.
import { Device } from '../device';
import { MigrationError } from './errors';
import { probeMigration } from './probe';
import { Migration } from './session';
import { V1Engine } from './v1';
import { V2Engine } from './v2';

declare module '../device' {
  interface Device {
    /** The device's migration API (v1 or v2, whichever it offers), or null when it has none. */
    readonly migration: Migration | null;
  }
}

/** Builds the Migration object for a device, or null when it offers no protocol. */
export function createMigration(device: Device, options: { noReset?: boolean } = {}): Migration | null {
  const found = probeMigration(device);
  if (!found) return null;
  if (found.protocol === 'v1') return new Migration(device, new V1Engine(device, found.region), options);
  return new Migration(device, new V2Engine(device, { p2p: found.p2p, preCopy: found.preCopy }), options);
}

Object.defineProperty(Device.prototype, 'migration', {
  configurable: true,
  get(this: Device): Migration | null {
    return this.extension('migration', () => createMigration(this));
  },
});

/** The device's migration, or a clear error when it has none. */
export function requireMigration(device: Device): Migration {
  const m = device.migration;
  if (!m)
    throw new MigrationError(
      'ERR_MIGRATION_NONE',
      `device ${device.name} offers no migration protocol (neither VFIO_DEVICE_FEATURE_MIGRATION nor a v1 migration region)`,
    );
  return m;
}

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
export { migrate, DEFAULT_MIGRATE_TIMEOUT_MS } from './migrate';
export type { MigrateOptions, MigrateResult, DevicePhases } from './migrate';
export { receive, helloProblem } from './receive';
export type { ReceiveOptions, ReceiveResult } from './receive';
export { migrateLocal, channelPair } from './local';
export { MigrateError } from './txn';
export type { Side, DeviceOutcome } from './txn';
export { WIRE_VERSION, WIRE_MAGIC, FRAME, WireEnd, WireError } from './wire';
export type { Channel, Frame } from './wire';
