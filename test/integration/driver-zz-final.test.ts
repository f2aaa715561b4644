// vfio_mig_test in the guest, after the driver's other tests: no leak (live_allocs 0), module unload/reload is clean, dmesg has no WARN/BUG/oops.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DRIVER, Inst, ROOT, instancesOfDriver, kernel, liveAllocs, needsDriver } from './driver-util';

const BAD =
  /(WARNING:|BUG:|Oops|general protection fault|Call Trace:|possible circular locking|INFO: task .* blocked|kernel BUG|UBSAN:|KASAN:)/;

function dmesg(): string {
  const r = spawnSync('dmesg', [], { encoding: 'utf8' });
  if (r.status === 0) return r.stdout;
  const b = spawnSync('busybox', ['dmesg'], { encoding: 'utf8' });
  return b.stdout ?? '';
}

describe('vfio_mig_test: no leaks, clean unload, quiet kernel log', { skip: needsDriver }, () => {
  test('live_allocs returns to zero once every instance is removed', () => {
    const before = liveAllocs();
    const list = [new Inst('v1', { stateSize: 65536 }), new Inst('v2', { stateSize: 65536 })];
    for (const d of list) d.set('mutate', 3);
    list[0]!.run('v1to 3', 'rd 9 8 8', 'rd 9 16 8', 'mmap 9 0x1000 4096');
    list[1]!.run('v2set stop_copy', 'v2readn 100');
    assert.ok(liveAllocs() > before);
    for (const d of list) d.remove();
    assert.equal(liveAllocs(), before);
    if (instancesOfDriver().length === 0) assert.equal(liveAllocs(), 0);
  });

  test('the kernel log has no WARN, BUG, oops or lockdep report', () => {
    const bad = dmesg()
      .split('\n')
      .filter((l) => BAD.test(l));
    assert.deepEqual(bad, [], bad.join('\n'));
  });

  test('rmmod with no instances logs no leak; insmod brings the parent back', (t) => {
    const ko = join(ROOT, '.cache', 'vm', kernel, 'build', 'driver', `${DRIVER}.ko`);
    if (instancesOfDriver().length) return t.skip('other tests still hold instances of the driver');
    if (spawnSync('busybox', ['true']).status !== 0) return t.skip('busybox (rmmod/insmod) is not available');
    if (!existsSync(ko)) return t.skip(`${ko} not found`);
    const rm = spawnSync('busybox', ['rmmod', DRIVER], { encoding: 'utf8' });
    assert.equal(rm.status, 0, `rmmod: ${rm.stderr}`);
    assert.ok(!existsSync(`/sys/class/mdev_bus/${DRIVER}`));
    const log = dmesg();
    assert.ok(!/vfio_mig_test: \d+ allocations leaked/.test(log), 'module exit found no leak');
    const ins = spawnSync('busybox', ['insmod', ko], { encoding: 'utf8' });
    assert.equal(ins.status, 0, `insmod: ${ins.stderr}`);
    assert.ok(existsSync(`/sys/class/mdev_bus/${DRIVER}`));
    assert.equal(liveAllocs(), 0);
    const bad = dmesg()
      .split('\n')
      .filter((l) => BAD.test(l));
    assert.deepEqual(bad, [], bad.join('\n'));
  });
});
