// Integration tests (VM guest): vfio-mig save and load killed (SIGKILL) or signalled at chosen moments, then the devices checked.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { PHASE_STOP_COPY } from '../../lib/migration/stream';
import { KIND_TRAILER } from '../../lib/migration/stream/format';
import { V2_READ_SIZE } from '../../lib/migration/v2';
import { TestDevice, needsDriver, type Kind } from '../support/test-driver';
import { binArgs, cliChild, type CliChild as Child } from '../support/cli-child';
import { hasPrecopy } from './helpers';

const TMP = '/tmp/vfio-mig-process-faults';
const run = (...args: string[]) => spawnSync(process.execPath, binArgs(...args), { encoding: 'utf8' });
const TEMP_FILE = /^\..+\.vfio-mig-.+-\d+-[0-9a-f]{8}\.tmp$/;

const cli = cliChild;

async function kill9(c: Child): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  c.child.kill('SIGKILL');
  return c.exited;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Offsets in a stream: where each record starts (with its phase), and where the trailer starts. */
function recordOffsets(bytes: Buffer): { records: { at: number; phase: number; end: number }[]; trailer: number } {
  let at = 16 + bytes.readUInt32LE(12) + 4;
  const records: { at: number; phase: number; end: number }[] = [];
  while (at + 32 <= bytes.length) {
    if (bytes[at] === KIND_TRAILER) return { records, trailer: at };
    const end = at + 32 + Number(bytes.readBigUInt64LE(at + 16));
    records.push({ at, phase: bytes.readUInt32LE(at + 4), end });
    at = end;
  }
  throw new Error('no trailer in the stream');
}

/** The device, opened anew (the killed process's fd is gone), is RUNNING. */
function assertRunning(d: TestDevice, what: string): void {
  const state = run('state', d.uuid);
  assert.equal(state.status, 0, state.stderr);
  assert.equal(state.stdout.trim(), 'RUNNING', `${what}: a new open finds the device ${state.stdout.trim()}`);
}

