// What a guest run is given, built without side effects: QEMU's argument vector, the kernel command
// line, /init's guest.env and the command script. Pure functions of their inputs (unit-tested on the host).
import { dirname, join } from 'node:path';
import type { Accel, GuestLink } from './config';
import { EXIT_HARNESS } from './config';
import { dumpMargin } from './console';

/** The e1000e the guest binds to vfio-pci (vendor:device as sysfs prints them). */
export const PCI_ID = '0x8086:0x10d3';
/** QEMU's edu device (hw/misc/edu.c), two of which the guest binds to the project's vfio_mig_edu. */
export const EDU_ID = '0x1234:0x11e8';

export interface QemuConfig {
  accel: Accel;
  /** .cache/vm/<series>: vmlinux and initramfs.cpio. */
  kernelDir: string;
  memoryMiB: number;
  cpus: number;
  verboseKernel: boolean;
  /** The run directory (guest.env, cmd.sh), as /init sees it through the root share. */
  runDir: string;
  /** The writable results share. */
  outDir: string;
  /** Unix socket QEMU connects the second serial port (kernel console, /init's protocol) to. */
  ctlPath: string;
  /** Extra kernel parameters (env VFIO_MIG_VM_APPEND) and a CPU model instead of the default (VFIO_MIG_VM_CPU). */
  extraAppend?: string;
  cpuModel?: string;
  /** A virtio-net NIC on a UDP socket link to another guest. */
  link?: GuestLink;
  /** Two edu devices behind the IOMMU (default true). */
  eduDevices?: boolean;
}

/** Commas are QEMU's option separator: a literal one is doubled. */
export function qemuEscape(path: string): string {
  return path.replace(/,/g, ',,');
}

export function kernelCommandLine(c: QemuConfig): string {
  return [
    'console=ttyS1',
    c.verboseKernel ? 'loglevel=7' : 'quiet',
    'panic=-1',
    'oops=panic',
    'intel_iommu=on',
    'iommu=pt',
    `vmrun=${c.runDir}`,
    ...(c.extraAppend ?? '').split(/\s+/).filter(Boolean),
  ].join(' ');
}

export function qemuArgs(c: QemuConfig): string[] {
  return [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-machine',
    c.accel === 'kvm' ? 'q35,kernel-irqchip=split' : 'q35',
    '-accel',
    c.accel,
    '-cpu',
    c.cpuModel ?? (c.accel === 'kvm' ? 'host' : 'max'),
    '-m',
    String(c.memoryMiB),
    '-smp',
    String(c.cpus),
    '-kernel',
    join(c.kernelDir, 'vmlinux'),
    '-initrd',
    join(c.kernelDir, 'initramfs.cpio'),
    '-append',
    kernelCommandLine(c),
    // the IOMMU first, so every PCI device sits behind it
    '-device',
    'intel-iommu,intremap=on',
    '-netdev',
    'hubport,id=n0,hubid=0',
    '-device',
    'e1000e,netdev=n0',
    ...(c.eduDevices === false ? [] : ['-device', 'edu', '-device', 'edu']),
    ...linkArgs(c.link),
    '-virtfs',
    'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs',
    `local,path=${qemuEscape(c.outDir)},mount_tag=vmout,security_model=none,multidevs=remap`,
    '-chardev',
    'stdio,id=con0,signal=off',
    '-serial',
    'chardev:con0',
    // QEMU connects to our Unix socket before the guest starts: nothing is lost
    '-chardev',
    `socket,id=ctl,path=${qemuEscape(c.ctlPath)},server=off`,
    '-serial',
    'chardev:ctl',
    '-device',
    'isa-debug-exit,iobase=0xf4,iosize=0x04',
  ];
}

/** The link NIC: QEMU's socket netdev in UDP mode (receives on localaddr, sends to udp=). */
function linkArgs(link: GuestLink | undefined): string[] {
  if (!link) return [];
  for (const port of [link.localPort, link.peerPort])
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`link port ${port} out of range`);
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(link.mac)) throw new RangeError(`link MAC ${link.mac} is malformed`);
  return [
    '-netdev',
    `socket,id=link0,udp=127.0.0.1:${link.peerPort},localaddr=127.0.0.1:${link.localPort}`,
    '-device',
    `virtio-net-pci,netdev=link0,mac=${link.mac}`,
  ];
}

