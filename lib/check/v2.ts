// The v2 checks (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE): flags, FSM arcs, the data fd, resuming.
import type { FdHandle } from '../fd-handle';
import { native, type PollWake } from '../native';
import {
  POLLIN,
  VFIO_DEVICE_STATE_ERROR as ERROR,
  VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING as RESUMING,
  VFIO_DEVICE_STATE_RUNNING as RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP as STOP,
  VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
} from '../uapi';
import { supportedStates, v2StateName as name } from '../migration/v2';
import { CheckContext, hex, refusal } from './context';
import {
  checkFdMode,
  goTo,
  pollNames,
  pollNow,
  pollWake,
  precopyInfo,
  readOnce,
  writeAll,
  type V2Probe,
} from './v2-support';

export type { V2Probe } from './v2-support';

/** The FSM arcs of linux/vfio.h (RESUMING -> STOP is checked with a real stream, below). */
const ARCS: readonly [number, number][] = [
  [RUNNING, RUNNING_P2P],
  [RUNNING_P2P, RUNNING],
  [RUNNING_P2P, STOP],
  [STOP, RUNNING_P2P],
  [STOP, STOP_COPY],
  [STOP_COPY, STOP],
  [STOP, RESUMING],
  [RUNNING, PRE_COPY],
  [PRE_COPY, RUNNING],
  [RUNNING_P2P, PRE_COPY_P2P],
  [PRE_COPY_P2P, RUNNING_P2P],
  [PRE_COPY, PRE_COPY_P2P],
  [PRE_COPY_P2P, PRE_COPY],
  [PRE_COPY_P2P, STOP_COPY],
];
/** Arcs that start a data transfer session (a new data_fd). */
const NEW_FD = new Set([
  `${STOP}-${STOP_COPY}`,
  `${STOP}-${RESUMING}`,
  `${RUNNING}-${PRE_COPY}`,
  `${RUNNING_P2P}-${PRE_COPY_P2P}`,
]);
const READ_SIZE = 1 << 20;
const MAX_STREAM = 8 * 2 ** 30;

