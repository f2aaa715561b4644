// DirtyBitmap: one bit per page of an IOVA range, in the kernel's layout (u64 words, bit i = page i), shared by both trackers.
import { native } from '../native';

/** Refused above this many pages: 2^32 pages of 4 KiB is 16 TiB of IOVA, and a 512 MiB bitmap. */
export const MAX_BITMAP_PAGES = 2 ** 32;

const POPCOUNT8 = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT8[i] = (i & 1) + POPCOUNT8[i >> 1];

function isPowerOfTwo(v: bigint): boolean {
  return v > 0n && (v & (v - 1n)) === 0n;
}

/**
 * The dirty pages of [iova, +length) at `pageSize` granularity. Its bytes are the bitmap the
 * kernel fills (whole u64 words, little-endian: page i is bit i % 8 of byte i / 8), in
 * native-owned memory so an asynchronous report works on it in place. Counting, iterating and
 * merging work word by word and allocate nothing per page.
 */
export class DirtyBitmap {
  readonly iova: bigint;
  readonly length: bigint;
  readonly pageSize: bigint;
  /** Pages covered: length / pageSize. */
  readonly pages: number;
  /** The kernel's bitmap: ceil(pages / 64) u64 words. */
  readonly bytes: Uint8Array;
  readonly #words: Uint32Array;

  constructor(iova: bigint, length: bigint, pageSize: bigint) {
    if (typeof iova !== 'bigint' || typeof length !== 'bigint' || typeof pageSize !== 'bigint') {
      throw new TypeError('iova, length and pageSize must be bigints');
    }
    if (!isPowerOfTwo(pageSize)) throw new RangeError(`page size ${pageSize} is not a power of two`);
    if (iova < 0n || iova % pageSize !== 0n)
      throw new RangeError(`iova 0x${iova.toString(16)} is not aligned to the page size ${pageSize}`);
    if (length <= 0n || length % pageSize !== 0n) {
      throw new RangeError(`length ${length} is not a positive multiple of the page size ${pageSize}`);
    }
    if (iova + length > 2n ** 64n) throw new RangeError('range extends past the 64-bit IOVA space');
    const pages = length / pageSize;
    if (pages > BigInt(MAX_BITMAP_PAGES))
      throw new RangeError(`${pages} pages exceed the bitmap limit of ${MAX_BITMAP_PAGES}`);
    this.iova = iova;
    this.length = length;
    this.pageSize = pageSize;
    this.pages = Number(pages);
    const size = Math.ceil(this.pages / 64) * 8;
    const buf = native.allocBuffer(size);
    // allocBuffer's memory is calloc'ed (8-byte aligned); its fallback may not be: copy into an aligned one then.
    this.bytes = buf.byteOffset % 8 === 0 ? buf : new Uint8Array(size);
    this.#words = new Uint32Array(this.bytes.buffer, this.bytes.byteOffset, size / 4);
  }

  /** Bytes a bitmap of `pages` pages takes in the kernel's layout (whole u64 words). */
  static byteSize(pages: number): number {
    return Math.ceil(pages / 64) * 8;
  }

