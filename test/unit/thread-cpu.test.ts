// Host tests (real procfs) of threadCpuNs: the calling thread's on-CPU time from /proc/thread-self/schedstat.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpuMsBetween, parseSchedstat, threadCpuNs } from '../../lib/thread-cpu';

test('parseSchedstat takes the on-CPU field of a schedstat line, and nothing else', () => {
  assert.equal(parseSchedstat('653055 1779407 2\n'), 653055n);
  assert.equal(parseSchedstat('18446744073709551615 0 1'), 18446744073709551615n);
  for (const bad of ['', '\n', '1 2', '1 2 3 4', 'x 1 2', '-1 2 3', ' 1 2 3'])
    assert.equal(parseSchedstat(bad), undefined, JSON.stringify(bad));
});

test('threadCpuNs: undefined where the file is missing or not a schedstat line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-schedstat-'));
  try {
    assert.equal(threadCpuNs(join(dir, 'missing')), undefined);
    writeFileSync(join(dir, 'other'), 'not a schedstat line\n');
    assert.equal(threadCpuNs(join(dir, 'other')), undefined);
    writeFileSync(join(dir, 'line'), '42 7 1\n');
    assert.equal(threadCpuNs(join(dir, 'line')), 42n);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(
  'threadCpuNs counts this thread running, not waiting',
  { skip: existsSync('/proc/thread-self/schedstat') ? false : 'no /proc/thread-self/schedstat here' },
  async () => {
    const a = threadCpuNs()!;
    assert.equal(typeof a, 'bigint');
    // waiting: 50 ms of sleep adds far less than 50 ms on a CPU
    await new Promise((r) => setTimeout(r, 50));
    const b = threadCpuNs()!;
    assert.ok(b >= a);
    assert.ok(b - a < 40_000_000n, `${b - a} ns on a CPU while asleep`);
    // running: a busy loop until 5 ms more on a CPU are counted (2 s at most, a loaded host)
    const until = Date.now() + 2000;
    let c = b;
    while (c - b < 5_000_000n && Date.now() < until) c = threadCpuNs()!;
    assert.ok(c - b >= 5_000_000n, `only ${c - b} ns counted in 2 s of a busy loop`);
  },
);

test('cpuMsBetween: milliseconds with one decimal, undefined without both readings or backwards', () => {
  assert.equal(cpuMsBetween(1_000_000n, 13_460_000n), 12.5);
  assert.equal(cpuMsBetween(0n, 0n), 0);
  assert.equal(cpuMsBetween(undefined, 5n), undefined);
  assert.equal(cpuMsBetween(5n, undefined), undefined);
  assert.equal(cpuMsBetween(10n, 5n), undefined);
});
