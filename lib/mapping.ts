// Mapping: an mmap of a region or a file, with width-exact volatile accessors and a zero-copy view; mapFd maps an fd directly.
import { fstatSync } from 'node:fs';
import { native, type NativeMapping, type RegisterWriteArgs, type Width } from './native';
import { PROT_READ, PROT_WRITE } from './uapi';

const natives = new WeakMap<Mapping, NativeMapping>();

/** The addon object behind a Mapping, for the DMA layer (lib/dirty/dma.ts); not public API. */
export function nativeMappingOf(mapping: Mapping): NativeMapping {
  const map = natives.get(mapping);
  if (!map) throw new TypeError('not a Mapping');
  return map;
}

/** A mapping of part of a region: width-exact volatile accessors and a zero-copy view. */
export class Mapping {
  readonly #map: NativeMapping;
  /** Where the mapping starts inside its region. */
  readonly regionOffset: bigint;

  constructor(map: NativeMapping, regionOffset: bigint) {
    this.#map = map;
    this.regionOffset = regionOffset;
    natives.set(this, map);
  }

  get length(): number {
    return this.#map.length;
  }
  get mapped(): boolean {
    return this.#map.mapped;
  }
  get writable(): boolean {
    return this.#map.writable;
  }
  /**
   * Zero-copy view; detached (length 0) after unmap. Refused on a read-only mapping: an ArrayBuffer
   * cannot be made read-only and a store through it would kill the process.
   */
  get buffer(): ArrayBuffer {
    if (!this.writable)
      throw new TypeError(
        'mapping is read-only: it has no buffer view (a store through it would crash the process); use read() or readInto()',
      );
    return this.#map.buffer;
  }
  /** A store into a read-only mapping is a SIGSEGV (on a pool thread for writeFrom): refused before native. */
  #checkWritable(what: string): void {
    if (!this.writable) throw new TypeError(`mapping is read-only (mapped without PROT_WRITE): ${what} is not allowed`);
  }
  read(offset: number, width: 1 | 2 | 4): number;
  read(offset: number, width: 8): bigint;
  read(offset: number, width: Width): number | bigint {
    return this.#map.read(offset, width);
  }
  write(offset: number, width: 1 | 2 | 4, value: number): void;
  write(offset: number, width: 8, value: bigint): void;
  write(offset: number, width: Width, value: number | bigint): void {
    this.#checkWritable('write()');
    this.#map.write(offset, width, value);
  }
  /** Copies out of the mapping off the JS thread. */
  readInto(offset: number, target: Uint8Array, targetOffset = 0, length = target.length - targetOffset): Promise<void> {
    return this.#map.readInto(offset, target, targetOffset, length);
  }
  /** readInto that also resolves the CRC-32 of the bytes copied (computed off the JS thread, by the same job). */
  readIntoChecksummed(offset: number, target: Uint8Array, targetOffset: number, length: number): Promise<number> {
    return this.#map.readInto(offset, target, targetOffset, length, true);
  }
  /** Copies into the mapping off the JS thread; `then` is a register pwrite done after it in the same job (see Region.writeMappedThen). */
  writeFrom(
    offset: number,
    source: Uint8Array,
    sourceOffset = 0,
    length = source.length - sourceOffset,
    then?: RegisterWriteArgs,
  ): Promise<void> {
    this.#checkWritable('writeFrom()');
    return then
      ? this.#map.writeFrom(offset, source, sourceOffset, length, ...then)
      : this.#map.writeFrom(offset, source, sourceOffset, length);
  }
  unmap(): void {
    this.#map.unmap();
  }
  [Symbol.dispose](): void {
    this.unmap();
  }
}

/**
 * Opens an mmap directly on an fd (ordinary files, memfds; device regions go through Region.mmap).
 * A regular file must cover the whole range: an access past its end would be a SIGBUS. Other fds
 * (a device has no meaningful st_size) are mapped as asked.
 */
export function mapFd(fd: number, offset: bigint, length: number, writable = true): Mapping {
  const st = fstatSync(fd, { bigint: true });
  if (st.isFile() && offset + BigInt(length) > st.size) {
    throw new RangeError(`mapping [${offset}, +${length}) extends past the end of the file (${st.size} bytes)`);
  }
  return mmapShared(fd, offset, length, writable, 0n);
}

/** mmap(MAP_SHARED) of [position, +length) of an fd, read-only or read-write; `regionOffset` is where it sits in its region. */
export function mmapShared(
  fd: number,
  position: bigint,
  length: number,
  writable: boolean,
  regionOffset: bigint,
): Mapping {
  const map = new native.Mapping(fd, position, length, PROT_READ | (writable ? PROT_WRITE : 0));
  return new Mapping(map, regionOffset);
}
