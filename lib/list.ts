// listDevices(): the VFIO devices of this host from sysfs, with the migration protocol each offers when it can be probed.
import { openDevice } from './device';
import { listSysfsDevices, type SysfsDevice } from './sysfs';
import { probeMigration } from './migration/probe';

export interface ListedDevice extends SysfsDevice {
  /** 'v1', 'v2', 'none', or 'unknown' when the device could not be opened to probe (busy, permissions). */
  migration: 'v1' | 'v2' | 'none' | 'unknown';
  migrationFlags?: { stopCopy: boolean; p2p: boolean; preCopy: boolean };
  /** Why the probe could not run. */
  probeError?: string;
}

export function listDevices(options: { probe?: boolean; sysRoot?: string } = {}): ListedDevice[] {
  const probe = options.probe ?? true;
  return listSysfsDevices(options.sysRoot).map((dev) => {
    const listed: ListedDevice = { ...dev, migration: 'unknown' };
    if (!probe || dev.group === null) return listed;
    try {
      using device = openDevice(dev.path, { sysRoot: options.sysRoot });
      const found = probeMigration(device);
      listed.migration = found ? found.protocol : 'none';
      if (found?.protocol === 'v2') listed.migrationFlags = { stopCopy: found.stopCopy, p2p: found.p2p, preCopy: found.preCopy };
    } catch (err) {
      listed.probeError = err instanceof Error ? err.message : String(err);
    }
    return listed;
  });
}
