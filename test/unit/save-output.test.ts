// Host tests (no kernel VFIO): where `save -o` writes, and that a failed commit returns the source (an in-process MODEL device) to RUNNING.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Device } from '../../lib/device';
import { Migration, MigrationError, V1Engine, verify } from '../../lib/migration';
import { V1ModelDevice } from '../models/v1-device';
import { OutputError, openOutput, sweepAbandoned, type Output } from '../../cli/output';
import { FileSink } from '../../lib/migration/stream/sink';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-output-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Writes raw bytes to an output, whichever sink it has (a FileSink for files, a WriteStream otherwise). */
async function writeTo(out: Output, data: string): Promise<void> {
  const sink = out.sink;
  if (sink instanceof FileSink) return sink.write([Buffer.from(data)]);
  await new Promise<void>((resolve, reject) => sink.write(data, (err) => (err ? reject(err) : resolve())));
}

async function writeAll(path: string, data: string) {
  const out = openOutput(path);
  await writeTo(out, data);
  await out.commit();
  return out;
}

test('host: a regular file is replaced atomically, keeping its mode; no temporary file remains', async () => {
  const file = join(dir, 'plain.vfmig');
  writeFileSync(file, 'old', { mode: 0o640 });
  const out = await writeAll(file, 'new contents');
  assert.equal(out.kind, 'atomic');
  assert.equal(readFileSync(file, 'utf8'), 'new contents');
  assert.equal(statSync(file).mode & 0o777, 0o640);
  assert.deepEqual(
    readdirSync(dir).filter((n) => n.includes('plain')),
    ['plain.vfmig'],
  );
});

test('host: the commit renames and fsyncs off the JS thread (replacing a large file frees its pages inside rename())', async (t) => {
  // In the guest, rename() over a 256 MiB file took 107-113 ms: with renameSync the event loop
  // (signals, progress) stopped for that long. The synchronous calls are made to fail here.
  const fs = (await import('node:fs')).default;
  for (const name of ['renameSync', 'fsyncSync'] as const)
    t.mock.method(fs, name, () => {
      throw new Error(`${name} on the JS thread`);
    });
  const file = join(dir, 'replaced.vfmig');
  writeFileSync(file, 'old');
  await writeAll(file, 'new');
  assert.equal(readFileSync(file, 'utf8'), 'new');
});

test('host: a symbolic link stays a link, and the file it names gets the stream', async () => {
  const target = join(dir, 'target.vfmig');
  const link = join(dir, 'link.vfmig');
  writeFileSync(target, 'old');
  symlinkSync(target, link);
  await writeAll(link, 'through the link');
  assert.ok(lstatSync(link).isSymbolicLink(), 'the link was replaced by a file');
  assert.equal(readFileSync(target, 'utf8'), 'through the link');
});

test('host: a character device is written in place, never replaced (a mknod copy of /dev/null)', async (t) => {
  const node = join(dir, 'null');
  const made = spawnSync('mknod', [node, 'c', '1', '3']);
  if (made.status !== 0) return t.skip(`mknod needs root (${made.stderr})`);
  const out = await writeAll(node, 'discarded');
  assert.equal(out.kind, 'direct');
  assert.ok(statSync(node).isCharacterDevice(), 'the device node was replaced by a regular file');
});

