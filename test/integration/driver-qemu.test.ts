// A v1 client nobody here wrote: QEMU 7.2's vfio-pci saves a vfio_mig_test v1 device through QMP migrate and restores it with -incoming.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestDevice, needsDriver, removeAll } from '../support/test-driver';
import { QEMU, qemuVersion, quit, startQemu, waitMigration, type Vm } from './qemu-util';

const skip: string | false =
  needsDriver ||
  (!qemuVersion
    ? `${QEMU} is not installed`
    : Number(qemuVersion[1]) >= 8
      ? `QEMU ${qemuVersion[1]}.${qemuVersion[2]} has no v1 migration client (removed in 8.0)`
      : false);

describe('vfio_mig_test v1 with QEMU 7.2 (vfio-pci x-enable-migration=on)', { skip }, () => {
  let dir = '';
  const vms: Vm[] = [];
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'vmt-qemu-'));
  });
  after(async () => {
    for (const vm of vms) if (vm.proc.exitCode === null) vm.proc.kill('SIGKILL');
    removeAll();
    rmSync(dir, { recursive: true, force: true });
  });

  test(
    'QMP migrate to a file saves the device; a second QEMU with -incoming restores it; checksums match',
    { timeout: 600_000 },
    async () => {
      const knobs = { stateSize: 256 * 1024, chunkSize: 65536 };
      const src = new TestDevice('v1', knobs);
      const dst = new TestDevice('v1', knobs);
      src.set('mutate', 0x1234);
      dst.set('mutate', 0x9999);
      const saved = src.checksum();
      assert.notEqual(dst.checksum(), saved);
      const file = join(dir, 'vm.mig');

      const a = await startQemu(dir, 'src', src.uuid, []);
      vms.push(a);
      await a.qmp.cmd('migrate', { uri: `exec:cat > ${file}` });
      await waitMigration(a, 'outgoing');
      await quit(a);
      assert.ok(existsSync(file) && statSync(file).size > knobs.stateSize, 'the migration file holds the device state');
      const sc = src.counters();
      assert.ok(sc['records_saved']! > 0n, 'QEMU read records from the data section');
      assert.ok(sc['v1.read.pending_bytes']! > 0n && sc['v1.transitions']! >= 3n);
      assert.equal(src.checksum(), saved, 'the source state did not change');

      const b = await startQemu(dir, 'dst', dst.uuid, ['-incoming', `exec:cat ${file}`]);
      vms.push(b);
      await waitMigration(b, 'incoming');
      await b.qmp.cmd('cont'); // RESUMING -> RUNNING
      const st = await b.qmp.cmd('query-status');
      assert.equal(st.status, 'running', `destination runs: ${b.log()}`);
      await quit(b);
      const dc = dst.counters();
      assert.ok(dc['records_loaded']! > 0n, `QEMU wrote records: ${b.log()}`);
      assert.equal(dc['records_rejected'], 0n);
      assert.equal(dst.checksum(), saved, 'restored == saved');
    },
  );
});
