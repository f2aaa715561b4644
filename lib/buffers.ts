// I/O buffers in native-owned memory: async reads and writes work on them in place, with no bounce copy.
import { native } from './native';

/**
 * A zeroed Buffer that async native I/O can use without a copy: the job pins its memory, so
 * detaching the buffer while a read is in flight cannot make a thread write freed memory. Any
 * other Buffer works too, through a bounce copy; use this one for buffers reused on hot paths.
 */
export function allocIoBuffer(size: number): Buffer {
  if (!Number.isSafeInteger(size) || size < 0)
    throw new RangeError(`allocIoBuffer: size must be a non-negative integer, got ${String(size)}`);
  return native.allocBuffer(size);
}
