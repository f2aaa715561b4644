// The v2 migration protocol (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE + data_fd): FSM paths, data_fd loops, pre-copy info.
import type { Device } from '../device';
import { FdHandle } from '../fd-handle';
import { isSyscallError } from '../errors';
import { native } from '../native';
import {
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  layout,
} from '../uapi';
import { MigrationError, abortError, deviceStepError, errnoOf } from './errors';
import type { StreamRecord } from './stream';
import type { CopyPass, MigrationEngine, PendingData, StateReading } from './types';
import { ChunkBuffers } from './pipeline';

export const V2_STATE_NAMES: Record<number, string> = {
  [VFIO_DEVICE_STATE_ERROR]: 'ERROR',
  [VFIO_DEVICE_STATE_STOP]: 'STOP',
  [VFIO_DEVICE_STATE_RUNNING]: 'RUNNING',
  [VFIO_DEVICE_STATE_STOP_COPY]: 'STOP_COPY',
  [VFIO_DEVICE_STATE_RESUMING]: 'RESUMING',
  [VFIO_DEVICE_STATE_RUNNING_P2P]: 'RUNNING_P2P',
  [VFIO_DEVICE_STATE_PRE_COPY]: 'PRE_COPY',
  [VFIO_DEVICE_STATE_PRE_COPY_P2P]: 'PRE_COPY_P2P',
};

export function v2StateName(state: number): string {
  return V2_STATE_NAMES[state] ?? `unknown state ${state}`;
}

export interface V2Support {
  p2p: boolean;
  preCopy: boolean;
}

const RUNNING = VFIO_DEVICE_STATE_RUNNING;
const STOP = VFIO_DEVICE_STATE_STOP;
const STOP_COPY = VFIO_DEVICE_STATE_STOP_COPY;
const RESUMING = VFIO_DEVICE_STATE_RESUMING;
const RUNNING_P2P = VFIO_DEVICE_STATE_RUNNING_P2P;
const PRE_COPY = VFIO_DEVICE_STATE_PRE_COPY;
const PRE_COPY_P2P = VFIO_DEVICE_STATE_PRE_COPY_P2P;

/** The FSM arcs of linux/vfio.h, in the order a breadth-first search tries them. */
const BASE_ARCS: readonly [number, number][] = [
  [RUNNING_P2P, STOP],
  [STOP_COPY, STOP],
  [RESUMING, STOP],
  [RUNNING_P2P, RUNNING],
  [PRE_COPY, RUNNING],
  [RUNNING, RUNNING_P2P],
  [STOP, RUNNING_P2P],
  [PRE_COPY_P2P, RUNNING_P2P],
  [STOP, STOP_COPY],
  [STOP, RESUMING],
  [RUNNING, PRE_COPY],
  [RUNNING_P2P, PRE_COPY_P2P],
  [PRE_COPY, PRE_COPY_P2P],
  [PRE_COPY_P2P, PRE_COPY],
  [PRE_COPY_P2P, STOP_COPY],
];

const SAVING_GROUP = new Set([PRE_COPY, PRE_COPY_P2P, STOP_COPY]);

/** States a device with these flags supports (RUNNING and ERROR always; STOP_COPY states are required). */
export function supportedStates(support: V2Support): Set<number> {
  const s = new Set([RUNNING, STOP, STOP_COPY, RESUMING]);
  if (support.p2p) s.add(RUNNING_P2P);
  if (support.preCopy) s.add(PRE_COPY);
  if (support.p2p && support.preCopy) s.add(PRE_COPY_P2P);
  return s;
}

/**
 * The shortest path of FSM arcs from `from` to `to`, as the kernel picks it: saving-group states
 * (PRE_COPY, PRE_COPY_P2P, STOP_COPY) are interior only inside one session; an unsupported P2P state behaves as its
 * running twin (so its arcs fold into that state); PRE_COPY arcs exist only with PRE_COPY support.
 * Returns the states to set, in order, excluding `from`; null when `to` is unreachable or unsupported.
 */
