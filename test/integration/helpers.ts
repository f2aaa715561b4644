// Helpers for the integration suite that runs inside the VM guest (real kernel VFIO): skip reasons and mdev instances.
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const inGuest = process.env.VFIO_MIG_GUEST === '1';
export const guestKernel = process.env.VFIO_MIG_KERNEL ?? '';
/** node:test `skip` value: false in the guest, else the reason. */
export const needsGuest: string | false = inGuest ? false : 'needs the VM guest (npm run test:vm)';

/** Skip reason unless the guest has the given mdev parent loaded. */
export function needsMdevParent(parent: string): string | false {
  if (!inGuest) return needsGuest;
  return existsSync(`/sys/class/mdev_bus/${parent}`) ? false : `mdev parent ${parent} is not loaded in this guest`;
}

export function mdevTypes(parent: string): string[] {
  try {
    return readdirSync(`/sys/class/mdev_bus/${parent}/mdev_supported_types`);
  } catch {
    return [];
  }
}

/** Creates an mdev instance of `type` (full type dir name, e.g. 'mtty-2') and returns its UUID. */
export function createMdev(parent: string, type: string): string {
  const uuid = randomUUID();
  writeFileSync(join('/sys/class/mdev_bus', parent, 'mdev_supported_types', type, 'create'), uuid);
  return uuid;
}

export function removeMdev(uuid: string): void {
  const path = `/sys/bus/mdev/devices/${uuid}/remove`;
  if (existsSync(path)) writeFileSync(path, '1');
}

export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

export function readSysfs(path: string): string {
  return readFileSync(path, 'utf8').trim();
}
