// What a stream records about its source device and tool, and how a destination is compared with it.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Device } from '../device';

// The CLI's bundle has the version written in at build time (scripts/bundle.js), which spares
// every command reading and parsing package.json; the library, unbundled, reads it.
declare const VFIO_MIG_BUNDLED_VERSION: string | undefined;

let toolVersion: string | undefined;
/**
 * The package version written into stream headers, from the nearest package.json of this package
 * above this file: dist/lib/migration/ in the library, dist/bin/ in the CLI's bundle.
 */
export function version(): string {
  if (toolVersion === undefined && typeof VFIO_MIG_BUNDLED_VERSION === 'string') toolVersion = VFIO_MIG_BUNDLED_VERSION;
  if (toolVersion === undefined) {
    toolVersion = 'unknown';
    for (let dir = __dirname; ; dir = dirname(dir)) {
      try {
        const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
          name?: unknown;
          version?: unknown;
        };
        if (pkg.name === 'vfio-migration') {
          toolVersion = String(pkg.version);
          break;
        }
      } catch {
        // no package.json here (or not readable): look further up
      }
      if (dirname(dir) === dir) break;
    }
  }
  return toolVersion;
}

const twoDigits = (n: number): string => (n < 10 ? `0${n}` : String(n));

/**
 * `new Date(ms).toISOString()`, for the stream header's creation time: the first toISOString in a
 * process cost about 8 ms in the test guest (cold, under emulation) against 1 ms for the UTC
 * getters, and every save and migrate writes one. Outside years 1000-9999 it is toISOString.
 */
export function isoTime(ms: number): string {
  const d = new Date(ms);
  const year = d.getUTCFullYear();
  if (!(year >= 1000 && year <= 9999)) return d.toISOString();
  const milli = d.getUTCMilliseconds();
  return `${year}-${twoDigits(d.getUTCMonth() + 1)}-${twoDigits(d.getUTCDate())}T${twoDigits(d.getUTCHours())}:${twoDigits(d.getUTCMinutes())}:${twoDigits(d.getUTCSeconds())}.${milli < 10 ? '00' : milli < 100 ? '0' : ''}${milli}Z`;
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

/**
 * Why a destination speaking `protocol` cannot take a stream with this header, or undefined when
 * it can: another protocol always refuses; another kind of device refuses unless forced.
 * `load()` and `receive` word the answer for their callers.
 */
export function headerRefusal(
  header: { protocol?: unknown; device?: unknown },
  protocol: 'v1' | 'v2',
  device: Device,
  force: boolean,
): { protocol: unknown } | { mismatches: string[] } | undefined {
  if (header.protocol !== protocol) return { protocol: header.protocol };
  const mismatches = identityMismatches((header.device ?? {}) as Record<string, unknown>, deviceIdentity(device));
  return mismatches.length && !force ? { mismatches } : undefined;
}