export function v2Path(from: number, to: number, support: V2Support): number[] | null {
  const states = supportedStates(support);
  if (!states.has(to) || !states.has(from)) return null;
  if (from === to) return [];
  const fold = (s: number): number | null => {
    if (states.has(s)) return s;
    if (s === RUNNING_P2P) return RUNNING;
    if (s === PRE_COPY_P2P && support.preCopy) return PRE_COPY;
    return null;
  };
  const next = new Map<number, number[]>();
  for (const [a, b] of BASE_ARCS) {
    const fa = fold(a);
    const fb = fold(b);
    if (fa === null || fb === null || fa === fb) continue;
    const list = next.get(fa) ?? [];
    if (!list.includes(fb)) list.push(fb);
    next.set(fa, list);
  }
  // STOP_COPY -> PRE_COPY(_P2P) is refused by the header ("not permitted"), directly or combined.
  if (from === STOP_COPY && (to === PRE_COPY || to === PRE_COPY_P2P)) return null;
  // Saving-group states may be interior only while one session continues (PRE_COPY -> STOP_COPY).
  const interiorSavingOk = SAVING_GROUP.has(from) && SAVING_GROUP.has(to);
  const prev = new Map<number, number>([[from, -1]]);
  const queue = [from];
  while (queue.length) {
    const cur = queue.shift()!;
    if (cur !== from && SAVING_GROUP.has(cur) && !interiorSavingOk) continue;
    for (const n of next.get(cur) ?? []) {
      if (prev.has(n)) continue;
      prev.set(n, cur);
      if (n === to) {
        const path = [n];
        for (let p = cur; p !== from; p = prev.get(p)!) path.unshift(p);
        return path;
      }
      queue.push(n);
    }
  }
  return null;
}

/** Default data_fd read size: large enough to amortise syscalls, small enough to stream. */
export const V2_READ_SIZE = 1 << 20;

export class V2Engine implements MigrationEngine {
  readonly protocol = 'v2' as const;
  readonly device: Device;
  readonly support: V2Support;
  readonly readSize: number;
  #dataFd: FdHandle | null = null;
  #chunks = new ChunkBuffers();
  // Set in STOP_COPY: the kernel's size estimate (6.3+) and the bytes read since, for progress.
  #stopCopy: { estimate: bigint | undefined; moved: bigint } | null = null;

  constructor(device: Device, support: V2Support, options: { readSize?: number } = {}) {
    this.device = device;
    this.support = support;
    this.readSize = options.readSize ?? V2_READ_SIZE;
  }

  describe(): Record<string, unknown> {
    return { flags: { stopCopy: true, p2p: this.support.p2p, preCopy: this.support.preCopy } };
  }