async function flagsAndArcs(ctx: CheckContext, p: V2Probe): Promise<void> {
  const known = BigInt(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY);
  const fev = { flags: hex(p.flags) };
  if (!(p.flags & BigInt(VFIO_MIGRATION_STOP_COPY))) ctx.fail('v2.flags.consistent', 'STOP_COPY is not set', fev);
  else if (p.flags & ~known) ctx.fail('v2.flags.consistent', `unknown flag bits ${hex(p.flags & ~known)}`, fev);
  else ctx.pass('v2.flags.consistent', `flags ${hex(p.flags)}`, fev);

  const states = supportedStates(p.engine.support);
  await ctx.step(['v2.state.unsupported'], 'unsupported states', async () => {
    await goTo(p, RUNNING);
    for (const s of [RUNNING_P2P, PRE_COPY, PRE_COPY_P2P].filter((x) => !states.has(x))) {
      const err = await refusal(() => p.engine.setArcRaw(s).then((fd) => fd?.close()));
      const now = await p.engine.getState();
      const ev = { requested: name(s), errno: err, state: name(now) };
      if (err === null || now !== RUNNING) {
        ctx.fail(
          'v2.state.unsupported',
          `${name(s)} is not flagged, yet ${err === null ? 'SET succeeded' : `the state became ${name(now)}`}`,
          ev,
        );
        await p.engine.device.reset();
      }
    }
    ctx.passIfClean('v2.state.unsupported', `flags ${hex(p.flags)}: every state left out is refused`);
  });

  await ctx.step(
    ['v2.arc.reach', 'v2.datafd.exact', 'v2.datafd.mode', 'v2.state.unsupported'],
    'FSM arcs',
    async () => {
      const tried: string[] = [];
      for (const [from, to] of ARCS) {
        if (!states.has(from) || !states.has(to)) continue;
        await goTo(p, from);
        const arc = `${name(from)} -> ${name(to)}`;
        tried.push(arc);
        let fd: FdHandle | null = null;
        const err = await refusal(async () => {
          fd = await p.engine.setArcRaw(to);
        });
        const now = await p.engine.getState();
        const ev = { arc, errno: err, state: name(now), dataFd: fd !== null };
        if (err !== null || now !== to) {
          ctx.fail(
            'v2.arc.reach',
            err ? `${arc} failed with ${err} (state ${name(now)})` : `${arc}: GET reads ${name(now)}`,
            ev,
          );
          if ([RUNNING_P2P, PRE_COPY, PRE_COPY_P2P].includes(to))
            ctx.fail('v2.state.unsupported', `${name(to)} is flagged but ${arc} failed`, ev);
        }
        const wantFd = NEW_FD.has(`${from}-${to}`);
        const got = fd as FdHandle | null;
        if (err === null && wantFd !== (got !== null))
          ctx.fail('v2.datafd.exact', wantFd ? `${arc} returned no data_fd` : `${arc} returned a data_fd`, ev);
        if (got) {
          checkFdMode(ctx, got, to !== RESUMING, arc);
          got.close();
        }
      }
      await p.engine.device.reset();
      const ev = { arcs: tried };
      ctx.passIfClean('v2.arc.reach', `${tried.length} arcs: each reached its state`, ev);
      ctx.passIfClean('v2.datafd.exact', 'a data_fd exactly on the arcs that start a session', ev);
      ctx.passIfClean('v2.datafd.mode', 'saving fds O_RDONLY, resuming fds O_WRONLY, none seekable', ev);
    },
  );

  await ctx.step(['v2.arc.forbidden'], 'forbidden arcs', async () => {
    await goTo(p, RUNNING);
    const err0 = await refusal(() => p.engine.setArcRaw(ERROR).then((fd) => fd?.close()));
    const now0 = await p.engine.getState();
    if (err0 === null || now0 !== RUNNING) {
      ctx.fail('v2.arc.forbidden', `SET ERROR from RUNNING: ${err0 ?? 'succeeded'}, state ${name(now0)}`, {
        errno: err0,
        state: name(now0),
      });
      await p.engine.device.reset();
    }
    if (p.engine.support.preCopy) {
      await goTo(p, PRE_COPY);
      await p.engine.setState(STOP_COPY);
      for (const s of [PRE_COPY, ...(states.has(PRE_COPY_P2P) ? [PRE_COPY_P2P] : [])]) {
        const err = await refusal(() => p.engine.setArcRaw(s).then((fd) => fd?.close()));
        const now = await p.engine.getState();
        if (err === null || now !== STOP_COPY) {
          ctx.fail('v2.arc.forbidden', `STOP_COPY -> ${name(s)}: ${err ?? 'succeeded'}, state ${name(now)}`, {
            errno: err,
            state: name(now),
          });
          await p.engine.device.reset();
          break;
        }
      }
    }
    p.engine.release();
    await goTo(p, RUNNING);
    ctx.passIfClean(
      'v2.arc.forbidden',
      p.engine.support.preCopy
        ? 'ERROR and STOP_COPY -> PRE_COPY(_P2P) refused, state kept'
        : 'ERROR refused (no PRE_COPY: no STOP_COPY -> PRE_COPY arc to try)',
    );
  });
}

/**
 * At PRE_COPY's temporary end of stream: poll() may say readable only if there is data. When it
 * says so, one more read tells a change of the device's (data arrived meanwhile) from a poll op
 * that reports readable over nothing (or a driver without one: the kernel then says readable).
 */
async function precopyPoll(
  ctx: CheckContext,
  fd: FdHandle,
  buf: Buffer,
  ev: Record<string, string | number | null>,
): Promise<void> {
  const revents = await pollNow(fd);
  const said = pollNames(revents);
  const pev = { ...ev, poll: said };
  if (typeof revents === 'string') {
    ctx.fail('v2.precopy.poll', `poll() of the PRE_COPY fd failed with ${revents}`, pev);
    return;
  }
  if (!(revents & POLLIN)) {
    ctx.pass('v2.precopy.poll', `at the temporary end of stream poll() says ${said}: a client can wait`, pev);
    return;
  }
  const n = await readOnce(fd, buf);
  const rev = { ...pev, readAfterPoll: String(n) };
  if (typeof n === 'number' && n > 0)
    ctx.pass('v2.precopy.poll', `poll() said readable and a read gave ${n} bytes (the device dirtied meanwhile)`, rev);
  else
    ctx.fail(
      'v2.precopy.poll',
      `at the temporary end of stream poll() says readable, then read gives ${n}: a client waiting in poll() would spin`,
      rev,
    );
}

