// Helpers for the integration suite that runs inside the VM guest (real kernel VFIO): the guest's kernel, skip reasons.
// mdev instances: test/support/mdev.ts; the test driver: test/support/test-driver.ts.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { MDEV_BUS } from '../support/mdev';

export const inGuest = process.env.VFIO_MIG_GUEST === '1';
export const guestKernel = process.env.VFIO_MIG_KERNEL ?? '';
/** The guest's kernel has PRE_COPY, PRECOPY_INFO and MIG_DATA_SIZE (6.2+: of the two here, 6.12). */
export const hasPrecopy = guestKernel !== '' && guestKernel !== '6.1';
/** node:test `skip` value: false in the guest, else the reason. */
export const needsGuest: string | false = inGuest ? false : 'needs the VM guest (npm run test:vm)';

/** Skip reason unless the guest has the given mdev parent loaded. */
export function needsMdevParent(parent: string): string | false {
  if (!inGuest) return needsGuest;
  return existsSync(`${MDEV_BUS}/${parent}`) ? false : `mdev parent ${parent} is not loaded in this guest`;
}

export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

export function readSysfs(path: string): string {
  return readFileSync(path, 'utf8').trim();
}
