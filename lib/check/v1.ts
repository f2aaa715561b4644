// The v1 checks (migration region): region, header, state machine, saving steps a-f, resuming steps a-c.
import type { RegionInfo } from '../decode';
import { layout, VFIO_DEVICE_STATE_MASK } from '../uapi';
import { V1Engine, V1_HEADER_SIZE, splitByAreas, v1StateName } from '../migration/v1';
import type { Mapping } from '../mapping';
import { CheckContext, hex, refusal } from './context';
import { V1_DIAGRAM_ARCS } from './rules';

const REG = layout.vfio_device_migration_info.fields;
const PAGE = 4096n;
/** A stop-and-copy that moves more than this has not run dry: the rule fails rather than loop forever. */
const MAX_SAVE_BYTES = 8n << 30n;

export interface V1Probe {
  engine: V1Engine;
  info: RegionInfo;
  /** device_state as read right after open, before anything else. */
  initialState: number;
}

/** The transactions of one stop-and-copy, as the device gave them (sizes preserved). */
export type Transactions = Buffer[];

export function checkV1Region(ctx: CheckContext, p: V1Probe): void {
  const info = p.info;
  ctx.pass('v1.region.type', `region ${info.index} has the type capability (3, 1)`, { region: info.index });
  const problems: string[] = [];
  if (info.size <= BigInt(V1_HEADER_SIZE)) problems.push(`size ${info.size} leaves no room after the header`);
  if (!info.readable || !info.writable) problems.push('not both readable and writable');
  const ev = { region: info.index, size: info.size.toString(), flags: hex(info.flags) };
  if (problems.length) ctx.fail('v1.region.layout', problems.join('; '), ev);
  else ctx.pass('v1.region.layout', `${info.size} bytes, read/write`, ev);
  if (!info.mmapAreas.length) {
    ctx.skip('v1.region.sparse', 'the region has no sparse mmap areas (data section trapped)');
    return;
  }
  const bad = info.mmapAreas.filter(
    (a) => a.offset < BigInt(V1_HEADER_SIZE) || a.offset + a.size > info.size || a.offset % PAGE || a.size % PAGE,
  );
  const areas = info.mmapAreas.map((a) => `[${a.offset}, +${a.size})`);
  if (bad.length)
    ctx.fail(
      'v1.region.sparse',
      `areas over the header, outside the region or unaligned: ${bad.map((a) => `[${a.offset}, +${a.size})`).join(' ')}`,
      { areas },
    );
  else ctx.pass('v1.region.sparse', `${areas.length} area(s) inside the data section`, { areas });
}

async function readState(p: V1Probe): Promise<number> {
  return p.engine.region.readAsync(REG.device_state, 4);
}

/** One raw write of device_state keeping bits 3-31 as read; checks the arc and the reserved bits. */
async function arc(ctx: CheckContext, p: V1Probe, to: number, rule?: string): Promise<boolean> {
  const before = await readState(p);
  const value = ((before & ~VFIO_DEVICE_STATE_MASK) | to) >>> 0;
  const step = `device_state ${v1StateName(before)} -> ${v1StateName(to)}`;
  const err = await refusal(() => p.engine.region.writeAsync(REG.device_state, 4, value));
  const after = await readState(p);
  const ev = { step, wrote: hex(value), read: hex(after), errno: err };
  // compared with the bits seen at open too: a driver that lost them earlier keeps them lost
  const opened = p.initialState & ~VFIO_DEVICE_STATE_MASK;
  if ((before & ~VFIO_DEVICE_STATE_MASK) !== opened)
    ctx.fail('v1.state.reserved-kept', `bits 3-31 read ${hex(before & ~7)} before ${step}, ${hex(opened)} at open`, ev);
  if ((after & ~VFIO_DEVICE_STATE_MASK) !== (before & ~VFIO_DEVICE_STATE_MASK))
    ctx.fail(
      'v1.state.reserved-kept',
      `bits 3-31 changed from ${hex(before & ~7)} to ${hex(after & ~7)} on ${step}`,
      ev,
    );
  const ok = err === null && (after & VFIO_DEVICE_STATE_MASK) === to;
  if (rule) {
    if (ok) ctx.pass(rule, `${step}: device_state reads ${hex(after)}`, ev);
    else ctx.fail(rule, err ? `${step} failed with ${err}` : `${step}: device_state reads ${v1StateName(after)}`, ev);
  } else if (!ok) {
    throw new Error(err ? `${step} failed with ${err}` : `${step}: device_state reads ${v1StateName(after)}`);
  }
  return ok;
}

const ARC = new Map(V1_DIAGRAM_ARCS.map(([name, from, to]) => [`${from}-${to}`, `v1.state.arc.${name}`]));
const arcRule = (from: number, to: number): string | undefined => ARC.get(`${from}-${to}`);