/** How long a poll() waits for the device's next data, and how many waits the rule takes at most. */
const POLL_WAKE_MS = 500;
const POLL_WAKE_ROUNDS = 4;

/** Reads until the temporary end of stream (a read gives no data), at most 256 reads. */
async function drainReads(fd: FdHandle, buf: Buffer): Promise<void> {
  for (let reads = 0; reads < 256; reads++) {
    const n = await readOnce(fd, buf);
    if (!(typeof n === 'number' && n > 0)) return;
  }
}

/**
 * A wait that begins at a quiet moment: reads to the temporary end of stream, then one poll() that
 * waits only if nothing is pending (checked in the same pool job, so data that comes between the
 * reads and the wait is seen as pending, never taken for a wake). Null when it never found a quiet
 * moment in 10 tries.
 */
async function waitFromQuiet(fd: FdHandle, buf: Buffer): Promise<PollWake | string | null> {
  for (let tries = 0; tries < 10; tries++) {
    await drainReads(fd, buf);
    const wait = await pollWake(fd, POLL_WAKE_MS);
    if (typeof wait === 'string' || !wait.readyBefore) return wait;
  }
  return null;
}

/**
 * At PRE_COPY's temporary end of stream, a poll() that waits must wake when the device has more
 * data. Each wait starts from a quiet moment (nothing pending), since poll() returns at once over
 * data that is already there, which is no wake. A wait that returns early with data behind it is a
 * wake; one that runs out its time with data behind it is a miss (poll() looks at the fd once
 * more when its time is up, so a driver that never wakes the waiter still reports readable
 * then). Two wakes pass; two misses fail (one could be data that came just before the time was
 * up). No data at all is no verdict.
 */
async function precopyPollWakes(
  ctx: CheckContext,
  fd: FdHandle,
  buf: Buffer,
  ev: Record<string, string | number | null>,
): Promise<void> {
  const id = 'v2.precopy.poll-wakes';
  const waits: string[] = [];
  let wakes = 0;
  let misses = 0;
  for (let round = 1; round <= POLL_WAKE_ROUNDS; round++) {
    const wait = await waitFromQuiet(fd, buf);
    if (wait === null) {
      ctx.skip(id, 'poll() never said "nothing pending" between reads: the device dirties faster than it is read', ev);
      return;
    }
    if (typeof wait === 'string') {
      ctx.fail(id, `a poll() waiting on the PRE_COPY fd failed with ${wait}`, { ...ev, waits });
      return;
    }
    const { revents, waitedMs } = wait;
    const n = await readOnce(fd, buf);
    const data = typeof n === 'number' && n > 0;
    const early = (revents & POLLIN) !== 0 && waitedMs < POLL_WAKE_MS * 0.8;
    waits.push(`${pollNames(revents)} after ${Math.round(waitedMs)} ms, then read ${String(n)}`);
    const wev = { ...ev, waits };
    if (!data) {
      if (early)
        ctx.skip(
          id,
          `poll() said readable after ${Math.round(waitedMs)} ms with no data to read (v2.precopy.poll's finding)`,
          wev,
        );
      else
        ctx.skip(
          id,
          `no new data within ${POLL_WAKE_MS} ms: the device did not dirty itself, so nothing to wake for`,
          wev,
        );
      return;
    }
    if (early) wakes++;
    else misses++;
    if (misses >= 2) {
      ctx.fail(
        id,
        `${misses} of ${round} poll() waits of ${POLL_WAKE_MS} ms ran out their time although the device had data (read right after): a client waiting in poll() sleeps through it`,
        wev,
      );
      return;
    }
    if (wakes >= 2 && (misses === 0 || round === POLL_WAKE_ROUNDS)) {
      ctx.pass(id, `${wakes} of ${round} waiting poll() calls woke when the device had data`, wev);
      return;
    }
  }
  ctx.skip(id, `no clear answer in ${POLL_WAKE_ROUNDS} waits (${wakes} woke, ${misses} ran out their time)`, {
    ...ev,
    waits,
  });
}

