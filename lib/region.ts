// Region: one region of a device, with bounds-checked register, bulk and mmap access.
import { native, type Width } from './native';
import { VfioError } from './errors';
import { toSafeNumber, type RegionInfo, type SparseMmapArea } from './decode';
import type { Device } from './device';
import { mmapShared, type Mapping } from './mapping';

/** A register write (region-relative offset) that a bulk write carries out right after its data. */
export interface Doorbell {
  offset: number | bigint;
  width: Width;
  value: number | bigint;
}

/** One region of a device, addressed by region-relative offsets that are checked against its size. */
export class Region {
  readonly device: Device;
  readonly info: RegionInfo;

  constructor(device: Device, info: RegionInfo) {
    this.device = device;
    this.info = info;
  }

  get index(): number {
    return this.info.index;
  }
  get size(): bigint {
    return this.info.size;
  }

  #at(offset: number | bigint, length: number | bigint): bigint {
    const start = BigInt(offset);
    const len = BigInt(length);
    if (start < 0n || len < 0n || start + len > this.info.size) {
      throw new RangeError(`region ${this.index}: access [${start}, +${len}) is outside its ${this.info.size} bytes`);
    }
    return this.info.offset + start;
  }

  /** One pread of exactly `width` bytes (a register). */
  read(offset: number | bigint, width: 1 | 2 | 4): number;
  read(offset: number | bigint, width: 8): bigint;
  read(offset: number | bigint, width: Width): number | bigint {
    return native.preadWidth(this.device.fd, this.#at(offset, width), width);
  }
  readAsync(offset: number | bigint, width: 1 | 2 | 4): Promise<number>;
  readAsync(offset: number | bigint, width: 8): Promise<bigint>;
  readAsync(offset: number | bigint, width: Width): Promise<number | bigint> {
    const at = this.#at(offset, width);
    return this.device.handle.run((fd) => native.preadWidthAsync(fd, at, width));
  }
  write(offset: number | bigint, width: 1 | 2 | 4, value: number): void;
  write(offset: number | bigint, width: 8, value: bigint): void;
  write(offset: number | bigint, width: Width, value: number | bigint): void {
    native.pwriteWidth(this.device.fd, this.#at(offset, width), width, value);
  }
  writeAsync(offset: number | bigint, width: 1 | 2 | 4, value: number): Promise<void>;
  writeAsync(offset: number | bigint, width: 8, value: bigint): Promise<void>;
  writeAsync(offset: number | bigint, width: Width, value: number | bigint): Promise<void> {
    const at = this.#at(offset, width);
    return this.device.handle.run((fd) => native.pwriteWidthAsync(fd, at, width, value));
  }

  /** Reads exactly target.length bytes from offset, off the JS thread, in as few preads as the kernel allows. */
  readBulk(offset: number | bigint, target: Uint8Array, targetOffset = 0, length = target.length - targetOffset) {
    return this.#bulk('pread', offset, target, targetOffset, length);
  }

  /**
   * readBulk in one pool job (short preads continued there) that also resolves the CRC-32 of the
   * bytes read, computed by the thread that read them.
   */
  async readBulkChecksummed(
    offset: number | bigint,
    target: Uint8Array,
    targetOffset: number,
    length: number,
  ): Promise<number> {
    const at = this.#at(offset, length);
    const r = await this.device.handle.run((fd) => native.readChecksummedAsync(fd, target, targetOffset, length, at));
    if (r.bytes < length)
      throw new VfioError(
        'ERR_VFIO_BAD_INFO',
        `region ${this.index}: pread at ${BigInt(offset) + BigInt(r.bytes)} returned end of region`,
      );
    return r.crc;
  }

  /** Moves exactly `length` bytes, continuing short transfers; a transfer of 0 bytes is the end of the region. */
  async #bulk(
    syscall: 'pread' | 'pwrite',
    offset: number | bigint,
    bytes: Uint8Array,
    bytesOffset: number,
    length: number,
  ): Promise<void> {
    const at = this.#at(offset, length);
    const call = syscall === 'pread' ? native.preadAsync : native.pwriteAsync;
    let done = 0;
    while (done < length) {
      const n = await this.device.handle.run((fd) =>
        call(fd, bytes, bytesOffset + done, length - done, at + BigInt(done)),
      );
      if (n === 0)
        throw new VfioError(
          'ERR_VFIO_BAD_INFO',
          `region ${this.index}: ${syscall} at ${BigInt(offset) + BigInt(done)} ${syscall === 'pread' ? 'returned end of region' : 'wrote nothing'}`,
        );
      done += n;
    }
  }

  /**
   * Writes exactly `length` bytes at offset and then the register `doorbell`, in one job off the
   * JS thread: one thread hop instead of two. A failure of the register write has stage 'register'.
   */
  writeBulkThen(
    offset: number | bigint,
    source: Uint8Array,
    sourceOffset: number,
    length: number,
    doorbell: Doorbell,
  ): Promise<void> {
    const at = this.#at(offset, length);
    const reg = this.#at(doorbell.offset, doorbell.width);
    return this.device.handle.run((fd) =>
      native.pwriteAllAsync(fd, source, sourceOffset, length, at, fd, reg, doorbell.width, doorbell.value),
    );
  }

  /** Copies into `map` (a mapping of this region) at `mapOffset`, then writes the register `doorbell`, in one job off the JS thread. */
  writeMappedThen(
    map: Mapping,
    mapOffset: number,
    source: Uint8Array,
    sourceOffset: number,
    length: number,
    doorbell: Doorbell,
  ): Promise<void> {
    const reg = this.#at(doorbell.offset, doorbell.width);
    return this.device.handle.run((fd) =>
      map.writeFrom(mapOffset, source, sourceOffset, length, [fd, reg, doorbell.width, doorbell.value]),
    );
  }

  /** Writes exactly `length` bytes at offset, off the JS thread. */
  writeBulk(offset: number | bigint, source: Uint8Array, sourceOffset = 0, length = source.length - sourceOffset) {
    return this.#bulk('pwrite', offset, source, sourceOffset, length);
  }

  /** Maps [offset, +length) of the region; the range must lie inside one mmap-able area. */
  mmap(offset: bigint, length: bigint, writable = this.info.writable): Mapping {
    const area = this.info.mmapAreas.find(
      (a: SparseMmapArea) => offset >= a.offset && offset + length <= a.offset + a.size,
    );
    if (!area) throw new RangeError(`region ${this.index}: [${offset}, +${length}) is not inside an mmap-able area`);
    return mmapShared(
      this.device.fd,
      this.#at(offset, length),
      toSafeNumber(length, 'mapping length'),
      writable,
      offset,
    );
  }
}
