// Where `save -o` writes: a regular file atomically (temporary file, fsync, rename), a FIFO or character device directly.
import {
  closeSync,
  constants,
  createWriteStream,
  fchmodSync,
  fchownSync,
  fsync,
  lstatSync,
  openSync,
  readdirSync,
  realpathSync,
  rename,
  statSync,
  unlinkSync,
  type Stats,
  type WriteStream,
} from 'node:fs';
import type { Socket } from 'node:net';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { enlargePipe } from '../lib/pipe';
import { FileSink } from '../lib/migration/stream/sink';

/** The output cannot be used; raised before any device is touched. */
export class OutputError extends Error {
  readonly code = 'ERR_OUTPUT';
  readonly path: string;
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super(`cannot write the stream to ${path}: ${message}`, options);
    this.name = 'OutputError';
    this.path = path;
  }
}

export interface Output {
  /** What the user named. */
  readonly path: string;
  /** 'atomic': a temporary file renamed at commit; 'direct': written in place (FIFO, character device). */
  readonly kind: 'atomic' | 'direct';
  /**
   * Where the encoder writes: the file itself (FileSink, no copies), a pipe socket (FIFO: written
   * by the event loop, never by a pool thread a stalled reader could hold), or a WriteStream
   * (character device).
   */
  readonly sink: FileSink | NodeJS.WritableStream;
  /** Flushes everything to stable storage and, for 'atomic', renames the file into place. */
  commit(): Promise<void>;
  /** Drops a partial output: the temporary file is removed at once. Synchronous and idempotent. */
  discard(): void;
}

// Temporary files carry the host and pid of their writer, so a later save can tell abandoned ones.
const TMP_MARK = 'vfio-mig';
const TMP_PATTERN = /^\..+\.vfio-mig-(.+)-(\d+)-[0-9a-f]{8}\.tmp$/;

function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ? `${e.code} (${e.message.replace(/^[A-Z]+: /, '')})` : String(err);
}

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Removes temporary files that a killed `save -o` left in `dir`: only ours (by name), only from
 * this host, and only when their writer process is gone. Returns the names removed.
 */
export function sweepAbandoned(dir: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  const host = hostname();
  for (const name of names) {
    const m = TMP_PATTERN.exec(name);
    if (!m || m[1] !== host || !processGone(Number(m[2]))) continue;
    try {
      unlinkSync(join(dir, name));
      removed.push(name);
    } catch {
      /* raced with another sweeper, or not ours to remove */
    }
  }
  return removed;
}

function streamDone(stream: WriteStream | Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    if (stream.closed) return resolve();
    stream.once('error', reject);
    stream.once('close', resolve);
    stream.end();
  });
}

function atomicOutput(path: string, finalPath: string, existing: Stats | undefined): Output {
  const dir = dirname(finalPath);
  sweepAbandoned(dir);
  let tmp = '';
  let fd = -1;
  // O_EXCL makes the name ours; the suffix only has to differ between tries. (Not node:crypto:
  // loading it cost every save ~25 ms of start-up in the guest.)
  for (let attempt = 0; fd < 0; attempt++) {
    const suffix = ((Number(process.hrtime.bigint() & 0xffffffffn) + attempt * 0x9e3779b1) >>> 0)
      .toString(16)
      .padStart(8, '0');
    tmp = join(dir, `.${basename(finalPath)}.${TMP_MARK}-${hostname()}-${process.pid}-${suffix}.tmp`);
    try {
      fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o666);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' && attempt < 16) continue;
      throw new OutputError(path, `cannot create a file in ${dir}: ${describe(err)}`, { cause: err });
    }
  }
  let removed = false;
  const removeTmp = () => {
    if (removed) return;
    removed = true;
    try {
      unlinkSync(tmp);
    } catch {
      /* already gone */
    }
  };
  try {
    // Replacing a file keeps its permissions and owner.
    if (existing) {
      fchmodSync(fd, existing.mode & 0o7777);
      if (process.getuid?.() === 0) fchownSync(fd, existing.uid, existing.gid);
    }
  } catch (err) {
    closeSync(fd);
    removeTmp();
    throw new OutputError(path, `cannot copy the permissions of ${finalPath}: ${describe(err)}`, { cause: err });
  }
  // The encoder writes the fd itself (FileSink); commit fsyncs it before the rename, so the rename
  // publishes complete data.
  const sink = new FileSink(fd);
  let closed = false;
  const closeFd = () => {
    if (closed) return;
    closed = true;
    closeSync(fd);
  };
  let committed = false;
  return {
    path,
    kind: 'atomic',
    sink,
    async commit() {
      await promisify(fsync)(fd);
      closeFd();
      // On the thread pool, like the fsyncs: replacing a file frees the old one's pages inside
      // rename() (over 100 ms for 256 MiB in the guest), and a directory's fsync waits for the
      // journal; the loop meanwhile serves signals and progress.
      await promisify(rename)(tmp, finalPath);
      committed = true;
      const dirFd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
      try {
        await promisify(fsync)(dirFd);
      } finally {
        closeSync(dirFd);
      }
    },
    discard() {
      if (committed) return;
      removeTmp();
      closeFd();
    },
  };
}