async function header(ctx: CheckContext, p: V1Probe): Promise<void> {
  const r = p.engine.region;
  await ctx.step(['v1.header.native-width'], 'read the header at native width', async () => {
    // The u64 registers mean something only while saving or resuming: they are read at their
    // width in stop-and-copy (below), where a failure fails the saving rules.
    const seen = {
      device_state: hex(r.read(REG.device_state, 4)),
      reserved: hex(r.read(REG.reserved, 4)),
    };
    ctx.pass(
      'v1.header.native-width',
      'device_state and reserved read at 4 bytes (the u64 registers: at 8 in stop-and-copy)',
      seen,
    );
  });
  await ctx.step(['v1.header.other-width'], 'read the header at other widths', async () => {
    const tries: [string, number, 1 | 2 | 4 | 8][] = [
      ['2 bytes of device_state', REG.device_state, 2],
      ['4 bytes inside pending_bytes', REG.pending_bytes + 4, 4],
      ['8 bytes at offset 0', 0, 8],
    ];
    const accepted: string[] = [];
    const ev: Record<string, string> = {};
    for (const [what, off, width] of tries) {
      const err = await refusal(() => r.readAsync(off, width as 4));
      ev[what] = err ?? 'accepted';
      if (!err) accepted.push(what);
    }
    if (accepted.length) ctx.fail('v1.header.other-width', `accepted: ${accepted.join(', ')}`, ev);
    else ctx.pass('v1.header.other-width', 'every other width refused', ev);
  });
  await ctx.step(['v1.header.reserved'], 'reserved field', async () => {
    const a = r.read(REG.reserved, 4);
    const werr = await refusal(() => r.writeAsync(REG.reserved, 4, 0xffffffff));
    const b = r.read(REG.reserved, 4);
    const ev = { before: hex(a), afterWrite: hex(b), writeErrno: werr };
    if (a !== 0 || b !== 0)
      ctx.fail('v1.header.reserved', `reserved reads ${hex(a)}, then ${hex(b)} after a write`, ev);
    else ctx.pass('v1.header.reserved', 'reads 0 before and after a write', ev);
  });
}

async function stateMachine(ctx: CheckContext, p: V1Probe): Promise<void> {
  const init = p.initialState & VFIO_DEVICE_STATE_MASK;
  if (init === 0b001) ctx.pass('v1.state.default', 'device_state is 001b after open', { read: hex(p.initialState) });
  else ctx.fail('v1.state.default', `device_state is ${v1StateName(init)} after open`, { read: hex(p.initialState) });

  await ctx.step(['v1.state.invalid-refused', 'v1.state.failed-keeps'], 'invalid states', async () => {
    for (const bad of [0b101, 0b111]) {
      const before = await readState(p);
      const value = ((before & ~VFIO_DEVICE_STATE_MASK) | bad) >>> 0;
      const err = await refusal(() => p.engine.region.writeAsync(REG.device_state, 4, value));
      const after = await readState(p);
      const ev = { wrote: hex(value), errno: err, read: hex(after) };
      if (err === null) {
        ctx.fail(
          'v1.state.invalid-refused',
          `writing ${v1StateName(bad)} succeeded (device_state now ${hex(after)})`,
          ev,
        );
        await p.engine.device.reset();
      } else if (after !== before) {
        ctx.fail('v1.state.invalid-refused', `refused with ${err}, but device_state changed to ${hex(after)}`, ev);
        await p.engine.device.reset();
      }
    }
    ctx.passIfClean('v1.state.invalid-refused', '101b and 111b refused, state kept');
    const before = await readState(p);
    const value = ((before & ~VFIO_DEVICE_STATE_MASK) | 0b110) >>> 0;
    const err = await refusal(() => p.engine.region.writeAsync(REG.device_state, 4, value));
    const after = await readState(p);
    const ev = { wrote: hex(value), errno: err, read: hex(after) };
    if (err === null || after !== before) {
      ctx.fail(
        'v1.state.failed-keeps',
        err === null
          ? 'a request of the error state 110b succeeded'
          : `after the refused write device_state reads ${hex(after)}, not ${hex(before)}`,
        ev,
      );
      await p.engine.device.reset();
    } else ctx.pass('v1.state.failed-keeps', `110b refused with ${err}, device_state still ${hex(after)}`, ev);
  });

  const arcIds = V1_DIAGRAM_ARCS.map(([n]) => `v1.state.arc.${n}`);
  await ctx.step([...arcIds, 'v1.state.reserved-kept', 'v1.saving.precopy-any-pending'], 'diagram arcs', async () => {
    const walk: [number, boolean][] = [
      [0b000, true], // running -> stop
      [0b001, false],
      [0b010, true], // running -> saving
      [0b000, true], // saving -> stop
      [0b001, false],
      [0b011, true], // running -> precopy
    ];
    let from = 0b001;
    for (const [to, isRule] of walk) {
      await arc(ctx, p, to, isRule ? arcRule(from, to) : undefined);
      from = (await readState(p)) & VFIO_DEVICE_STATE_MASK;
    }
    // pre-copy -> stop-and-copy with the data not read: the spec's "regardless of pending bytes"
    const pending = p.engine.region.read(REG.pending_bytes, 8);
    const ok = await arc(ctx, p, 0b010, arcRule(0b011, 0b010));
    const ev = { pendingBytes: pending.toString() };
    if (ok) ctx.pass('v1.saving.precopy-any-pending', `pre-copy -> stop-and-copy with ${pending} bytes pending`, ev);
    else
      ctx.fail('v1.saving.precopy-any-pending', `pre-copy -> stop-and-copy refused with ${pending} bytes pending`, ev);
    await arc(ctx, p, 0b000);
    await arc(ctx, p, 0b001);
    await arc(ctx, p, 0b100, arcRule(0b001, 0b100));
    await arc(ctx, p, 0b001, arcRule(0b100, 0b001));
    ctx.passIfClean('v1.state.reserved-kept', 'bits 3-31 unchanged by every transition', {
      bits: hex((await readState(p)) & ~7),
    });
  });
}

