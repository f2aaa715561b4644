// Picks a device's migration protocol and installs `device.migration` (what a command needs, without the rest of the layer).
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
