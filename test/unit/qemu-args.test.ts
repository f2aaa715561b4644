// The QEMU harness's inputs (test/vm/qemu-args.ts), pinned: the argument vector for a few option
// sets, the kernel command line, guest.env and the command script. Pure, no guest is booted.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { commandEnv, commandScript, guestEnvFile, qemuArgs, qemuArgv, type QemuConfig } from '../vm/qemu-args';

const base: QemuConfig = {
  accel: 'tcg',
  kernelDir: '/c/vm/6.12',
  memoryMiB: 2048,
  cpus: 2,
  verboseKernel: false,
  runDir: '/tmp/vfio-mig-vm-X',
  outDir: '/tmp/vfio-mig-vm-X/out',
  ctlPath: '/tmp/vfio-mig-vm-X/console.sock',
};

/** Everything after the machine-specific part, the same for every option set. */
const DEVICES = [
  '-device',
  'intel-iommu,intremap=on',
  '-netdev',
  'hubport,id=n0,hubid=0',
  '-device',
  'e1000e,netdev=n0',
  '-device',
  'edu',
  '-device',
  'edu',
  '-virtfs',
  'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
];

describe('qemuArgs', () => {
  test('defaults under TCG: q35, cpu max, quiet kernel', () => {
    assert.deepEqual(qemuArgs(base), [
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-no-reboot',
      '-machine',
      'q35',
      '-accel',
      'tcg',
      '-cpu',
      'max',
      '-m',
      '2048',
      '-smp',
      '2',
      '-kernel',
      '/c/vm/6.12/vmlinux',
      '-initrd',
      '/c/vm/6.12/initramfs.cpio',
      '-append',
      'console=ttyS1 quiet panic=-1 oops=panic intel_iommu=on iommu=pt vmrun=/tmp/vfio-mig-vm-X',
      ...DEVICES,
      '-virtfs',
      'local,path=/tmp/vfio-mig-vm-X/out,mount_tag=vmout,security_model=none,multidevs=remap',
      '-chardev',
      'stdio,id=con0,signal=off',
      '-serial',
      'chardev:con0',
      '-chardev',
      'socket,id=ctl,path=/tmp/vfio-mig-vm-X/console.sock,server=off',
      '-serial',
      'chardev:ctl',
      '-device',
      'isa-debug-exit,iobase=0xf4,iosize=0x04',
    ]);
  });

  test('KVM: split irqchip and cpu host; memory, vCPUs, verbose kernel and extra parameters', () => {
    const a = qemuArgs({
      ...base,
      accel: 'kvm',
      memoryMiB: 4096,
      cpus: 4,
      verboseKernel: true,
      extraAppend: '  nokaslr  initcall_debug ',
    });
    assert.deepEqual(a.slice(5, 16), [
      '-machine',
      'q35,kernel-irqchip=split',
      '-accel',
      'kvm',
      '-cpu',
      'host',
      '-m',
      '4096',
      '-smp',
      '4',
      '-kernel',
    ]);
    assert.equal(
      a[a.indexOf('-append') + 1],
      'console=ttyS1 loglevel=7 panic=-1 oops=panic intel_iommu=on iommu=pt vmrun=/tmp/vfio-mig-vm-X nokaslr initcall_debug',
    );
  });

  test('a CPU model replaces the default under either accelerator; commas in paths are doubled', () => {
    for (const accel of ['tcg', 'kvm'] as const) {
      const a = qemuArgs({ ...base, accel, cpuModel: 'qemu64', outDir: '/r/a,b', ctlPath: '/s,1/c.sock' });
      assert.equal(a[a.indexOf('-cpu') + 1], 'qemu64');
      assert.ok(a.includes('local,path=/r/a,,b,mount_tag=vmout,security_model=none,multidevs=remap'));
      assert.ok(a.includes('socket,id=ctl,path=/s,,1/c.sock,server=off'));
    }
  });

  test('a link: a virtio-net NIC on a UDP socket netdev to the peer, after the e1000e and the edu devices (their PCI addresses stay put); bad ports and MACs refused', () => {
    const a = qemuArgs({ ...base, link: { localPort: 40001, peerPort: 40002, mac: '52:54:00:23:10:01' } });
    const at = a.lastIndexOf('edu');
    assert.equal(a[a.indexOf('e1000e,netdev=n0') + 1], '-device', 'the edu devices follow the e1000e');
    assert.deepEqual(a.slice(at + 1, at + 5), [
      '-netdev',
      'socket,id=link0,udp=127.0.0.1:40002,localaddr=127.0.0.1:40001',
      '-device',
      'virtio-net-pci,netdev=link0,mac=52:54:00:23:10:01',
    ]);
    assert.equal(a.filter((x) => x === '-netdev').length, 2);
    assert.equal(qemuArgs(base).filter((x) => x === '-netdev').length, 1, 'no link unless asked');
    const link = { localPort: 1, peerPort: 2, mac: '52:54:00:00:00:01' };
    assert.throws(() => qemuArgs({ ...base, link: { ...link, peerPort: 70000 } }), RangeError);
    assert.throws(() => qemuArgs({ ...base, link: { ...link, localPort: 0 } }), RangeError);
    assert.throws(() => qemuArgs({ ...base, link: { ...link, mac: '52:54:00:00:00' } }), RangeError);
  });

  test('qemuArgv: under setpriv --pdeathsig when setpriv works', () => {
    assert.deepEqual(qemuArgv(['-m', '1'], true), [
      'setpriv',
      '--pdeathsig',
      'SIGKILL',
      '--',
      'qemu-system-x86_64',
      '-m',
      '1',
    ]);
    assert.deepEqual(qemuArgv(['-m', '1'], false), ['qemu-system-x86_64', '-m', '1']);
  });
});

