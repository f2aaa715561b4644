// The recovery ladder after a failed save or load, for both protocols: back to RUNNING, else reset, else say so.
import type { Device } from '../device';
import { MigrationError, type Recovery } from './errors';
import { StreamError } from './stream';
import type { MigrationEngine } from './types';

async function resetDevice(device: Device, noReset: boolean): Promise<Recovery> {
  if (noReset) return 'failed';
  try {
    await device.reset();
    return 'reset';
  } catch {
    return 'failed';
  }
}

/**
 * A source whose save failed: RUNNING again when a legal path leads there; from the error state,
 * or when that path fails, VFIO_DEVICE_RESET (unless the caller opted out); 'failed' otherwise.
 */
export async function recoverSource(engine: MigrationEngine, device: Device, noReset = false): Promise<Recovery> {
  engine.release();
  try {
    const state = await engine.readState();
    if (state.running) return 'running';
    if (state.error) return resetDevice(device, noReset);
    await engine.toRunning();
    return 'running';
  } catch {
    return resetDevice(device, noReset);
  }
}

/** A destination whose load failed: its state is partial, so it is reset. */
export async function recoverDestination(engine: MigrationEngine, device: Device, noReset = false): Promise<Recovery> {
  engine.release();
  return resetDevice(device, noReset);
}

const SAID: Record<Recovery, (role: string) => string> = {
  none: () => '',
  running: (role) => `the ${role} device is RUNNING again`,
  stopped: (role) => `the ${role} device is stopped`,
  reset: (role) => `the ${role} device was reset (VFIO_DEVICE_RESET)`,
  failed: (role) => `the ${role} device could not be recovered: reset it before use`,
};

/** The error a failed save or load reports: a MigrationError that says what was done to the device. */
export function withRecovery(err: unknown, recovery: Recovery, role: 'source' | 'destination'): MigrationError {
  let error: MigrationError;
  if (err instanceof MigrationError) {
    error = err;
  } else if (err instanceof StreamError) {
    error = new MigrationError('ERR_MIGRATION_STREAM', `bad stream: ${err.message}`, {
      cause: err,
      record: err.record,
    });
  } else {
    const e = err as NodeJS.ErrnoException;
    error = new MigrationError('ERR_MIGRATION_IO', `stream I/O failed: ${e?.message ?? String(err)}`, {
      cause: err,
      errno: e?.code,
    });
  }
  if (error.recovery === 'none' || error.recovery === 'running') error.recovery = recovery;
  const said = SAID[error.recovery](role);
  if (said && !error.message.includes(said)) error.message += `; ${said}`;
  return error;
}