function directOutput(path: string, st: Stats, signal?: AbortSignal): Output {
  let fd: number;
  try {
    if (st.isFIFO()) {
      // A FIFO without a reader would block open() for ever: check for one without blocking first.
      const probe = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
      try {
        fd = openSync(path, constants.O_WRONLY);
      } finally {
        closeSync(probe);
      }
    } else {
      fd = openSync(path, constants.O_WRONLY);
    }
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENXIO' ? 'the FIFO has no reader' : describe(err);
    throw new OutputError(path, why, { cause: err });
  }
  let stream: WriteStream | Socket;
  if (st.isFIFO()) {
    // A FIFO's reader gets 1 MiB per wake-up instead of 64 KiB (best effort).
    enlargePipe(fd);
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- only a FIFO output needs node:net (start-up)
    const { Socket: PipeSocket } = require('node:net') as typeof import('node:net');
    stream = new PipeSocket({ fd, readable: false, writable: true });
  } else {
    stream = createWriteStream('', { fd, highWaterMark: 1 << 20 });
  }
  // An abort drops what waits for a reader that may never come: the save's pending write then
  // fails, and the save ends as aborted instead of waiting on the reader.
  signal?.addEventListener('abort', () => stream.destroy(), { once: true });
  return {
    path,
    kind: 'direct',
    sink: stream,
    commit: () => streamDone(stream),
    discard() {
      stream.destroy();
    },
  };
}

/**
 * `-o -`: the process's stdout, written in place like a FIFO: a pipe is grown to take a whole
 * record per write, and an abort drops what waits for a reader that may never come.
 */
export function stdoutOutput(stdout: NodeJS.WriteStream, signal?: AbortSignal): Output {
  enlargePipe(1);
  signal?.addEventListener('abort', () => stdout.destroy(), { once: true });
  return { path: '-', kind: 'direct', sink: stdout, commit: async () => undefined, discard: () => undefined };
}

/**
 * Prepares `path` for a stream before any device is touched, so a bad output costs no downtime:
 * a regular file (or a new one) is written to a temporary file beside it and renamed over it on
 * commit, following a symbolic link to the file it names; a FIFO or a character device
 * (/dev/null, /dev/fd/N of a pipe) is written in place, never replaced; a directory, a block
 * device, a socket or a dangling link are refused.
 */
export function openOutput(path: string, options: { signal?: AbortSignal } = {}): Output {
  if (path === '') throw new OutputError('""', 'empty path');
  if (path.includes('\0')) throw new OutputError(JSON.stringify(path), 'the path contains a NUL byte');
  let st: Stats | undefined;
  try {
    st = statSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new OutputError(path, describe(err), { cause: err });
  }
  if (!st) {
    let link: Stats | undefined;
    try {
      link = lstatSync(path);
    } catch {
      /* nothing there */
    }
    if (link?.isSymbolicLink()) throw new OutputError(path, 'it is a symbolic link to a missing file');
    return atomicOutput(path, path, undefined);
  }
  if (st.isFile()) return atomicOutput(path, realpathSync(path), st);
  if (st.isFIFO() || st.isCharacterDevice()) return directOutput(path, st, options.signal);
  const what = st.isDirectory() ? 'a directory' : st.isBlockDevice() ? 'a block device' : 'a socket';
  throw new OutputError(path, `it is ${what}`);
}