/** Steps a-f of stop-and-copy, checking each register; returns the transactions. */
async function stopAndCopy(ctx: CheckContext, p: V1Probe): Promise<Transactions> {
  const r = p.engine.region;
  const maps: Mapping[] = [];
  try {
    if (r.info.mmapAreas.length && ctx.wants('v1.data.mmap-matches'))
      for (const a of r.info.mmapAreas) maps.push(r.mmap(a.offset, a.size, false));
  } catch (err) {
    ctx.fail('v1.data.mmap-matches', `mmap of a sparse area failed: ${(err as Error).message}`, {});
  }
  try {
    return await copyTransactions(ctx, p, maps);
  } finally {
    for (const m of maps) m.unmap();
  }
}

/** The loop of steps a-f; `maps` (one per sparse area, or none) re-read each window through mmap. */
async function copyTransactions(ctx: CheckContext, p: V1Probe, maps: Mapping[]): Promise<Transactions> {
  const r = p.engine.region;
  const size = r.info.size;
  const mmapable = r.info.mmapAreas.length > 0;
  const out: Transactions = [];
  let moved = 0n;
  let pending = r.read(REG.pending_bytes, 8);
  let iteration = 0;
  while (pending > 0n) {
    const again = [r.read(REG.pending_bytes, 8), r.read(REG.pending_bytes, 8)];
    if (again.some((v) => v !== pending))
      ctx.fail('v1.pending.reread', `pending_bytes read ${pending}, then ${again.join(', ')} before data_offset`, {
        iteration,
        reads: [pending, ...again].map(String),
      });
    const offset = await r.readAsync(REG.data_offset, 8);
    const dsize = r.read(REG.data_size, 8);
    const offset2 = await r.readAsync(REG.data_offset, 8);
    const dsize2 = r.read(REG.data_size, 8);
    const ev = { iteration, dataOffset: offset.toString(), dataSize: dsize.toString(), regionSize: size.toString() };
    if (offset2 !== offset || dsize2 !== dsize)
      ctx.fail('v1.data.reread', `data_offset/data_size ${offset}/${dsize} then ${offset2}/${dsize2}`, {
        ...ev,
        dataOffset2: offset2.toString(),
        dataSize2: dsize2.toString(),
      });
    if (offset < BigInt(V1_HEADER_SIZE) || offset > size || dsize > size - offset) {
      ctx.fail(
        'v1.data.in-region',
        `data_offset ${offset} + data_size ${dsize} is outside [${V1_HEADER_SIZE}, ${size})`,
        ev,
      );
      throw new Error(`data window [${offset}, +${dsize}) is outside the region`);
    }
    if (mmapable && offset % PAGE) ctx.fail('v1.data.page-aligned', `data_offset ${offset} is not page aligned`, ev);
    if (dsize === 0n) {
      ctx.fail('v1.saving.stop-copy-ends', `data_size is 0 while pending_bytes is ${pending}`, ev);
      throw new Error('data_size 0 with pending bytes');
    }
    const buf = Buffer.alloc(Number(dsize));
    await r.readBulk(offset, buf);
    if (maps.length) {
      const viaMap = Buffer.from(buf);
      for (const seg of splitByAreas(offset, buf.length, r.info.mmapAreas)) {
        if (seg.area < 0) continue;
        const at = Number(seg.regionOffset - r.info.mmapAreas[seg.area].offset);
        await maps[seg.area].readInto(at, viaMap, seg.bufferOffset, seg.length);
      }
      if (!viaMap.equals(buf)) {
        const first = viaMap.findIndex((b, i) => b !== buf[i]);
        ctx.fail('v1.data.mmap-matches', `transaction ${iteration}: byte ${first} differs between mmap and pread`, {
          ...ev,
          byte: first,
        });
      }
    }
    out.push(buf);
    moved += dsize;
    iteration++;
    if (moved > MAX_SAVE_BYTES) {
      ctx.fail('v1.saving.stop-copy-ends', `pending_bytes still ${pending} after ${moved} bytes`, ev);
      throw new Error('stop-and-copy does not end');
    }
    pending = r.read(REG.pending_bytes, 8);
  }
  const ev = { transactions: out.length, bytes: moved.toString() };
  ctx.passIfClean('v1.pending.reread', 'pending_bytes stable on re-read at every step a', ev);
  ctx.passIfClean('v1.data.reread', 'data_offset and data_size stable on re-read', ev);
  ctx.passIfClean('v1.data.in-region', 'every data window inside the data section', ev);
  if (mmapable) ctx.passIfClean('v1.data.page-aligned', 'every data_offset page aligned', ev);
  else ctx.skip('v1.data.page-aligned', 'the data section is not mmap-able');
  ctx.passIfClean('v1.saving.stop-copy-ends', `pending_bytes reached 0 after ${out.length} transactions`, ev);
  if (maps.length) ctx.passIfClean('v1.data.mmap-matches', 'every transaction reads the same through mmap', ev);
  else if (!mmapable) ctx.skip('v1.data.mmap-matches', 'the data section is not mmap-able');
  return out;
}

