// The guest side of test/vm/cross-host.test.ts: run in each of two guests joined by a link, one the source of
// a migration through ssh, the other its destination; they meet through files in the shared results directory.
//   node dist/test/vm/cross-host-guest.js source|destination
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { requireMigration } from '../../lib';
import { sshClientOptions, startSshd } from '../support/sshd';
import { TestDevice, bar0Mutate } from '../support/test-driver';
import { binArgs, VFIO_MIG_COMMAND } from '../support/cli-child';

export type Role = 'source' | 'destination';
/** The link's addresses (a /24 that exists only between the two guests) and each NIC's MAC. */
export const LINK: Record<Role, { address: string; mac: string }> = {
  source: { address: '10.231.0.1', mac: '52:54:00:23:10:01' },
  destination: { address: '10.231.0.2', mac: '52:54:00:23:10:02' },
};
/** What the destination announces (ready.json), what the source reports (done.json), what the destination found; checksums in decimal (JSON has no bigint). */
export interface Ready {
  uuid: string;
  port: number;
  kver: string;
}
export interface Done {
  code: number | null;
  checksum: string;
  stderr: string;
  report?: { downtimeMs: number; elapsedMs: number; bytes: number };
}
export interface Found {
  checksum: string;
  state: string;
}

const MiB = 1 << 20;
const WAIT_MS = 240_000;

function run(argv: string[]): void {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr || r.error || `status ${r.status}`}`);
}

/** insmod a module of the guest's kernel and what it needs (the image's modules, as prepare.sh unpacked them). */
function loadModule(path: string): void {
  const dir = join(process.env.VFIO_MIG_CACHE!, 'modules', 'lib', 'modules', process.env.VFIO_MIG_KVER!);
  const line = readFileSync(join(dir, 'modules.dep'), 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${path}:`));
  if (!line) throw new Error(`${path} is not in ${dir}/modules.dep`);
  // modules.dep lists a module's dependencies the last first
  const deps = line
    .slice(path.length + 1)
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .reverse();
  for (const m of [...deps, path]) {
    if (existsSync(`/sys/module/${basename(m, '.ko').replace(/-/g, '_')}`)) continue;
    run(['busybox', 'insmod', join(dir, m)]);
  }
}

/** Brings up this guest's end of the link: virtio-net loaded, the NIC found by its MAC, its address set. */
async function linkUp(role: Role): Promise<string> {
  loadModule('kernel/drivers/net/virtio_net.ko');
  const { address, mac } = LINK[role];
  let iface: string | undefined;
  for (let i = 0; i < 100 && !iface; i++) {
    iface = readdirSync('/sys/class/net').find((n) => {
      try {
        return readFileSync(`/sys/class/net/${n}/address`, 'utf8').trim() === mac;
      } catch {
        return false;
      }
    });
    if (!iface) await sleep(100);
  }
  if (!iface) throw new Error(`no network interface with MAC ${mac}`);
  run(['ip', 'link', 'set', 'lo', 'up']);
  run(['ip', 'addr', 'add', `${address}/24`, 'dev', iface]);
  run(['ip', 'link', 'set', iface, 'up']);
  return iface;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function writeJson(name: string, value: unknown): void {
  // renamed into place: the other guest never reads half a file
  const file = join(process.env.VFIO_MIG_OUT!, name);
  writeFileSync(`${file}.tmp`, JSON.stringify(value));
  renameSync(`${file}.tmp`, file);
}

async function waitJson<T>(name: string): Promise<T> {
  const file = join(process.env.VFIO_MIG_OUT!, name);
  const deadline = Date.now() + WAIT_MS;
  while (!existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`no ${name} from the other guest after ${WAIT_MS / 1000} s`);
    await sleep(250);
  }
  return JSON.parse(readFileSync(file, 'utf8')) as T;
}

async function destination(): Promise<number> {
  const iface = await linkUp('destination');
  const dev = new TestDevice('v2', { stateSize: 4 * MiB, chunkSize: 64 * 1024 });
  const sshd = await startSshd({ address: LINK.destination.address, port: 22 });
  try {
    // the source logs in with the key this sshd accepts (through the shared directory, kept private)
    writeFileSync(join(process.env.VFIO_MIG_OUT!, 'id'), readFileSync(join(sshd.dir, 'id')), { mode: 0o600 });
    writeJson('ready.json', { uuid: dev.uuid, port: sshd.port, kver: process.env.VFIO_MIG_KVER! } satisfies Ready);
    console.log(
      `destination: ${dev.uuid} (v2) on ${process.env.VFIO_MIG_KVER}, sshd on ${iface} ${LINK.destination.address}:22`,
    );
    const done = await waitJson<Done>('done.json');
    let state: string;
    {
      using d = dev.open();
      state = await requireMigration(d).state();
    }
    const found: Found = { checksum: String(dev.checksum()), state };
    writeJson('destination.json', found);
    console.log(
      `destination: migrate exited ${done.code}; checksum ${found.checksum} (source's ${done.checksum}), ${state}`,
    );
    if (done.code !== 0) console.log(`sshd log:\n${sshd.log()}`);
    return done.code === 0 && found.checksum === done.checksum && state === 'RUNNING' ? 0 : 1;
  } finally {
    await sshd.stop();
    dev.remove();
  }
}

async function source(): Promise<number> {
  await linkUp('source');
  const dev = new TestDevice('v2', { stateSize: 4 * MiB, chunkSize: 64 * 1024 });
  let done: Done = { code: null, checksum: '', stderr: 'the source failed before it migrated' };
  try {
    {
      using d = dev.open();
      bar0Mutate(d, 0x6101n);
    }
    done.checksum = String(dev.checksum());
    const ready = await waitJson<Ready>('ready.json');
    // ssh wants the private key readable by its owner only
    writeFileSync('/tmp/id', readFileSync(join(process.env.VFIO_MIG_OUT!, 'id')), { mode: 0o600 });
    const to = `ssh://root@${LINK.destination.address}:${ready.port}/${ready.uuid}`;
    console.log(`source: ${dev.uuid} (v2) on ${process.env.VFIO_MIG_KVER} -> ${to} (${ready.kver})`);
    const r = spawnSync(
      process.execPath,
      binArgs(
        '--json',
        'migrate',
        dev.uuid,
        to,
        '--remote-command',
        VFIO_MIG_COMMAND,
        ...sshClientOptions('/tmp/id').flatMap((o) => ['--ssh-option', o]),
      ),
      { encoding: 'utf8', timeout: 180_000 },
    );
    done = { ...done, code: r.status, stderr: r.stderr };
    if (r.status === 0) done.report = JSON.parse(r.stdout) as Done['report'];
    console.log(`source: migrate exited ${r.status}\n${r.stderr}${r.stdout}`);
    return r.status === 0 ? 0 : 1;
  } finally {
    // whatever happened, the destination stops waiting
    writeJson('done.json', done);
    dev.remove();
  }
}

if (require.main === module) {
  const role = process.argv[2];
  if (role !== 'source' && role !== 'destination') {
    console.error('usage: node dist/test/vm/cross-host-guest.js source|destination');
    process.exit(2);
  }
  (role === 'source' ? source() : destination()).then(
    (status) => process.exit(status),
    (err: Error) => {
      console.error(`${role}: ${err.stack ?? err.message}`);
      if (role === 'source' && !existsSync(join(process.env.VFIO_MIG_OUT!, 'done.json')))
        writeJson('done.json', { code: null, checksum: '', stderr: err.message } satisfies Done);
      process.exit(1);
    },
  );
}
