// Host tests of the memory async native I/O writes into, and of waits on pipes that must be cancellable (no kernel VFIO needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { fstatSync, mkdtempSync, rmSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../lib/native';
import { allocIoBuffer, allocIoBufferAsync, bufferView, dataView } from '../../lib/buffers';
import { FdSource } from '../../lib/migration/source';
import { mapFd } from '../../lib/mapping';
import { O_RDWR } from '../../lib/uapi';
import { binArgs } from '../support/cli-child';

const NATIVE = join(__dirname, '../../lib/native.js');

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  killedByTimeout: boolean;
  ms: number;
}

/**
 * Runs `script` in a child node whose stdin is a pipe the parent holds: `onReady` is called once
 * the child printed "ready" (with the child's stdin), and the child is killed after `timeoutMs`.
 */
function runChild(
  args: string[],
  onReady: (child: ReturnType<typeof spawn>) => void,
  timeoutMs = 10_000,
  readyOnSpawn = false,
): Promise<ChildResult> {
  return new Promise((resolve) => {
    const start = Date.now();
    const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let ready = false;
    let killedByTimeout = false;
    const timer = setTimeout(() => {
      killedByTimeout = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdin.on('error', () => undefined);
    if (readyOnSpawn) child.on('spawn', () => onReady(child));
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
      if (!ready && stdout.includes('ready\n')) {
        ready = true;
        onReady(child);
      }
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, killedByTimeout, ms: Date.now() - start });
    });
  });
}

function lastJson(out: string): Record<string, unknown> {
  const line = out.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return { unparsed: out };
  }
}

// The child starts a read on its stdin (a pipe with no data yet), transfers the buffer's memory
// away and lets the new owner be collected, then fills freshly allocated buffers of the same size
// with 0xaa (glibc hands the freed chunk back). Only then does the parent send 'X' bytes: a read
// that still targets the freed memory lands in one of the fillers (or corrupts the heap).
function detachScript(alloc: string, call: string): string {
  return `
    const { native } = require(${JSON.stringify(NATIVE)});
    const SIZE = 64 * 1024;
    let buf = ${alloc};
    const p = ${call}.then((n) => ({ n }), (e) => ({ code: e.code, message: e.message }));
    let moved;
    try { moved = structuredClone(buf.buffer, { transfer: [buf.buffer] }); } catch (e) { moved = e.name; }
    const detached = buf.byteLength === 0;
    moved = undefined;
    buf = undefined;
    setImmediate(() => {
      global.gc(); global.gc();
      setImmediate(() => {
        const fillers = [];
        for (let i = 0; i < 256; i++) fillers.push(Buffer.allocUnsafeSlow(SIZE).fill(0xaa));
        process.stdout.write('ready\\n');
        p.then((r) => {
          const corrupted = fillers.some((f) => f.includes(0x58));
          process.stdout.write(JSON.stringify({ ...r, detached, corrupted }) + '\\n');
        });
      });
    });
  `;
}

function sendX(child: ReturnType<typeof spawn>): void {
  child.stdin!.write(Buffer.alloc(64 * 1024, 'X'));
}

test('host test: a read into a JS buffer detached and collected while the read waits rejects with ERR_BUFFER_DETACHED, no freed memory written', async () => {
  for (const call of [
    'native.readAtLeastAsync(0, buf, 0, SIZE, SIZE)',
    'native.readAsync(0, buf, 0, SIZE)', // a pool job (pread, write and the mapping copies share its JobBytes)
  ]) {
    const r = await runChild(['--expose-gc', '-e', detachScript('Buffer.allocUnsafeSlow(SIZE)', call)], sendX);
    assert.equal(r.killedByTimeout, false, `${call}: the child hung\n${r.stderr}`);
    assert.equal(r.signal, null, `${call}: the child died of ${r.signal}\n${r.stderr}`);
    assert.equal(r.code, 0, `${call}: exit ${r.code}\n${r.stderr}`);
    const out = lastJson(r.stdout);
    assert.equal(out.detached, true, `${call}: the transfer detached the caller's buffer`);
    assert.equal(out.corrupted, false, `${call}: the read wrote into memory freed by the transfer`);
    assert.equal(out.code, 'ERR_BUFFER_DETACHED', `${call}: ${JSON.stringify(out)}`);
  }
});

