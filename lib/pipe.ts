// Pipes the stream crosses: a larger capacity (F_SETPIPE_SZ) when the stream goes to or comes from one.
import { fstatSync } from 'node:fs';
import { native } from './native';

/** 1 MiB: Linux's default pipe-max-size for unprivileged users (a larger record crosses in several writes). */
export const STREAM_PIPE_BYTES = 1 << 20;

/**
 * Grows the pipe behind `fd` to `bytes` so a record crosses in few writes and wake-ups of the
 * other end, instead of one per 64 KiB. Best effort: returns the new capacity, or undefined
 * when `fd` is not a pipe or the kernel refused (pipe-max-size, the user's pipe quota).
 */
export function enlargePipe(fd: number, bytes = STREAM_PIPE_BYTES): number | undefined {
  try {
    if (!fstatSync(fd).isFIFO()) return undefined;
    return native.setPipeSize(fd, bytes);
  } catch {
    return undefined;
  }
}
