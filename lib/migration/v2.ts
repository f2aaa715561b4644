// The v2 migration protocol (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE + data_fd): FSM paths, data_fd loops, pre-copy info.
import { bufferView, dataView } from '../buffers';
import { Buffer } from 'node:buffer';
import { Device } from '../device';
import { FdHandle } from '../fd-handle';
import { isSyscallError } from '../errors';
import { native } from '../native';
import {
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING as RESUMING,
  VFIO_DEVICE_STATE_RUNNING as RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP as STOP,
  VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
  layout,
} from '../uapi';
import { MigrationError, abortError, deviceStepError, errnoOf } from './errors';
import type { StreamRecord } from './stream';
import type { CopyPass, MigrationEngine, PendingData, StateReading } from './types';
import { ChunkBuffers } from './pipeline';
import { settleAll } from './txn';
import { V2_STATE_BY_NAME, supportedStates, v2Path, v2StateName } from './v2-states';
import type { V2Support } from './v2-states';

export * from './v2-states';

/**
 * Default data_fd read size. Each chunk becomes a record whose protocol work is the JS thread's,
 * so fewer, larger chunks leave the driver's copies more CPU; 8 MiB was slower again, since the
 * first write waits for a whole read (docs/performance.md, "The data phase").
 */
export const V2_READ_SIZE = 4 << 20;

/** VFIO_DEVICE_FEATURE on each device with its own buffer, all at once, each outcome returned (Device.featuresAsync). */
export type FeatureBatch = (devices: readonly Device[], buffers: Uint8Array[]) => Promise<(number | Error)[]>;

export interface TogetherOptions {
  /** How a batch is issued (default Device.featuresAsync; tests pass a model's). */
  features?: FeatureBatch;
  /** Runs once, just before the first ioctl that moves any engine is issued. */
  onIssue?: () => void;
}

export class V2Engine implements MigrationEngine {
  readonly protocol = 'v2' as const;
  readonly device: Device;
  readonly support: V2Support;
  readonly readSize: number;
  #dataFd: FdHandle | null = null;
  #chunks = new ChunkBuffers();
  // Set in STOP_COPY: the kernel's size estimate (6.3+) and the bytes read since, for progress.
  #stopCopy: { estimate: bigint | undefined; moved: bigint } | null = null;
  // MIG_DATA_SIZE as quiesce() read it, for the next enterStopCopy().
  #estimateAhead: { value: bigint | undefined } | null = null;
  // The state this engine last set or read, and the device's stateEpoch just after: while the
  // epoch stands, an arc starts from it without a GET (one ioctl less per arc, inside the
  // downtime). A failed data_fd read or write (after which a driver may enter ERROR) forgets it.
  #known: { state: number; epoch: number } | null = null;
  #stateNames: readonly string[] | undefined;

  constructor(device: Device, support: V2Support, options: { readSize?: number } = {}) {
    this.device = device;
    this.support = support;
    this.readSize = options.readSize ?? V2_READ_SIZE;
  }

  describe(): Record<string, unknown> {
    return { flags: { stopCopy: true, p2p: this.support.p2p, preCopy: this.support.preCopy } };
  }

