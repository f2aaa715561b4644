// Helpers of the v2 checks: reaching a state, data fd reads and writes, its access mode, PRECOPY_INFO.
import { readFileSync } from 'node:fs';
import type { FdHandle } from '../fd-handle';
import { native, type PollWake } from '../native';
import {
  layout,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  POLLOUT,
  VFIO_DEVICE_STATE_ERROR as ERROR,
  VFIO_DEVICE_STATE_RESUMING as RESUMING,
} from '../uapi';
import type { V2Engine } from '../migration/v2';
import { CheckContext, errnoName } from './context';

export interface V2Probe {
  engine: V2Engine;
  flags: bigint;
}

/** Moves to `state` along the kernel's own paths; a session left in RESUMING is ended by reset. */
export async function goTo(p: V2Probe, state: number): Promise<void> {
  const now = await p.engine.getState();
  if (now === state) return;
  if (now === RESUMING || now === ERROR) await p.engine.device.reset();
  p.engine.release();
  await p.engine.setState(state);
}

/** The access mode of an fd (O_RDONLY 0, O_WRONLY 1, O_RDWR 2) from /proc/self/fdinfo. */
function accessMode(fd: number): number | undefined {
  try {
    const m = /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m ? parseInt(m[1], 8) & 3 : undefined;
  } catch {
    return undefined;
  }
}

export function checkFdMode(ctx: CheckContext, fd: FdHandle, saving: boolean, step: string): void {
  const mode = accessMode(fd.fd);
  const want = saving ? 0 : 1;
  const seek = (() => {
    try {
      native.pread(fd.fd, Buffer.alloc(1), 0, 1, 0);
      return null;
    } catch (err) {
      return errnoName(err);
    }
  })();
  const ev = { step, accessMode: mode === undefined ? null : ['O_RDONLY', 'O_WRONLY', 'O_RDWR'][mode], pread: seek };
  if (mode !== undefined && mode !== want)
    ctx.fail('v2.datafd.mode', `${step}: the fd is ${ev.accessMode}, not ${saving ? 'O_RDONLY' : 'O_WRONLY'}`, ev);
  else if (seek !== 'ESPIPE')
    ctx.fail('v2.datafd.mode', `${step}: pread on the fd gave ${seek ?? 'data'}, not ESPIPE (seekable)`, ev);
}

export async function precopyInfo(fd: FdHandle): Promise<{ initial: bigint; dirty: bigint }> {
  const raw = await fd.run((f) => native.migGetPrecopyInfoAsync(f));
  const l = layout.vfio_precopy_info.fields;
  return { initial: raw.readBigUInt64LE(l.initial_bytes), dirty: raw.readBigUInt64LE(l.dirty_bytes) };
}

/** The outcome of a data fd call: its result, or the errno's name. */
function orErrno<T>(call: Promise<T>): Promise<T | string> {
  return call.catch(errnoName);
}

/** A poll() of the data fd that waits only if nothing is pending (native.pollWakeAsync), or the errno. */
export function pollWake(fd: FdHandle, timeoutMs: number): Promise<PollWake | string> {
  return orErrno(fd.run((f) => native.pollWakeAsync(f, POLLIN, timeoutMs)));
}

/** What poll() says of the data fd at this moment (it never waits): revents, or the errno. */
export function pollNow(fd: FdHandle): Promise<number | string> {
  return orErrno(fd.run((f) => native.pollAsync(f, POLLIN, 0)));
}

const POLL_EVENTS: readonly [string, number][] = [
  ['POLLIN', POLLIN],
  ['POLLOUT', POLLOUT],
  ['POLLERR', POLLERR],
  ['POLLHUP', POLLHUP],
  ['POLLNVAL', POLLNVAL],
];

/** revents as names (POLLIN|POLLERR), for evidence. */
export function pollNames(revents: number | string): string {
  if (typeof revents === 'string') return revents;
  const names = POLL_EVENTS.filter(([, bit]) => revents & bit).map(([name]) => name);
  return names.length ? names.join('|') : 'none';
}

/** One read of the data fd: bytes, 0, or the errno. */
export function readOnce(fd: FdHandle, buf: Buffer): Promise<number | string> {
  return orErrno(fd.run((f) => native.readAsync(f, buf, 0, buf.length)));
}

export async function writeAll(fd: FdHandle, data: Buffer, piece: (at: number) => number): Promise<void> {
  let at = 0;
  while (at < data.length) {
    const len = Math.min(piece(at), data.length - at);
    const n = await fd.run((f) => native.writeAsync(f, data, at, len));
    if (n <= 0) throw new Error(`write of the RESUMING fd accepted ${n} bytes at ${at}`);
    at += n;
  }
}
