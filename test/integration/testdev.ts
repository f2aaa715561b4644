// The project's test vendor driver (vfio_mig_test) seen from the integration suite: create instances, set knobs, read BAR0 checksums.
import { readFileSync, writeFileSync } from 'node:fs';
import { openDevice, type Device } from '../../lib';
import { createMdev, mdevTypes, needsMdevParent, removeMdev } from './helpers';

export const DRIVER = 'vfio_mig_test';
export type Kind = 'v1' | 'v1-trapped' | 'v2' | 'none';

export const needsTestDriver = needsMdevParent(DRIVER);

const BAR0_CHECKSUM = 0x10;
const BAR0_GENERATION = 0x18;
const BAR0_MUTATE = 0x20;

export function typeDir(kind: Kind): string {
  const found = mdevTypes(DRIVER).find((t) => t === kind || t.endsWith(`-${kind}`));
  if (!found) throw new Error(`${DRIVER} has no mdev type ${kind} (types: ${mdevTypes(DRIVER).join(', ')})`);
  return found;
}

/** One mdev instance of the test driver; remove() in a finally/after. */
export class TestDevice {
  readonly uuid: string;
  readonly kind: Kind;

  constructor(kind: Kind, knobs: { stateSize?: number; chunkSize?: number; dirtyRate?: number } = {}) {
    this.kind = kind;
    this.uuid = createMdev(DRIVER, typeDir(kind));
    if (knobs.chunkSize !== undefined) this.set('chunk_size', knobs.chunkSize);
    if (knobs.stateSize !== undefined) this.set('state_size', knobs.stateSize);
    if (knobs.dirtyRate !== undefined) this.set('dirty_rate', knobs.dirtyRate);
  }

  attr(name: string): string {
    return `/sys/bus/mdev/devices/${this.uuid}/${DRIVER}/${name}`;
  }
  set(name: string, value: string | number): void {
    writeFileSync(this.attr(name), String(value));
  }
  get(name: string): string {
    return readFileSync(this.attr(name), 'utf8').trim();
  }
  faultPoints(): string[] {
    return this.get('fault_points').split(/\s+/).filter(Boolean);
  }
  open(): Device {
    return openDevice(this.uuid);
  }
  remove(): void {
    removeMdev(this.uuid);
  }
}

/** The state checksum, read through the project's device layer (BAR0, native width). */
export function checksum(device: Device): bigint {
  return device.region(0).read(BAR0_CHECKSUM, 8);
}
export function generation(device: Device): bigint {
  return device.region(0).read(BAR0_GENERATION, 8);
}
/** Fills the device state deterministically from a seed. */
export function mutate(device: Device, seed: bigint): void {
  device.region(0).write(BAR0_MUTATE, 8, seed);
}