test('host test: a read into native-owned I/O memory survives a transfer and collection of its buffer', async () => {
  const r = await runChild(
    ['--expose-gc', '-e', detachScript('native.allocBuffer(SIZE)', 'native.readAtLeastAsync(0, buf, 0, SIZE, SIZE)')],
    sendX,
  );
  assert.equal(r.killedByTimeout, false, r.stderr);
  assert.equal(r.signal, null, r.stderr);
  assert.equal(r.code, 0, r.stderr);
  const out = lastJson(r.stdout);
  assert.equal(out.corrupted, false);
  // Node copies external memory rather than moving it; if it ever moves it, the job's pin keeps it alive.
  assert.equal(out.n, 64 * 1024, JSON.stringify(out));
});

test('allocIoBuffer: zeroed native memory, usable by sync and async reads and writes; a plain Buffer gets the same bytes', async () => {
  const fd = native.memfdCreate('vfio-migration-test');
  try {
    const out = allocIoBuffer(8192);
    assert.equal(out.length, 8192);
    assert.ok(out.every((b: number) => b === 0));
    out.fill(7, 100, 200);
    assert.equal(await native.pwriteAsync(fd, out, 0, 8192, 0), 8192);
    const back = allocIoBuffer(8192);
    assert.equal(await native.preadAsync(fd, back.subarray(10), 0, 8000, 0), 8000);
    assert.deepEqual(back.subarray(10, 8010), out.subarray(0, 8000));
    // A plain Buffer goes through a bounce copy and gets the same bytes.
    const plain = Buffer.alloc(300);
    assert.equal(await native.preadAsync(fd, plain, 0, 300, 0), 300);
    assert.deepEqual(plain, out.subarray(0, 300));
    assert.equal(allocIoBuffer(0).length, 0);
    assert.throws(() => allocIoBuffer(-1), RangeError);
  } finally {
    native.close(fd);
  }
});

test('allocIoBufferAsync: zeroed native memory like allocIoBuffer, already resident (faulted in on the pool, not by its first writer)', async () => {
  const fd = native.memfdCreate('vfio-migration-test');
  try {
    const out = await allocIoBufferAsync(8192);
    assert.equal(out.length, 8192);
    assert.ok(out.every((b: number) => b === 0));
    out.fill(9, 0, 4096);
    assert.equal(await native.pwriteAsync(fd, out, 0, 8192, 0), 8192);
    const back = await allocIoBufferAsync(8192);
    assert.equal(await native.preadAsync(fd, back, 0, 8192, 0), 8192);
    assert.deepEqual(back, out);
  } finally {
    native.close(fd);
  }
  // Resident set growth: the lazy allocation costs its pages only when written, the async one
  // has them all when it resolves.
  const size = 64 << 20;
  const rss = () => process.memoryUsage().rss;
  let before = rss();
  const lazy = allocIoBuffer(size);
  const lazyGrowth = rss() - before;
  before = rss();
  const resident = await allocIoBufferAsync(size);
  const residentGrowth = rss() - before;
  assert.ok(lazyGrowth < 16 << 20, `allocIoBuffer grew the RSS by ${lazyGrowth} bytes before any write`);
  assert.ok(residentGrowth > 48 << 20, `allocIoBufferAsync grew the RSS by only ${residentGrowth} bytes`);
  assert.equal(lazy.length + resident.length, 2 * size);
  assert.equal((await allocIoBufferAsync(0)).length, 0);
  await assert.rejects(allocIoBufferAsync(-1), RangeError);
});

test('a write from a JS buffer copies its bytes at submission: detaching it afterwards does not change what is written', async () => {
  const fd = native.memfdCreate('vfio-migration-test');
  try {
    const src = Buffer.allocUnsafeSlow(4096).fill(0x5a);
    const p = native.pwriteAsync(fd, src, 0, 4096, 0);
    structuredClone(src.buffer, { transfer: [src.buffer] });
    assert.equal(await p, 4096);
    const back = Buffer.alloc(4096);
    native.pread(fd, back, 0, 4096, 0);
    assert.ok(back.every((b) => b === 0x5a));
  } finally {
    native.close(fd);
  }
});

test('pwriteAllAsync keeps its bounced copy of a JS buffer alive until the job has written it', async () => {
  // 64 MiB: malloc serves the bounce copy from its own mmap, so a copy freed at submission is
  // unmapped under the pool job (EFAULT or a short write) instead of silently still readable.
  const size = 64 << 20;
  const fd = native.memfdCreate('vfio-migration-test');
  try {
    const src = Buffer.allocUnsafeSlow(size);
    for (let i = 0; i < size; i += 4096) src.fill(i / 4096, i, i + 4096);
    await native.pwriteAllAsync(fd, src, 0, size, 0, fd, size, 8, 1n);
    const back = Buffer.allocUnsafeSlow(size);
    assert.equal(native.pread(fd, back, 0, size, 0), size);
    assert.ok(back.equals(src), 'the file holds the bytes of the buffer');
    assert.equal(native.preadWidth(fd, size, 8), 1n, 'then the register write');
  } finally {
    native.close(fd);
  }
});