  // The struct's fields go through a DataView (dataView says why).
  #featureBuffer(flags: number, dataSize: number): { buf: Buffer; fields: DataView } {
    const head = layout.vfio_device_feature;
    const buf = Buffer.alloc(head.size + dataSize);
    const fields = dataView(buf);
    fields.setUint32(head.fields.argsz, buf.length, true);
    fields.setUint32(head.fields.flags, flags, true);
    return { buf, fields };
  }

  /** A VFIO_DEVICE_FEATURE GET of `feature` with `dataSize` bytes of payload, after the header. */
  async #getFeature(feature: number, dataSize: number): Promise<DataView> {
    const { buf, fields } = this.#featureBuffer(VFIO_DEVICE_FEATURE_GET | feature, dataSize);
    const known = this.#known;
    const epoch = this.device.stateEpoch;
    await this.device.featureAsync(buf);
    // A GET changes no state: what was known stays known, if no other call came between.
    if (known?.epoch === epoch) this.#remember(known.state, epoch);
    return fields;
  }

  /** Reads the device state from the kernel (never the remembered one). */
  async getState(): Promise<number> {
    let fields: DataView;
    const epoch = this.device.stateEpoch;
    try {
      fields = await this.#getFeature(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, layout.vfio_device_feature_mig_state.size);
    } catch (err) {
      this.#known = null;
      throw deviceStepError('get device state', err);
    }
    const state = fields.getUint32(
      layout.vfio_device_feature.size + layout.vfio_device_feature_mig_state.fields.device_state,
      true,
    );
    this.#remember(state, epoch);
    return state;
  }

  /** Remembers `state` as of a call made at `epoch`, if no other call of the device came between. */
  #remember(state: number, epoch: number): void {
    this.#known = this.device.stateEpoch === epoch + 1 ? { state, epoch: epoch + 1 } : null;
  }

  /** The state as last set or read, while nothing else has touched the device since; else read. */
  #currentState(): Promise<number> {
    const known = this.#known;
    return known && known.epoch === this.device.stateEpoch ? Promise.resolve(known.state) : this.getState();
  }

  async stateName(): Promise<string> {
    return v2StateName(await this.getState());
  }

  get stateNames(): readonly string[] {
    // The support flags never change: the names are listed once (receive asks at every resume).
    this.#stateNames ??= Object.freeze([...supportedStates(this.support)].map(v2StateName));
    return this.#stateNames;
  }

  async setStateByName(name: string): Promise<void> {
    const state = V2_STATE_BY_NAME.get(name.toUpperCase());
    if (state === undefined) {
      throw new MigrationError(
        'ERR_MIGRATION_STATE',
        `unknown v2 state '${name}' (one of ${this.stateNames.join(', ')})`,
      );
    }
    await this.setState(state);
    // A session opened by this expert move has no reader; close it rather than leak it.
    this.closeDataFd();
  }

  /** Estimated stop-copy size (kernel 6.3+); undefined when the device or kernel has none. */
  async dataSizeEstimate(): Promise<bigint | undefined> {
    let fields: DataView;
    try {
      fields = await this.#getFeature(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, layout.vfio_device_feature_mig_data_size.size);
    } catch (err) {
      // Kernels before 6.3 and drivers without the feature say ENOTTY (or EINVAL/EOPNOTSUPP): no estimate.
      if (isSyscallError(err, 'ENOTTY') || isSyscallError(err, 'EINVAL') || isSyscallError(err, 'EOPNOTSUPP'))
        return undefined;
      throw deviceStepError('get MIG_DATA_SIZE', err);
    }
    return fields.getBigUint64(layout.vfio_device_feature.size, true);
  }

  /** Sets one FSM arc; adopts a returned data_fd (the previous one stays open if none is returned). */
  async #setArc(from: number, to: number): Promise<void> {
    const epoch = this.device.stateEpoch;
    this.#known = null;
    const fd = await this.#setStateIoctl(to);
    this.#arcDone(from, to, epoch, fd);
  }

  /** After a successful SET of `to` made at `epoch`: remembers the state and adopts the data_fd the kernel returned (-1: none). */
  #arcDone(from: number, to: number, epoch: number, fd: number): void {
    this.#remember(to, epoch);
    // Only arcs that start a session return an fd; anything else would be a driver bug we must not leak.
    if (fd >= 0) {
      this.closeDataFd();
      this.#dataFd = new FdHandle(fd, `data_fd (${v2StateName(from)} -> ${v2StateName(to)})`);
    }
  }

  /** The VFIO_DEVICE_FEATURE buffer of a SET of MIG_DEVICE_STATE to `to`, and where the kernel puts the data_fd. */
  #stateSetBuffer(to: number): { buf: Buffer; dataFdAt: number; fields: DataView } {
    const { buf, fields } = this.#featureBuffer(
      VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
      layout.vfio_device_feature_mig_state.size,
    );
    const at = layout.vfio_device_feature.size;
    fields.setUint32(at + layout.vfio_device_feature_mig_state.fields.device_state, to, true);
    const dataFdAt = at + layout.vfio_device_feature_mig_state.fields.data_fd;
    fields.setInt32(dataFdAt, -1, true);
    return { buf, dataFdAt, fields };
  }

  /** One VFIO_DEVICE_FEATURE SET of MIG_DEVICE_STATE; resolves the data_fd the kernel returned, or -1. */
  async #setStateIoctl(to: number): Promise<number> {
    const { buf, dataFdAt, fields } = this.#stateSetBuffer(to);
    await this.device.featureAsync(buf);
    return fields.getInt32(dataFdAt, true);
  }

  /** The error of a failed arc, with the state the device is in now (the kernel echoes the request, so the buffer can't be trusted). */
  async #arcFailure(cur: number, next: number, err: unknown): Promise<MigrationError> {
    // Named only on failure: a state change in the downtime builds no strings.
    const step = `set state ${v2StateName(cur)} -> ${v2StateName(next)}`;
    let now: number | undefined;
    try {
      now = await this.getState();
    } catch {
      /* unreadable */
    }
    const errno = errnoOf(err);
    return new MigrationError(
      'ERR_MIGRATION_STATE',
      `${step} failed${errno ? ` with ${errno}` : ''}; device state is now ${now === undefined ? 'unreadable' : v2StateName(now)}`,
      { cause: err, step, errno },
    );
  }

  /**
   * Sets every engine to `target` at once, as a migration's downtime does with all its devices.
   * The engines whose state is known and one arc from `target` take it in one call off the JS
   * thread (`features`: Device.featuresAsync): N devices' ioctls run at once and make one wake-up of
   * this thread, not N; any other takes setState()'s own way, concurrently. Waits for every device, then
   * throws the first failure (as settleAll does); each failure is setState()'s error.
   */
  static async setStatesTogether(
    engines: readonly V2Engine[],
    target: number,
    options: TogetherOptions = {},
  ): Promise<void> {
    const { features = Device.featuresAsync, onIssue } = options;
    const batch: V2Engine[] = [];
    const from: number[] = [];
    const alone: V2Engine[] = [];
    for (const engine of engines) {
      const known = engine.#known;
      const state = known && known.epoch === engine.device.stateEpoch ? known.state : undefined;
      if (state === target) continue;
      if (
        state !== undefined &&
        state !== VFIO_DEVICE_STATE_ERROR &&
        v2Path(state, target, engine.support)?.length === 1
      ) {
        batch.push(engine);
        from.push(state);
      } else {
        alone.push(engine);
      }
    }
    const sets = batch.map((engine) => engine.#stateSetBuffer(target));
    const epochs = batch.map((engine) => engine.device.stateEpoch);
    for (const engine of batch) engine.#known = null;
    if (batch.length || alone.length) onIssue?.();
    const others = alone.map((engine) => engine.setState(target));
    // One device needs no batch: its own call, as setState() makes it.
    const issued =
      batch.length === 1
        ? batch[0]!.device.featureAsync(sets[0]!.buf).then((r) => [r])
        : batch.length
          ? features(
              batch.map((engine) => engine.device),
              sets.map((set) => set.buf),
            )
          : Promise.resolve([]);
    const together = issued.then(
      (results): unknown[] => results,
      (err: unknown) => batch.map(() => err),
    );
    const [results, ...settled] = await Promise.allSettled([together, ...others]);
    const failures: Promise<MigrationError>[] = [];
    (results as PromiseFulfilledResult<unknown[]>).value.forEach((result, i) => {
      const engine = batch[i]!;
      if (typeof result === 'number')
        engine.#arcDone(from[i]!, target, epochs[i]!, sets[i]!.fields.getInt32(sets[i]!.dataFdAt, true));
      else failures.push(engine.#arcFailure(from[i]!, target, result));
    });
    const errors = await Promise.all(failures);
    const first = errors[0] ?? settled.find((o) => o.status === 'rejected')?.reason;
    if (first) throw first;
  }

  /**
   * Moves to `target` along the client's own shortest path, one arc at a time. After a failed
   * arc it reads the real state (the kernel echoes the request, so the buffer can't be trusted)
   * and reports it; the caller decides how to recover.
   */
  async setState(target: number): Promise<void> {
    const from = await this.#currentState();
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
      try {
        await this.#setArc(cur, next);
      } catch (err) {
        throw await this.#arcFailure(cur, next, err);
      }
      cur = next;
    }
  }

  /**
   * One SET of MIG_DEVICE_STATE exactly as asked, with no path or support check (the conformance
   * checker's primitive: it must be able to request forbidden arcs). A returned data_fd is not
   * adopted: the caller owns the handle and closes it. Kernel errors are thrown as they come.
   */
  async setArcRaw(to: number): Promise<FdHandle | null> {
    this.#known = null;
    const fd = await this.#setStateIoctl(to);
    return fd >= 0 ? new FdHandle(fd, `data_fd (-> ${v2StateName(to)})`) : null;
  }

  /** The data_fd of the current session, if any (owned by the engine: do not close it). */
  get dataFd(): FdHandle | null {
    return this.#dataFd;
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
      this.#known = null;
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
   *
   * Each read is its own pool job, the end-of-stream read included: a record goes out while the
   * next read runs. (Reading on to the end in one job saved a job per device, but made a single
   * device's downtime longer in an A/B: its last record then waited for the 0 read.)
   */
  async copy(pass: CopyPass): Promise<number> {
    const precopy = pass.stage === 'precopy';
    const fd = this.#requireFd('read data_fd');
    const stopCopy = precopy ? null : this.#stopCopy;
    let moved = 0;
    let again = 0;
    // Kept across reads that bring nothing (EAGAIN): a sink's buffer is only given up by the emit.
    let buf: Buffer | undefined;
    // A pass that ends on an empty read gives its unemitted buffer back (ignored unless lent by pass.buffer).
    const giveBack = (): void => {
      if (buf) pass.unusedBuffer?.(buf);
    };
    for (;;) {
      if (pass.signal?.aborted) throw abortError(pass.signal, precopy ? 'pre-copy' : 'stop-and-copy');
      if (pass.budget !== undefined && BigInt(moved) >= pass.budget) return moved;
      let n: number;
      let crc: number;
      const into = (buf ??= pass.buffer?.(this.readSize) ?? this.#chunks.next(this.readSize));
      try {
        // The payload's CRC-32, when wanted, is computed by the pool thread that read it, off the JS thread.
        if (pass.checksum === false) {
          n = await fd.run((f) => native.readAsync(f, into, 0, this.readSize));
          crc = 0;
        } else {
          const read = await fd.run((f) => native.readChecksummedAsync(f, into, 0, this.readSize, -1));
          n = read.bytes;
          crc = read.crc;
        }
      } catch (err) {
        if (precopy && (isSyscallError(err, 'ENOMSG') || isSyscallError(err, 'EAGAIN'))) {
          giveBack();
          return moved;
        }
        this.#known = null;
        if (!precopy && isSyscallError(err, 'EAGAIN') && again++ < 100) {
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        throw deviceStepError(`read data_fd in ${precopy ? 'PRE_COPY' : 'STOP_COPY'}`, err);
      }
      if (n === 0) {
        giveBack();
        return moved;
      }
      await pass.emit(bufferView(into, 0, n), crc);
      buf = undefined;
      moved += n;
      if (stopCopy) stopCopy.moved += BigInt(n);
      pass.onChunk(moved, stopCopy ? (await this.pending()).bytes : undefined);
    }
  }

  async quiesce(): Promise<void> {
    // The pre-copy session's data_fd stays open across PRE_COPY -> PRE_COPY_P2P: setState keeps it.
    if (this.support.p2p) {
      const current = await this.#currentState();
      if (current === RUNNING) await this.setState(RUNNING_P2P);
      else if (current === PRE_COPY) await this.setState(PRE_COPY_P2P);
    }
    // Asked now (with or without P2P), so that nothing but the stop itself lies between a last
    // pre-copy pass and the stop.
    this.#estimateAhead = { value: await this.dataSizeEstimate() };
  }

  enterStopCopy(onStopped: () => void): Promise<void> {
    return V2Engine.enterStopCopyTogether([this], onStopped);
  }

  /**
   * enterStopCopy() of several engines at once (a migrate's sources): each of its arcs taken by
   * all of them together (setStatesTogether): one call per arc, not one per device.
   * `onStopped(i)` runs for every engine as the first stopping arc is issued (the earliest any of
   * them may stop). Throws the first failure once all have ended.
   */
  static async enterStopCopyTogether(
    engines: readonly V2Engine[],
    onStopped: (index: number) => void,
    features?: FeatureBatch,
  ): Promise<void> {
    const current = await settleAll(engines, (engine) => engine.#currentState());
    // With P2P, quiesce first as the header recommends; the device stops at the next arc.
    await V2Engine.setStatesTogether(
      engines.filter((engine, i) => engine.support.p2p && current[i] === RUNNING),
      RUNNING_P2P,
      { features },
    );
    // The estimate (for progress only; valid in every state) is asked before the stop, so that
    // its ioctl is not part of the downtime: by quiesce() when it ran.
    const estimates = await settleAll(engines, (engine) =>
      engine.#estimateAhead ? Promise.resolve(engine.#estimateAhead.value) : engine.dataSizeEstimate(),
    );
    for (const engine of engines) engine.#estimateAhead = null;
    // The downtime starts as the first stopping arc is issued (RUNNING(_P2P) -> STOP, or
    // PRE_COPY(_P2P) -> STOP_COPY): the device stops somewhere inside that ioctl.
    let stopping = false;
    const onIssue = (): void => {
      if (stopping) return;
      stopping = true;
      engines.forEach((_engine, i) => onStopped(i));
    };
    await V2Engine.setStatesTogether(
      engines.filter((_engine, i) => current[i] === RUNNING || current[i] === RUNNING_P2P),
      STOP,
      { features, onIssue },
    );
    await V2Engine.setStatesTogether(engines, STOP_COPY, { features, onIssue });
    engines.forEach((engine, i) => (engine.#stopCopy = { estimate: estimates[i], moved: 0n }));
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
        this.#known = null;
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

  /**
   * finishLoad('stopped') of several engines at once (a migrate's destinations): RESUMING -> STOP,
   * where each driver validates what it was given, for all at once; then each lets its data_fd
   * go. Throws the first failure once all have ended (the caller's recovery resets them).
   */
  static async finishLoadTogether(engines: readonly V2Engine[], features?: FeatureBatch): Promise<void> {
    await V2Engine.setStatesTogether(engines, STOP, { features });
    for (const engine of engines) engine.release();
  }

  async finishLoad(leave: 'running' | 'stopped'): Promise<void> {
    // RESUMING -> STOP is where the driver validates the whole stream.
    await V2Engine.finishLoadTogether([this]);
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
    this.#estimateAhead = null;
    this.closeDataFd();
  }

  close(): void {
    this.closeDataFd();
  }
}