  #featureBuffer(flags: number, dataSize: number): Buffer {
    const head = layout.vfio_device_feature;
    const buf = Buffer.alloc(head.size + dataSize);
    buf.writeUInt32LE(buf.length, head.fields.argsz);
    buf.writeUInt32LE(flags, head.fields.flags);
    return buf;
  }

  async getState(): Promise<number> {
    const buf = this.#featureBuffer(
      VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
      layout.vfio_device_feature_mig_state.size,
    );
    try {
      await this.device.featureAsync(buf);
    } catch (err) {
      throw deviceStepError('get device state', err);
    }
    return buf.readUInt32LE(layout.vfio_device_feature.size + layout.vfio_device_feature_mig_state.fields.device_state);
  }

  async stateName(): Promise<string> {
    return v2StateName(await this.getState());
  }

  get stateNames(): readonly string[] {
    return [...supportedStates(this.support)].map(v2StateName);
  }

  async setStateByName(name: string): Promise<void> {
    const entry = Object.entries(V2_STATE_NAMES).find(([, n]) => n === name.toUpperCase());
    if (!entry || Number(entry[0]) === VFIO_DEVICE_STATE_ERROR) {
      throw new MigrationError(
        'ERR_MIGRATION_STATE',
        `unknown v2 state '${name}' (one of ${this.stateNames.join(', ')})`,
      );
    }
    await this.setState(Number(entry[0]));
    // A session opened by this expert move has no reader; close it rather than leak it.
    this.closeDataFd();
  }

  /** Estimated stop-copy size (kernel 6.3+); undefined when the device or kernel has none. */
  async dataSizeEstimate(): Promise<bigint | undefined> {
    const buf = this.#featureBuffer(
      VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
      layout.vfio_device_feature_mig_data_size.size,
    );
    try {
      await this.device.featureAsync(buf);
    } catch (err) {
      // Kernels before 6.3 and drivers without the feature say ENOTTY (or EINVAL/EOPNOTSUPP): no estimate.
      if (isSyscallError(err, 'ENOTTY') || isSyscallError(err, 'EINVAL') || isSyscallError(err, 'EOPNOTSUPP'))
        return undefined;
      throw deviceStepError('get MIG_DATA_SIZE', err);
    }
    return buf.readBigUInt64LE(layout.vfio_device_feature.size);
  }

  /** Sets one FSM arc; adopts a returned data_fd (the previous one stays open if none is returned). */
  async #setArc(from: number, to: number): Promise<void> {
    const buf = this.#featureBuffer(
      VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
      layout.vfio_device_feature_mig_state.size,
    );
    const at = layout.vfio_device_feature.size;
    buf.writeUInt32LE(to, at + layout.vfio_device_feature_mig_state.fields.device_state);
    buf.writeInt32LE(-1, at + layout.vfio_device_feature_mig_state.fields.data_fd);
    await this.device.featureAsync(buf);
    const fd = buf.readInt32LE(at + layout.vfio_device_feature_mig_state.fields.data_fd);
    // Only arcs that start a session return an fd; anything else would be a driver bug we must not leak.
    if (fd >= 0) {
      this.closeDataFd();
      this.#dataFd = new FdHandle(fd, `data_fd (${v2StateName(from)} -> ${v2StateName(to)})`);
    }
  }

  /**
   * Moves to `target` along the client's own shortest path, one arc at a time. After a failed
   * arc it reads the real state (the kernel echoes the request, so the buffer can't be trusted)
   * and reports it; the caller decides how to recover.
   */
  async setState(target: number): Promise<void> {
    const from = await this.getState();
    if (from === target) return;
    if (from === VFIO_DEVICE_STATE_ERROR) {
      throw new MigrationError(
        'ERR_MIGRATION_STATE',
        `set state ${v2StateName(from)} -> ${v2StateName(target)}: the device is in the ERROR state; only VFIO_DEVICE_RESET recovers it`,
        { step: `set state ${v2StateName(target)}` },
      );
    }
    const path = v2Path(from, target, this.support);
    if (!path) {
      throw new MigrationError(
        'ERR_MIGRATION_STATE',
        `set state ${v2StateName(from)} -> ${v2StateName(target)}: no path (the device supports ${[...supportedStates(this.support)].map(v2StateName).join(', ')})`,
        { step: `set state ${v2StateName(target)}` },
      );
    }
    let cur = from;
    for (const next of path) {
      const step = `set state ${v2StateName(cur)} -> ${v2StateName(next)}`;
      try {
        await this.#setArc(cur, next);
      } catch (err) {
        let now: number | undefined;
        try {
          now = await this.getState();
        } catch {
          /* unreadable */
        }
        const errno = errnoOf(err);
        throw new MigrationError(
          'ERR_MIGRATION_STATE',
          `${step} failed${errno ? ` with ${errno}` : ''}; device state is now ${now === undefined ? 'unreadable' : v2StateName(now)}`,
          { cause: err, step, errno },
        );
      }
      cur = next;
    }
  }

  closeDataFd(): void {
    this.#dataFd?.close();
    this.#dataFd = null;
  }

  #requireFd(step: string): FdHandle {
    if (!this.#dataFd)
      throw new MigrationError('ERR_MIGRATION_PROTOCOL', `${step}: the device returned no data_fd`, { step });
    return this.#dataFd;
  }

  async #precopyInfo(): Promise<{ initial: bigint; dirty: bigint }> {
    const fd = this.#requireFd('VFIO_MIG_GET_PRECOPY_INFO');
    try {
      const raw = await fd.run((f) => native.migGetPrecopyInfoAsync(f));
      const l = layout.vfio_precopy_info.fields;
      return { initial: raw.readBigUInt64LE(l.initial_bytes), dirty: raw.readBigUInt64LE(l.dirty_bytes) };
    } catch (err) {
      throw deviceStepError('VFIO_MIG_GET_PRECOPY_INFO', err);
    }
  }

  get canPrecopy(): boolean {
    return this.support.preCopy;
  }

  async enterPrecopy(): Promise<void> {
    this.#stopCopy = null;
    await this.setState(PRE_COPY);
  }

  async pending(): Promise<PendingData> {
    if (this.#stopCopy) {
      const { estimate, moved } = this.#stopCopy;
      return {
        bytes: estimate === undefined ? undefined : estimate > moved ? estimate - moved : 0n,
        initialDone: true,
      };
    }
    // Every figure is an estimate from the device: it only steers the policy, never sizes a buffer.
    const info = await this.#precopyInfo();
    return { bytes: info.initial + info.dirty, initialDone: info.initial === 0n };
  }

  /**
   * Reads the data_fd. In STOP_COPY a 0 read is the end of the data. In PRE_COPY a 0 read or
   * ENOMSG only means "nothing for now", and the pass ends after its budget.
   */
  async copy(pass: CopyPass): Promise<number> {
    const precopy = pass.stage === 'precopy';
    const fd = this.#requireFd('read data_fd');
    const stopCopy = precopy ? null : this.#stopCopy;
    let moved = 0;
    let again = 0;
    for (;;) {
      if (pass.signal?.aborted) throw abortError(pass.signal, precopy ? 'pre-copy' : 'stop-and-copy');
      if (pass.budget !== undefined && BigInt(moved) >= pass.budget) return moved;
      let n: number;
      const buf = this.#chunks.next(this.readSize);
      try {
        n = await fd.run((f) => native.readAsync(f, buf, 0, this.readSize));
      } catch (err) {
        if (precopy && (isSyscallError(err, 'ENOMSG') || isSyscallError(err, 'EAGAIN'))) return moved;
        if (!precopy && isSyscallError(err, 'EAGAIN') && again++ < 100) {
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        throw deviceStepError(`read data_fd in ${precopy ? 'PRE_COPY' : 'STOP_COPY'}`, err);
      }
      if (n === 0) return moved;
      await pass.emit(buf.subarray(0, n));
      moved += n;
      if (stopCopy) stopCopy.moved += BigInt(n);
      pass.onChunk(moved, stopCopy ? (await this.pending()).bytes : undefined);
    }
  }

  async quiesce(): Promise<void> {
    // The pre-copy session's data_fd stays open across PRE_COPY -> PRE_COPY_P2P: setState keeps it.
    if (!this.support.p2p) return;
    const current = await this.getState();
    if (current === RUNNING) await this.setState(RUNNING_P2P);
    else if (current === PRE_COPY) await this.setState(PRE_COPY_P2P);
  }

  async enterStopCopy(onStopped: () => void): Promise<void> {
    // With P2P, quiesce first as the header recommends; the device stops at the next arc.
    const current = await this.getState();
    if (this.support.p2p && current === RUNNING) await this.setState(RUNNING_P2P);
    if (current === RUNNING || current === RUNNING_P2P) await this.setState(STOP);
    onStopped();
    await this.setState(STOP_COPY);
    this.#stopCopy = { estimate: await this.dataSizeEstimate(), moved: 0n };
  }

  async finishSave(leave: 'running' | 'stopped'): Promise<void> {
    await this.setState(STOP);
    this.release();
    if (leave === 'running') await this.setState(RUNNING);
  }

  async enterResuming(): Promise<void> {
    await this.setState(RESUMING);
    this.#requireFd('enter RESUMING');
  }

  async writeRecord(record: StreamRecord): Promise<void> {
    const fd = this.#requireFd('write data_fd');
    const payload = record.payload;
    let done = 0;
    while (done < payload.length) {
      let n: number;
      try {
        n = await fd.run((f) => native.writeAsync(f, payload, done, payload.length - done));
      } catch (err) {
        if (isSyscallError(err, 'EAGAIN')) {
          await new Promise((r) => setTimeout(r, 1));
          continue;
        }
        throw deviceStepError(`record ${record.sequence}: write data_fd`, err, record.sequence);
      }
      if (n === 0)
        throw new MigrationError('ERR_MIGRATION_DEVICE', `record ${record.sequence}: data_fd accepted no bytes`, {
          step: 'write data_fd',
          record: record.sequence,
        });
      done += n;
    }
  }

  async finishLoad(leave: 'running' | 'stopped'): Promise<void> {
    // RESUMING -> STOP is where the driver validates the whole stream.
    await this.setState(STOP);
    this.release();
    if (leave !== 'stopped') await this.setState(RUNNING);
  }

  async readState(): Promise<StateReading> {
    const state = await this.getState();
    return { name: v2StateName(state), running: state === RUNNING, error: state === VFIO_DEVICE_STATE_ERROR };
  }

  toRunning(): Promise<void> {
    return this.setState(RUNNING);
  }

  release(): void {
    this.#stopCopy = null;
    this.closeDataFd();
  }

  close(): void {
    this.closeDataFd();
  }
}
