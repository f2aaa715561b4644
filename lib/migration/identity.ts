// What a stream records about its source device and tool, and how a destination is compared with it.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Device } from '../device';

let toolVersion: string | undefined;
/** The package version written into stream headers. */
export function version(): string {
  if (toolVersion === undefined) {
    try {
      toolVersion = String(JSON.parse(readFileSync(join(__dirname, '../../../package.json'), 'utf8')).version);
    } catch {
      toolVersion = 'unknown';
    }
  }
  return toolVersion;
}

/** What a stream records about its source device, and what a destination is compared on. */
export function deviceIdentity(device: Device): Record<string, unknown> {
  const s = device.sysfs;
  if (!s) return { kind: 'unknown', name: device.name };
  if (s.kind === 'pci') {
    return {
      kind: 'pci',
      vendor: s.vendor,
      device: s.device,
      subsystemVendor: s.subsystemVendor,
      subsystemDevice: s.subsystemDevice,
      driver: s.driver,
    };
  }
  return { kind: 'mdev', mdevType: s.mdevType, driver: s.driver };
}

/** Differences between a stream's device identity and a destination's, empty when they match. */
export function identityMismatches(saved: Record<string, unknown>, here: Record<string, unknown>): string[] {
  const keys =
    saved.kind === 'pci'
      ? ['kind', 'vendor', 'device', 'subsystemVendor', 'subsystemDevice']
      : saved.kind === 'mdev'
        ? ['kind', 'mdevType']
        : ['kind'];
  return keys
    .filter((k) => saved[k] !== here[k])
    .map((k) => `${k}: stream has ${JSON.stringify(saved[k])}, device has ${JSON.stringify(here[k])}`);
}