/** Runs every v1 rule; `checksum` reads the test driver's state checksum (undefined elsewhere). */
export async function checkV1(ctx: CheckContext, p: V1Probe, checksum: (() => bigint) | undefined): Promise<void> {
  checkV1Region(ctx, p);
  await header(ctx, p);
  await stateMachine(ctx, p);
  if (((await readState(p)) & VFIO_DEVICE_STATE_MASK) !== 0b001) await p.engine.device.reset();

  const saveRules = [
    'v1.pending.reread',
    'v1.data.reread',
    'v1.data.in-region',
    'v1.data.page-aligned',
    'v1.saving.stop-copy-ends',
  ];
  const loadRules = ['v1.resuming.same-sizes', 'both.roundtrip.same-state'];
  let saved: Transactions | undefined;
  let before: bigint | undefined;
  await ctx.step([...saveRules, ...loadRules], 'stop-and-copy', async () => {
    await arc(ctx, p, 0b010);
    before = checksum?.();
    saved = await stopAndCopy(ctx, p);
    await arc(ctx, p, 0b000);
  });
  if (!saved) {
    for (const id of loadRules) ctx.skip(id, 'no stream: the stop-and-copy step failed');
  } else {
    const stream = saved;
    await ctx.step(loadRules, 'resuming steps a-c', async () => {
      await p.engine.enterResuming();
      let seq = 0n;
      for (const payload of stream) await p.engine.writeRecord({ phase: 0, sequence: seq++, payload });
      await p.engine.finishLoad('stopped');
      const sizes = stream.map((b) => b.length);
      ctx.pass(
        'v1.resuming.same-sizes',
        `${stream.length} transactions written with their sizes, resuming -> stop succeeded`,
        { transactions: stream.length, firstSizes: sizes.slice(0, 8).map(String) },
      );
      const after = checksum?.();
      if (before === undefined || after === undefined) {
        ctx.skip(
          'both.roundtrip.same-state',
          'the device has no checksum register (not the test driver): equal state cannot be proven',
        );
      } else if (before === after) {
        ctx.pass('both.roundtrip.same-state', `checksum ${hex(before)} before the save and after the load`, {
          before: hex(before),
          after: hex(after),
        });
      } else {
        ctx.fail('both.roundtrip.same-state', `checksum ${hex(before)} before the save, ${hex(after)} after the load`, {
          before: hex(before),
          after: hex(after),
        });
      }
      await p.engine.setState(0b001);
    });
  }
  p.engine.release();

  await ctx.step(['v1.reset.running'], 'reset', async () => {
    for (const [name, state] of [
      ['stop-and-copy', 0b010],
      ['resuming', 0b100],
    ] as const) {
      if (((await readState(p)) & 7) !== 0b001) await p.engine.device.reset();
      await arc(ctx, p, state);
      await p.engine.device.reset();
      const after = await readState(p);
      const ev = { from: name, read: hex(after) };
      if ((after & 7) !== 0b001)
        ctx.fail('v1.reset.running', `VFIO_DEVICE_RESET in ${name} leaves device_state ${v1StateName(after)}`, ev);
    }
    ctx.passIfClean('v1.reset.running', 'reset from stop-and-copy and from resuming: 001b');
  });
}