test('pool reads into a JS buffer detached before they complete reject with ERR_BUFFER_DETACHED (pread, mapping copy)', async () => {
  const fd = native.memfdCreate('vfio-migration-test');
  native.pwrite(fd, Buffer.alloc(4096, 3), 0, 4096, 0); // mapFd refuses a range past the end of the file
  const map = mapFd(fd, 0n, 4096);
  try {
    const a = Buffer.allocUnsafeSlow(4096);
    const pread = native.preadAsync(fd, a, 0, 4096, 0);
    structuredClone(a.buffer, { transfer: [a.buffer] });
    await assert.rejects(pread, { code: 'ERR_BUFFER_DETACHED' });
    const b = Buffer.allocUnsafeSlow(4096);
    const copy = map.readInto(0, b, 0, 4096);
    structuredClone(b.buffer, { transfer: [b.buffer] });
    await assert.rejects(copy, { code: 'ERR_BUFFER_DETACHED' });
    // Not detached: the bounced bytes arrive.
    const c = Buffer.alloc(4096);
    await map.readInto(0, c, 0, 4096);
    assert.ok(c.every((x) => x === 3));
  } finally {
    map.unmap();
    native.close(fd);
  }
});

/** A FIFO opened O_RDWR: a pipe that never reaches end of input and has no data until written. */
function fifo(): { fd: number; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-fifo-'));
  const path = join(dir, 'fifo');
  execFileSync('mkfifo', [path]);
  const fd = native.open(path, O_RDWR);
  return { fd, done: () => rmSync(dir, { recursive: true, force: true }) };
}

function within<T>(p: Promise<T>, ms: number, what: string, unblock: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      unblock();
      reject(new Error(`${what} did not settle within ${ms} ms`));
    }, ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

test('host test: FdSource.close() cancels a read waiting on a pipe, and closes the fd only after the wait let go', async () => {
  const { fd, done } = fifo();
  const unblock = () => native.write(fd, Buffer.alloc(16, 1), 0, 16);
  try {
    const source = new FdSource(fd, { name: 'fifo', closeFd: true });
    const p = source.readAtLeast(allocIoBuffer(16), 0, 1, 16);
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    source.close();
    await within(
      assert.rejects(p, { code: 'ERR_MIGRATION_IO', errno: 'ECANCELED' }),
      1000,
      'the cancelled read',
      unblock,
    );
    assert.ok(Date.now() - t0 < 1000);
    assert.throws(() => fstatSync(fd), { code: 'EBADF' }, 'the fd is closed once the read let go');
  } finally {
    done();
  }
});

test('host test: reads waiting on pipes do not hold libuv pool threads', async () => {
  const { fd, done } = fifo();
  const size = Number(process.env.UV_THREADPOOL_SIZE ?? 4) + 2;
  const sources = Array.from({ length: size }, () => new FdSource(fd, { name: 'fifo' }));
  const unblock = () => native.write(fd, Buffer.alloc(size * 16, 1), 0, size * 16);
  try {
    const reads = sources.map((s) =>
      s.readAtLeast(allocIoBuffer(16), 0, 16, 16).then(
        () => 'read',
        (e: { errno?: string }) => e.errno,
      ),
    );
    await new Promise((r) => setTimeout(r, 100));
    await within(stat('/'), 1000, 'an fs call while pipe reads wait', unblock);
    for (const s of sources) s.close();
    assert.deepEqual(await Promise.all(reads), new Array<string>(size).fill('ECANCELED'));
  } finally {
    native.close(fd);
    done();
  }
});

test('host test: process.exit() returns while a read waits on a pipe', async () => {
  const script = `
    const { native } = require(${JSON.stringify(NATIVE)});
    native.readAtLeastAsync(0, Buffer.alloc(16), 0, 1, 16).then(() => {}, () => {});
    process.stdout.write('ready\\n');
    setTimeout(() => process.exit(7), 100);
  `;
  const r = await runChild(['-e', script], () => undefined, 5000);
  assert.equal(r.killedByTimeout, false, 'process.exit() hung');
  assert.equal(r.code, 7, r.stderr);
});

