// An in-process MODEL of a v1 vendor driver (not a kernel): the spec's registers and state machine over a byte array, for fast policy tests.
import { crc32 } from 'node:zlib';
import { VfioError } from '../../lib/errors';
import { SyscallError } from '../../lib/errors';
import type { RegionInfo } from '../../lib/decode';

function sysErr(code: string, what: string): SyscallError {
  const e = new SyscallError(`${what} ${code}`);
  e.code = code;
  e.errno = code === 'EINVAL' ? -22 : -5;
  e.syscall = 'pwrite';
  return e;
}

export interface ModelOptions {
  stateSize: number;
  chunkSize: number;
  /** Bytes the device dirties each time pending_bytes is read while RUNNING|SAVING. */
  dirtyPerRead?: number;
  /** Fault injection: a function called on every access; throw to fail it. */
  fault?: (access: string) => void;
  /** Holds a data read or write (`pread data`, `pwrite data`, with its 1-based count) until the promise it returns settles. */
  stall?: (access: string, count: number) => Promise<void> | undefined;
  /** Data section mmap-able (areas) or trapped. */
  mmap?: boolean;
}

const HEADER = 4096;

/** A v1 device model with the same surface V1Engine uses from Device/Region. */
export class V1ModelDevice {
  name = 'model';
  sysfs = null;
  state: Buffer;
  deviceState = 1; // RUNNING, reserved bits 0
  reserved = 0;
  resets = 0;
  accesses: string[] = [];
  /** Data reads begun and not yet returned: a state change while one is in flight is a client bug. */
  readsInFlight = 0;
  /** Accesses that came while a data read was in flight. */
  overlapped: string[] = [];
  #reads = 0;
  #writes = 0;
  readonly opts: ModelOptions;
  // save side
  #saving: { sent: number; dirty: Set<number>; window?: { fresh: number; size: number } } | null = null;
  // resume side
  #dirtyCursor = 0;
  #section: Buffer;
  readonly info: RegionInfo;

  constructor(opts: ModelOptions) {
    this.opts = opts;
    this.state = Buffer.alloc(opts.stateSize);
    this.#section = Buffer.alloc(opts.chunkSize);
    const size = BigInt(HEADER + opts.chunkSize);
    const areas = opts.mmap ? [{ offset: BigInt(HEADER), size: BigInt(opts.chunkSize) }] : [];
    this.info = {
      index: 9,
      flags: 3,
      size,
      offset: 0n,
      argsz: 0,
      readable: true,
      writable: true,
      mmapable: !!opts.mmap,
      capabilities: [],
      mmapAreas: areas,
      type: { type: 3, subtype: 1 },
    };
  }

  fill(seed: number): void {
    for (let i = 0; i < this.state.length; i++) this.state[i] = (i * 31 + seed * 7) & 0xff;
  }