/** The command line to spawn: QEMU under `setpriv --pdeathsig SIGKILL` when setpriv works. */
export function qemuArgv(args: readonly string[], setpriv: boolean): string[] {
  const qemu = ['qemu-system-x86_64', ...args];
  return setpriv ? ['setpriv', '--pdeathsig', 'SIGKILL', '--', ...qemu] : qemu;
}

export interface GuestEnvConfig {
  /** The results share, mtty.ko ('' for none) and the project's modules, as /init sees them (resolved). */
  outDir: string;
  mtty: string;
  modules: readonly string[];
  pciDevice: boolean;
  /** Bind the edu devices to vfio_mig_edu (default true; they exist only when qemuArgs added them). */
  eduDevices?: boolean;
  interactive: boolean;
  /** Paths under /tmp or /run that must stay visible once the guest mounts tmpfs there. */
  keep: readonly string[];
  timeoutMs: number;
}

/** guest.env, sourced by /init (test/vm/guest-init.sh) before it chroots. */
export function guestEnvFile(c: GuestEnvConfig): string {
  return (
    [
      `VM_OUT=${shQuote(c.outDir)}`,
      `VM_MTTY=${shQuote(c.mtty)}`,
      `VM_MODULES=${shQuote(c.modules.join(' '))}`,
      `VM_PCI_ID=${c.pciDevice ? PCI_ID : "''"}`,
      `VM_EDU_ID=${c.eduDevices === false ? "''" : EDU_ID}`,
      `VM_INTERACTIVE=${c.interactive ? 1 : 0}`,
      `VM_KEEP=${shQuote(c.keep.join(' '))}`,
      // seconds of guest uptime after which /init reports what every process is doing
      `VM_DUMP_AT=${c.timeoutMs >= 20_000 ? Math.floor(c.timeoutMs / 1000) - dumpMargin(c.timeoutMs) : 0}`,
    ].join('\n') + '\n'
  );
}

/**
 * The command's environment: a clean one with the host's PATH (node's directory first), the host's
 * VFIO_MIG_* (not VFIO_MIG_VM_*: those steer the runner) and CI, then the caller's extra variables.
 */
export function commandEnv(
  o: { interactive?: boolean; env?: Record<string, string> },
  host: NodeJS.ProcessEnv,
  execPath: string,
): Record<string, string> {
  const env: Record<string, string> = {
    PATH: [dirname(execPath), ...(host.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':')]
      .filter((p, i, a) => p && a.indexOf(p) === i)
      .join(':'),
    HOME: '/tmp/home',
    TMPDIR: '/tmp',
    LANG: host.LANG ?? 'C.UTF-8',
    TERM: o.interactive ? (host.TERM ?? 'vt100') : 'dumb',
  };
  if (!o.interactive) env.NO_COLOR = '1';
  if (host.CI !== undefined) env.CI = host.CI;
  for (const [k, v] of Object.entries(host)) {
    if (k.startsWith('VFIO_MIG_') && v !== undefined && !k.startsWith('VFIO_MIG_VM_')) env[k] = v;
  }
  Object.assign(env, o.env ?? {});
  return env;
}

export interface CommandScriptConfig {
  command: readonly string[];
  env: Record<string, string>;
  /** VFIO_MIG_CACHE: .cache/vm/<series>. */
  cacheDir: string;
  projectRoot: string;
  /** The host terminal's size, for an interactive session. */
  tty?: { rows: number; columns: number };
}

/** cmd.sh: run by /init in the chroot, with exec semantics for the command. */
export function commandScript(c: CommandScriptConfig): string {
  const lines = [
    '# written by the test/vm runner (qemu-args.ts); run by the guest /init in the chroot',
    ...Object.entries(c.env).map(([k, v]) => `export ${k}=${shQuote(v)}`),
    '# set by /init: VFIO_MIG_GUEST, VFIO_MIG_KERNEL, VFIO_MIG_KVER, VFIO_MIG_OUT, VFIO_MIG_PCI, VFIO_MIG_EDU, VFIO_MIG_MTTY, VFIO_MIG_TEST_DRIVER',
    '. /run/vm/env',
    `export VFIO_MIG_CACHE=${shQuote(c.cacheDir)}`,
    `cd ${shQuote(c.projectRoot)} || exit ${EXIT_HARNESS}`,
  ];
  if (c.tty) lines.push(`stty rows ${c.tty.rows} cols ${c.tty.columns} 2>/dev/null`);
  lines.push(`exec ${c.command.map(shQuote).join(' ')}`);
  return lines.join('\n') + '\n';
}

/** Quotes one word for /bin/sh. */
export function shQuote(word: string): string {
  if (word !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}
