// Host-side tests of device resolution against a fake sysfs tree built in a temp dir.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveDevice, listSysfsDevices, groupMembers } from '../../lib/sysfs';
import { openDevice } from '../../lib/device';
import { VfioError } from '../../lib/errors';

function fakeSys(): string {
  const root = mkdtempSync(join(tmpdir(), 'fake-sys-'));
  const mk = (p: string) => mkdirSync(join(root, p), { recursive: true });
  mk('bus/pci/drivers/vfio-pci');
  mk('bus/pci/drivers/e1000e');
  mk('kernel/iommu_groups/7/devices');
  mk('kernel/iommu_groups/8/devices');
  mk('devices/pci0000:00/0000:00:03.0');
  mk('devices/pci0000:00/0000:00:04.0');
  mk('devices/pci0000:00/0000:00:05.0');
  const pci = (addr: string, driver: string | null, group: number | null) => {
    const dev = join(root, 'devices/pci0000:00', addr);
    writeFileSync(join(dev, 'vendor'), '0x8086\n');
    writeFileSync(join(dev, 'device'), '0x10d3\n');
    if (driver) symlinkSync(join(root, 'bus/pci/drivers', driver), join(dev, 'driver'));
    if (group !== null) {
      symlinkSync(join(root, 'kernel/iommu_groups', String(group)), join(dev, 'iommu_group'));
      symlinkSync(dev, join(root, 'kernel/iommu_groups', String(group), 'devices', addr));
    }
    mk('bus/pci/devices');
    symlinkSync(dev, join(root, 'bus/pci/devices', addr));
  };
  pci('0000:00:03.0', 'vfio-pci', 7);
  pci('0000:00:04.0', 'e1000e', 8);
  pci('0000:00:05.0', 'vfio-pci', 8);
  const uuid = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
  mk(`devices/virtual/mtty/mtty/${uuid}`);
  mk('bus/mdev/devices');
  mk('kernel/iommu_groups/12/devices');
  mk('bus/mdev/drivers/mtty');
  const mdev = join(root, 'devices/virtual/mtty/mtty', uuid);
  symlinkSync(join(root, 'kernel/iommu_groups/12'), join(mdev, 'iommu_group'));
  symlinkSync(join(root, 'bus/mdev/drivers/mtty'), join(mdev, 'driver'));
  symlinkSync(join(root, 'devices/virtual/mtty/mtty/mdev_supported_types/mtty-2'), join(mdev, 'mdev_type'));
  symlinkSync(mdev, join(root, 'bus/mdev/devices', uuid));
  return root;
}

test('resolves PCI addresses (full and short), mdev UUIDs and sysfs paths', () => {
  const root = fakeSys();
  try {
    const a = resolveDevice('0000:00:03.0', root);
    assert.equal(a.kind, 'pci');
    assert.equal(a.driver, 'vfio-pci');
    assert.equal(a.group, 7);
    assert.equal(a.vendor, 0x8086);
    assert.equal(resolveDevice('00:03.0', root).name, '0000:00:03.0');
    const m = resolveDevice('83B8F4F2-509F-382F-3C1E-E6BFE0FA1001', root);
    assert.equal(m.kind, 'mdev');
    assert.equal(m.group, 12);
    assert.equal(m.mdevType, 'mtty-2');
    assert.equal(m.driver, 'mtty');
    // the parent is the directory the mdev's symlink resolves into
    assert.equal(m.parent, 'mtty');
    assert.equal(resolveDevice(join(root, 'bus/pci/devices/0000:00:03.0'), root).name, '0000:00:03.0');
    assert.equal(resolveDevice(join(root, 'devices/virtual/mtty/mtty', m.name), root).name, m.name);
    assert.throws(
      () => resolveDevice(join(root, 'bus/pci/devices/0000:00:09.0'), root),
      (e: VfioError) => e.code === 'ERR_VFIO_NOT_FOUND' && /no such sysfs path/.test(e.message),
    );
    assert.throws(
      () => resolveDevice('0000:00:09.0', root),
      (e: VfioError) => e.code === 'ERR_VFIO_NOT_FOUND' && /0000:00:09.0/.test(e.message),
    );
    assert.throws(
      () => resolveDevice('eth0', root),
      (e: VfioError) => e.code === 'ERR_VFIO_NOT_FOUND' && /PCI address/.test(e.message),
    );
  } finally {
    rmSync(root, { recursive: true });
  }
});

test('lists vfio-bound PCI devices and mdevs; group members name their drivers', () => {
  const root = fakeSys();
  try {
    assert.deepEqual(
      listSysfsDevices(root).map((d) => d.name),
      ['0000:00:03.0', '0000:00:05.0', '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001'],
    );
    assert.deepEqual(groupMembers(8, root), [
      { name: '0000:00:04.0', driver: 'e1000e' },
      { name: '0000:00:05.0', driver: 'vfio-pci' },
    ]);
  } finally {
    rmSync(root, { recursive: true });
  }
});

test('opening a device not bound to vfio-pci says which driver has it and how to rebind', () => {
  const root = fakeSys();
  try {
    assert.throws(
      () => openDevice('0000:00:04.0', { sysRoot: root }),
      (e: VfioError) =>
        e.code === 'ERR_VFIO_NOT_BOUND' && /bound to e1000e/.test(e.message) && /driver_override/.test(e.message),
    );
  } finally {
    rmSync(root, { recursive: true });
  }
});

test('openDevice argument checks', () => {
  assert.throws(() => openDevice({ group: -1, name: 'x' }), RangeError);
  assert.throws(() => openDevice({ group: 1, name: '' }), TypeError);
});
