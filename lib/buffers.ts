// I/O buffers in native-owned memory: async reads and writes work on them in place, with no bounce copy.
import { native } from './native';

/**
 * A zeroed Buffer that async native I/O can use without a copy: the job pins its memory, so
 * detaching the buffer while a read is in flight cannot make a thread write freed memory. Any
 * other Buffer works too, through a bounce copy; use this one for buffers reused on hot paths.
 */
export function allocIoBuffer(size: number): Buffer {
  checkSize('allocIoBuffer', size);
  return native.allocBuffer(size);
}

function checkSize(caller: string, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0)
    throw new RangeError(`${caller}: size must be a non-negative integer, got ${String(size)}`);
}

/**
 * allocIoBuffer(), with its memory faulted in on the thread pool. Fresh memory faults on each
 * page's first write, on whichever thread makes it (2-15 ms per MiB in the test guest): use this
 * for a buffer the JS thread writes into first, such as a reader's carry-over copy. A buffer
 * that async device or file reads fill first needs none of this: the pool thread faults it.
 */
export async function allocIoBufferAsync(size: number): Promise<Buffer> {
  checkSize('allocIoBufferAsync', size);
  return native.allocBufferAsync(size);
}

// Node's Buffer class proper (FastBuffer in Node's sources), which Buffer names as its species:
// constructing it over the same memory makes a Buffer view in one JS call.
const BufferClass = (
  Buffer as unknown as { [Symbol.species]: new (memory: ArrayBufferLike, offset: number, length: number) => Buffer }
)[Symbol.species];

/**
 * `buf.subarray(start, end)` for offsets within the buffer, without Node's JS wrapper: its offset
 * adjustments and constructor call cost four JS calls in V8's interpreter (and the typed array's
 * own method, through the species getter, three), where a migration's downtime runs. Use it on
 * the paths a downtime runs per record or frame; elsewhere (stream headers, checks run once per
 * stream) `subarray` reads as well and costs nothing that matters.
 */
export function bufferView(buf: Buffer, start: number, end: number = buf.length): Buffer {
  if (!(start >= 0 && start <= end && end <= buf.length))
    throw new RangeError(`bufferView: [${start}, ${end}) is not inside a buffer of ${buf.length} bytes`);
  return new BufferClass(buf.buffer, buf.byteOffset + start, end - start);
}

/**
 * A DataView over exactly `b`'s bytes, for little-endian fields of headers and kernel structs:
 * Buffer's readUInt32LE and kin are JS functions with argument checks, some five calls each, and
 * a migration's downtime reads and writes such fields a few times per device in V8's interpreter.
 */
export function dataView(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}
