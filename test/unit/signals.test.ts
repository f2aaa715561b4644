// Host-side tests of vfio-mig under signals where no device is needed: verify of a file and of a stalled pipe, exit codes.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';

import { StreamEncoder } from '../../lib/migration/stream';
import { binArgs } from '../support/cli-child';

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  /** Milliseconds from the first signal sent to the exit. */
  afterSignalMs: number;
}

// Children still running when a test ends (it failed midway) are killed, so they cannot hold the suite.
const children = new Set<ChildProcess>();

function start(args: string[]): { child: ChildProcess; exited: Promise<Exit>; signalled: (t: number) => void } {
  const child = spawn(process.execPath, binArgs(...args), { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  child.stdout!.resume();
  let signalledAt = 0;
  const exited = new Promise<Exit>((resolve) =>
    child.on('exit', (code, signal) =>
      resolve({ code, signal, stderr, afterSignalMs: signalledAt ? Date.now() - signalledAt : -1 }),
    ),
  );
  return { child, exited, signalled: (t) => (signalledAt ||= t) };
}

/** Waits until the child has read past `offset` of the file open as `path` (its fd's position). */
async function readPast(pid: number, path: string, offset: number, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== path) continue;
        const pos = Number(/^pos:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))?.[1]);
        if (pos > offset) return;
      }
    } catch {
      /* the fd is not open yet */
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`pid ${pid} did not read ${path} past ${offset} within ${timeoutMs} ms`);
}

/**
 * Waits until the child catches SIGHUP, SIGINT and SIGTERM (its handlers are installed before
 * it reads anything: a signal sent earlier would kill it by the default action), then gives it
 * a moment to block in its read of stdin.
 */
async function settle(pid: number, timeoutMs = 30_000): Promise<void> {
  const wanted = (1n << 0n) | (1n << 1n) | (1n << 14n); // SIGHUP (1), SIGINT (2), SIGTERM (15)
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const caught = /^SigCgt:\s+([0-9a-f]+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    if (caught && (BigInt(`0x${caught}`) & wanted) === wanted) {
      await new Promise((r) => setTimeout(r, 200));
      return;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`pid ${pid} did not install its signal handlers within ${timeoutMs} ms`);
}

describe('vfio-mig under signals (no device)', () => {
  let dir: string;
  let big: string;
  let bigSize = 0;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-mig-sig-'));
    big = join(dir, 'many.vfmig');
    // Many small records: verification costs per record, so the file takes the CLI about a second
    // to verify whatever the page cache does (large records verify at memory speed).
    const fd = openSync(big, 'w');
    const parts: Buffer[] = [];
    let pending = 0;
    const enc = new StreamEncoder(
      async (c) => {
        parts.push(Buffer.from(c));
        pending += c.length;
        if (pending >= 4 << 20) {
          bigSize += writeSync(fd, Buffer.concat(parts));
          parts.length = pending = 0;
        }
      },
      { protocol: 'v1', device: { kind: 'mdev', mdevType: 'x-v1' } },
    );
    const payload = Buffer.alloc(16, 0x5a);
    for (let i = 0; i < 600_000; i++) await enc.writeRecord(0, payload);
    await enc.finish();
    bigSize += writeSync(fd, Buffer.concat(parts));
    closeSync(fd);
  });
  afterEach(() => {
    for (const c of children) c.kill('SIGKILL');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('one SIGINT during verify FILE (a large regular file) aborts promptly with exit 130', async () => {
    const { child, exited, signalled } = start(['verify', big]);
    await readPast(child.pid!, big, 0);
    signalled(Date.now());
    child.kill('SIGINT');
    const r = await exited;
    assert.equal(r.code, 130, `exit ${r.code} ${r.signal} (0 means the signal was ignored): ${r.stderr}`);
    assert.match(r.stderr, /verify .*many\.vfmig: interrupted by SIGINT\n/);
    assert.doesNotMatch(r.stderr, /Error: interrupted/, 'the reason is printed as a message, not an Error');
    assert.ok(r.afterSignalMs < 5000, `exited ${r.afterSignalMs} ms after the signal (file of ${bigSize} bytes)`);
  });

  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    it(`verify - on a pipe that stalls mid-stream: ${signal} exits 130 promptly`, async () => {
      const { child, exited, signalled } = start(['verify', '-']);
      // A header and part of a record, then nothing: the reader waits for the rest.
      child.stdin!.write(readFileSync(big).subarray(0, 1000));
      await settle(child.pid!);
      signalled(Date.now());
      child.kill(signal);
      const r = await exited;
      child.stdin!.destroy();
      assert.equal(r.code, 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`interrupted by ${signal}`));
      assert.ok(r.afterSignalMs < 5000, `exited ${r.afterSignalMs} ms after the signal`);
    });
  }

  it('verify - on a pipe that never delivers a byte: SIGINT exits 130', async () => {
    const { child, exited, signalled } = start(['verify', '-']);
    await settle(child.pid!);
    signalled(Date.now());
    child.kill('SIGINT');
    const r = await exited;
    child.stdin!.destroy();
    assert.equal(r.code, 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
    assert.ok(r.afterSignalMs < 5000, `exited ${r.afterSignalMs} ms after the signal`);
  });

  it('SIGPIPE is not fatal: verify with its stdout closed still exits with its verdict', async () => {
    const { child, exited } = start(['verify', big]);
    child.stdout!.destroy(); // the reader of our stdout is gone before anything is printed
    const r = await exited;
    assert.equal(r.signal, null, 'killed by a signal');
    assert.equal(r.code, 0, r.stderr);
  });
});
