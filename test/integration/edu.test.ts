// Integration tests (VM guest) of QEMU's edu devices on the project's vfio_mig_edu variant driver: a real PCI
// device opened by address, programmed through VFIO, migrated by the CLI, its buffer read back by its own DMA.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  constants as fsConstants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  readlinkSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import {
  DmaLog,
  StreamDecoder,
  StreamEncoder,
  SyscallError,
  allocDmaMemory,
  openDevice,
  probeDmaLogging,
  type Device,
} from '../../lib';
import { native } from '../../lib/native';
import { TestDevice, needsDriver } from '../support/test-driver';
import { binArgs, cliChild, type CliChild as Child, VFIO_MIG_COMMAND } from '../support/cli-child';
import { guestKernel, hasPrecopy, inGuest, needsGuest, openFdCount } from './helpers';

const TMP = '/tmp/vfio-mig-edu-test';
const EDU = (process.env.VFIO_MIG_EDU ?? '').split(/\s+/).filter(Boolean);
const skip: string | false = !inGuest
  ? needsGuest
  : EDU.length < 2
    ? 'VFIO_MIG_EDU is unset: no two edu devices bound to vfio_mig_edu in this guest (vm.js --no-edu, or the module did not load)'
    : false;
const [A, B] = EDU;

const run = (...args: string[]) => spawnSync(process.execPath, binArgs(...args), { encoding: 'utf8' });

/** vfio-mig as a child the test can signal; stdout is drained unless the test reads it. */
const cli = (args: string[], stdio?: ('pipe' | 'ignore')[]): Child => cliChild(args, stdio, { drainStdout: true });

/** Ends a child a failed test left running (it would hold its device for the next tests). */
async function stop(c: Child): Promise<void> {
  if (c.child.exitCode === null && c.child.signalCode === null) await kill9(c);
}

async function kill9(c: Child): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  c.child.kill('SIGKILL');
  return c.exited;
}

// BAR0 registers of hw/misc/edu.c
const REG = {
  ident: 0x00,
  liveness: 0x04,
  fact: 0x08,
  status: 0x20,
  irqStatus: 0x24,
  irqRaise: 0x60,
  irqAck: 0x64,
  dmaSrc: 0x80,
  dmaDst: 0x88,
  dmaCnt: 0x90,
  dmaCmd: 0x98,
};
const CMD_RUN = 1n;
const CMD_TO_RAM = 2n;
const CMD_IRQ = 4n;
const BUF_ADDR = 0x40000n;
/** QEMU 7.2's edu aborts on a DMA that reaches the buffer's last byte: 4095 bytes are reachable. */
const REACH = 4095;
/** Below edu's 28-bit DMA mask. */
const IOVA = 0x100000n;
const MEM = 64 * 1024;
const CONFIG = 7;
const PCI_COMMAND = 4;

