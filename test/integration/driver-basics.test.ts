// vfio_mig_test in the guest: types, the PCI look, BAR0 registers, sysfs knobs, several instances, hostile accesses.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { guestKernel } from './helpers';
import { buildClient, cleanupClient, ok } from '../support/vmtc';
import { PARENT_DIR, TestDevice, needsDriver, removeAll, typeDirName, type Kind } from '../support/test-driver';

const kinds: Kind[] = ['v1', 'v1-trapped', 'v2', 'none'];
const VFIO_DEVICE_FLAGS_PCI = 2;
const VFIO_DEVICE_FLAGS_RESET = 1;

describe('vfio_mig_test: device basics', { skip: needsDriver }, () => {
  before(() => buildClient());
  after(() => {
    removeAll();
    cleanupClient();
  });

  test('the parent lists the four types with the documented directory names', () => {
    const types = readdirSync(join(PARENT_DIR, 'mdev_supported_types')).sort();
    assert.deepEqual(types, kinds.map(typeDirName).sort());
  });

  for (const kind of kinds) {
    test(`${kind}: looks like a PCI device (info, regions, config IDs, INTx info)`, () => {
      const d = new TestDevice(kind);
      const [info, cfg, bar0, bar1, rom, vga, mig, vendor, device, bar0reg, pin, irq0, irq1, irq4] = d.run(
        'info',
        'region 0',
        'region 0 0',
        'region 1',
        'region 6',
        'region 8',
        'region 9',
        'rd 7 0 2',
        'rd 7 2 2',
        'rd 7 0x10 4',
        'rd 7 0x3d 1',
        'irq 0',
        'irq 1',
        'irq 4',
      );
      void cfg;
      assert.ok(info!.ok);
      assert.equal(Number(info!.kv.flags) & (VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET), 3);
      assert.equal(info!.kv.regions, kind.startsWith('v1') ? '10' : '9');
      assert.equal(info!.kv.irqs, '5');
      assert.equal(BigInt(bar0!.kv.size!), 4096n);
      assert.equal(BigInt(bar1!.kv.size!), 0n);
      assert.equal(BigInt(rom!.kv.size!), 0n);
      assert.equal(BigInt(vga!.kv.size!), 0n);
      if (kind.startsWith('v1')) assert.ok(mig!.ok);
      else assert.equal(mig!.err, 'EINVAL', 'no region 9 without v1');
      assert.equal(vendor!.value, 0x5654n);
      assert.equal(device!.value, 0x7600n + BigInt(kinds.indexOf(kind)));
      assert.equal(bar0reg!.value, 0n, '32-bit memory BAR');
      assert.equal(pin!.value, 1n, 'INTA#');
      assert.equal(irq0!.kv.count, '1');
      assert.equal(irq1!.kv.count, '0');
      assert.equal(irq4!.kv.count, '0');
      d.remove();
    });
  }

  test('config space: any width, BAR0 sizing, read-only IDs, out of range refused', () => {
    const d = new TestDevice('v2');
    const r = d.run(
      'rdn 7 0 256',
      'wr 7 0x10 4 0xffffffff',
      'rd 7 0x10 4',
      'wr 7 0 2 0x1234',
      'rd 7 0 2',
      'wr 7 4 2 0x6',
      'rd 7 4 2',
      'rd 7 0x100 1',
      'rdn 7 0xf0 32',
      'rd 7 0x3f 1',
    );
    assert.equal(r[0]!.kv.n, '256');
    assert.equal(r[2]!.value, 0xfffff000n, 'BAR0 is 4 KiB');
    assert.equal(r[4]!.value, 0x5654n, 'vendor ID is read-only');
    assert.equal(r[6]!.value, 0x6n, 'command memory|master');
    assert.equal(r[7]!.err, 'EINVAL');
    assert.equal(r[8]!.err, 'EINVAL');
    assert.ok(r[9]!.ok);
    d.remove();
  });

  test('BAR0 registers: magic, version, state size; native width only', () => {
    const d = new TestDevice('none', { stateSize: 12345 });
    const r = d.run(
      'rd 0 0 4',
      'rd 0 4 4',
      'rd 0 8 8',
      'rd 0 0 8',
      'rd 0 8 4',
      'rd 0 2 2',
      'rd 0 1 4',
      'rd 0 0x1000 4',
      'rd 0 0xff8 8',
      'wr 0 0x10 8 5',
      'wr 0 0x20 4 1',
      'rd 0 0x20 8',
      'rd 0 0x100 4',
    );
    assert.equal(r[0]!.value, 0x564d5431n);
    assert.equal(r[1]!.value, 1n);
    assert.equal(r[2]!.value, 12345n);
    for (const i of [3, 4, 5, 6, 7, 10]) assert.equal(r[i]!.err, 'EINVAL', `access ${i}`);
    assert.ok(r[8]!.ok, 'unassigned register reads');
    assert.ok(r[9]!.ok, 'writes to read-only registers are ignored');
    assert.equal(r[11]!.value, 0n, 'mutate reads as 0');
    assert.equal(r[12]!.value, 0n);
    d.remove();
  });

  test('mutate/checksum/generation: deterministic across instances, 0 zeroes, generation bumps', () => {
    const a = new TestDevice('v1', { stateSize: 3 * 4096 + 17 });
    const b = new TestDevice('v2', { stateSize: 3 * 4096 + 17 });
    const zero = a.checksum();
    assert.equal(zero, b.checksum(), 'untouched states are equal');
    const [c0, g0, , c1, g1, , c2] = ok(a.run('csum', 'gen', 'mutate 42', 'csum', 'gen', 'mutate 0', 'csum'));
    assert.equal(c0!.value, zero, 'BAR0 checksum matches sysfs');
    assert.notEqual(c1!.value, zero);
    assert.ok(g1!.value! > g0!.value!);
    assert.equal(c2!.value, zero, 'mutate 0 zeroes the state');
    ok(b.run('mutate 42'));
    a.set('mutate', 42);
    assert.equal(a.checksum(), b.checksum(), 'same seed, same bytes');
    assert.equal(a.checksum(), c1!.value);
    b.set('mutate', 43);
    assert.notEqual(a.checksum(), b.checksum());
    assert.equal(Number(a.get('present_pages')), 4);
    a.set('mutate', 0);
    assert.equal(Number(a.get('present_pages')), 0, 'zero state costs no pages');
    a.remove();
    b.remove();
  });

  test('state_size: 0 to 1 GiB allocated lazily; reads as zero and costs nothing', () => {
    const d = new TestDevice('v2', { stateSize: 1 << 30 });
    assert.equal(d.get('state_size'), String(1 << 30));
    assert.equal(d.get('present_pages'), '0');
    const big = d.checksum();
    d.set('state_size', 0);
    const empty = d.checksum();
    assert.notEqual(big, empty);
    d.set('state_size', 1 << 30);
    assert.equal(d.checksum(), big);
    assert.equal(d.trySet('state_size', (4n << 30n) + 1n), 'EINVAL');
    assert.equal(d.trySet('state_size', 'x'), 'EINVAL');
    d.remove();
  });

  test('knobs validate their values and refuse changes while the device is open', () => {
    const d = new TestDevice('v1');
    assert.equal(d.trySet('chunk_size', 4096 + 1), 'EINVAL');
    assert.equal(d.trySet('chunk_size', 0), 'EINVAL');
    assert.equal(d.trySet('chunk_size', (64 << 20) + 4096), 'EINVAL');
    assert.equal(d.trySet('chunk_size', 8192), null);
    assert.equal(d.trySet('dirty_rate', (1 << 30) + 1), 'EINVAL');
    assert.equal(d.trySet('reserved_bits', 1), 'EINVAL', 'low 3 bits are the state');
    assert.equal(d.trySet('fault', 'v2.data.read EIO'), 'EINVAL', 'v2 point on a v1 device');
    assert.equal(d.trySet('fault', 'v1.read.pending_bytes'), 'EINVAL', 'errno missing');
    assert.equal(d.trySet('fault', 'v1.read.pending_bytes EWHAT'), 'EINVAL');
    assert.equal(d.trySet('fault', 'v1.mmap EIO error'), 'EINVAL', 'mmap cannot carry error');
    assert.equal(d.trySet('fault', 'v1.read.pending_bytes 5 error'), null);
    assert.equal(d.get('fault'), 'v1.read.pending_bytes EIO error');
    assert.equal(d.trySet('fault', 'none'), null);
    assert.equal(d.get('fault'), 'none');
    assert.equal(d.trySet('fault', 'error'), 'ENODEV', 'error state needs an open device');
    // while open (a child holds the device), size knobs are refused
    const r = d.run('sleep 1');
    assert.ok(r[0]!.ok);
    d.remove();
  });

  test('several instances of every type at once, each with its own state', () => {
    const list: TestDevice[] = [];
    for (let i = 0; i < 3; i++) for (const k of kinds) list.push(new TestDevice(k, { stateSize: 8192 }));
    list.forEach((d, i) => d.set('mutate', i + 1));
    const sums = new Set(list.map((d) => d.checksum()));
    assert.equal(sums.size, list.length);
    assert.equal(
      Number(readdirSync(join(PARENT_DIR, 'mdev_supported_types', typeDirName('v1'), 'devices')).length) >= 3,
      true,
    );
    for (const d of list) d.remove();
  });

  test('VFIO_DEVICE_RESET, unknown ioctls, hostile offsets, a second fd, INTx eventfd', () => {
    const d = new TestDevice('v1');
    const r = d.run(
      'reset',
      'ioctl 0x3b99',
      'rawrd -1 4',
      'rawrd 0xffffffffffffff00 4',
      'rawrd 0x0a0000000000 4',
      'rawwr 0x7fffffffffffffff 1 0',
      'rdn 9 0x1000 0x7fffffff',
      'open2',
      'use 1',
      'rd 0 0 4',
      'use 0',
      'closedev 1',
      'intx',
      'intxfire',
      'intxfire',
      'irqset 0 0x21 0 0',
      'intx -1',
      'irqset 1 0x21 0 1',
      'irq 5',
    );
    assert.ok(r[0]!.ok);
    assert.equal(r[1]!.err, 'ENOTTY');
    for (const i of [2, 3, 4, 5, 6]) assert.ok(!r[i]!.ok, `hostile access ${i} refused`);
    assert.ok(r[7]!.ok && r[9]!.ok && r[9]!.value === 0x564d5431n, 'second fd works');
    assert.ok(r[12]!.ok);
    assert.equal(r[13]!.kv.count, '1', 'INTx fires the eventfd');
    assert.equal(r[14]!.kv.count, '0', 'automasked until unmasked');
    assert.ok(r[15]!.ok && r[16]!.ok);
    assert.equal(r[17]!.err, 'EINVAL', 'MSI has no vectors');
    assert.equal(r[18]!.err, 'EINVAL');
    d.remove();
  });

  test('counters count register accesses', () => {
    const d = new TestDevice('v1');
    d.run('rd 0 0 4', 'rd 0 0 4', 'v1state', 'rd 9 8 8');
    const c = d.counters();
    assert.equal(c['bar0.reads'], 2n);
    assert.equal(c['v1.read.device_state'], 1n);
    assert.equal(c['v1.read.pending_bytes'], 1n);
    assert.equal(c['opens'], 1n);
    assert.equal(c['closes'], 1n);
    d.remove();
  });

  test(`the kernel under test is reported (${guestKernel || 'unknown'})`, () => {
    assert.ok(guestKernel === '6.12' || guestKernel === '6.1', `VFIO_MIG_KERNEL=${guestKernel}`);
  });
});
