// QEMU 7.2 as a v1 migration client, driven over QMP: shared by the QEMU integration test and the benchmark.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';

export const QEMU = 'qemu-system-x86_64';
export const qemuVersion = (() => {
  const r = spawnSync(QEMU, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? (/version (\d+)\.(\d+)/.exec(r.stdout) ?? null) : null;
})();

/** Minimal QMP client: one command at a time, events skipped. */
export class Qmp {
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

export interface Vm {
  proc: ChildProcess;
  qmp: Qmp;
  log: () => string;
}

export async function startQemu(dir: string, name: string, uuid: string, extra: string[]): Promise<Vm> {
  const sock = join(dir, `${name}.qmp`);
  const args = [
    '-machine',
    'q35',
    '-accel',
    'tcg',
    '-m',
    '64',
    '-S',
    '-nodefaults',
    '-display',
    'none',
    '-no-user-config',
    '-qmp',
    `unix:${sock},server=on,wait=off`,
    '-device',
    `vfio-pci,sysfsdev=/sys/bus/mdev/devices/${uuid},x-enable-migration=on`,
    ...extra,
  ];
  const proc = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout!.on('data', (b: Buffer) => (log += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (log += b.toString()));
  const exited = new Promise<never>((_, rej) =>
    proc.once('exit', (c) => rej(new Error(`QEMU ${name} exited ${c}: ${log}`))),
  );
  exited.catch(() => undefined);
  const qmp = await Promise.race([Qmp.open(sock, Date.now() + 60_000), exited]);
  return { proc, qmp, log: () => log };
}

export async function waitMigration(vm: Vm, what: string): Promise<Record<string, unknown>> {
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

export async function quit(vm: Vm): Promise<void> {
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
