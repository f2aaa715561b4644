// Integration tests (VM guest) of vfio-mig migrate through ssh:// against a real sshd (Debian's openssh-server,
// test/support/sshd.ts) on the guest's loopback: the state arrives, a remote refusal and a cut connection
// reach the local side, and the source stays RUNNING with its state when it does not.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { requireMigration } from '../../lib';
import { guestKernel } from './helpers';
import { startSshd, needsSshd, type Sshd } from '../support/sshd';
import { TestDevice, bar0Mutate, needsDriver, type Kind } from '../support/test-driver';
import { binArgs, VFIO_MIG_COMMAND } from '../support/cli-child';

const MiB = 1 << 20;

const created: TestDevice[] = [];
function make(kind: Kind, stateSize: number): TestDevice {
  const d = new TestDevice(kind, { chunkSize: 64 * 1024, stateSize });
  created.push(d);
  return d;
}

/** A source with distinct state and its checksum, and a destination that differs. */
function pair(kind: Kind, stateSize: number) {
  const a = make(kind, stateSize);
  const b = make(kind, stateSize);
  {
    using d = a.open();
    bar0Mutate(d, 0x55n + BigInt(stateSize));
  }
  return { a, b, sum: a.checksum() };
}

async function stateOf(dev: TestDevice): Promise<string> {
  using d = dev.open();
  return requireMigration(d).state();
}

/** Runs vfio-mig; `onStderr` sees each chunk of its stderr with the child. */
function cli(args: string[], onStderr?: (text: string, child: ReturnType<typeof spawn>) => void) {
  return new Promise<{ code: number | null; stderr: string; stdout: string }>((resolve) => {
    const child = spawn(process.execPath, binArgs(...args), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      onStderr?.(stderr, child);
    });
    child.on('exit', (code) => resolve({ code, stderr, stdout }));
  });
}

describe(`migrate through a real sshd on ${guestKernel || 'host'}`, { skip: needsDriver || needsSshd }, () => {
  let sshd: Sshd;
  before(async () => {
    sshd = await startSshd({ address: '127.0.0.1', port: 2222 });
  });
  after(async () => {
    for (const d of created) d.remove();
    await sshd?.stop();
  });
  const to = (devices: string): string => `ssh://root@127.0.0.1:${sshd.port}/${devices}`;
  const sshArgs = (): string[] => [
    '--remote-command',
    VFIO_MIG_COMMAND,
    ...sshd.clientOptions.flatMap((o) => ['--ssh-option', o]),
  ];

  for (const kind of ['v2', 'v1'] as Kind[]) {
    test(`${kind}: migrate A ssh://root@127.0.0.1/B moves the state; B RUNNING with the source's checksum`, async () => {
      const { a, b, sum } = pair(kind, 4 * MiB);
      const t0 = Date.now();
      const r = await cli(['--json', 'migrate', a.uuid, to(b.uuid), ...sshArgs()]);
      assert.equal(r.code, 0, `${r.stderr}\nsshd:\n${sshd.log()}`);
      const report = JSON.parse(r.stdout);
      assert.equal(report.devices[0].destination, b.uuid);
      assert.equal(b.checksum(), sum);
      assert.equal(await stateOf(b), 'RUNNING');
      console.log(`# ${kind} 4 MiB over ssh: ${Date.now() - t0} ms, downtime ${report.downtimeMs} ms`);
    });
  }

  test('two devices (v2 and v1) in one transaction over one ssh connection', async () => {
    const p = [pair('v2', 2 * MiB), pair('v1', 2 * MiB)];
    const r = await cli([
      'migrate',
      p.map((x) => x.a.uuid).join(','),
      to(p.map((x) => x.b.uuid).join(',')),
      ...sshArgs(),
    ]);
    assert.equal(r.code, 0, r.stderr);
    for (const x of p) assert.equal(x.b.checksum(), x.sum);
  });

  test("the remote refuses (another device kind): exit 7 with the remote's message; source RUNNING, unchanged", async () => {
    const { a, sum } = pair('v1', MiB);
    const other = make('v2', MiB);
    const r = await cli(['migrate', a.uuid, to(other.uuid), ...sshArgs()]);
    assert.equal(r.code, 7, r.stderr);
    // the receive's own words, relayed with the host's prefix, and the local verdict
    assert.match(r.stderr, /^\[127\.0\.0\.1\] vfio-mig receive: .*protocol v1, this device v2/m);
    assert.match(r.stderr, /^vfio-mig migrate: .*protocol v1, this device v2/m);
    assert.equal(await stateOf(a), 'RUNNING');
    assert.equal(a.checksum(), sum);
  });

  test('the ssh connection killed mid-way (its sshd processes): source RUNNING with its checksum', async () => {
    const { a, b, sum } = pair('v2', 64 * MiB);
    let killed: number[] = [];
    const t0 = Date.now();
    const r = await cli(['migrate', a.uuid, to(b.uuid), ...sshArgs()], (text) => {
      // the first progress line of the source: the connection is up and the data is moving
      if (killed.length || !/: (pre-copy|stop-copy)/.test(text)) return;
      killed = sshd.connectionPids();
      for (const pid of killed) process.kill(pid, 'SIGKILL');
    });
    console.log(`# killed sshd ${killed.join(',')}: exit ${r.code} after ${Date.now() - t0} ms`);
    assert.ok(killed.length > 0, `no sshd connection process found to kill; stderr:\n${r.stderr}`);
    assert.ok([9, 7].includes(r.code!), `exit ${r.code}: ${r.stderr}`);
    assert.equal(await stateOf(a), 'RUNNING');
    assert.equal(a.checksum(), sum);
    // the orphaned receive sees its stdin end and resets its device
    let state = '';
    for (let i = 0; i < 100 && (state = await stateOf(b).catch((e: Error) => e.message)) !== 'RUNNING'; i++)
      await new Promise((res) => setTimeout(res, 100));
    assert.equal(state, 'RUNNING', 'the receive behind the cut connection left its device usable');
  });
});