test('host test: a worker blocked in a pipe read terminates', async () => {
  const worker = `
    const { native } = require(${JSON.stringify(NATIVE)});
    native.readAtLeastAsync(0, Buffer.alloc(16), 0, 1, 16).then(() => {}, () => {});
    require('node:worker_threads').parentPort.postMessage('reading');
  `;
  const script = `
    const { Worker } = require('node:worker_threads');
    const w = new Worker(${JSON.stringify(worker)}, { eval: true });
    w.on('message', () => setTimeout(() => w.terminate().then(() => process.stdout.write('ready\\nterminated\\n')), 100));
  `;
  const r = await runChild(['-e', script], () => undefined, 5000);
  assert.equal(r.killedByTimeout, false, 'worker.terminate() hung');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /terminated/);
});

test('bufferView: a Buffer over the same memory as subarray gives, for native-owned and pooled buffers; ranges outside refused', () => {
  for (const base of [allocIoBuffer(64), Buffer.from('0123456789abcdef').subarray(3)]) {
    const v = bufferView(base, 2, 7);
    assert.ok(Buffer.isBuffer(v));
    assert.deepEqual([...v], [...base.subarray(2, 7)]);
    assert.equal(v.byteOffset, base.byteOffset + 2);
    v[0] = 0x5a;
    assert.equal(base[2], 0x5a, 'the same memory');
    assert.equal(bufferView(base, 4).length, base.length - 4);
    assert.equal(bufferView(base, 3, 3).length, 0);
    for (const [a, b] of [
      [-1, 2],
      [3, 2],
      [0, base.length + 1],
      [Number.NaN, 1],
    ] as const)
      assert.throws(() => bufferView(base, a, b), RangeError);
  }
});

test('host test: a worker ends with pool jobs in flight: the teardown waits for them, settles none, and the process exits cleanly', async () => {
  // A loop cannot close with work in flight (Node aborts on it): the addon's async cleanup hook
  // holds the worker's teardown until the pool has finished its jobs, then lets it go.
  const worker = `
    const { native } = require(${JSON.stringify(NATIVE)});
    const big = native.allocBuffer(64 << 20);
    for (let i = 0; i < 16; i++) native.crc32Async(big, 0, big.length).then(() => {}, () => {});
    require('node:worker_threads').parentPort.postMessage('queued');
  `;
  const script = `
    const { Worker } = require('node:worker_threads');
    let rounds = 0;
    const once = () => {
      const w = new Worker(${JSON.stringify(worker)}, { eval: true });
      w.on('message', () => w.terminate().then(() => (++rounds < 5 ? once() : process.stdout.write('ready\\nterminated\\n'))));
    };
    once();
  `;
  const r = await runChild(['-e', script], () => undefined, 20_000);
  assert.equal(r.killedByTimeout, false, 'worker.terminate() hung');
  assert.equal(r.signal, null, r.stderr);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /terminated/);
});

test('host test: an async call after many others settles every promise once, and leaves no job behind', async () => {
  const buf = native.allocBuffer(4096);
  const results = await Promise.all(Array.from({ length: 2000 }, (_, i) => native.crc32Async(buf, i % 4096, 0)));
  assert.deepEqual(new Set(results), new Set([0]));
  // A failing job rejects with the syscall error, and the addon keeps serving calls afterwards.
  await assert.rejects(native.readAsync(-1 >>> 1, buf, 0, 16), { code: 'EBADF', syscall: 'read' });
  assert.equal(await native.crc32Async(buf, 0, 0), 0);
});

test('host test: vfio-mig verify - waiting on a silent stdin pipe exits promptly on SIGINT', async () => {
  const r = await runChild(binArgs('verify', '-'), (child) => setTimeout(() => child.kill('SIGINT'), 500), 6000, true);
  assert.equal(r.killedByTimeout, false, `verify - ignored SIGINT\n${r.stderr}`);
  assert.equal(r.signal, null);
  assert.equal(r.code, 130, r.stderr);
  assert.ok(r.ms < 4000, `${r.ms} ms`);
});

test("dataView: covers exactly the view's bytes of a pooled buffer, so a field written through it lands at the right place and nowhere else", () => {
  const pool = Buffer.alloc(32, 0xee);
  const part = pool.subarray(5, 13);
  const fields = dataView(part);
  assert.equal(fields.byteLength, 8);
  fields.setUint32(4, 0x04030201, true);
  assert.deepEqual([...pool.subarray(9, 13)], [1, 2, 3, 4]);
  assert.equal(pool[8], 0xee);
  assert.equal(pool[13], 0xee);
  assert.throws(() => fields.getUint32(6, true), RangeError);
});