async function precopy(ctx: CheckContext, p: V2Probe): Promise<void> {
  const ids = [
    'v2.precopy.enomsg',
    'v2.precopy.poll',
    'v2.precopy.poll-wakes',
    'v2.precopy-info.states',
    'v2.precopy-info.initial',
  ];
  if (!p.engine.support.preCopy) {
    for (const id of ids) ctx.skip(id, 'the device does not flag VFIO_MIGRATION_PRE_COPY');
    return;
  }
  await ctx.step(ids, 'PRE_COPY', async () => {
    await goTo(p, PRE_COPY);
    const fd = p.engine.dataFd;
    if (!fd) throw new Error('RUNNING -> PRE_COPY gave no data_fd');
    const first = await precopyInfo(fd);

    if (first.initial === 0n)
      ctx.fail('v2.precopy-info.initial', 'initial_bytes is 0 on entering PRE_COPY', { initialBytes: '0' });
    const buf = Buffer.alloc(READ_SIZE);
    let last = first.initial;
    let moved = 0;
    let end: number | string | undefined;
    while (moved < MAX_STREAM) {
      const info = await precopyInfo(fd);
      if (info.initial > last)
        ctx.fail(
          'v2.precopy-info.initial',
          `initial_bytes grew from ${last} to ${info.initial} after ${moved} bytes read`,
          { moved },
        );
      last = info.initial;
      const n = await readOnce(fd, buf);
      if (typeof n === 'number' && n > 0) {
        moved += n;
        continue;
      }
      if (info.initial === 0n && info.dirty === 0n) end = n;
      else if (n === 0 || n === 'ENOMSG') end = n;
      else throw new Error(`read of the PRE_COPY fd failed with ${n}`);
      break;
    }
    const ev = { bytesRead: moved, endRead: end === undefined ? null : String(end) };
    ctx.passIfClean('v2.precopy-info.initial', `initial_bytes ${first.initial} at first, never grew`, ev);
    if (end === 'ENOMSG') ctx.pass('v2.precopy.enomsg', `ENOMSG after ${moved} bytes`, ev);
    else if (end === 0)
      ctx.warn(
        'v2.precopy.enomsg',
        `read returned 0 at the temporary end of stream after ${moved} bytes, not ENOMSG`,
        ev,
      );
    else
      ctx.skip('v2.precopy.enomsg', `no temporary end of stream within ${moved} bytes (the device keeps dirtying)`, ev);
    if (end === undefined) {
      for (const id of ['v2.precopy.poll', 'v2.precopy.poll-wakes'])
        ctx.skip(id, `no temporary end of stream within ${moved} bytes (the device keeps dirtying)`, ev);
    } else {
      await precopyPoll(ctx, fd, buf, ev);
      await precopyPollWakes(ctx, fd, buf, ev);
    }
    await p.engine.setState(STOP_COPY);
    const err = await refusal(() => precopyInfo(fd));
    if (err === 'EINVAL')
      ctx.pass('v2.precopy-info.states', 'answers in PRE_COPY, EINVAL in STOP_COPY', {
        initialBytes: first.initial.toString(),
        errno: err,
      });
    else
      ctx.fail(
        'v2.precopy-info.states',
        `in STOP_COPY the ioctl ${err ? `failed with ${err}, not EINVAL` : 'answered'}`,
        { errno: err },
      );
    p.engine.release();
    await goTo(p, RUNNING);
  });
}