test('host: a FIFO is written in place and its reader gets every byte; without a reader it is refused at once', async () => {
  const fifo = join(dir, 'fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  assert.throws(
    () => openOutput(fifo),
    (e: OutputError) => e instanceof OutputError && /no reader/.test(e.message),
  );
  const reader = spawn('cat', [fifo]);
  let got = '';
  reader.stdout.on('data', (c) => (got += c));
  const closed = new Promise((resolve) => reader.on('close', resolve));
  // Wait for cat to open its end.
  for (let i = 0; i < 200; i++) {
    try {
      const out = openOutput(fifo);
      assert.equal(out.kind, 'direct');
      await writeTo(out, 'via fifo');
      await out.commit();
      break;
    } catch (err) {
      if (!(err instanceof OutputError) || i === 199) throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  await closed;
  assert.equal(got, 'via fifo');
  assert.ok(statSync(fifo).isFIFO(), 'the FIFO was replaced by a regular file');
});

test('host: a directory, a missing directory and a dangling link are refused before anything is written', () => {
  mkdirSync(join(dir, 'adir'));
  assert.throws(() => openOutput(join(dir, 'adir')), /is a directory/);
  assert.throws(() => openOutput(join(dir, 'missing', 'x.vfmig')), /cannot create a file in .*missing.*ENOENT/);
  symlinkSync(join(dir, 'nowhere'), join(dir, 'dangling'));
  assert.throws(() => openOutput(join(dir, 'dangling')), /symbolic link to a missing file/);
  assert.throws(() => openOutput(join(dir, 'nul\0.vfmig')), /NUL byte/);
  assert.ok(!existsSync(join(dir, 'nowhere')));
});

test('host: discard removes the temporary file at once and leaves an existing file untouched', async () => {
  const file = join(dir, 'keep.vfmig');
  writeFileSync(file, 'previous');
  const out = openOutput(file);
  await writeTo(out, 'partial');
  out.discard();
  out.discard();
  assert.deepEqual(
    readdirSync(dir).filter((n) => n.includes('keep')),
    ['keep.vfmig'],
  );
  assert.equal(readFileSync(file, 'utf8'), 'previous');
});

test('host: the next save sweeps temporary files of dead writers on this host, not live or foreign ones', () => {
  const sub = join(dir, 'sweep');
  mkdirSync(sub);
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  const deadPid = Number(dead.stdout);
  const host = hostname();
  const names = {
    dead: `.a.vfmig.vfio-mig-${host}-${deadPid}-0123abcd.tmp`,
    live: `.a.vfmig.vfio-mig-${host}-${process.pid}-0123abcd.tmp`,
    foreign: `.a.vfmig.vfio-mig-otherhost-${deadPid}-0123abcd.tmp`,
    unrelated: `.a.vfmig.${deadPid}.0123abcd.tmp`,
  };
  for (const n of Object.values(names)) writeFileSync(join(sub, n), '');
  assert.deepEqual(sweepAbandoned(sub), [names.dead]);
  assert.deepEqual(readdirSync(sub).sort(), [names.foreign, names.live, names.unrelated].sort());
});

test('model: a commit that fails after the stream is complete fails the save and returns the source to RUNNING', async () => {
  const dev = new V1ModelDevice({ stateSize: 10000, chunkSize: 4096 });
  const asDevice = dev as unknown as Device;
  const mig = new Migration(asDevice, new V1Engine(asDevice, dev.info));
  const chunks: Buffer[] = [];
  let committed = 0;
  await assert.rejects(
    mig.save(async (c) => void chunks.push(Buffer.from(c)), {
      leave: 'stopped',
      commit: async () => {
        committed++;
        throw Object.assign(new Error('rename EISDIR'), { code: 'EISDIR' });
      },
    }),
    (e: MigrationError) => e.code === 'ERR_MIGRATION_IO' && /EISDIR/.test(e.message) && e.recovery === 'running',
  );
  assert.equal(committed, 1, 'commit runs once, after the trailer');
  assert.equal(dev.deviceState, 1, 'the source is RUNNING again');
  // The stream itself was complete when the commit ran.
  const r = await verify(
    (async function* () {
      yield* chunks;
    })(),
  );
  assert.ok(r.records > 0n);
});

test('model: an abort while the save waits on a FIFO nobody drains ends the save (aborted, source RUNNING, no hang)', async () => {
  const fifo = join(dir, 'stalled.fifo');
  spawnSync('mkfifo', [fifo]);
  // A reader that opens the FIFO and never reads: the save's writes fill the pipe, then wait.
  const reader = spawn('sh', ['-c', `exec 3<"${fifo}"; sleep 30`], { stdio: 'ignore' });
  try {
    await new Promise((resolve) => setTimeout(resolve, 200));
    const controller = new AbortController();
    const out = openOutput(fifo, { signal: controller.signal });
    assert.equal(out.kind, 'direct');
    // 4 MiB of state: far more than the pipe holds, even grown to 1 MiB.
    const dev = new V1ModelDevice({ stateSize: 4 << 20, chunkSize: 256 << 10 });
    const asDevice = dev as unknown as Device;
    const mig = new Migration(asDevice, new V1Engine(asDevice, dev.info));
    const saving = mig.save(out.sink, { leave: 'stopped', signal: controller.signal });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const t0 = Date.now();
    controller.abort(new Error('interrupted by SIGINT'));
    await assert.rejects(saving, (e: MigrationError) => e.code === 'ERR_MIGRATION_ABORTED' && e.recovery === 'running');
    assert.ok(Date.now() - t0 < 5000, 'the abort did not wait for the reader');
    assert.equal(dev.deviceState, 1, 'the source is RUNNING again');
    out.discard();
  } finally {
    reader.kill('SIGKILL');
  }
});