  #checkIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.pages) {
      throw new RangeError(`page index ${index} is outside [0, ${this.pages})`);
    }
  }

  /** The page index of an IOVA inside the range. */
  indexOf(iova: bigint): number {
    if (iova < this.iova || iova >= this.iova + this.length) {
      throw new RangeError(`iova 0x${iova.toString(16)} is outside the bitmap's range`);
    }
    return Number((iova - this.iova) / this.pageSize);
  }

  /** The first IOVA of page `index`. */
  iovaOf(index: number): bigint {
    this.#checkIndex(index);
    return this.iova + BigInt(index) * this.pageSize;
  }

  isDirty(index: number): boolean {
    this.#checkIndex(index);
    return (this.bytes[index >>> 3] & (1 << (index & 7))) !== 0;
  }

  /** Marks page `index` dirty. */
  set(index: number): void {
    this.#checkIndex(index);
    this.bytes[index >>> 3] |= 1 << (index & 7);
  }

  /** Marks every page clean. */
  clear(): void {
    this.bytes.fill(0);
  }

  /** Marks every page dirty (the recovery the uapi asks for after a failed report). */
  setAll(): void {
    for (let i = 0; i < this.pages; i++) this.bytes[i >>> 3] |= 1 << (i & 7);
  }

  /** The number of dirty pages. */
  count(): number {
    let n = 0;
    const words = this.#words;
    const bytes = this.bytes;
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      const b = w * 4;
      n += POPCOUNT8[bytes[b]] + POPCOUNT8[bytes[b + 1]] + POPCOUNT8[bytes[b + 2]] + POPCOUNT8[bytes[b + 3]];
    }
    return n;
  }

  /** Calls `fn` with the index of each dirty page, in order; clean stretches cost one word test per 32 pages. */
  forEachDirty(fn: (index: number) => void): void {
    const words = this.#words;
    const bytes = this.bytes;
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      for (let b = w * 4; b < w * 4 + 4; b++) {
        let v = bytes[b];
        while (v !== 0) {
          const bit = 31 - Math.clz32(v & -v);
          const index = b * 8 + bit;
          if (index < this.pages) fn(index);
          v &= v - 1;
        }
      }
    }
  }

  /** The dirty page indexes, in order (an iterator over forEachDirty's walk). */
  *dirtyPages(): IterableIterator<number> {
    const out: number[] = [];
    const words = this.#words;
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      for (let b = w * 4; b < w * 4 + 4; b++) {
        let v = this.bytes[b];
        while (v !== 0) {
          const index = b * 8 + 31 - Math.clz32(v & -v);
          if (index < this.pages) out.push(index);
          v &= v - 1;
        }
      }
      yield* out;
      out.length = 0;
    }
  }

  /** Runs of consecutive dirty pages as [firstIndex, count] pairs: what a copy loop wants. */
  *dirtyRuns(): IterableIterator<[first: number, count: number]> {
    let start = -1;
    let prev = -2;
    const runs: [number, number][] = [];
    this.forEachDirty((i) => {
      if (i !== prev + 1) {
        if (start >= 0) runs.push([start, prev - start + 1]);
        start = i;
      }
      prev = i;
    });
    if (start >= 0) runs.push([start, prev - start + 1]);
    yield* runs;
  }

  /**
   * ORs `other` into this bitmap. Both have the same page size and `other`'s range lies inside
   * this one; a coarser or finer page size must be converted by the caller (the kernel's report
   * can be asked at any page size instead).
   */
  merge(other: DirtyBitmap): this {
    if (other.pageSize !== this.pageSize) {
      throw new RangeError(`cannot merge a bitmap of page size ${other.pageSize} into one of ${this.pageSize}`);
    }
    if (other.iova < this.iova || other.iova + other.length > this.iova + this.length) {
      throw new RangeError('the merged bitmap covers IOVAs outside this one');
    }
    const shift = Number((other.iova - this.iova) / this.pageSize);
    if (shift % 32 === 0) {
      const words = this.#words;
      const theirs = other.#words;
      const at = shift / 32;
      for (let w = 0; w < theirs.length; w++) if (theirs[w] !== 0) words[at + w] |= theirs[w];
    } else {
      other.forEachDirty((i) => {
        const j = i + shift;
        this.bytes[j >>> 3] |= 1 << (j & 7);
      });
    }
    return this;
  }

  /** True when both cover the same range at the same page size with the same dirty pages. */
  equals(other: DirtyBitmap): boolean {
    if (other.iova !== this.iova || other.length !== this.length || other.pageSize !== this.pageSize) return false;
    const a = this.#words;
    const b = other.#words;
    for (let w = 0; w < a.length; w++) if (a[w] !== b[w]) return false;
    return true;
  }
}
