// Error classes of vfio-migration: one for failed syscalls (built by the addon), one for everything the library decides.

/**
 * A failed syscall: `code` ('EINVAL'), negative `errno`, `syscall` ('ioctl', 'pread', ...), `ioctl`
 * for ioctls, and `stage` ('data' or 'register') for a bulk write that carried a register write.
 */
export class SyscallError extends Error {
  declare code: string;
  declare errno: number;
  declare syscall: string;
  declare ioctl?: string;
  declare stage?: 'data' | 'register';
  declare path?: string;

  constructor(message: string) {
    super(message);
    this.name = 'SyscallError';
  }
}

/** Stable codes of errors raised by the library itself. */
export type VfioErrorCode =
  | 'ERR_VFIO_NOT_FOUND'
  | 'ERR_VFIO_NOT_BOUND'
  | 'ERR_VFIO_GROUP_NOT_VIABLE'
  | 'ERR_VFIO_PERMISSION'
  | 'ERR_VFIO_BUSY'
  | 'ERR_VFIO_API'
  | 'ERR_VFIO_CLOSED'
  | 'ERR_VFIO_BAD_INFO'
  | 'ERR_VFIO_NO_MIGRATION';

export class VfioError extends Error {
  readonly code: VfioErrorCode;

  constructor(code: VfioErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VfioError';
    this.code = code;
  }
}

export function isSyscallError(err: unknown, code?: string): err is SyscallError {
  return err instanceof SyscallError && (code === undefined || err.code === code);
}
