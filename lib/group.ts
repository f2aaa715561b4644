// Group: a VFIO group (/dev/vfio/N), and the lease that shares one group and its container among the devices opened in it.
import { native } from './native';
import { VfioError } from './errors';
import { Container } from './container';
import { FdHandle, openNode } from './fd-handle';
import { groupMembers } from './sysfs';
import { VFIO_GROUP_FLAGS_VIABLE } from './uapi';

/** A VFIO group (/dev/vfio/N). */
export class Group {
  readonly number: number;
  readonly #handle: FdHandle;
  #container: Container | null = null;

  constructor(number: number, devRoot = '/dev/vfio') {
    this.number = number;
    this.#handle = new FdHandle(openNode(`${devRoot}/${number}`, `IOMMU group ${number}`), `VFIO group ${number}`);
  }

  get fd(): number {
    return this.#handle.fd;
  }

  get viable(): boolean {
    return (native.groupGetStatus(this.fd) & VFIO_GROUP_FLAGS_VIABLE) !== 0;
  }

  get container(): Container | null {
    return this.#container;
  }

  setContainer(container: Container): void {
    native.groupSetContainer(this.fd, container.fd);
    this.#container = container;
  }

  unsetContainer(): void {
    if (!this.#container) return;
    native.groupUnsetContainer(this.fd);
    this.#container = null;
  }

  /** Returns a device fd (O_CLOEXEC) for the named device in this group. */
  getDeviceFd(name: string): number {
    return native.groupGetDeviceFd(this.fd, name);
  }

  close(): void {
    this.#handle.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A group with its container, shared by every device this process opens in that group. */
export interface GroupLease {
  group: Group;
  container: Container;
  users: number;
}
const openGroups = new Map<number, GroupLease>();

/** Opens (or shares) the group with a container and an IOMMU set; every lease is given back with releaseGroup. */
export function leaseGroup(number: number, sysRoot: string): GroupLease {
  const existing = openGroups.get(number);
  if (existing) {
    existing.users++;
    return existing;
  }
  const group = new Group(number);
  let container: Container | null = null;
  try {
    if (!group.viable) {
      const members = groupMembers(number, sysRoot)
        .map((m) => `${m.name} (${m.driver ? `bound to ${m.driver}` : 'no driver'})`)
        .join(', ');
      throw new VfioError(
        'ERR_VFIO_GROUP_NOT_VIABLE',
        `IOMMU group ${number} is not viable: every device in it must be bound to a VFIO driver or to none; members: ${members || 'unknown'}`,
      );
    }
    container = new Container();
    group.setContainer(container);
    container.setIommu();
  } catch (err) {
    container?.close();
    group.close();
    throw err;
  }
  const lease = { group, container, users: 1 };
  openGroups.set(number, lease);
  return lease;
}

/** Gives a lease back; the last user closes the group and its container. */
export function releaseGroup(lease: GroupLease): void {
  if (--lease.users > 0) return;
  openGroups.delete(lease.group.number);
  lease.group.close();
  lease.container.close();
}
