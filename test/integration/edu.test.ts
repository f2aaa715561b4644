// Integration tests (VM guest) of QEMU's edu devices on the project's vfio_mig_edu variant driver: a real PCI
// device opened by address, programmed through VFIO, migrated by the CLI, its buffer read back by its own DMA.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
import { guestKernel, hasPrecopy, inGuest, needsGuest } from './helpers';

const BIN = join(__dirname, '../../bin/vfio-mig.js');
const TMP = '/tmp/vfio-mig-edu-test';
const EDU = (process.env.VFIO_MIG_EDU ?? '').split(/\s+/).filter(Boolean);
const skip: string | false = !inGuest
  ? needsGuest
  : EDU.length < 2
    ? 'VFIO_MIG_EDU is unset: no two edu devices bound to vfio_mig_edu in this guest (vm.js --no-edu, or the module did not load)'
    : false;
const [A, B] = EDU;

const run = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });

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

  test('no kernel complaints (DMAR faults, unhandled interrupts, warnings)', () => {
    const dmesg = spawnSync('dmesg', { encoding: 'utf8' }).stdout;
    assert.doesNotMatch(dmesg, /DMAR: \[DMA (Read|Write)|nobody cared|WARNING:|BUG:/);
  });
});
