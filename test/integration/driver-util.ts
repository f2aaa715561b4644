// Helpers for the vfio_mig_test driver's own tests: instances, sysfs knobs, and the tiny C client (test/driver/client/vmtc.c).
import { spawnSync, execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const DRIVER = 'vfio_mig_test';
export const ROOT = resolve(__dirname, '..', '..', '..');
export const inGuest = process.env.VFIO_MIG_GUEST === '1';
export const kernel = process.env.VFIO_MIG_KERNEL ?? '';
export const hasPrecopy = kernel !== '' && kernel !== '6.1';

/** node:test skip value for every driver test. */
export const needsDriver: string | false = !inGuest
  ? 'needs the VM guest (npm run test:vm)'
  : process.env.VFIO_MIG_TEST_DRIVER !== '1' || !existsSync(`/sys/class/mdev_bus/${DRIVER}`)
    ? 'the vfio_mig_test module is not loaded in this guest'
    : false;
export const needsPrecopy: string | false = needsDriver || (hasPrecopy ? false : `kernel ${kernel} has no PRE_COPY`);

export type Kind = 'v1' | 'v1-trapped' | 'v2' | 'none';
export const typeDirName = (kind: Kind): string => `${DRIVER}-${kind}`;

export interface Knobs {
  stateSize?: number | bigint;
  chunkSize?: number;
  dirtyRate?: number;
}

const live = new Set<Inst>();

/** One mdev instance of the driver. */
export class Inst {
  readonly uuid = randomUUID();
  constructor(
    readonly kind: Kind,
    knobs: Knobs = {},
  ) {
    writeFileSync(`/sys/class/mdev_bus/${DRIVER}/mdev_supported_types/${typeDirName(kind)}/create`, this.uuid);
    live.add(this);
    if (knobs.chunkSize !== undefined) this.set('chunk_size', knobs.chunkSize);
    if (knobs.stateSize !== undefined) this.set('state_size', knobs.stateSize);
    if (knobs.dirtyRate !== undefined) this.set('dirty_rate', knobs.dirtyRate);
  }
  attr(name: string): string {
    return `/sys/bus/mdev/devices/${this.uuid}/${DRIVER}/${name}`;
  }
  set(name: string, value: string | number | bigint): void {
    writeFileSync(this.attr(name), String(value));
  }
  /** Writes a knob and returns the errno code of a failure, or null. */
  trySet(name: string, value: string | number | bigint): string | null {
    try {
      this.set(name, value);
      return null;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code ?? 'E?';
    }
  }
  get(name: string): string {
    return readFileSync(this.attr(name), 'utf8').trim();
  }
  counters(): Record<string, bigint> {
    const out: Record<string, bigint> = {};
    for (const line of this.get('counters').split('\n')) {
      const [k, v] = line.split(' ');
      if (k && v !== undefined) out[k] = BigInt(v);
    }
    return out;
  }
  checksum(): bigint {
    return BigInt(this.get('checksum'));
  }
  /** Runs vmtc commands on this instance (one open of the device). */
  run(...cmds: string[]): Result[] {
    return vmtc(this.uuid, cmds);
  }
  remove(): void {
    const path = `/sys/bus/mdev/devices/${this.uuid}/remove`;
    if (existsSync(path)) writeFileSync(path, '1');
    live.delete(this);
  }
}

export function removeAll(): void {
  for (const i of [...live]) i.remove();
}

export interface Result {
  ok: boolean;
  /** errno name when !ok ('EINVAL') */
  err?: string;
  /** text after "ok " */
  text: string;
  /** key=value pairs of the text */
  kv: Record<string, string>;
  /** the first word of the text as a bigint, when numeric */
  value?: bigint;
}

let clientPath = '';
let clientDir = '';

/** Compiles vmtc with the host's cc into a temp dir (once per test file). */
export function buildClient(): string {
  if (clientPath) return clientPath;
  clientDir = mkdtempSync(join(tmpdir(), 'vmtc-'));
  clientPath = join(clientDir, 'vmtc');
  execFileSync('cc', ['-O2', '-Wall', '-o', clientPath, join(ROOT, 'test/driver/client/vmtc.c')], { stdio: 'pipe' });
  return clientPath;
}

export function tmpFile(name: string): string {
  buildClient();
  return join(clientDir, name);
}

export function cleanupClient(): void {
  if (clientDir) rmSync(clientDir, { recursive: true, force: true });
  clientDir = clientPath = '';
}

function parse(line: string): Result {
  if (line.startsWith('ok')) {
    const text = line.slice(2).trim();
    const kv: Record<string, string> = {};
    for (const w of text.split(' ')) {
      const i = w.indexOf('=');
      if (i > 0) kv[w.slice(0, i)] = w.slice(i + 1);
    }
    const first = text.split(' ')[0] ?? '';
    const value = /^(0x[0-9a-f]+|\d+)$/i.test(first) ? BigInt(first) : undefined;
    return { ok: true, text, kv, value };
  }
  const m = /^err (\S+) (\d+)(.*)$/.exec(line);
  if (m) {
    const kv: Record<string, string> = {};
    for (const w of (m[3] ?? '').trim().split(' ')) {
      const i = w.indexOf('=');
      if (i > 0) kv[w.slice(0, i)] = w.slice(i + 1);
    }
    return { ok: false, err: m[1], text: line, kv };
  }
  throw new Error(`vmtc: unexpected output line '${line}'`);
}

export function vmtc(uuid: string, cmds: string[], timeoutMs = 120_000): Result[] {
  const r = spawnSync(buildClient(), [uuid, ...cmds], { encoding: 'utf8', timeout: timeoutMs });
  if (r.error) throw r.error;
  const lines = r.stdout.split('\n').filter((l) => l.length > 0);
  if (r.status !== 0) throw new Error(`vmtc ${cmds.join(' | ')}: exit ${r.status}: ${r.stdout}${r.stderr}`);
  if (lines.length !== cmds.length)
    throw new Error(`vmtc: ${cmds.length} commands, ${lines.length} lines: ${r.stdout}${r.stderr}`);
  return lines.map(parse);
}

/** Asserts every result is ok and returns them. */
export function ok(results: Result[]): Result[] {
  results.forEach((res, i) => {
    if (!res.ok) throw new Error(`command ${i} failed: ${res.text}`);
  });
  return results;
}

export function instancesOfDriver(): string[] {
  try {
    return readdirSync('/sys/bus/mdev/devices').filter((u) => {
      try {
        return existsSync(`/sys/bus/mdev/devices/${u}/${DRIVER}`);
      } catch {
        return false;
      }
    });
  } catch {
    return [];
  }
}

export function liveAllocs(): number {
  return Number(readFileSync(`/sys/module/${DRIVER}/parameters/live_allocs`, 'utf8').trim());
}

/** v1 device_state values */
export const V1 = { stop: 0, running: 1, saving: 2, precopy: 3, resuming: 4 } as const;
export type V1Name = keyof typeof V1;
export const MIG = 9;
export const PAGE = 4096;
