// The guest the harness (test/vm/) boots: the VFIO stack, mtty and the vfio-pci
// device it promises are really there. Runs inside the guest (npm run test:vm).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { basename, join } from 'node:path';
import { createMdev, MDEV_BUS, MDEV_DEVICES, removeMdev } from '../support/mdev';
import { DRIVER } from '../support/test-driver';

const inGuest = process.env.VFIO_MIG_GUEST === '1';
const skip: string | false = inGuest ? false : 'needs the VM guest (npm run test:vm)';

function moduleLoaded(name: string): boolean {
  return existsSync(`/sys/module/${name}`);
}

describe('the VM guest (test/vm harness)', { skip }, () => {
  test('runs the kernel it says it runs', () => {
    const series = process.env.VFIO_MIG_KERNEL;
    assert.ok(series === '6.12' || series === '6.1', `VFIO_MIG_KERNEL=${series}`);
    assert.equal(process.env.VFIO_MIG_KVER, release());
    assert.ok(release().startsWith(`${series}.`), `${release()} is a ${series} kernel`);
  });

  test('has the VFIO modules loaded and /dev/vfio/vfio', () => {
    for (const m of ['vfio', 'vfio_iommu_type1', 'mdev', 'vfio_pci', 'vfio_pci_core']) {
      assert.ok(moduleLoaded(m), `module ${m} is loaded`);
    }
    assert.ok(statSync('/dev/vfio/vfio').isCharacterDevice(), '/dev/vfio/vfio is a character device');
  });

  test("mtty's mdev parent is registered and an instance can be created and removed through sysfs", () => {
    assert.equal(process.env.VFIO_MIG_MTTY, '1');
    assert.ok(moduleLoaded('mtty'));
    const parent = join(MDEV_BUS, 'mtty');
    assert.ok(existsSync(parent), `${parent} exists`);
    const types = readdirSync(join(parent, 'mdev_supported_types'));
    assert.ok(types.length > 0, 'mtty offers mdev types');
    const type = types.includes('mtty-2') ? 'mtty-2' : types[0];
    const uuid = createMdev('mtty', type);
    const dev = join(MDEV_DEVICES, uuid);
    try {
      assert.ok(existsSync(dev), `${dev} exists after create`);
      assert.equal(basename(readlinkSync(join(dev, 'mdev_type'))), type);
      const group = basename(readlinkSync(join(dev, 'iommu_group')));
      assert.match(group, /^\d+$/);
      assert.ok(statSync(`/dev/vfio/${group}`).isCharacterDevice(), `/dev/vfio/${group} exists`);
    } finally {
      removeMdev(uuid);
    }
    assert.ok(!existsSync(dev), `${dev} is gone after remove`);
  });

  test('the e1000e at VFIO_MIG_PCI is bound to vfio-pci, in an IOMMU group', () => {
    const pci = process.env.VFIO_MIG_PCI;
    assert.ok(pci && /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(pci), `VFIO_MIG_PCI=${pci}`);
    const dev = `/sys/bus/pci/devices/${pci}`;
    assert.equal(readFileSync(join(dev, 'vendor'), 'utf8').trim(), '0x8086');
    assert.equal(readFileSync(join(dev, 'device'), 'utf8').trim(), '0x10d3');
    assert.equal(basename(readlinkSync(join(dev, 'driver'))), 'vfio-pci');
    const group = basename(readlinkSync(join(dev, 'iommu_group')));
    assert.match(group, /^\d+$/);
    assert.ok(statSync(`/dev/vfio/${group}`).isCharacterDevice(), `/dev/vfio/${group} exists`);
    // behind intel-iommu: the group holds only this device, so it is viable
    assert.deepEqual(readdirSync(`/sys/kernel/iommu_groups/${group}/devices`), [pci]);
  });

  test(
    'loads the test vendor driver when the project has one',
    {
      skip: process.env.VFIO_MIG_TEST_DRIVER === '1' ? false : `${DRIVER} was not loaded (no test/driver module built)`,
    },
    () => {
      assert.ok(moduleLoaded(DRIVER));
    },
  );

  test('gives a writable results share at VFIO_MIG_OUT and a read-only project tree', () => {
    const out = process.env.VFIO_MIG_OUT;
    assert.ok(out, 'VFIO_MIG_OUT is set');
    const f = join(out, `harness-${process.pid}.txt`);
    writeFileSync(f, 'from the guest\n');
    assert.equal(readFileSync(f, 'utf8'), 'from the guest\n');
    unlinkSync(f);
    assert.throws(() => writeFileSync(join(process.cwd(), '.vm-write-probe'), 'x'), { code: 'EROFS' });
  });
});
