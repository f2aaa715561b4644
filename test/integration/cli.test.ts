// Integration tests (VM guest) of the vfio-mig binary, spawned, against real test-driver devices.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { TestDevice, needsDriver } from '../support/test-driver';
import { spawnWithBuiltins } from '../support/builtins-probe';
import { binArgs, binEnv, VFIO_MIG_BIN, VFIO_MIG_COMMAND } from '../support/cli-child';

const TMP = '/tmp/vfio-mig-cli-test';
const run = (...args: string[]) => spawnSync(process.execPath, binArgs(...args), { encoding: 'utf8' });

describe('vfio-mig against real devices', { skip: needsDriver }, () => {
  const devices: TestDevice[] = [];
  const make = (kind: 'v1' | 'v1-trapped' | 'v2' | 'none', size = 1 << 20) => {
    const d = new TestDevice(kind, { stateSize: size, chunkSize: 64 << 10 });
    devices.push(d);
    return d;
  };
  after(() => {
    devices.forEach((d) => d.remove());
    rmSync(TMP, { recursive: true, force: true });
  });

  test('list and info, human and --json', () => {
    const a = make('v1');
    const list = run('list', '--json');
    assert.equal(list.status, 0, list.stderr);
    const entry = JSON.parse(list.stdout).find((d: { name: string }) => d.name === a.uuid);
    assert.equal(entry.migration, 'v1');
    assert.equal(entry.state, 'RUNNING');
    assert.match(run('list').stdout, new RegExp(a.uuid));
    const info = run('info', a.uuid, '--json');
    assert.equal(info.status, 0, info.stderr);
    const parsed = JSON.parse(info.stdout);
    assert.equal(parsed.migration.protocol, 'v1');
    assert.ok(parsed.regions.some((r: { index: number }) => r.index === 9));
    // Read like lspci -v: regions and IRQs by name, flags decoded, migration in words.
    const human = run('info', a.uuid).stdout;
    assert.match(human, /^ {2}migration \(v1\) +0x[0-9a-f]+ bytes at offset 0x[0-9a-f]+, read\/write\/mmap$/m);
    assert.match(human, /^ {2}BAR0 +0x1000 bytes/m);
    assert.match(human, /^ {2}CONFIG +0x100 bytes/m);
    assert.match(human, /^ {2}INTx +1 vector\(s\), eventfd/m);
    assert.match(human, /^ {2}flags: RESET PCI$/m);
    assert.match(human, /^Migration: v1, state RUNNING$/m);
    assert.match(human, /data section: 1 mmap-able area\(s\)/);
    const v2info = run('info', make('v2').uuid).stdout;
    assert.match(v2info, /^Migration: v2, state RUNNING$/m);
    assert.match(v2info, /protocol flags: STOP_COPY P2P/);
    assert.match(v2info, /stop-and-copy size: (about [\d.]+ (B|KiB|MiB)|no estimate)/);
  });

  test('save to a file atomically, verify, load, state and reset', () => {
    const a = make('v1');
    const b = make('v1');
    a.set('mutate', '42');
    const file = join(TMP, 'a.vfmig');
    spawnSync('mkdir', ['-p', TMP]);
    const save = run('save', a.uuid, '-o', file, '--precopy-iterations', '2', '--json', '--leave', 'running');
    assert.equal(save.status, 0, save.stderr);
    assert.ok(JSON.parse(save.stdout).bytes > 0);
    assert.deepEqual(readdirSync(TMP), ['a.vfmig'], 'no temporary file left behind');
    assert.equal(run('verify', file).status, 0);
    const load = run('load', b.uuid, '-i', file, '--json');
    assert.equal(load.status, 0, load.stderr);
    assert.equal(b.get('checksum'), a.get('checksum'));
    assert.equal(run('state', a.uuid).stdout.trim(), 'RUNNING');
    assert.equal(run('state', a.uuid, 'STOP').stdout.trim(), 'STOP');
    assert.equal(JSON.parse(run('state', a.uuid, 'RUNNING', '--json').stdout).state, 'RUNNING');
    assert.equal(run('reset', a.uuid).status, 0);
  });

  test('the pipe case: save -o - | load -i -, progress on stderr', () => {
    const a = make('v2');
    const b = make('v2');
    a.set('mutate', '7');
    // Exactly what an operator types (ssh left out): a shell pipeline, progress on stderr, the
    // bin run through its own first lines.
    const r = spawnSync(
      'bash',
      ['-o', 'pipefail', '-c', `${VFIO_MIG_BIN} save ${a.uuid} -o - | ${VFIO_MIG_BIN} load ${b.uuid} -i -`],
      { encoding: 'utf8', env: binEnv() },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /saved .* \(v2\)/);
    assert.match(r.stdout, /loaded .* \(v2\)/);
    assert.equal(b.get('checksum'), a.get('checksum'));
  });

  test('save with progress (stderr a pipe): progress lines, and neither node:net nor node:tty loaded for them', () => {
    const a = make('v2', 4 << 20);
    a.set('mutate', '5');
    spawnSync('mkdir', ['-p', TMP]);
    const file = join(TMP, 'progress.vfmig');
    const r = spawnWithBuiltins(['save', a.uuid, '-o', file, '--leave', 'running']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /^stop-copy: /m, 'a progress line per phase');
    assert.ok(r.loaded('vm'), `the probe saw the bundle load (${r.stderr})`);
    for (const m of ['net', 'tty']) assert.ok(!r.loaded(m), `save loaded node:${m}`);
    rmSync(file, { force: true });
  });

  test('Ctrl-C during save: exit 130, the source runs, no file under the final name', async () => {
    const a = make('v1-trapped', 32 << 20);
    a.set('mutate', '9');
    const sum = a.get('checksum');
    spawnSync('mkdir', ['-p', TMP]);
    const file = join(TMP, 'interrupted.vfmig');
    const child = spawn(process.execPath, binArgs('save', a.uuid, '-o', file), { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => {
      err += d;
    });
    // Interrupt once the save is under way (its first progress line), not while node is still starting.
    await new Promise<void>((r) => child.stderr.once('data', () => r()));
    child.kill('SIGINT');
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    assert.equal(code, 130, err);
    assert.match(err, /interrupted by SIGINT/);
    assert.ok(!existsSync(file), 'no file under the final name');
    assert.deepEqual(
      readdirSync(TMP).filter((f) => f.includes('interrupted')),
      [],
      'no temporary left',
    );
    assert.equal(run('state', a.uuid).stdout.trim(), 'RUNNING');
    assert.equal(a.get('checksum'), sum);
  });

  test('save -o: a bad output is refused before the device stops; a FIFO or /dev/null is written in place', () => {
    const a = make('v2');
    a.set('mutate', '5');
    spawnSync('mkdir', ['-p', join(TMP, 'adir')]);
    const arcs = () => /^v2\.arcs (\d+)$/m.exec(a.get('counters'))?.[1];
    const before = arcs();
    for (const bad of [join(TMP, 'adir'), join(TMP, 'missing', 'x.vfmig')]) {
      const r = run('save', a.uuid, '-o', bad);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /cannot write the stream to/);
      assert.equal(arcs(), before, `the device changed state for -o ${bad}`);
    }
    assert.ok(statSync(join(TMP, 'adir')).isDirectory());
    // /dev/null stays a character device (it was replaced by a regular file).
    const toNull = run('save', a.uuid, '-o', '/dev/null');
    assert.equal(toNull.status, 0, toNull.stderr);
    assert.ok(statSync('/dev/null').isCharacterDevice(), '/dev/null was replaced');
    // A FIFO: its reader gets the whole stream, and it stays a FIFO.
    const fifo = join(TMP, 'fifo');
    rmSync(fifo, { force: true });
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const viaFifo = spawnSync(
      'bash',
      ['-c', `cat "${fifo}" > "${TMP}/from-fifo" & ${VFIO_MIG_COMMAND} save ${a.uuid} -o "${fifo}"; wait`],
      { encoding: 'utf8' },
    );
    assert.equal(viaFifo.status, 0, viaFifo.stderr);
    assert.ok(statSync(fifo).isFIFO(), 'the FIFO was replaced');
    assert.equal(run('verify', join(TMP, 'from-fifo')).status, 0);
  });

  test('a corrupt file on load exits 5, names the record, and resets the destination', () => {
    const a = make('v1');
    const b = make('v1');
    const file = join(TMP, 'c.vfmig');
    spawnSync('mkdir', ['-p', TMP]);
    a.set('mutate', '11');
    assert.equal(run('save', a.uuid, '-o', file).status, 0);
    const bytes = readFileSync(file);
    assert.ok(bytes.length > 100000);
    bytes[Math.floor(bytes.length / 2)] ^= 0x01;
    writeFileSync(file, bytes);
    const load = run('load', b.uuid, '-i', file);
    assert.equal(load.status, 5, load.stderr);
    assert.match(load.stderr, /record \d+/);
    assert.match(load.stderr, /reset/);
    assert.equal(run('state', b.uuid).stdout.trim(), 'RUNNING');
  });

  test('missing device exits 3; a device without migration exits 4 with a clear message', () => {
    const missing = run('save', '11111111-2222-3333-4444-555555555555', '-o', '/tmp/x', '--json');
    assert.equal(missing.status, 3);
    assert.equal(JSON.parse(missing.stderr).error.code, 'ERR_VFIO_NOT_FOUND');
    const none = make('none');
    const r = run('save', none.uuid, '-o', '/tmp/x');
    assert.equal(r.status, 4);
    assert.match(r.stderr, /no migration protocol/);
  });
});