describe("the guest's inputs", () => {
  test('guest.env: the hang report comes a margin before the timeout; no PCI id without the device', () => {
    const env = guestEnvFile({
      outDir: '/r/out',
      mtty: '',
      modules: ['/c/a.ko', '/c/b.ko'],
      pciDevice: true,
      interactive: false,
      keep: [],
      timeoutMs: 600_000,
    });
    assert.equal(
      env,
      [
        'VM_OUT=/r/out',
        "VM_MTTY=''",
        "VM_MODULES='/c/a.ko /c/b.ko'",
        'VM_PCI_ID=0x8086:0x10d3',
        'VM_EDU_ID=0x1234:0x11e8',
        'VM_INTERACTIVE=0',
        "VM_KEEP=''",
        'VM_DUMP_AT=585',
        '',
      ].join('\n'),
    );
    const short = guestEnvFile({
      outDir: '/r',
      mtty: '/c/mtty.ko',
      modules: [],
      pciDevice: false,
      interactive: true,
      keep: ['/tmp/p'],
      timeoutMs: 10_000,
    });
    assert.match(short, /^VM_PCI_ID=''$/m);
    assert.match(
      guestEnvFile({
        outDir: '/r',
        mtty: '',
        modules: [],
        keep: [],
        pciDevice: true,
        eduDevices: false,
        interactive: false,
        timeoutMs: 10_000,
      }),
      /^VM_EDU_ID=''$/m,
      'no edu devices to bind',
    );
    assert.match(short, /^VM_INTERACTIVE=1$/m);
    assert.match(short, /^VM_DUMP_AT=0$/m, 'no hang report for a run this short');
    assert.match(
      guestEnvFile({
        outDir: '/r',
        mtty: '',
        modules: [],
        keep: [],
        pciDevice: true,
        interactive: false,
        timeoutMs: 20_000,
      }),
      /^VM_DUMP_AT=12$/m,
      'from 20 s on, a report 8 s before the end',
    );
  });

  test('the command environment: clean, node first on PATH, VFIO_MIG_* but not VFIO_MIG_VM_*, extras last', () => {
    const env = commandEnv(
      { env: { EXTRA: '1', VFIO_MIG_X: 'override' } },
      { PATH: '/usr/bin:/opt/node/bin:/usr/bin', HOME: '/root', VFIO_MIG_X: 'x', VFIO_MIG_VM_APPEND: 'a', CI: 'true' },
      '/opt/node/bin/node',
    );
    assert.deepEqual(env, {
      PATH: '/opt/node/bin:/usr/bin',
      HOME: '/tmp/home',
      TMPDIR: '/tmp',
      LANG: 'C.UTF-8',
      TERM: 'dumb',
      NO_COLOR: '1',
      CI: 'true',
      VFIO_MIG_X: 'override',
      EXTRA: '1',
    });
    const tty = commandEnv({ interactive: true }, { TERM: 'xterm' }, '/n/node');
    assert.equal(tty.TERM, 'xterm');
    assert.equal(tty.NO_COLOR, undefined);
  });

  test('cmd.sh: the environment, /init env, the cache, the project root, then exec the command quoted', () => {
    const script = commandScript({
      command: ['sh', '-c', "echo 'hi'"],
      env: { A: 'x y' },
      cacheDir: '/p/.cache/vm/6.1',
      projectRoot: '/p',
    });
    const lines = script.split('\n');
    assert.equal(lines[1], "export A='x y'");
    assert.ok(lines.includes('. /run/vm/env'));
    assert.ok(lines.includes('export VFIO_MIG_CACHE=/p/.cache/vm/6.1'));
    assert.ok(lines.includes('cd /p || exit 125'));
    assert.equal(lines.at(-2), `exec sh -c 'echo '\\''hi'\\'''`);
    assert.ok(!script.includes('stty'));
    assert.match(
      commandScript({ command: ['sh'], env: {}, cacheDir: '/c', projectRoot: '/p', tty: { rows: 40, columns: 100 } }),
      /^stty rows 40 cols 100 2>\/dev\/null\nexec sh\n$/m,
    );
  });
});
