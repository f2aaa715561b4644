// The v1 migration protocol (migration region of type (3, 1)): device_state machine, pending/data registers, data section.
import type { Device } from '../device';
import type { Mapping } from '../mapping';
import type { Doorbell, Region } from '../region';
import type { SyscallError } from '../errors';
import { toSafeNumber } from '../decode';
import type { RegionInfo, SparseMmapArea } from '../decode';
import { VFIO_DEVICE_STATE_MASK, layout } from '../uapi';
import { MigrationError, abortError, deviceStepError, errnoOf } from './errors';
import type { StreamRecord } from './stream';
import type { CopyPass, MigrationEngine, PendingData, StateReading } from './types';
import { ChunkBuffers } from './pipeline';
import { crc32Combine } from './stream/crc';
import {
  V1_PRECOPY,
  V1_RESUMING,
  V1_RUNNING,
  V1_SAVING,
  V1_STATE_BY_NAME,
  V1_STOP,
  checkV1Transition,
  isV1ErrorState,
  v1StateName,
} from './v1-states';

const REG = layout.vfio_device_migration_info.fields;
/** The trapped header (struct vfio_device_migration_info) the data section must not overlap. */
export const V1_HEADER_SIZE = layout.vfio_device_migration_info.size;

export * from './v1-states';

export interface Segment {
  /** Offset inside the region. */
  regionOffset: bigint;
  /** Offset inside the caller's buffer. */
  bufferOffset: number;
  length: number;
  /** Index of the mmap area covering it, or -1 for pread/pwrite. */
  area: number;
}

/**
 * Splits [start, start+length) of the region into the parts covered by mmap areas and the
 * parts that need pread/pwrite; adjacent parts of one kind stay one segment, so a chunk is
 * never broken into small accesses.
 */
export function splitByAreas(start: bigint, length: number, areas: readonly SparseMmapArea[]): Segment[] {
  const out: Segment[] = [];
  let at = start;
  const end = start + BigInt(length);
  while (at < end) {
    const inside = areas.findIndex((a) => at >= a.offset && at < a.offset + a.size);
    let stop: bigint;
    if (inside >= 0) {
      const a = areas[inside];
      stop = a.offset + a.size < end ? a.offset + a.size : end;
    } else {
      // Up to the next area that starts inside the range, else to the end.
      stop = end;
      for (const a of areas) if (a.offset > at && a.offset < stop) stop = a.offset;
    }
    out.push({ regionOffset: at, bufferOffset: Number(at - start), length: Number(stop - at), area: inside });
    at = stop;
  }
  return out;
}

/** Checks a region can be a v1 migration region: room for the header, no mmap area over it. */
export function checkV1Region(info: RegionInfo): void {
  const what = `migration region (index ${info.index})`;
  if (info.size < BigInt(V1_HEADER_SIZE)) {
    throw new MigrationError(
      'ERR_MIGRATION_PROTOCOL',
      `${what} is ${info.size} bytes, smaller than the ${V1_HEADER_SIZE}-byte header`,
    );
  }
  if (!info.readable || !info.writable) {
    throw new MigrationError('ERR_MIGRATION_PROTOCOL', `${what} must be readable and writable`);
  }
  for (const a of info.mmapAreas) {
    if (a.offset < BigInt(V1_HEADER_SIZE)) {
      throw new MigrationError(
        'ERR_MIGRATION_PROTOCOL',
        `${what}: mmap area [${a.offset}, +${a.size}) overlaps the trapped header`,
      );
    }
  }
}

interface MappedArea extends SparseMmapArea {
  map: Mapping;
}

/** Largest single transaction the client accepts; bigger data_size values are a driver bug. */
const MAX_TRANSACTION = 1 << 30;

export class V1Engine implements MigrationEngine {
  readonly protocol = 'v1' as const;
  readonly device: Device;
  readonly region: Region;
  #areas: MappedArea[] = [];
  #chunks = new ChunkBuffers();

  constructor(device: Device, info: RegionInfo) {
    checkV1Region(info);
    this.device = device;
    this.region = device.region(info.index);
  }

  describe(): Record<string, unknown> {
    const info = this.region.info;
    return {
      regionIndex: info.index,
      regionSize: info.size.toString(),
      mmapAreas: info.mmapAreas.map((a) => ({ offset: a.offset.toString(), size: a.size.toString() })),
    };
  }

