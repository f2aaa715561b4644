// MigrationError: what failed in a save or load, at which step, with which errno, and what was done to recover.
import { SyscallError } from '../errors';

export type MigrationErrorCode =
  | 'ERR_MIGRATION_NONE' // the device offers no migration protocol
  | 'ERR_MIGRATION_STATE' // an illegal or failed state change
  | 'ERR_MIGRATION_DEVICE' // the device failed a step (errno in `errno`)
  | 'ERR_MIGRATION_PROTOCOL' // the device broke the protocol (bad offsets, sizes, endless data)
  | 'ERR_MIGRATION_STREAM' // the stream is corrupt, truncated or foreign
  | 'ERR_MIGRATION_MISMATCH' // the stream was saved from another kind of device or protocol
  | 'ERR_MIGRATION_IO' // writing or reading the stream failed (sink/source error)
  | 'ERR_MIGRATION_ABORTED' // the caller's AbortSignal fired
  | 'ERR_MIGRATION_REFUSED' // migrate: the destination refused the hello (version, protocol, identity, RESUMING)
  | 'ERR_MIGRATION_PEER' // migrate: the other end reported a failure (its message is in the error's)
  | 'ERR_MIGRATION_CHANNEL' // migrate: the channel closed, broke or carried something malformed
  | 'ERR_MIGRATION_TIMEOUT' // migrate: the peer did not answer in time
  | 'ERR_MIGRATION_AFTER_COMMIT'; // migrate: a failure after the commit (both sides' states in the message)

/** What the client did to leave the device safe after a failure. */
export type Recovery = 'none' | 'running' | 'stopped' | 'reset' | 'failed';

export class MigrationError extends Error {
  readonly code: MigrationErrorCode;
  /** The protocol step that failed, e.g. 'read pending_bytes', 'set state RUNNING -> SAVING'. */
  step?: string;
  /** Kernel errno name when a syscall failed ('EIO'). */
  errno?: string;
  /** Stream record index when the failure is tied to one. */
  record?: bigint;
  recovery: Recovery = 'none';

  constructor(
    code: MigrationErrorCode,
    message: string,
    options: { cause?: unknown; step?: string; errno?: string; record?: bigint } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = 'MigrationError';
    this.code = code;
    this.step = options.step;
    this.errno = options.errno;
    this.record = options.record;
  }
}

export function abortError(signal: AbortSignal, step: string): MigrationError {
  const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'aborted');
  return new MigrationError('ERR_MIGRATION_ABORTED', `aborted during ${step}: ${reason}`, {
    step,
    cause: signal.reason,
  });
}

/** The errno name ('EIO') of a failed syscall, else undefined. */
export function errnoOf(err: unknown): string | undefined {
  return err instanceof SyscallError ? err.code : undefined;
}

/** A device step that failed: the error names the step and the errno. MigrationErrors pass through. */
export function deviceStepError(step: string, err: unknown, record?: bigint): MigrationError {
  if (err instanceof MigrationError) return err;
  const errno = errnoOf(err);
  const detail = err instanceof Error ? err.message : String(err);
  return new MigrationError('ERR_MIGRATION_DEVICE', `${step} failed${errno ? ` with ${errno}` : ''}: ${detail}`, {
    cause: err,
    step,
    errno,
    record,
  });
}
