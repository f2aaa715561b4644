// Integration tests of the device layer in the VM guest (real kernel VFIO): mtty mdevs and an e1000e bound to vfio-pci.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { listDevices, openDevice, VfioError, uapi } from '../../lib';
import { guestKernel, inGuest, needsGuest, needsMdevParent, openFdCount } from './helpers';
import { createMdev, removeMdev } from '../support/mdev';

const pciAddress = process.env.VFIO_MIG_PCI;
const needsPci: string | false = !inGuest
  ? needsGuest
  : pciAddress
    ? false
    : 'the guest has no e1000e bound to vfio-pci (VFIO_MIG_PCI unset)';

describe('mtty (the kernel sample, an mdev nobody here wrote)', { skip: needsMdevParent('mtty') }, () => {
  let uuid = '';
  before(() => {
    uuid = createMdev('mtty', 'mtty-2');
  });
  after(() => removeMdev(uuid));

  test('opens by UUID, decodes device info and regions, reads config space at native width', () => {
    using dev = openDevice(uuid);
    assert.ok(dev.info.flags & uapi.VFIO_DEVICE_FLAGS_PCI, 'mtty presents a PCI device');
    assert.ok(dev.info.numRegions >= uapi.VFIO_PCI_NUM_REGIONS);
    const config = dev.region(uapi.VFIO_PCI_CONFIG_REGION_INDEX);
    assert.ok(config.size >= 64n, `config space is ${config.size} bytes`);
    assert.equal(config.read(0, 2), 0x4348, 'mtty vendor id');
    assert.equal(config.read(2, 2), 0x3253, 'mtty device id');
    const regions = dev.regions();
    assert.ok(
      regions.some((r) => r.index === 0 && r.size > 0n),
      'BAR0 present',
    );
    assert.equal(dev.group?.viable, true);
    assert.ok(dev.irqs().length >= 1);
  });

  test('regions without mmap refuse a mapping with a clear RangeError', () => {
    using dev = openDevice(uuid);
    const bar0 = dev.region(0);
    assert.equal(bar0.info.mmapable, false);
    assert.throws(() => bar0.mmap(0n, 8n), RangeError);
  });

  test('VFIO_DEVICE_RESET runs off the JS thread', async () => {
    using dev = openDevice(uuid);
    await dev.reset();
  });

  test('migration protocol: v2 with STOP_COPY on 6.12, none on 6.1', async () => {
    const listed = (await listDevices()).find((d) => d.name === uuid);
    assert.ok(listed, 'listDevices finds the mdev');
    assert.equal(listed.kind, 'mdev');
    assert.equal(listed.mdevType, 'mtty-2');
    if (guestKernel === '6.1') assert.equal(listed.migration, 'none');
    else {
      assert.equal(listed.migration, 'v2');
      assert.equal(listed.migrationFlags?.stopCopy, true);
    }
  });

  test('two opens in one process share the group; close is idempotent; no fd leaks over 50 open/close', () => {
    const before = openFdCount();
    const first = openDevice(uuid);
    try {
      // The kernel lets one container open a device twice; both share the process's group lease.
      const second = openDevice(uuid);
      assert.equal(second.group, first.group);
      second.close();
      assert.equal(first.region(uapi.VFIO_PCI_CONFIG_REGION_INDEX).read(0, 2), 0x4348, 'the first stays usable');
    } finally {
      first.close();
      first.close();
    }
    for (let i = 0; i < 50; i++) openDevice(uuid).close();
    assert.equal(openFdCount(), before);
  });

  test('a missing device is a clear not-found error', () => {
    assert.throws(
      () => openDevice('00000000-0000-0000-0000-000000000000'),
      (e: VfioError) => e.code === 'ERR_VFIO_NOT_FOUND',
    );
  });
});

describe('e1000e bound to vfio-pci behind intel-iommu', { skip: needsPci }, () => {
  test('opens by PCI address; config space has the Intel IDs; BARs and sparse/MSI-X capabilities decode', () => {
    using dev = openDevice(pciAddress!);
    assert.equal(dev.sysfs?.driver, 'vfio-pci');
    const config = dev.region(uapi.VFIO_PCI_CONFIG_REGION_INDEX);
    assert.equal(config.read(0, 2), 0x8086);
    assert.equal(config.read(0, 4), dev.sysfs!.vendor! | (dev.sysfs!.device! << 16));
    const bar0 = dev.regionInfo(0);
    assert.ok(bar0.size >= 0x20000n && bar0.mmapable, 'BAR0 is a mmap-able MMIO BAR');
    const all = dev.regions();
    const msixBar = all.find((r) => r.capabilities.some((c) => c.kind === 'msix-mappable' || c.kind === 'sparse-mmap'));
    // vfio-pci on 6.x reports the MSI-X BAR as fully mappable (MSIX_MAPPABLE) on x86.
    assert.ok(msixBar, 'a BAR carries the MSI-X capability');
  });

  test('mmap of BAR0 is coherent with pread of the same register; the view detaches at unmap', () => {
    using dev = openDevice(pciAddress!);
    const bar0 = dev.region(0);
    const map = bar0.mmap(0n, 0x1000n);
    try {
      // STATUS (0x8) is read-only and stable while the device is idle.
      const viaMap = map.read(0x8, 4);
      const viaPread = bar0.read(0x8, 4);
      assert.equal(viaMap, viaPread);
      const view = new Uint8Array(map.buffer);
      assert.equal(view.length, 0x1000);
    } finally {
      map.unmap();
    }
    assert.throws(() => map.read(0x8, 4), /unmapped/);
  });

  test('reset and a missing driver binding give clear results', async () => {
    using dev = openDevice(pciAddress!);
    await dev.reset();
    assert.equal(dev.migration, null, 'an e1000e has no migration');
  });

  test('listDevices lists it with group and driver', async () => {
    const listed = (await listDevices()).find((d) => d.name === pciAddress);
    assert.ok(listed);
    assert.equal(listed.driver, 'vfio-pci');
    assert.equal(typeof listed.group, 'number');
    assert.equal(listed.migration, 'none');
  });
});
