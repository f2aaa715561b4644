// After the integration suite, in the same guest (run-suite.ts runs this directory once the suite has
// ended): vfio_mig_test has no leak (live_allocs 0), unloads and reloads cleanly, and the kernel log
// has no WARN/BUG/oops/lockdep report.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { guestKernel } from '../integration/helpers';
import { kernelLogProblems, readDmesg } from '../support/kernel-log';
import {
  DRIVER,
  instancesOfDriver,
  liveAllocs,
  needsDriver,
  PARENT_DIR,
  removeAll,
  TestDevice,
} from '../support/test-driver';
import { cleanupClient } from '../support/vmtc';

/** The project root, from dist/test/after-suite/. */
const ROOT = resolve(__dirname, '..', '..', '..');

describe('vfio_mig_test: no leaks, clean unload, quiet kernel log', { skip: needsDriver }, () => {
  after(() => {
    removeAll();
    cleanupClient();
  });

  test('live_allocs returns to zero once every instance is removed', () => {
    const before = liveAllocs();
    const list = [new TestDevice('v1', { stateSize: 65536 }), new TestDevice('v2', { stateSize: 65536 })];
    for (const d of list) d.set('mutate', 3);
    list[0]!.run('v1to 3', 'rd 9 8 8', 'rd 9 16 8', 'mmap 9 0x1000 4096');
    list[1]!.run('v2set stop_copy', 'v2readn 100');
    assert.ok(liveAllocs() > before);
    for (const d of list) d.remove();
    assert.equal(liveAllocs(), before);
    if (instancesOfDriver().length === 0) assert.equal(liveAllocs(), 0);
  });

  test('the kernel log has no WARN, BUG, oops or lockdep report', () => {
    const bad = kernelLogProblems(readDmesg());
    assert.deepEqual(bad, [], bad.join('\n'));
  });

  test('rmmod with no instances logs no leak; insmod brings the parent back', (t) => {
    const ko = join(ROOT, '.cache', 'vm', guestKernel, 'build', 'driver', `${DRIVER}.ko`);
    if (instancesOfDriver().length) return t.skip('other tests still hold instances of the driver');
    if (spawnSync('busybox', ['true']).status !== 0) return t.skip('busybox (rmmod/insmod) is not available');
    if (!existsSync(ko)) return t.skip(`${ko} not found`);
    const rm = spawnSync('busybox', ['rmmod', DRIVER], { encoding: 'utf8' });
    assert.equal(rm.status, 0, `rmmod: ${rm.stderr}`);
    assert.ok(!existsSync(PARENT_DIR));
    const log = readDmesg();
    assert.ok(!/vfio_mig_test: \d+ allocations leaked/.test(log), 'module exit found no leak');
    const ins = spawnSync('busybox', ['insmod', ko], { encoding: 'utf8' });
    assert.equal(ins.status, 0, `insmod: ${ins.stderr}`);
    assert.ok(existsSync(PARENT_DIR));
    assert.equal(liveAllocs(), 0);
    const bad = kernelLogProblems(readDmesg());
    assert.deepEqual(bad, [], bad.join('\n'));
  });
});
