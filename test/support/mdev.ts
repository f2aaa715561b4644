// mdev instances through sysfs (the kernel's mdev ABI, the same for mtty and vfio_mig_test): types, create, remove.
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Parents (mdev_bus class) and instances (mdev bus). */
export const MDEV_BUS = '/sys/class/mdev_bus';
export const MDEV_DEVICES = '/sys/bus/mdev/devices';

/** The type directories a parent offers (e.g. 'mtty-2'), [] when the parent is not there. */
export function mdevTypes(parent: string): string[] {
  try {
    return readdirSync(join(MDEV_BUS, parent, 'mdev_supported_types'));
  } catch {
    return [];
  }
}

/** Creates an instance of `type` (full type dir name, e.g. 'mtty-2') and returns its UUID. */
export function createMdev(parent: string, type: string): string {
  const uuid = randomUUID();
  writeFileSync(join(MDEV_BUS, parent, 'mdev_supported_types', type, 'create'), uuid);
  return uuid;
}

/** Removes an instance (the kernel waits until the device is closed); nothing when it is gone already. */
export function removeMdev(uuid: string): void {
  const path = join(MDEV_DEVICES, uuid, 'remove');
  if (existsSync(path)) writeFileSync(path, '1');
}