/** A STOP_COPY session read to its end; returns the stream. */
async function stopCopy(ctx: CheckContext, p: V2Probe): Promise<Buffer> {
  await goTo(p, STOP);
  const estimate = await p.engine.dataSizeEstimate();
  await p.engine.setState(STOP_COPY);
  const fd = p.engine.dataFd;
  if (!fd) throw new Error('STOP -> STOP_COPY gave no data_fd');
  const parts: Buffer[] = [];
  let total = 0;
  const buf = Buffer.alloc(READ_SIZE);
  for (;;) {
    const n = await readOnce(fd, buf);
    if (n === 'ENOMSG') {
      ctx.fail('v2.stopcopy.no-enomsg', `read of the STOP_COPY fd failed with ENOMSG after ${total} bytes`, {
        bytes: total,
      });
      ctx.fail('v2.stopcopy.eof', `no end of stream: ENOMSG after ${total} bytes`, { bytes: total });
      break;
    }
    if (typeof n === 'string') throw new Error(`read of the STOP_COPY fd failed with ${n} after ${total} bytes`);
    if (n === 0) break;
    parts.push(Buffer.from(buf.subarray(0, n)));
    total += n;
    if (total > MAX_STREAM) throw new Error(`STOP_COPY stream longer than ${MAX_STREAM} bytes`);
  }
  const after = [await readOnce(fd, buf), await readOnce(fd, buf)];
  const ev = { bytes: total, readsAfterEnd: after.map(String) };
  if (after.some((n) => n !== 0))
    ctx.fail('v2.stopcopy.eof', `after the end of stream reads gave ${after.join(', ')}`, ev);
  ctx.passIfClean('v2.stopcopy.eof', `${total} bytes, then 0 and 0`, ev);
  if (ctx.wants('v2.stopcopy.poll')) {
    const revents = await pollNow(fd);
    const said = pollNames(revents);
    const pev = { bytes: total, poll: said };
    if (typeof revents === 'string')
      ctx.fail('v2.stopcopy.poll', `poll() of the STOP_COPY fd failed with ${revents}`, pev);
    else if (revents & POLLIN) ctx.pass('v2.stopcopy.poll', `at the end of stream poll() says ${said}`, pev);
    else ctx.fail('v2.stopcopy.poll', `at the end of stream poll() says ${said}, not readable`, pev);
  }
  ctx.passIfClean('v2.stopcopy.no-enomsg', 'no ENOMSG in STOP_COPY', ev);
  if (estimate === undefined)
    ctx.skip('v2.data-size.estimate', 'no VFIO_DEVICE_FEATURE_MIG_DATA_SIZE (kernel before 6.3 or driver without it)');
  else {
    const dev = { estimate: estimate.toString(), actual: total };
    if (BigInt(total) > 2n * estimate + 4096n)
      ctx.fail('v2.data-size.estimate', `MIG_DATA_SIZE said ${estimate}, STOP_COPY produced ${total} bytes`, dev);
    else ctx.pass('v2.data-size.estimate', `estimate ${estimate}, actual ${total}`, dev);
  }
  await p.engine.setState(STOP);
  // The engine still holds the fd of the ended session: a read must now fail.
  const old = p.engine.dataFd;
  if (old && ctx.wants('v2.datafd.after-session')) {
    const n = await readOnce(old, buf);
    const aev = { read: String(n) };
    if (typeof n === 'number') ctx.fail('v2.datafd.after-session', `a read after STOP_COPY -> STOP returned ${n}`, aev);
    else ctx.pass('v2.datafd.after-session', `a read after STOP_COPY -> STOP fails with ${n}`, aev);
  }
  p.engine.release();
  return Buffer.concat(parts);
}