  /** Runs one device step; a syscall failure becomes a MigrationError naming the step and errno. */
  async #step<T>(step: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      throw deviceStepError(step, err);
    }
  }

  /** A short register read that cannot block on the device: synchronous, no thread-pool hop. */
  #stepSync<T>(step: string, call: () => T): T {
    try {
      return call();
    } catch (err) {
      throw deviceStepError(step, err);
    }
  }

  readDeviceState(): Promise<number> {
    return this.#step('read device_state', () => this.region.readAsync(REG.device_state, 4));
  }

  async stateName(): Promise<string> {
    return v1StateName(await this.readDeviceState());
  }

  readonly stateNames = Object.keys(V1_STATE_BY_NAME);

  async setStateByName(name: string): Promise<void> {
    const state = V1_STATE_BY_NAME[name.toUpperCase()];
    if (state === undefined)
      throw new MigrationError(
        'ERR_MIGRATION_STATE',
        `unknown v1 state '${name}' (one of ${this.stateNames.join(', ')})`,
      );
    await this.setState(state);
  }

  /**
   * Read-modify-write of device_state that keeps bits 3-31. A failed write re-reads the state
   * (the spec's rule) and reports it; recovery (reset from the error state) is the caller's.
   */
  async setState(target: number): Promise<void> {
    const raw = await this.readDeviceState();
    const from = raw & VFIO_DEVICE_STATE_MASK;
    if (from === target) return;
    checkV1Transition(from, target);
    const value = ((raw & ~VFIO_DEVICE_STATE_MASK) | target) >>> 0;
    const step = `set state ${v1StateName(from)} -> ${v1StateName(target)}`;
    try {
      await this.region.writeAsync(REG.device_state, 4, value);
    } catch (err) {
      const errno = errnoOf(err);
      let now: number | undefined;
      try {
        now = await this.region.readAsync(REG.device_state, 4);
      } catch {
        /* reported below as unknown */
      }
      throw new MigrationError(
        'ERR_MIGRATION_STATE',
        `${step} failed${errno ? ` with ${errno}` : ''}; device_state is now ${now === undefined ? 'unreadable' : v1StateName(now)}`,
        { cause: err, step, errno },
      );
    }
  }

  #mapAreas(): void {
    if (this.#areas.length || !this.region.info.mmapable) return;
    try {
      for (const a of this.region.info.mmapAreas) this.#areas.push({ ...a, map: this.region.mmap(a.offset, a.size) });
    } catch (err) {
      this.#unmapAreas();
      throw deviceStepError('mmap of the migration data section', err);
    }
  }

  #unmapAreas(): void {
    for (const a of this.#areas) a.map.unmap();
    this.#areas = [];
  }

  /** Bounds-checks a data window the device handed back before any byte is touched. */
  #checkWindow(offset: bigint, size: bigint, step: string): void {
    const regionSize = this.region.info.size;
    if (offset < BigInt(V1_HEADER_SIZE) || offset > regionSize || size > regionSize - offset) {
      throw new MigrationError(
        'ERR_MIGRATION_PROTOCOL',
        `${step}: data_offset ${offset} + data_size ${size} is outside the data section [${V1_HEADER_SIZE}, ${regionSize})`,
        { step },
      );
    }
    if (size > BigInt(MAX_TRANSACTION)) {
      throw new MigrationError(
        'ERR_MIGRATION_PROTOCOL',
        `${step}: data_size ${size} is larger than ${MAX_TRANSACTION} bytes`,
        { step },
      );
    }
  }

  /**
   * Saving steps d and e: the data window at `offset` into `buffer`, each segment in one pool job
   * that also checksums what it read (unless not `checksum`: an in-process stream); resolves the
   * CRC-32 of the whole window, or 0.
   */
  async #readTransaction(offset: bigint, buffer: Buffer, length: number, checksum: boolean): Promise<number> {
    let crc = 0;
    for (const seg of splitByAreas(offset, length, this.#areas)) {
      const step = `read data [${seg.regionOffset}, +${seg.length}) via ${seg.area >= 0 ? 'mmap' : 'pread'}`;
      let part = 0;
      try {
        if (seg.area >= 0) {
          const area = this.#areas[seg.area];
          const at = Number(seg.regionOffset - area.offset);
          if (checksum) part = await area.map.readIntoChecksummed(at, buffer, seg.bufferOffset, seg.length);
          else await area.map.readInto(at, buffer, seg.bufferOffset, seg.length);
        } else if (checksum) {
          part = await this.region.readBulkChecksummed(seg.regionOffset, buffer, seg.bufferOffset, seg.length);
        } else {
          await this.region.readBulk(seg.regionOffset, buffer, seg.bufferOffset, seg.length);
        }
      } catch (err) {
        throw deviceStepError(step, err);
      }
      if (checksum) crc = crc32Combine(crc, part, seg.length);
    }
    return crc;
  }

  /** One segment of a data window written, through its mapping or by pwrite; `doorbell` follows in the same job. */
  async #writeSegment(seg: Segment, buffer: Buffer, doorbell?: { step: string; write: Doorbell }): Promise<void> {
    const step = `write data [${seg.regionOffset}, +${seg.length}) via ${seg.area >= 0 ? 'mmap' : 'pwrite'}`;
    try {
      if (seg.area >= 0) {
        const area = this.#areas[seg.area];
        const at = Number(seg.regionOffset - area.offset);
        if (doorbell)
          return await this.region.writeMappedThen(area.map, at, buffer, seg.bufferOffset, seg.length, doorbell.write);
        return await area.map.writeFrom(at, buffer, seg.bufferOffset, seg.length);
      }
      if (doorbell)
        return await this.region.writeBulkThen(seg.regionOffset, buffer, seg.bufferOffset, seg.length, doorbell.write);
      return await this.region.writeBulk(seg.regionOffset, buffer, seg.bufferOffset, seg.length);
    } catch (err) {
      throw deviceStepError(doorbell && (err as SyscallError).stage === 'register' ? doorbell.step : step, err);
    }
  }

  /**
   * Resuming steps b and c: the data into the window at `offset`, then data_size. The last (usually
   * only) segment carries the data_size write in its own job, so a record costs one thread hop.
   */
  async #writeTransaction(offset: bigint, payload: Buffer, where: string): Promise<void> {
    const segments = splitByAreas(offset, payload.length, this.#areas);
    const last = segments.pop()!;
    for (const seg of segments) await this.#writeSegment(seg, payload);
    await this.#writeSegment(last, payload, {
      step: `${where}: write data_size`,
      write: { offset: REG.data_size, width: 8, value: BigInt(payload.length) },
    });
  }

  // pending_bytes and data_size only report counters; data_offset is the read that may wait for
  // the device to produce data (spec step b), so only that one goes off the JS thread.
  #readPending(): bigint {
    return this.#stepSync('read pending_bytes', () => this.region.read(REG.pending_bytes, 8));
  }

  readonly canPrecopy = true;

  async enterPrecopy(): Promise<void> {
    await this.setState(V1_PRECOPY);
  }

  async pending(): Promise<PendingData> {
    return { bytes: this.#readPending(), initialDone: true };
  }

  /**
   * Spec steps a-f: one record per transaction, pending_bytes re-read after each. Ends when
   * pending_bytes is 0 or, in pre-copy, once the budget moved.
   */
  async copy(pass: CopyPass): Promise<number> {
    this.#mapAreas();
    const name = pass.stage === 'stop-copy' ? 'stop-and-copy' : 'pre-copy';
    let pending = pass.pending?.bytes ?? this.#readPending();
    let moved = 0;
    while (pending > 0n && (pass.budget === undefined || BigInt(moved) < pass.budget)) {
      if (pass.signal?.aborted) throw abortError(pass.signal, name);
      const offset = await this.#step('read data_offset', () => this.region.readAsync(REG.data_offset, 8));
      const size = this.#stepSync('read data_size', () => this.region.read(REG.data_size, 8));
      if (size === 0n) {
        throw new MigrationError(
          'ERR_MIGRATION_PROTOCOL',
          `${name}: data_size is 0 while pending_bytes is ${pending}`,
          {
            step: 'read data_size',
          },
        );
      }
      this.#checkWindow(offset, size, 'read data_offset/data_size');
      const length = toSafeNumber(size, 'data_size');
      const chunk = pass.buffer?.(length) ?? this.#chunks.next(length);
      const crc = await this.#readTransaction(offset, chunk, length, pass.checksum !== false);
      // The previous chunk's emit ran while this one was read; the device moves on meanwhile.
      await pass.emit(chunk.subarray(0, length), crc);
      moved += length;
      pending = this.#readPending();
      pass.onChunk(moved, pending);
    }
    return moved;
  }

  async enterStopCopy(onStopped: () => void): Promise<void> {
    // The device stops inside this arc: the downtime starts as it is issued.
    onStopped();
    await this.setState(V1_SAVING);
  }

  async finishSave(leave: 'running' | 'stopped'): Promise<void> {
    await this.setState(leave === 'running' ? V1_RUNNING : V1_STOP);
    this.release();
  }

  async enterResuming(): Promise<void> {
    this.#mapAreas();
    await this.setState(V1_RESUMING);
  }

  async writeRecord(record: StreamRecord): Promise<void> {
    const where = `record ${record.sequence}`;
    const length = record.payload.length;
    if (length === 0)
      throw new MigrationError('ERR_MIGRATION_STREAM', `${where} is empty: a v1 transaction carries data`, {
        record: record.sequence,
      });
    // Resuming step a: a register read that only says where to write (the wait is in step c).
    const offset = this.#stepSync(`${where}: read data_offset`, () => this.region.read(REG.data_offset, 8));
    this.#checkWindow(offset, BigInt(length), `${where}: read data_offset`);
    try {
      await this.#writeTransaction(offset, record.payload, where);
    } catch (err) {
      if (err instanceof MigrationError && err.record === undefined) err.record = record.sequence;
      throw err;
    }
  }

  async finishLoad(leave: 'running' | 'stopped'): Promise<void> {
    await this.setState(leave === 'stopped' ? V1_STOP : V1_RUNNING);
    this.release();
  }

  async readState(): Promise<StateReading> {
    const state = (await this.readDeviceState()) & VFIO_DEVICE_STATE_MASK;
    return { name: v1StateName(state), running: state === V1_RUNNING, error: isV1ErrorState(state) };
  }

  toRunning(): Promise<void> {
    return this.setState(V1_RUNNING);
  }

  release(): void {
    this.#unmapAreas();
  }

  close(): void {
    this.#unmapAreas();
  }
}
