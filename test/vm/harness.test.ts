// The harness tier: the QEMU harness (test/vm/) from the host, booting real guests: the command's
// exit status is the run's, a failing guest command fails the run, a hung guest is killed at the
// timeout with a message that says where it hung. About 5 s per boot (6.12, TCG unless KVM works).
// Run by npm run test:vm (run-suite.ts) before the guest suites; not part of npm run test:unit.
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { CACHE_DIR, prepare, PROJECT_ROOT, runInGuest } from './vm';

const inGuest = process.env.VFIO_MIG_GUEST === '1';
describe('runInGuest boots a guest', { skip: inGuest ? 'already in the guest' : false, timeout: 20 * 60_000 }, () => {
  before(() => {
    // cold (no .cache/vm/6.12/ready): downloads and unpacks the 6.12 kernel, about a minute, once;
    // warm: a fraction of a second (rebuilds changed project modules)
    prepare('6.12', { quiet: existsSync(join(CACHE_DIR, '6.12', 'ready')) });
  });

  test("a failing command fails the run: status 3 and the command's output come back", async () => {
    const r = await runInGuest({
      command: ['sh', '-c', 'echo "to stdout in $PWD"; echo to stderr >&2; exit 3'],
      timeoutMs: 120_000,
    });
    assert.equal(r.error, undefined, r.error);
    assert.equal(r.status, 3);
    assert.match(r.output, new RegExp(`to stdout in ${PROJECT_ROOT}\\n`));
    assert.match(r.output, /to stderr\n/);
    assert.ok(!r.output.includes('\r'), 'no CR from the serial console');
    assert.ok(r.bootMs !== null && r.bootMs < r.durationMs);
  });

  test('a succeeding command gives status 0, with the guest environment set', async () => {
    const r = await runInGuest({
      command: [
        'sh',
        '-c',
        'test "$VFIO_MIG_GUEST" = 1 && test -n "$VFIO_MIG_PCI" && test "$VFIO_MIG_MTTY" = 1 && test -c /dev/vfio/vfio',
      ],
      timeoutMs: 120_000,
    });
    assert.equal(r.error, undefined, r.error);
    assert.equal(r.status, 0, r.output);
    assert.match(r.pci ?? '', /^0000:/);
  });

  test('the CLI exits with the guest status', () => {
    const r = spawnSync(
      process.execPath,
      [join(PROJECT_ROOT, 'dist/test/vm/vm.js'), '--no-prepare', '--batch', 'sh', '-c', 'exit 7'],
      {
        encoding: 'utf8',
        timeout: 120_000,
      },
    );
    assert.equal(r.status, 7, r.stderr);
  });

  test('a hung guest is killed at the timeout and the error says where it hung', async () => {
    const r = await runInGuest({
      command: ['sh', '-c', 'echo about to hang; sleep 600'],
      timeoutMs: 20_000,
    });
    assert.equal(r.status, null);
    assert.equal(r.timedOut, true);
    assert.match(r.error ?? '', /timed out after 20 s/);
    assert.match(r.error ?? '', /phase reached: /);
    if (r.output.includes('about to hang')) {
      // (a very slow boot may not get that far)
      assert.match(r.error ?? '', /phase reached: command \(running the command\)/);
      assert.match(r.error ?? '', /last output lines:\n.*about to hang/);
    }
    assert.ok(r.qemuPid && r.qemuPid > 0);
    assert.throws(() => process.kill(r.qemuPid as number, 0), { code: 'ESRCH' }, 'no QEMU left running');
  });
});