/** Runs every v2 rule; `checksum` reads the test driver's state checksum (undefined elsewhere). */
export async function checkV2(ctx: CheckContext, p: V2Probe, checksum: (() => bigint) | undefined): Promise<void> {
  await flagsAndArcs(ctx, p);
  await precopy(ctx, p);
  let stream: Buffer | undefined;
  let before: bigint | undefined;
  const scRules = [
    'v2.stopcopy.eof',
    'v2.stopcopy.poll',
    'v2.stopcopy.no-enomsg',
    'v2.data-size.estimate',
    'v2.datafd.after-session',
  ];
  const loadRules = ['v2.resuming.segmentation', 'both.roundtrip.same-state', 'v2.resuming.truncated'];
  await ctx.step([...scRules, ...loadRules], 'STOP_COPY', async () => {
    await goTo(p, STOP);
    before = checksum?.();
    stream = await stopCopy(ctx, p);
  });
  if (!stream) for (const id of loadRules) ctx.skip(id, 'no stream: the STOP_COPY step failed');
  const data = stream ?? Buffer.alloc(0);
  if (stream) {
    await ctx.step(['v2.resuming.segmentation', 'both.roundtrip.same-state'], 'RESUMING', async () => {
      await goTo(p, STOP);
      await p.engine.setState(RESUMING);
      const fd = p.engine.dataFd;
      if (!fd) throw new Error('STOP -> RESUMING gave no data_fd');
      await writeAll(fd, data, (at) => (at < 64 ? 1 : 4093));
      const err = await refusal(() => p.engine.setState(STOP));
      const ev = { bytes: data.length, pieces: '64 x 1 byte, then 4093 bytes', errno: err };
      if (err) {
        ctx.fail('v2.resuming.segmentation', `RESUMING -> STOP after an odd segmentation failed with ${err}`, ev);
        ctx.skip('both.roundtrip.same-state', 'the load failed');
      } else {
        ctx.pass('v2.resuming.segmentation', `${data.length} bytes in odd pieces accepted`, ev);
        // the resuming session ended with RESUMING -> STOP: a write on its fd must fail too
        const w = await refusal(() => fd.run((f) => native.writeAsync(f, data, 0, Math.min(1, data.length))));
        if (w === null)
          ctx.fail('v2.datafd.after-session', 'a write of the resuming fd after RESUMING -> STOP succeeded', {
            write: 'accepted',
          });
        const after = checksum?.();
        if (before === undefined || after === undefined)
          ctx.skip(
            'both.roundtrip.same-state',
            'the device has no checksum register (not the test driver): equal state cannot be proven',
          );
        else if (before === after)
          ctx.pass('both.roundtrip.same-state', `checksum ${hex(before)} before the save and after the load`, {
            before: hex(before),
            after: hex(after),
          });
        else
          ctx.fail(
            'both.roundtrip.same-state',
            `checksum ${hex(before)} before the save, ${hex(after)} after the load`,
            { before: hex(before), after: hex(after) },
          );
      }
      p.engine.release();
    });
    await ctx.step(['v2.resuming.truncated'], 'truncated stream', async () => {
      await goTo(p, STOP);
      await p.engine.setState(RESUMING);
      const fd = p.engine.dataFd;
      if (!fd) throw new Error('STOP -> RESUMING gave no data_fd');
      const cut = Math.floor(data.length / 2);
      await writeAll(fd, data.subarray(0, cut), () => READ_SIZE);
      const err = await refusal(() => p.engine.setArcRaw(STOP).then((f) => f?.close()));
      const now = await p.engine.getState();
      const ev = { wrote: cut, of: data.length, errno: err, state: name(now) };
      if (err === null)
        ctx.fail('v2.resuming.truncated', `RESUMING -> STOP accepted ${cut} of ${data.length} bytes`, ev);
      else ctx.pass('v2.resuming.truncated', `refused with ${err}; state ${name(now)}`, ev);
      p.engine.release();
      await p.engine.device.reset();
    });
  }
  await ctx.step(['v2.reset.running'], 'reset', async () => {
    for (const s of [STOP_COPY, RESUMING]) {
      await goTo(p, s);
      await p.engine.device.reset();
      p.engine.release();
      const now = await p.engine.getState();
      if (now !== RUNNING)
        ctx.fail('v2.reset.running', `VFIO_DEVICE_RESET in ${name(s)} leaves ${name(now)}`, {
          from: name(s),
          state: name(now),
        });
    }
    ctx.passIfClean('v2.reset.running', 'reset from STOP_COPY and from RESUMING: RUNNING');
  });
  p.engine.release();
}