describe('vfio-mig killed or signalled at chosen moments', { skip: needsDriver }, () => {
  const devices: TestDevice[] = [];
  const make = (kind: Kind, stateSize: number, dirtyRate = 0) => {
    const d = new TestDevice(kind, { stateSize, chunkSize: 64 << 10, dirtyRate });
    devices.push(d);
    return d;
  };
  before(() => {
    rmSync(TMP, { recursive: true, force: true });
    mkdirSync(TMP, { recursive: true });
  });
  after(() => {
    devices.forEach((d) => d.remove());
    rmSync(TMP, { recursive: true, force: true });
  });

  /** A fresh destination of `kind` loads `file` and gets `checksum`: the device is usable. */
  function assertLoadable(kind: Kind, size: number, file: string, checksum: string, what: string): void {
    const b = make(kind, size);
    const load = run('load', b.uuid, '-i', file);
    assert.equal(load.status, 0, `${what}: ${load.stderr}`);
    assert.equal(b.get('checksum'), checksum, `${what}: the loaded state`);
  }

  // v2 pre-copy needs the kernel's PRE_COPY (6.2+); the test driver's v1 has pre-copy on every kernel.
  const precopyKind: Kind = hasPrecopy ? 'v2' : 'v1-trapped';

  test(
    `save -o FILE killed in pre-copy (${precopyKind}, dirty): the source runs, the next save sweeps the temporary file`,
    { timeout: 120_000 },
    async () => {
      const a = make(precopyKind, 8 << 20, 4 << 20);
      a.set('mutate', '21');
      const file = join(TMP, 'pre.vfmig');
      const c = cli(['save', a.uuid, '-o', file, '--precopy-iterations', '1000', '--precopy-threshold', '0']);
      await c.stderrMatch(/pre-copy #2:/); // one pass done, the next under way
      const r = await kill9(c);
      assert.equal(r.signal, 'SIGKILL', `the save ended before the kill: ${r.stderr}`);
      assert.ok(!existsSync(file), 'nothing under the final name');
      const left = readdirSync(TMP).filter((n) => TEMP_FILE.test(n) && n.startsWith('.pre.vfmig'));
      assert.equal(left.length, 1, `the killed save's temporary file: ${readdirSync(TMP).join(' ')}`);
      assertRunning(a, 'killed in pre-copy');
      // The state keeps changing while the device runs: stop the changes, then prove it is intact by a round trip.
      a.set('dirty_rate', 0);
      const sum = a.get('checksum');
      const again = run('save', a.uuid, '-o', file);
      assert.equal(again.status, 0, again.stderr);
      assert.deepEqual(
        readdirSync(TMP).filter((n) => TEMP_FILE.test(n)),
        [],
        'the next save into the directory swept the temporary file of the killed one',
      );
      assert.equal(a.get('checksum'), sum, 'the source state is unchanged');
      assertLoadable(precopyKind, 8 << 20, file, sum, 'after a kill in pre-copy');
    },
  );

  test(
    'save -o FILE killed in stop-and-copy (v1-trapped, 16 MiB): the source runs with its state unchanged',
    { timeout: 120_000 },
    async () => {
      const a = make('v1-trapped', 16 << 20);
      a.set('mutate', '22');
      const sum = a.get('checksum');
      const file = join(TMP, 'stop.vfmig');
      const c = cli(['save', a.uuid, '-o', file]);
      await c.stderrMatch(/stop-copy:/);
      await sleep(100); // some records out, the device still in stop-and-copy
      const r = await kill9(c);
      assert.equal(r.signal, 'SIGKILL', `the save ended before the kill: ${r.stderr}`);
      assert.ok(!existsSync(file), 'nothing under the final name');
      assertRunning(a, 'killed in stop-and-copy');
      assert.equal(a.get('checksum'), sum, 'the source state is unchanged');
      const again = run('save', a.uuid, '-o', file);
      assert.equal(again.status, 0, again.stderr);
      assert.deepEqual(
        readdirSync(TMP).filter((n) => TEMP_FILE.test(n)),
        [],
        'temporary files swept',
      );
      assertLoadable('v1-trapped', 16 << 20, file, sum, 'after a kill in stop-and-copy');
    },
  );

  test(
    'save -o - killed between records (its reader stalled mid-stream): the source runs unchanged',
    { timeout: 120_000 },
    async () => {
      const a = make('v2', 16 << 20);
      a.set('mutate', '23');
      const sum = a.get('checksum');
      const c = cli(['save', a.uuid, '-o', '-']);
      let got = 0;
      const chunks: Buffer[] = [];
      await new Promise<void>((resolve) => {
        c.child.stdout!.on('data', (d: Buffer) => {
          chunks.push(d);
          got += d.length;
          // Stop reading: the writer blocks on the full pipe, between two records of stop-and-copy.
          if (got < 1 << 20) return;
          c.child.stdout!.pause();
          resolve();
        });
      });
      await sleep(300);
      const r = await kill9(c);
      assert.equal(r.signal, 'SIGKILL', `the save ended before the kill: ${r.stderr}`);
      assertRunning(a, 'killed between records');
      assert.equal(a.get('checksum'), sum, 'the source state is unchanged');
      // What came out before the kill is no complete stream.
      const partial = join(TMP, 'partial.vfmig');
      writeFileSync(partial, Buffer.concat(chunks));
      assert.equal(run('verify', partial).status, 5);
    },
  );

  test('save -o - killed as its trailer appears: the source runs unchanged', { timeout: 120_000 }, async () => {
    const a = make('v2', 4 << 20);
    a.set('mutate', '24');
    const sum = a.get('checksum');
    const c = cli(['save', a.uuid, '-o', '-']);
    let bytes = Buffer.alloc(0);
    await new Promise<void>((resolve) => {
      c.child.stdout!.on('data', (d: Buffer) => {
        bytes = Buffer.concat([bytes, d]);
        try {
          recordOffsets(bytes);
        } catch {
          return; // no trailer yet
        }
        c.child.kill('SIGKILL');
        resolve();
      });
      c.child.on('exit', () => resolve());
    });
    const r = await c.exited;
    // The kill races the end of the process (the trailer is its last write): either way the source must be safe.
    assert.ok(r.signal === 'SIGKILL' || r.code === 0, `exit ${r.code} ${r.signal}: ${r.stderr}`);
    console.log(
      `save killed at the trailer: ${r.signal === 'SIGKILL' ? 'the kill landed' : 'the save finished first'}`,
    );
    assertRunning(a, `at the trailer (${r.signal ?? 'finished first'})`);
    assert.equal(a.get('checksum'), sum, 'the source state is unchanged');
  });

  describe('load -i - killed at chosen points of the stream it is fed', () => {
    // Three v2 reads' worth: the stream has several pre-copy records before its stop-and-copy one.
    const LOAD_STATE = 3 * V2_READ_SIZE;
    let file: string;
    let stream: Buffer;
    let sum: string;
    let offsets: ReturnType<typeof recordOffsets>;
    before(() => {
      const a = make(precopyKind, LOAD_STATE);
      a.set('mutate', '25');
      sum = a.get('checksum');
      file = join(TMP, 'load-src.vfmig');
      const save = run('save', a.uuid, '-o', file, '--precopy-iterations', '2');
      assert.equal(save.status, 0, save.stderr);
      stream = readFileSync(file);
      offsets = recordOffsets(stream);
    });

    const points: [string, () => number][] = [
      ['in the middle of a pre-copy record', () => offsets.records[1]!.at + 100],
      ['between pre-copy records', () => offsets.records[2]!.at],
      [
        'in the middle of a stop-and-copy record',
        () => offsets.records.find((r) => r.phase === PHASE_STOP_COPY)!.at + 40,
      ],
      [
        'between stop-and-copy records',
        () => {
          // A small state leaves few records for stop-and-copy: the boundary before the second, or the first.
          const stop = offsets.records.filter((r) => r.phase === PHASE_STOP_COPY);
          return (stop[1] ?? stop[0]!).at;
        },
      ],
      ['at the trailer (every record written, the trailer not yet)', () => offsets.trailer],
    ];
    for (const [where, cut] of points) {
      test(`killed ${where}: a new open finds RUNNING, and a fresh load succeeds`, { timeout: 120_000 }, async () => {
        const b = make(precopyKind, LOAD_STATE);
        const c = cli(['load', b.uuid, '-i', '-'], ['pipe', 'pipe', 'pipe']);
        c.child.stdin!.on('error', () => undefined);
        c.child.stdin!.write(stream.subarray(0, cut()));
        // The loader has written the records it got (progress says resuming) and waits for more.
        await c.stderrMatch(/resuming:/);
        await sleep(500);
        const r = await kill9(c);
        assert.equal(r.signal, 'SIGKILL', `the load ended before the kill: ${r.stderr}`);
        assertRunning(b, `load killed ${where}`);
        const load = run('load', b.uuid, '-i', file);
        assert.equal(load.status, 0, load.stderr);
        assert.equal(b.get('checksum'), sum, 'the fresh load restored the state');
      });
    }

    test('load -i - stalled: SIGINT exits 130 and resets the destination', { timeout: 120_000 }, async () => {
      const b = make(precopyKind, LOAD_STATE);
      const resets = b.counters().resets!;
      const c = cli(['load', b.uuid, '-i', '-'], ['pipe', 'pipe', 'pipe']);
      c.child.stdin!.on('error', () => undefined);
      c.child.stdin!.write(stream.subarray(0, offsets.records[2]!.at + 10));
      await c.stderrMatch(/resuming:/);
      await sleep(300);
      c.child.kill('SIGINT');
      const t = Date.now();
      const r = await c.exited;
      assert.equal(r.code, 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      assert.ok(Date.now() - t < 5000, `exited ${Date.now() - t} ms after the signal`);
      assert.match(r.stderr, /interrupted by SIGINT/);
      assert.ok(b.counters().resets! > resets, `the destination was not reset: ${r.stderr}`);
      assertRunning(b, 'after an interrupted load');
      const load = run('load', b.uuid, '-i', file);
      assert.equal(load.status, 0, load.stderr);
      assert.equal(b.get('checksum'), sum);
    });
  });

  test(
    'save -o FIFO stalled: the first SIGINT drops the stalled write and ends the save (130) without the reader; the source runs',
    { timeout: 120_000 },
    async () => {
      const a = make('v2', 16 << 20);
      a.set('mutate', '26');
      const sum = a.get('checksum');
      const fifo = join(TMP, 'stall.fifo');
      assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
      // The test is the FIFO's reader: it takes the first bytes, then stops, so the save's write
      // waits for it; the abort drops that write (the FIFO is written by the event loop).
      const reader = spawn('sh', ['-c', `exec 3<"${fifo}"; head -c 100000 <&3 >/dev/null; sleep 600`], {
        stdio: 'ignore',
      });
      try {
        const c = cli(['save', a.uuid, '-o', fifo]);
        await c.stderrMatch(/stop-copy:/);
        await sleep(500);
        assert.equal(c.child.exitCode, null, 'the save ended although its reader stalled');
        const t = Date.now();
        c.child.kill('SIGINT');
        const r = await c.exited;
        assert.equal(r.code, 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
        assert.ok(Date.now() - t < 10_000, `the SIGINT took ${Date.now() - t} ms to end the save`);
        assert.match(r.stderr, /aborted/);
        assert.doesNotMatch(r.stderr, /SIGINT again/, 'one signal was enough');
        assertRunning(a, 'after one SIGINT');
        assert.equal(a.get('checksum'), sum);
      } finally {
        reader.kill('SIGKILL');
        rmSync(fifo, { force: true });
      }
    },
  );

  test(
    'save -o - to a reader that stalls: signals are still handled (a third SIGINT ends it at once); the source runs',
    { timeout: 120_000 },
    async () => {
      const a = make('v2', 16 << 20);
      a.set('mutate', '30');
      const sum = a.get('checksum');
      const c = cli(['save', a.uuid, '-o', '-']);
      let got = 0;
      await new Promise<void>((resolve) => {
        c.child.stdout!.on('data', (d: Buffer) => {
          got += d.length;
          if (got < 1 << 20) return;
          c.child.stdout!.pause(); // the reader stalls; the pipe fills
          resolve();
        });
      });
      await sleep(500);
      for (let i = 0; i < 3 && c.child.exitCode === null; i++) {
        c.child.kill('SIGINT');
        await sleep(300);
      }
      const t = Date.now();
      const r = await Promise.race([c.exited, sleep(5000).then(() => null)]);
      if (r === null) c.child.kill('SIGKILL');
      assert.ok(r, `three SIGINTs left the save blocked on its stalled stdout ${Date.now() - t} ms later`);
      assert.ok(r.signal === 'SIGINT' || r.code === 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      assert.match(r.stderr, /interrupted by SIGINT|SIGINT again/);
      assertRunning(a, 'after SIGINTs with a stalled stdout');
      assert.equal(a.get('checksum'), sum);
    },
  );

  test(
    'save -o FILE: three quick SIGINTs end it (130), no file and no temporary file left, the source runs',
    { timeout: 120_000 },
    async () => {
      const a = make('v1-trapped', 16 << 20);
      a.set('mutate', '29');
      const sum = a.get('checksum');
      const file = join(TMP, 'thrice.vfmig');
      const c = cli(['save', a.uuid, '-o', file]);
      await c.stderrMatch(/stop-copy:/);
      // Whether the recovery or the third signal ends the process first, nothing may be left behind.
      for (let i = 0; i < 3 && c.child.exitCode === null; i++) {
        c.child.kill('SIGINT');
        await sleep(30);
      }
      const r = await c.exited;
      assert.ok(r.signal === 'SIGINT' || r.code === 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      assert.ok(!existsSync(file), 'nothing under the final name');
      assert.deepEqual(
        readdirSync(TMP).filter((n) => n.includes('thrice')),
        [],
        'the temporary file was removed',
      );
      assertRunning(a, 'after three SIGINTs');
      assert.equal(a.get('checksum'), sum);
    },
  );

  test(
    'save -o - whose reader goes away (SIGPIPE/EPIPE): exit 1, the source runs unchanged',
    { timeout: 120_000 },
    async () => {
      const a = make('v2', 16 << 20);
      a.set('mutate', '27');
      const sum = a.get('checksum');
      const c = cli(['save', a.uuid, '-o', '-']);
      await new Promise<void>((resolve) => c.child.stdout!.once('data', () => resolve()));
      c.child.stdout!.destroy(); // the downstream end of the pipe is closed
      const r = await c.exited;
      assert.equal(r.signal, null, `killed by ${r.signal}`);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /EPIPE|broken pipe|closed/i);
      assertRunning(a, 'after EPIPE');
      assert.equal(a.get('checksum'), sum);
    },
  );

  for (const signal of ['SIGTERM', 'SIGHUP'] as const) {
    test(
      `save -o FILE: ${signal} exits 130 like SIGINT, source RUNNING, no file left`,
      { timeout: 120_000 },
      async () => {
        const a = make('v1-trapped', 16 << 20);
        a.set('mutate', '28');
        const sum = a.get('checksum');
        const file = join(TMP, `${signal}.vfmig`);
        const c = cli(['save', a.uuid, '-o', file]);
        await c.stderrMatch(/stop-copy:/);
        c.child.kill(signal);
        const r = await c.exited;
        assert.equal(r.code, 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
        assert.match(r.stderr, new RegExp(`interrupted by ${signal}`));
        assert.deepEqual(
          readdirSync(TMP).filter((n) => n.includes(signal)),
          [],
        );
        assertRunning(a, `after ${signal}`);
        assert.equal(a.get('checksum'), sum);
      },
    );
  }
});