interface EduState {
  fact: number;
  liveness: number;
  status: number;
  irqStatus: number;
  dmaSrc: bigint;
  dmaDst: bigint;
  dmaCnt: bigint;
  dmaCmd: bigint;
  buf: Buffer;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitIdle(device: Device): Promise<void> {
  const bar = device.region(0);
  for (let i = 0; i < 500; i++) {
    if ((bar.read(REG.status, 4) & 1) === 0 && (bar.read(REG.dmaCmd, 4) & Number(CMD_RUN)) === 0) return;
    await sleep(10);
  }
  throw new Error('edu stayed busy for 5 s');
}

/** Opens an edu with memory decoding and bus mastering on, and 64 KiB of memory mapped at IOVA. */
function openEdu(address: string) {
  const device = openDevice(address);
  const config = device.region(CONFIG);
  config.write(PCI_COMMAND, 2, config.read(PCI_COMMAND, 2) | 0x6);
  const mem = allocDmaMemory(MEM);
  device.container!.dma.map(mem, IOVA);
  return {
    device,
    bytes: new Uint8Array(mem.buffer),
    close() {
      device.close(); // releases the DMA mapping with the container
      mem.unmap();
    },
  };
}

/*
 * The DMA registers are 64-bit, but 6.1's vfio-pci-core splits an 8-byte access of a BAR into two of 4 bytes,
 * and edu answers a 4-byte read of a register's upper half with ~0: they are used by their lower 32 bits, a
 * 4-byte write setting the whole register (every address here is below 4 GiB).
 */
function readDmaReg(device: Device, reg: number): bigint {
  return BigInt(device.region(0).read(reg, 4));
}

async function dma(device: Device, src: bigint, dst: bigint, cnt: number, cmd: bigint): Promise<void> {
  const bar = device.region(0);
  bar.write(REG.dmaSrc, 4, Number(src));
  bar.write(REG.dmaDst, 4, Number(dst));
  bar.write(REG.dmaCnt, 4, cnt);
  bar.write(REG.dmaCmd, 4, Number(cmd | CMD_RUN));
  await waitIdle(device);
}

function factorial(n: number): number {
  let f = 1;
  for (let i = 2; i <= n; i++) f = Math.imul(f, i) >>> 0;
  return f;
}

/** Gives the device a distinct state through VFIO: the buffer by DMA from our memory, then registers. */
async function program(address: string, seed: number): Promise<Omit<EduState, 'buf'> & { buf: Buffer }> {
  const edu = openEdu(address);
  try {
    const bar = edu.device.region(0);
    await waitIdle(edu.device);
    // from a known start: no factorial interrupt armed, no interrupt pending
    bar.write(REG.status, 4, 0);
    bar.write(REG.irqAck, 4, 0xffffffff);
    const buf = Buffer.alloc(REACH);
    for (let i = 0; i < REACH; i++) buf[i] = (i * 7 + seed * 13 + (i >> 8)) & 0xff;
    edu.bytes.set(buf);
    // RAM -> device, with an interrupt: the DMA registers and the DMA interrupt stay as state
    await dma(edu.device, IOVA, BUF_ADDR, REACH, CMD_IRQ);
    const n = 5 + seed;
    bar.write(REG.fact, 4, n);
    await waitIdle(edu.device);
    const liveness = (0x5eed0000 + seed) >>> 0;
    bar.write(REG.liveness, 4, liveness);
    bar.write(REG.status, 4, 0x80);
    bar.write(REG.irqRaise, 4, 0x10 << seed);
    return {
      fact: factorial(n),
      liveness: ~liveness >>> 0,
      status: 0x80,
      irqStatus: (0x100 | (0x10 << seed)) >>> 0,
      dmaSrc: IOVA,
      dmaDst: BUF_ADDR,
      dmaCnt: BigInt(REACH),
      dmaCmd: CMD_IRQ,
      buf,
    };
  } finally {
    edu.close();
  }
}

/** Reads the device's registers, then its buffer by its own DMA into our memory. */
async function readBack(address: string): Promise<EduState> {
  const edu = openEdu(address);
  try {
    const bar = edu.device.region(0);
    await waitIdle(edu.device);
    assert.equal(bar.read(REG.ident, 4), 0x010000ed, 'edu ident register');
    const regs = {
      fact: bar.read(REG.fact, 4),
      liveness: bar.read(REG.liveness, 4),
      status: bar.read(REG.status, 4),
      irqStatus: bar.read(REG.irqStatus, 4),
      dmaSrc: readDmaReg(edu.device, REG.dmaSrc),
      dmaDst: readDmaReg(edu.device, REG.dmaDst),
      dmaCnt: readDmaReg(edu.device, REG.dmaCnt),
      dmaCmd: readDmaReg(edu.device, REG.dmaCmd),
    };
    edu.bytes.fill(0xa5, 0, REACH + 1);
    await dma(edu.device, BUF_ADDR, IOVA, REACH, CMD_TO_RAM);
    assert.equal(edu.bytes[REACH], 0xa5, 'the DMA wrote no further than asked');
    return { ...regs, buf: Buffer.from(edu.bytes.subarray(0, REACH)) };
  } finally {
    edu.close();
  }
}

function assertSameState(got: EduState, want: EduState, what: string): void {
  const { buf: gotBuf, ...gotRegs } = got;
  const { buf: wantBuf, ...wantRegs } = want;
  assert.deepEqual(gotRegs, wantRegs, `${what}: registers`);
  assert.ok(gotBuf.equals(wantBuf), `${what}: the ${REACH} bytes of the buffer, read by the device's own DMA`);
}

/** DMA_LOGGING_REPORT needs CONFIG_IOMMUFD_DRIVER from 6.9 on, which Debian's 6.12 leaves out (see dirty.test.ts). */
function kernelReports(): boolean {
  if (guestKernel === '6.1') return true;
  const config = `.cache/vm/${guestKernel}/config`;
  return existsSync(config) && /^CONFIG_IOMMUFD_DRIVER=y/m.test(readFileSync(config, 'utf8'));
}

const RESET_STATE: EduState = {
  fact: 0,
  liveness: 0,
  status: 0,
  irqStatus: 0,
  dmaSrc: 0n,
  dmaDst: 0n,
  dmaCnt: 0n,
  dmaCmd: 0n,
  buf: Buffer.alloc(REACH),
};

describe('edu on vfio_mig_edu (a real PCI device, DMA through the IOMMU)', { skip }, () => {
  before(() => mkdirSync(TMP, { recursive: true }));
  after(() => {
    rmSync(TMP, { recursive: true, force: true });
    // leave both devices as at power on (no interrupt pending)
    if (!skip) for (const d of EDU) run('reset', d);
  });

  test('list and info name the devices by PCI address: v2 on vfio_mig_edu, BAR0 not mmap-able', () => {
    const list = run('list', '--json');
    assert.equal(list.status, 0, list.stderr);
    const listed = JSON.parse(list.stdout) as { name: string; driver: string; migration: string }[];
    for (const address of [A, B]) {
      const entry = listed.find((d) => d.name === address);
      assert.ok(entry, `${address} listed`);
      assert.equal(entry.driver, 'vfio_mig_edu');
      assert.equal(entry.migration, 'v2');
    }
    const info = run('info', A);
    assert.equal(info.status, 0, info.stderr);
    assert.match(info.stdout, /^ {2}flags: RESET PCI$/m);
    assert.match(info.stdout, /^ {2}BAR0 +0x100000 bytes at offset 0x0, read\/write$/m, 'BAR0 trapped');
    assert.match(info.stdout, /^Migration: v2, state RUNNING$/m);
  });

  test('reset puts back the power-on state (edu has no PCI reset; the driver does it)', async () => {
    await program(A, 1);
    const r = run('reset', A);
    assert.equal(r.status, 0, r.stderr);
    assertSameState(await readBack(A), RESET_STATE, 'after vfio-mig reset');
  });

  test('save -o FILE, load -i FILE: the destination holds the same registers and buffer', async () => {
    const want = await program(A, 2);
    assert.equal(run('reset', B).status, 0);
    const file = join(TMP, 'a.vfmig');
    const save = run('save', A, '-o', file);
    assert.equal(save.status, 0, save.stderr);
    const load = run('load', B, '-i', file);
    assert.equal(load.status, 0, load.stderr);
    assertSameState(await readBack(B), want, 'destination after load');
    // the save read the source by its DMA and put its DMA registers back
    assertSameState(await readBack(A), want, 'source after save');
  });

  test('migrate A B: the destination holds the same registers and buffer', async () => {
    const want = await program(A, 3);
    assert.equal(run('reset', B).status, 0);
    // with pre-copy where the kernel has it: the driver's preamble goes before the stop
    const r = run('migrate', A, B, ...(hasPrecopy ? ['--precopy-iterations', '2'] : []));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout + r.stderr, /migrated 1 device/);
    if (hasPrecopy) assert.match(r.stdout, /pre-copy [1-9]\d* passes 16 B/, 'the preamble moved before the stop');
    assertSameState(await readBack(B), want, 'destination after migrate');
  });

  test('a stream corrupted in transit fails the load (exit 5) and the destination is reset', async () => {
    await program(A, 4);
    const file = join(TMP, 'c.vfmig');
    assert.equal(run('save', A, '-o', file).status, 0);
    await program(B, 5);
    const bytes = readFileSync(file);
    bytes[bytes.length - 200] ^= 0x40; // inside the one record's payload
    writeFileSync(join(TMP, 'bad.vfmig'), bytes);
    const load = run('load', B, '-i', join(TMP, 'bad.vfmig'));
    assert.equal(load.status, 5, load.stderr);
    assert.match(load.stderr, /CRC|checksum/i);
    assert.match(load.stderr, /reset/i);
    assertSameState(await readBack(B), RESET_STATE, 'destination after the failed load');
  });

  test("the driver's own header refuses a payload that is not its stream: RESUMING -> STOP fails, destination reset", async () => {
    await program(A, 6);
    const file = join(TMP, 'd.vfmig');
    assert.equal(run('save', A, '-o', file).status, 0);
    // re-encode with valid stream CRCs around a payload whose bytes the driver's checksum no longer covers
    const decoder = new StreamDecoder(
      (async function* () {
        yield readFileSync(file);
      })(),
    );
    const header = await decoder.readHeader();
    const chunks: Buffer[] = [];
    const encoder = new StreamEncoder(async (c: Buffer) => void chunks.push(Buffer.from(c)), header);
    for await (const rec of decoder.records()) {
      const payload = Buffer.from(rec.payload);
      payload[payload.length - 1] ^= 0x01;
      await encoder.writeRecord(rec.phase, payload);
    }
    await encoder.finish();
    writeFileSync(join(TMP, 'foreign.vfmig'), Buffer.concat(chunks));
    await program(B, 7);
    const load = run('load', B, '-i', join(TMP, 'foreign.vfmig'));
    assert.equal(load.status, 4, load.stderr);
    assert.match(load.stderr, /EINVAL/);
    assertSameState(await readBack(B), RESET_STATE, 'destination after the refused load');
  });

  test('device DMA logging: the driver, which sees the DMA commands, logs the pages a DMA to RAM writes', async () => {
    const edu = openEdu(A);
    try {
      assert.equal(probeDmaLogging(edu.device).supported, true);
      const log = DmaLog.start(edu.device, [{ iova: IOVA, length: BigInt(MEM) }], 4096n);
      try {
        assert.equal(log.pageSize, 4096n);
        await waitIdle(edu.device);
        // RAM -> device reads memory only: nothing to log
        edu.bytes.fill(0x5a, 0, REACH);
        await dma(edu.device, IOVA, BUF_ADDR, REACH, 0n);
        edu.bytes.fill(0);
        // device -> RAM across a page boundary: pages 3 and 4
        await dma(edu.device, BUF_ADDR, IOVA + 0x3800n, REACH, CMD_TO_RAM);
        const changed: number[] = [];
        for (let p = 0; p < MEM / 4096; p++)
          if (edu.bytes.subarray(p * 4096, (p + 1) * 4096).some((b) => b !== 0)) changed.push(p);
        assert.deepEqual(changed, [3, 4], 'the pages the DMA really wrote');
        if (kernelReports()) {
          assert.deepEqual([...(await log.report(IOVA, BigInt(MEM))).dirtyPages()], changed, 'device log report');
          assert.equal((await log.report(IOVA, BigInt(MEM))).count(), 0, 'the report cleared the log');
        } else {
          await assert.rejects(
            log.report(IOVA, BigInt(MEM)),
            (e: unknown) => e instanceof SyscallError && e.code === 'EOPNOTSUPP',
          );
        }
      } finally {
        log.stop();
      }
    } finally {
      edu.close();
    }
  });

  test('DMA logging agrees with the DMA commanded and with the IOMMU dirty bitmap (which names every mapped page)', async () => {
    const PAGES = MEM / 4096;
    const fds = openFdCount();
    const edu = openEdu(A);
    try {
      const tracker = edu.device.container!.dma;
      await waitIdle(edu.device);
      // the buffer gets a pattern with no zero byte, so every page a DMA to RAM reaches changes
      edu.bytes.fill(0x5a, 0, REACH);
      await dma(edu.device, IOVA, BUF_ADDR, REACH, 0n);
      edu.bytes.fill(0);
      tracker.startDirtyTracking();
      const atStart = tracker.dirtyBitmap(IOVA, BigInt(MEM));
      const log = DmaLog.start(edu.device, [{ iova: IOVA, length: BigInt(MEM) }], 4096n);
      try {
        // RAM -> device reads memory only: neither the device log nor the bytes change
        // (into the buffer's second half: the DMAs to RAM below copy from its first bytes)
        await dma(edu.device, IOVA + 0x6000n, BUF_ADDR + 2048n, 100, 0n);
        const commanded: [bigint, number][] = [
          [0n, 1], // page 0
          [0x3800n, REACH], // pages 3 and 4
          [0x9000n + 100n, 8], // page 9
          [0xf000n, 16], // page 15, the mapping's last
        ];
        for (const [at, cnt] of commanded) await dma(edu.device, BUF_ADDR, IOVA + at, cnt, CMD_TO_RAM);
        const expected = [0, 3, 4, 9, 15];
        const changed: number[] = [];
        for (let p = 0; p < PAGES; p++)
          if (edu.bytes.subarray(p * 4096, (p + 1) * 4096).some((b) => b !== 0)) changed.push(p);
        assert.deepEqual(changed, expected, 'the pages the DMAs really wrote');

        /*
         * The type1 IOMMU cannot see which pages a device behind a real IOMMU writes (the emulated intel-iommu
         * has no dirty bit type1 reads): with a group attached that does not limit its DMA to pinned pages
         * (vfio-pci, never pinning), vfio_iommu_type1's update_user_bitmap() sets every page of each
         * iommu-mapped vfio_dma in every report, and re-marks them for the next. So on both kernels the IOMMU
         * bitmap is the whole mapping, every time: a superset of what the device wrote, never the same set;
         * only the device's own log (edu's driver sees each DMA command) is exact.
         */
        const all = [...Array(PAGES).keys()];
        assert.deepEqual([...atStart.dirtyPages()], all, 'IOMMU bitmap at the start of tracking');
        const iommu = tracker.dirtyBitmap(IOVA, BigInt(MEM));
        assert.deepEqual([...iommu.dirtyPages()], all, 'IOMMU bitmap after the DMAs: every mapped page');
        for (const p of expected) assert.ok(iommu.isDirty(p), `the IOMMU bitmap names page ${p}`);
        assert.equal(
          tracker.dirtyBitmap(IOVA, BigInt(MEM)).count(),
          PAGES,
          'the IOMMU reported all again, not cleared',
        );

        if (kernelReports()) {
          const device = await log.report(IOVA, BigInt(MEM));
          assert.deepEqual([...device.dirtyPages()], expected, 'device DMA log report: exactly the commanded pages');
          for (const p of device.dirtyPages()) assert.ok(iommu.isDirty(p), 'device log within the IOMMU bitmap');
          assert.equal((await log.report(IOVA, BigInt(MEM))).count(), 0, 'the report cleared the log');
        } else {
          // Debian's 6.12 refuses the report itself (no CONFIG_IOMMUFD_DRIVER): only the IOMMU side is compared
          console.log('# device DMA log report refused by the kernel (EOPNOTSUPP): compared the IOMMU bitmap only');
          await assert.rejects(
            log.report(IOVA, BigInt(MEM)),
            (e: unknown) => e instanceof SyscallError && e.code === 'EOPNOTSUPP',
          );
        }
      } finally {
        log.stop();
      }
      tracker.stopDirtyTracking();
    } finally {
      edu.close();
    }
    assert.equal(openFdCount(), fds, 'no fd leaked');
  });

  test('vfio-mig check passes (exit 0) on both devices, no rule failed (SHOULD rules included), state restored', () => {
    for (const address of [A, B]) {
      const r = run('check', address, '--json');
      assert.equal(r.status, 0, r.stdout.slice(0, 4000) + r.stderr);
      const report = JSON.parse(r.stdout) as {
        conformant: boolean;
        counts: Record<string, number>;
        findings: { verdict: string; detail: string; rule: { id: string } }[];
        restore: { ok: boolean };
      };
      assert.equal(report.conformant, true);
      assert.deepEqual(
        report.findings
          .filter((f) => f.verdict === 'fail' || f.verdict === 'warn')
          .map((f) => `${f.rule.id}: ${f.detail}`),
        [],
      );
      assert.equal(report.restore.ok, true);
      // DMA logging is offered: its rules run (the report rules only where the kernel can report)
      assert.ok(report.findings.some((f) => f.rule.id === 'v2.dmalog.start-twice' && f.verdict === 'pass'));
    }
  });

  describe('the failure matrix of save, load and migrate on the edu pair', () => {
    /** A fresh open of the device finds it RUNNING (the killed or failed process's fd is gone). */
    function assertRunning(address: string, what: string): void {
      const r = run('state', address);
      assert.equal(r.status, 0, `${what}: ${r.stderr}`);
      assert.equal(r.stdout.trim(), 'RUNNING', `${what}: a new open finds ${address} ${r.stdout.trim()}`);
    }

    /**
     * The device's state read back by its registers and its own DMA, retried while a process that is still
     * exiting (a receiver resetting its device) holds it: vfio-pci opens a device once (EBUSY).
     */
    async function settledReadBack(address: string): Promise<EduState> {
      for (let i = 0; ; i++) {
        try {
          return await readBack(address);
        } catch (e) {
          if (!['EBUSY', 'ERR_VFIO_BUSY'].includes((e as { code?: string }).code ?? '') || i >= 100) throw e;
          await sleep(100);
        }
      }
    }

    /** The source: RUNNING, its registers and buffer as programmed. */
    async function assertSource(want: EduState, what: string): Promise<void> {
      assertRunning(A, `${what}, source`);
      assertSameState(await settledReadBack(A), want, `${what}: the source`);
    }

    /** The destination: RUNNING, and in the one state the failure leaves it (reset, or untouched). */
    async function assertDestination(want: EduState, what: string): Promise<void> {
      const got = await settledReadBack(B);
      assertRunning(B, `${what}, destination`);
      assertSameState(got, want, `${what}: the destination`);
    }

    /** Files in TMP, to prove that a failure left none behind. */
    const files = () => readdirSync(TMP).sort();

    /**
     * A FIFO whose both ends the test holds (so the save finds a reader), enlarged to the 1 MiB the save
     * asks for and filled: edu's stream (4.3 KiB) would fit in any pipe, so only a full one makes the
     * save's first write block. `drain()` reads what is in it, letting blocked writes through.
     */
    function fullFifo(name: string) {
      const path = join(TMP, name);
      assert.equal(spawnSync('mkfifo', [path]).status, 0);
      const fd = openSync(path, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
      native.setPipeSize(fd, 1 << 20);
      const page = Buffer.alloc(4096, 0xee);
      let filled = 0;
      for (;;) {
        try {
          filled += writeSync(fd, page);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
          throw e;
        }
      }
      return {
        path,
        filled,
        /** Reads everything the FIFO holds now; returns the bytes past the filler. */
        drain(): Buffer {
          const out: Buffer[] = [];
          const chunk = Buffer.alloc(1 << 16);
          for (;;) {
            try {
              const n = readSync(fd, chunk);
              if (n === 0) break;
              out.push(Buffer.from(chunk.subarray(0, n)));
            } catch (e) {
              if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
              throw e;
            }
          }
          return Buffer.concat(out);
        },
        /** Reads one page of the filler: room for 4 KiB more. */
        free1Page(): void {
          assert.equal(readSync(fd, Buffer.alloc(4096)), 4096);
        },
        close() {
          closeSync(fd);
          rmSync(path, { force: true });
        },
      };
    }

    /**
     * A relay for the exec: transport that passes the first `limit` bytes of what the source sends and then
     * either dies ('die': the channel is cut) or stalls ('stall': keeps reading and dropping, until its input
     * ends or the receiver whose pid is in `pidFile` is gone). It creates `reached` once the limit passed.
     */
    function relayScript(): string {
      const path = join(TMP, 'relay.js');
      writeFileSync(
        path,
        `const fs = require('fs');
const [limit, mode, reached, pidFile] = [Number(process.argv[2]), process.argv[3], process.argv[4], process.argv[5]];
let n = 0;
process.stdout.on('error', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.on('data', (c) => {
  if (n >= limit) return;
  const k = Math.min(c.length, limit - n);
  n += k;
  process.stdout.write(c.subarray(0, k), () => {
    if (n < limit) return;
    fs.writeFileSync(reached, '');
    if (mode === 'die') process.exit(0);
    setInterval(() => {
      try { process.kill(Number(fs.readFileSync(pidFile, 'utf8')), 0); } catch { process.exit(0); }
    }, 50);
  });
});
`,
      );
      return path;
    }

    /** `exec:` target: the relay, then a receiver on B that writes its pid to `pidFile` first. */
    function relayTo(limit: number, mode: 'die' | 'stall', reached: string, pidFile: string): string {
      const recv = join(TMP, 'recv.sh');
      writeFileSync(recv, `echo $$ > "$1"; shift; exec ${VFIO_MIG_COMMAND} receive "$@"\n`);
      return `exec:${process.execPath} ${relayScript()} ${limit} ${mode} ${reached} ${pidFile} | sh ${recv} ${pidFile} ${B}`;
    }

    const until = async (cond: () => boolean, ms: number, what: string) => {
      for (let t = 0; !cond(); t += 20) {
        if (t > ms) throw new Error(`waited ${ms} ms for ${what}`);
        await sleep(20);
      }
    };

    test('save -o FIFO blocked writing its one record in stop-and-copy, SIGINT: exit 130 without waiting for the reader, no whole stream; source RUNNING and unchanged', async () => {
      const want = await program(A, 8);
      const before = files();
      const fds = openFdCount();
      const fifo = fullFifo('int.fifo');
      let out: Buffer;
      const c = cli(['save', A, '-o', fifo.path]);
      try {
        // The stream's first write blocks on the full FIFO; give the save time to reach it (start-up
        // under TCG on a loaded host can take longer than any fixed wait: wait for the line first).
        await c.stderrMatch(/stop-copy: /);
        await sleep(500);
        assert.equal(c.child.exitCode, null, `the save ended although the FIFO is full: ${c.stderr()}`);
        assert.match(c.stderr(), /stop-copy: /);
        assert.doesNotMatch(c.stderr(), /done: /, 'blocked in stop-and-copy');
        c.child.kill('SIGINT');
        // The abort drops the write that waits for the reader (the FIFO is written by the event
        // loop, not by a pool thread): the save ends as aborted while nobody reads.
        const r = await c.exited;
        assert.equal(r.code, 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
        assert.match(r.stderr, /aborted/);
        out = fifo.drain().subarray(fifo.filled);
      } finally {
        await stop(c);
        fifo.close();
      }
      // Whatever reached the FIFO is not a whole stream: it never passes for one.
      const file = join(TMP, 'int.vfmig');
      writeFileSync(file, out);
      assert.equal(run('verify', file).status, 5, 'a partial stream fails verify');
      rmSync(file);
      await assertSource(want, 'save aborted in its blocked write');
      assert.deepEqual(files(), before, 'no file left');
      assert.equal(openFdCount(), fds, 'no fd leaked');
    });

    test('save -o FIFO SIGKILLed with the device open, before the stop (no data fd yet): the source RUNNING and unchanged', async () => {
      const want = await program(A, 10);
      const before = files();
      const fds = openFdCount();
      const fifo = fullFifo('early.fifo');
      const c = cli(['save', A, '-o', fifo.path]);
      try {
        const pid = c.child.pid!;
        const nap = new Int32Array(new SharedArrayBuffer(4));
        // Watch the save's fds without yielding: the kill lands the moment its device fd appears.
        let links: string[] = [];
        for (const t0 = Date.now(); Date.now() - t0 < 20_000;) {
          try {
            links = readdirSync(`/proc/${pid}/fd`).map((n) => {
              try {
                return readlinkSync(`/proc/${pid}/fd/${n}`);
              } catch {
                return '';
              }
            });
          } catch {
            links = [];
          }
          if (links.some((l) => l.includes('vfio-device'))) break;
          Atomics.wait(nap, 0, 0, 1);
        }
        process.kill(pid, 'SIGKILL');
        assert.ok(
          links.some((l) => l.includes('vfio-device')),
          'the save opened the device',
        );
        assert.ok(!links.some((l) => l.includes('vfio_mig_edu')), `the kill came before STOP_COPY: ${links.join(' ')}`);
        const r = await c.exited;
        assert.equal(r.signal, 'SIGKILL', `the save ended before the kill: exit ${r.code} ${r.stderr}`);
        assert.doesNotMatch(r.stderr, /stop-copy/);
      } finally {
        await stop(c);
        fifo.close();
      }
      await assertSource(want, 'save killed before the stop');
      assert.deepEqual(files(), before, 'no file left');
      assert.equal(openFdCount(), fds, 'no fd leaked');
    });

    for (const written of [false, true]) {
      const when = written ? 'with the first 4 KiB of its stream in the FIFO' : 'with none of its stream in the FIFO';
      test(`save -o FIFO SIGKILLed in its blocked write, ${when}: the source RUNNING and unchanged on the next open`, async () => {
        const want = await program(A, 11);
        const before = files();
        const fds = openFdCount();
        const fifo = fullFifo('kill.fifo');
        const c = cli(['save', A, '-o', fifo.path]);
        try {
          await c.stderrMatch(/stop-copy: /);
          await sleep(500);
          // Its one record's write blocks: the device is in STOP_COPY.
          assert.match(c.stderr(), /stop-copy: /);
          assert.doesNotMatch(c.stderr(), /done: /, 'blocked in stop-and-copy');
          if (written) {
            fifo.free1Page(); // room for 4 KiB: the header and the first part of the device's record pass
            await sleep(1000);
          }
          const r = await kill9(c);
          assert.equal(r.signal, 'SIGKILL', `the save ended before the kill: exit ${r.code} ${r.stderr}`);
          if (written) assert.ok(fifo.drain().length > 0, 'a part of the stream reached the FIFO');
        } finally {
          await stop(c);
          fifo.close();
        }
        await assertSource(want, `save killed ${when}`);
        assert.deepEqual(files(), before, 'no file left');
        assert.equal(openFdCount(), fds, 'no fd leaked');
      });
    }

    test('load -i - SIGKILLed with the first part of the stream written: the destination RUNNING with its previous state', async () => {
      const want = await program(A, 10);
      const file = join(TMP, 'l.vfmig');
      assert.equal(run('save', A, '-o', file).status, 0);
      const stream = readFileSync(file);
      const previous = await program(B, 11);
      const fds = openFdCount();
      const c = cli(['load', B, '-i', '-'], ['pipe', 'pipe', 'pipe']);
      c.child.stdin!.on('error', () => undefined);
      c.child.stdin!.write(stream.subarray(0, stream.length - 1500)); // inside the device's one record
      await Promise.race([c.stderrMatch(/resuming/), sleep(3000)]);
      await sleep(500);
      const r = await kill9(c);
      assert.equal(r.signal, 'SIGKILL', `the load ended before the kill: exit ${r.code} ${r.stderr}`);
      // The driver puts a stream in only on RESUMING -> STOP; closing the fd in RESUMING leaves the device as it was.
      await assertDestination(previous, 'load killed mid-way');
      assert.equal(openFdCount(), fds, 'no fd leaked');
      // and the device is usable: a fresh load puts the whole stream in
      const load = run('load', B, '-i', file);
      assert.equal(load.status, 0, load.stderr);
      assertSameState(await readBack(B), want, 'after a fresh load');
      rmSync(file);
    });

    test('load of a truncated stream: exit 5; cut in the stream header the destination untouched, after it reset', async () => {
      const want = await program(A, 12);
      const file = join(TMP, 't.vfmig');
      assert.equal(run('save', A, '-o', file).status, 0);
      const stream = readFileSync(file);
      // The stream header (its length at 12) is read before the destination is opened: a cut there leaves
      // the device untouched; a cut after it reaches a device already in RESUMING, which the load resets.
      const headerEnd = 16 + stream.readUInt32LE(12) + 4;
      for (const cut of [100, headerEnd + 10, stream.length - 1000, stream.length - 30, stream.length - 1]) {
        const previous = await program(B, 13);
        writeFileSync(join(TMP, 'cut.vfmig'), stream.subarray(0, cut));
        const load = run('load', B, '-i', join(TMP, 'cut.vfmig'));
        assert.equal(load.status, 5, `cut at ${cut} of ${stream.length}: ${load.stderr}`);
        assert.match(load.stderr, /ends at offset|truncated|incomplete/i, `cut at ${cut}`);
        await assertDestination(
          cut < headerEnd ? previous : RESET_STATE,
          `a load cut at ${cut} of ${stream.length} (header ${headerEnd})`,
        );
      }
      rmSync(join(TMP, 'cut.vfmig'));
      rmSync(file);
      await assertSource(want, 'after the truncated loads');
    });

    test('migrate A B with the channel cut inside the record: exit 9 (or 7), source RUNNING and unchanged, destination reset', async () => {
      const want = await program(A, 14);
      await program(B, 15);
      const before = files();
      const reached = join(TMP, 'reached');
      const pidFile = join(TMP, 'recv.pid');
      const fds = openFdCount();
      const c = cli(['migrate', A, relayTo(3000, 'die', reached, pidFile)]);
      const r = await c.exited;
      assert.ok(existsSync(reached), `the relay passed 3000 bytes before the end: ${r.stderr}`);
      assert.ok([7, 9].includes(r.code!), `exit ${r.code} ${r.signal}: ${r.stderr}`);
      rmSync(reached);
      rmSync(pidFile);
      await assertSource(want, 'migrate over a cut channel');
      await assertDestination(RESET_STATE, 'migrate over a cut channel');
      const scripts = (f: string) => f !== 'relay.js' && f !== 'recv.sh';
      assert.deepEqual(files().filter(scripts), before.filter(scripts), 'no file left');
      assert.equal(openFdCount(), fds, 'no fd leaked');
    });

    test('migrate A B with the receiver SIGKILLed mid-stream: exit 9 (or 7), source RUNNING and unchanged, destination as before', async () => {
      const want = await program(A, 16);
      const previous = await program(B, 17);
      const reached = join(TMP, 'reached');
      const pidFile = join(TMP, 'recv.pid');
      const fds = openFdCount();
      const c = cli(['migrate', A, relayTo(3000, 'stall', reached, pidFile)]);
      await until(() => existsSync(reached) && existsSync(pidFile), 20_000, 'the relay to pass 3000 bytes');
      await sleep(300);
      process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL');
      const r = await c.exited;
      assert.ok([7, 9].includes(r.code!), `exit ${r.code} ${r.signal}: ${r.stderr}`);
      rmSync(reached);
      rmSync(pidFile);
      await assertSource(want, 'migrate whose receiver was killed');
      // The receiver died in RESUMING, before RESUMING -> STOP: the driver never put the stream in.
      await assertDestination(previous, 'the killed receiver');
      assert.equal(openFdCount(), fds, 'no fd leaked');
    });

    test('migrate A B, Ctrl-C at the source while the stream is under way: exit 130, source RUNNING and unchanged, destination reset', async () => {
      const want = await program(A, 18);
      await program(B, 19);
      const reached = join(TMP, 'reached');
      const pidFile = join(TMP, 'recv.pid');
      const fds = openFdCount();
      const c = cli(['migrate', A, relayTo(3000, 'stall', reached, pidFile)]);
      await until(() => existsSync(reached), 20_000, 'the relay to pass 3000 bytes');
      await sleep(300);
      c.child.kill('SIGINT');
      const r = await c.exited;
      assert.equal(r.code, 130, `exit ${r.code} ${r.signal}: ${r.stderr}`);
      // The receiver sees its input end (the relay's input closed with the source) and resets its device.
      const pid = Number(readFileSync(pidFile, 'utf8'));
      await until(
        () => {
          try {
            process.kill(pid, 0);
            return false;
          } catch {
            return true;
          }
        },
        20_000,
        'the orphaned receiver to exit',
      );
      rmSync(reached);
      rmSync(pidFile);
      await assertSource(want, 'migrate interrupted at the source');
      await assertDestination(RESET_STATE, 'the receiver whose source was interrupted');
      assert.equal(openFdCount(), fds, 'no fd leaked');
    });

    test(
      "a destination that refuses edu's stream (the mdev test driver's v2 device): exit 7 from migrate, 5 from load; the source never stopped",
      { skip: needsDriver },
      async () => {
        const want = await program(A, 20);
        const other = new TestDevice('v2', { stateSize: 1 << 20 });
        try {
          const sum = other.checksum();
          const m = run('migrate', A, `exec:${VFIO_MIG_COMMAND} receive ${other.uuid}`);
          assert.equal(m.status, 7, m.stderr);
          assert.match(m.stderr, /another kind of device.*nothing was stopped/s, 'refused before the source stopped');
          console.log(`# edu -> mdev v2: ${m.stderr.trim().split('\n').pop()}`);
          const file = join(TMP, 'r.vfmig');
          assert.equal(run('save', A, '-o', file).status, 0);
          const l = run('load', other.uuid, '-i', file);
          assert.equal(l.status, 5, l.stderr);
          console.log(`# load of edu's stream into mdev v2: ${l.stderr.trim().split('\n').pop()}`);
          rmSync(file);
          assert.equal(other.checksum(), sum, 'the refusing destination kept its state');
          assert.equal(run('state', other.uuid).stdout.trim(), 'RUNNING', 'the refusing destination runs');
          await assertSource(want, 'after the refusals');
        } finally {
          other.remove();
        }
      },
    );
  });

  test('no kernel complaints (DMAR faults, unhandled interrupts, warnings)', () => {
    const dmesg = spawnSync('dmesg', { encoding: 'utf8' }).stdout;
    assert.doesNotMatch(dmesg, /DMAR: \[DMA (Read|Write)|nobody cared|WARNING:|BUG:/);
  });
});