  #check(access: string): void {
    this.accesses.push(access);
    if (this.readsInFlight) this.overlapped.push(access);
    this.opts.fault?.(access);
  }

  #pending(): number {
    const s = this.#saving;
    if (!s) return 0;
    return this.state.length - s.sent + s.dirty.size;
  }

  region(index: number) {
    if (index !== 9) throw new VfioError('ERR_VFIO_BAD_INFO', 'model has only region 9');
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the returned object's methods need the model itself
    const dev = this;
    return {
      info: this.info,
      index: 9,
      size: this.info.size,
      async readAsync(offset: number, width: number): Promise<number | bigint> {
        return dev.region(9).read(offset, width);
      },
      read(offset: number, width: number): number | bigint {
        if (offset === 0 && width === 4) {
          dev.#check('read device_state');
          return (dev.deviceState | dev.reserved) >>> 0;
        }
        if (width !== 8) throw sysErr('EINVAL', 'width');
        if (offset === 8) {
          dev.#check('read pending_bytes');
          if ((dev.deviceState & 3) === 3 && dev.opts.dirtyPerRead) {
            for (let i = 0; i < dev.opts.dirtyPerRead; i++) {
              const at = (dev.#dirtyCursor++ * 997) % dev.state.length;
              dev.state[at] ^= 0x5a;
              if (dev.#saving && at < dev.#saving.sent) dev.#saving.dirty.add(at);
            }
          }
          return BigInt(dev.#pending());
        }
        if (offset === 16) {
          dev.#check('read data_offset');
          if (dev.deviceState === 4) return BigInt(HEADER);
          const s = dev.#saving;
          if (!s) throw sysErr('EINVAL', 'data_offset outside saving');
          if (!s.window) {
            // Every transaction is [u32 state offset][bytes]: fresh data first, then dirtied bytes.
            if (s.sent < dev.state.length) {
              const size = Math.min(dev.opts.chunkSize - 4, dev.state.length - s.sent);
              dev.#section.writeUInt32LE(s.sent, 0);
              dev.state.copy(dev.#section, 4, s.sent, s.sent + size);
              s.window = { fresh: size, size: size + 4 };
            } else if (s.dirty.size) {
              const at = s.dirty.values().next().value as number;
              s.dirty.delete(at);
              dev.#section.writeUInt32LE(at, 0);
              dev.#section[4] = dev.state[at];
              s.window = { fresh: 0, size: 5 };
            } else {
              s.window = { fresh: 0, size: 0 };
            }
          }
          return BigInt(HEADER);
        }
        if (offset === 24) {
          dev.#check('read data_size');
          return BigInt(dev.#saving?.window?.size ?? 0);
        }
        throw sysErr('EINVAL', 'register');
      },
      async writeAsync(offset: number, width: number, value: number | bigint): Promise<void> {
        if (offset === 0 && width === 4) {
          dev.#check('write device_state');
          const v = Number(value);
          const to = v & 7;
          if (to === 5 || to === 7 || to === 6) throw sysErr('EINVAL', 'invalid state');
          if ((v & ~7) >>> 0 !== dev.reserved) throw sysErr('EINVAL', 'reserved bits changed');
          const from = dev.deviceState;
          if (to & 2 && !(from & 2)) dev.#saving = { sent: 0, dirty: new Set() };
          if (!(to & 2)) dev.#saving = null;
          dev.deviceState = to;
          return;
        }
        if (offset === 24 && width === 8) {
          dev.#check('write data_size');
          if (dev.deviceState !== 4) throw sysErr('EINVAL', 'data_size write outside resuming');
          const size = Number(value);
          const at = dev.#section.readUInt32LE(0);
          dev.#section.copy(dev.state, at, 4, size);
          return;
        }
        throw sysErr('EINVAL', 'register write');
      },
      async readBulk(
        offset: bigint,
        target: Uint8Array,
        targetOffset = 0,
        length = target.length - targetOffset,
      ): Promise<void> {
        dev.#check('pread data');
        const held = dev.opts.stall?.('pread data', ++dev.#reads);
        if (held) {
          dev.readsInFlight++;
          await held.finally(() => dev.readsInFlight--);
        }
        const s = dev.#saving;
        if (s?.window) {
          dev.#section.copy(target, targetOffset, Number(offset) - HEADER, Number(offset) - HEADER + length);
          s.sent += s.window.fresh;
          s.window = undefined;
        }
      },
      // As the addon does: the read, then the CRC-32 of what it read, in one job.
      async readBulkChecksummed(offset: bigint, target: Uint8Array, targetOffset: number, length: number) {
        await this_region().readBulk(offset, target, targetOffset, length);
        return crc32(target.subarray(targetOffset, targetOffset + length));
      },
      async writeBulk(
        offset: bigint,
        source: Uint8Array,
        sourceOffset = 0,
        length = source.length - sourceOffset,
      ): Promise<void> {
        dev.#check('pwrite data');
        const held = dev.opts.stall?.('pwrite data', ++dev.#writes);
        if (held) await held;
        Buffer.from(source.buffer, source.byteOffset, source.byteLength).copy(
          dev.#section,
          Number(offset) - HEADER,
          sourceOffset,
          sourceOffset + length,
        );
      },
      // The kernel does these in one pool job; the model in sequence, marking a register failure as the addon does.
      async writeBulkThen(
        offset: bigint,
        source: Uint8Array,
        sourceOffset: number,
        length: number,
        doorbell: { offset: number; width: number; value: bigint },
      ): Promise<void> {
        await this_region().writeBulk(offset, source, sourceOffset, length);
        await ringDoorbell(doorbell);
      },
      async writeMappedThen(
        map: { writeFrom(at: number, s: Uint8Array, o: number, l: number): Promise<void> },
        at: number,
        source: Uint8Array,
        sourceOffset: number,
        length: number,
        doorbell: { offset: number; width: number; value: bigint },
      ): Promise<void> {
        await map.writeFrom(at, source, sourceOffset, length);
        await ringDoorbell(doorbell);
      },
      mmap(offset: bigint, length: bigint) {
        const base = Number(offset) - HEADER;
        let mapped = true;
        return {
          regionOffset: offset,
          length: Number(length),
          async readInto(at: number, target: Uint8Array, targetOffset: number, len: number) {
            if (!mapped) throw new Error('unmapped');
            await this_region().readBulk(BigInt(HEADER + base + at), target, targetOffset, len);
          },
          async readIntoChecksummed(at: number, target: Uint8Array, targetOffset: number, len: number) {
            await this.readInto(at, target, targetOffset, len);
            return crc32(target.subarray(targetOffset, targetOffset + len));
          },
          async writeFrom(at: number, source: Uint8Array, sourceOffset: number, len: number) {
            if (!mapped) throw new Error('unmapped');
            await this_region().writeBulk(BigInt(HEADER + base + at), source, sourceOffset, len);
          },
          unmap() {
            mapped = false;
          },
        };
      },
    };
    function this_region() {
      return dev.region(9);
    }
    async function ringDoorbell(doorbell: { offset: number; width: number; value: bigint }): Promise<void> {
      try {
        await this_region().writeAsync(doorbell.offset, doorbell.width, doorbell.value);
      } catch (err) {
        if (err instanceof SyscallError) err.stage = 'register';
        throw err;
      }
    }
  }

  async reset(): Promise<void> {
    this.resets++;
    if (this.readsInFlight) this.overlapped.push('reset');
    this.deviceState = 1;
    this.#saving = null;
  }
}
