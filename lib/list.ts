// listDevices(): the VFIO devices of this host from sysfs, with the migration protocol each offers when it can be probed.
import { openDevice } from './device';
import { listSysfsDevices, type SysfsDevice } from './sysfs';
import { createMigration } from './migration';

export interface ListedDevice extends SysfsDevice {
  /** 'v1', 'v2', 'none', or 'unknown' when the device could not be opened to probe (busy, permissions). */
  migration: 'v1' | 'v2' | 'none' | 'unknown';
  migrationFlags?: { stopCopy: boolean; p2p: boolean; preCopy: boolean };
  /** Current migration state ('RUNNING', ...), when it could be read. */
  state?: string;
  /** Why the probe could not run. */
  probeError?: string;
}

export async function listDevices(options: { probe?: boolean; sysRoot?: string } = {}): Promise<ListedDevice[]> {
  const probe = options.probe ?? true;
  const out: ListedDevice[] = [];
  for (const dev of listSysfsDevices(options.sysRoot)) {
    const listed: ListedDevice = { ...dev, migration: 'unknown' };
    out.push(listed);
    if (!probe || dev.group === null) continue;
    try {
      using device = openDevice(dev.path, { sysRoot: options.sysRoot });
      const migration = createMigration(device);
      listed.migration = migration ? migration.protocol : 'none';
      if (migration) {
        const described = migration.describe() as { flags?: ListedDevice['migrationFlags'] };
        if (described.flags) listed.migrationFlags = described.flags;
        listed.state = await migration.state();
        migration.close();
      }
    } catch (err) {
      listed.probeError = err instanceof Error ? err.message : String(err);
    }
  }
  return out;
}
