// A v1 client nobody here wrote: QEMU 7.2's vfio-pci saves a vfio_mig_test v1 device through QMP migrate and restores it with -incoming.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Inst, needsDriver, removeAll } from './driver-util';

const QEMU = 'qemu-system-x86_64';
const qemuVersion = (() => {
  const r = spawnSync(QEMU, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? (/version (\d+)\.(\d+)/.exec(r.stdout) ?? null) : null;
})();
const skip: string | false =
  needsDriver ||
  (!qemuVersion
    ? `${QEMU} is not installed`
    : Number(qemuVersion[1]) >= 8
      ? `QEMU ${qemuVersion[1]}.${qemuVersion[2]} has no v1 migration client (removed in 8.0)`
      : false);

/** Minimal QMP client: one command at a time, events skipped. */
class Qmp {
  private buf = '';
  private waiters: Array<(msg: Record<string, unknown>) => void> = [];
  private constructor(private sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as Record<string, unknown>;
        if ('event' in msg) continue;
        this.waiters.shift()?.(msg);
      }
    });
  }
  static async open(path: string, deadline: number): Promise<Qmp> {
    for (;;) {
      try {
        const sock = await new Promise<Socket>((res, rej) => {
          const s = connect(path, () => res(s));
          s.once('error', rej);
        });
        const q = new Qmp(sock);
        await q.next(); // greeting
        await q.cmd('qmp_capabilities');
        return q;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
  private next(): Promise<Record<string, unknown>> {
    return new Promise((res) => this.waiters.push(res));
  }
  async cmd(execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const p = this.next();
    this.sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    const msg = await p;
    if ('error' in msg) throw new Error(`QMP ${execute}: ${JSON.stringify(msg.error)}`);
    return (msg.return ?? {}) as Record<string, unknown>;
  }
  close(): void {
    this.sock.destroy();
  }
}

interface Vm {
  proc: ChildProcess;
  qmp: Qmp;
  log: () => string;
}

async function startQemu(dir: string, name: string, uuid: string, extra: string[]): Promise<Vm> {
  const sock = join(dir, `${name}.qmp`);
  const args = ['-machine', 'q35', '-accel', 'tcg', '-m', '64', '-S', '-nodefaults', '-display', 'none', '-no-user-config',
    '-qmp', `unix:${sock},server=on,wait=off`,
    '-device', `vfio-pci,sysfsdev=/sys/bus/mdev/devices/${uuid},x-enable-migration=on`, ...extra];
  const proc = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout!.on('data', (b: Buffer) => (log += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (log += b.toString()));
  const exited = new Promise<never>((_, rej) => proc.once('exit', (c) => rej(new Error(`QEMU ${name} exited ${c}: ${log}`))));
  exited.catch(() => undefined);
  const qmp = await Promise.race([Qmp.open(sock, Date.now() + 60_000), exited]);
  return { proc, qmp, log: () => log };
}

async function waitMigration(vm: Vm, what: string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 180_000;
  for (;;) {
    const info = await vm.qmp.cmd('query-migrate');
    const status = info.status as string | undefined;
    if (status === 'completed') return info;
    if (status === 'failed' || status === 'cancelled')
      throw new Error(`${what} migration ${status}: ${JSON.stringify(info)}\nQEMU said:\n${vm.log()}`);
    if (Date.now() > deadline) throw new Error(`${what} migration still ${status}: ${vm.log()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function quit(vm: Vm): Promise<void> {
  const gone = new Promise<void>((res) => (vm.proc.exitCode !== null ? res() : vm.proc.once('exit', () => res())));
  try {
    await vm.qmp.cmd('quit');
  } catch {
    /* QEMU may close the socket before answering */
  }
  vm.qmp.close();
  const t = setTimeout(() => vm.proc.kill('SIGKILL'), 20_000);
  await gone;
  clearTimeout(t);
}

describe('vfio_mig_test v1 with QEMU 7.2 (vfio-pci x-enable-migration=on)', { skip }, () => {
  let dir = '';
  const vms: Vm[] = [];
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'vmt-qemu-'));
  });
  after(async () => {
    for (const vm of vms) if (vm.proc.exitCode === null) vm.proc.kill('SIGKILL');
    removeAll();
    rmSync(dir, { recursive: true, force: true });
  });

  test('QMP migrate to a file saves the device; a second QEMU with -incoming restores it; checksums match', { timeout: 600_000 }, async () => {
    const knobs = { stateSize: 256 * 1024, chunkSize: 65536 };
    const src = new Inst('v1', knobs);
    const dst = new Inst('v1', knobs);
    src.set('mutate', 0x1234);
    dst.set('mutate', 0x9999);
    const saved = src.checksum();
    assert.notEqual(dst.checksum(), saved);
    const file = join(dir, 'vm.mig');

    const a = await startQemu(dir, 'src', src.uuid, []);
    vms.push(a);
    await a.qmp.cmd('migrate', { uri: `exec:cat > ${file}` });
    await waitMigration(a, 'outgoing');
    await quit(a);
    assert.ok(existsSync(file) && statSync(file).size > knobs.stateSize, 'the migration file holds the device state');
    const sc = src.counters();
    assert.ok(sc['records_saved']! > 0n, 'QEMU read records from the data section');
    assert.ok(sc['v1.read.pending_bytes']! > 0n && sc['v1.transitions']! >= 3n);
    assert.equal(src.checksum(), saved, 'the source state did not change');

    const b = await startQemu(dir, 'dst', dst.uuid, ['-incoming', `exec:cat ${file}`]);
    vms.push(b);
    await waitMigration(b, 'incoming');
    await b.qmp.cmd('cont'); // RESUMING -> RUNNING
    const st = await b.qmp.cmd('query-status');
    assert.equal(st.status, 'running', `destination runs: ${b.log()}`);
    await quit(b);
    const dc = dst.counters();
    assert.ok(dc['records_loaded']! > 0n, `QEMU wrote records: ${b.log()}`);
    assert.equal(dc['records_rejected'], 0n);
    assert.equal(dst.checksum(), saved, 'restored == saved');
  });
});
