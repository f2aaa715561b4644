// FdHandle, an fd pinned open while async syscalls use it, and openNode, which opens a VFIO node with errors that say what to do.
import { native } from './native';
import { VfioError, isSyscallError } from './errors';
import { O_RDWR } from './uapi';

/**
 * An fd whose close waits for the async syscalls that use it: closing an fd under a
 * running pread would let the kernel reuse the number for something else.
 */
export class FdHandle {
  #fd: number;
  #inflight = 0;
  #closeRequested = false;
  readonly #closeFd: boolean;
  readonly what: string;

  /** With closeFd false (a borrowed fd such as stdin), close() only stops further use. */
  constructor(fd: number, what: string, options: { closeFd?: boolean } = {}) {
    this.#fd = fd;
    this.what = what;
    this.#closeFd = options.closeFd ?? true;
  }

  get closed(): boolean {
    return this.#closeRequested;
  }

  /** The fd for a synchronous call; throws once closed. */
  get fd(): number {
    if (this.#closeRequested) throw new VfioError('ERR_VFIO_CLOSED', `${this.what} is closed`);
    return this.#fd;
  }

  /** Runs an async syscall with the fd pinned open until it settles. */
  async run<T>(call: (fd: number) => Promise<T>): Promise<T> {
    const fd = this.fd;
    this.#inflight++;
    try {
      return await call(fd);
    } finally {
      this.#inflight--;
      if (this.#closeRequested && this.#inflight === 0) this.#release();
    }
  }

  /** Runs one async syscall on several fds, each pinned open until it settles. */
  static async runAll<T>(handles: readonly FdHandle[], call: (fds: number[]) => Promise<T>): Promise<T> {
    // Every fd is checked open before any is pinned: a closed one throws with nothing held.
    const fds = handles.map((h) => h.fd);
    for (const h of handles) h.#inflight++;
    try {
      return await call(fds);
    } finally {
      // run()'s release, written out: a shared helper would be one more JS call per syscall.
      for (const h of handles) {
        h.#inflight--;
        if (h.#closeRequested && h.#inflight === 0) h.#release();
      }
    }
  }

  close(): void {
    if (this.#closeRequested) return;
    this.#closeRequested = true;
    if (this.#inflight === 0) this.#release();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #release(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    if (this.#closeFd) native.close(fd);
  }
}

/** Opens a VFIO node (/dev/vfio/...) read-write; `hint` says in the error what the node is for. */
export function openNode(path: string, hint: string): number {
  try {
    return native.open(path, O_RDWR);
  } catch (err) {
    if (isSyscallError(err, 'EACCES') || isSyscallError(err, 'EPERM')) {
      throw new VfioError(
        'ERR_VFIO_PERMISSION',
        `permission denied opening ${path}: run as root or give this user read/write access to ${path} (${hint})`,
        { cause: err },
      );
    }
    if (isSyscallError(err, 'ENOENT')) {
      throw new VfioError('ERR_VFIO_NOT_FOUND', `${path} does not exist (${hint})`, { cause: err });
    }
    if (isSyscallError(err, 'EBUSY')) {
      throw new VfioError('ERR_VFIO_BUSY', `${path} is in use by another process (${hint})`, { cause: err });
    }
    throw err;
  }
}
