// The v1 migration protocol's states: device_state bits, their names, the arcs a client takes and the check before a write.
import {
  VFIO_DEVICE_STATE_MASK,
  VFIO_DEVICE_STATE_V1_RESUMING,
  VFIO_DEVICE_STATE_V1_RUNNING,
  VFIO_DEVICE_STATE_V1_SAVING,
  VFIO_DEVICE_STATE_V1_STOP,
} from '../uapi';
import { MigrationError } from './errors';

export const V1_STOP = VFIO_DEVICE_STATE_V1_STOP;
export const V1_RUNNING = VFIO_DEVICE_STATE_V1_RUNNING;
export const V1_SAVING = VFIO_DEVICE_STATE_V1_SAVING;
export const V1_PRECOPY = VFIO_DEVICE_STATE_V1_RUNNING | VFIO_DEVICE_STATE_V1_SAVING;
export const V1_RESUMING = VFIO_DEVICE_STATE_V1_RESUMING;
export const V1_ERROR = VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RESUMING;

const NAMES: Record<number, string> = {
  0b000: 'STOP',
  0b001: 'RUNNING',
  0b010: 'SAVING (stop-and-copy)',
  0b011: 'RUNNING|SAVING (pre-copy)',
  0b100: 'RESUMING',
  0b101: 'invalid 101b',
  0b110: 'ERROR',
  0b111: 'invalid 111b',
};

/** Names accepted by setStateByName (v2-style aliases included). */
export const V1_STATE_BY_NAME: Record<string, number> = {
  RUNNING: V1_RUNNING,
  STOP: V1_STOP,
  PRECOPY: V1_PRECOPY,
  PRE_COPY: V1_PRECOPY,
  SAVING: V1_SAVING,
  STOP_COPY: V1_SAVING,
  RESUMING: V1_RESUMING,
};

export function v1StateName(state: number): string {
  return NAMES[state & VFIO_DEVICE_STATE_MASK];
}

/** The spec's VFIO_DEVICE_STATE_VALID: with _RESUMING set, no other bit may be. */
export function isValidV1State(state: number): boolean {
  const bits = state & VFIO_DEVICE_STATE_MASK;
  return bits & V1_RESUMING ? bits === V1_RESUMING : true;
}

export function isV1ErrorState(state: number): boolean {
  return (state & VFIO_DEVICE_STATE_MASK) === V1_ERROR;
}

/**
 * Arcs the client takes. The spec's diagram (0-5) gives RUNNING->STOP, RUNNING->SAVING->STOP,
 * RUNNING->PRECOPY->SAVING->STOP, RUNNING->RESUMING->RUNNING; the spec also lets the user move
 * "to any valid state reachable from the current state", and the arcs below complete it the way
 * QEMU's v1 client uses it: cancelling a save (PRECOPY/SAVING -> RUNNING), restarting a stopped
 * device (STOP -> RUNNING), saving or resuming a stopped device, and ending a resume in STOP.
 */
export const V1_ARCS: ReadonlyMap<number, readonly number[]> = new Map([
  [V1_RUNNING, [V1_STOP, V1_SAVING, V1_PRECOPY, V1_RESUMING]],
  [V1_PRECOPY, [V1_SAVING, V1_RUNNING]],
  [V1_SAVING, [V1_STOP, V1_RUNNING]],
  [V1_STOP, [V1_RUNNING, V1_SAVING, V1_RESUMING]],
  [V1_RESUMING, [V1_RUNNING, V1_STOP]],
]);

/** Refuses, before touching the device, a request the transition table does not allow. */
export function checkV1Transition(from: number, to: number): void {
  const f = from & VFIO_DEVICE_STATE_MASK;
  const t = to & VFIO_DEVICE_STATE_MASK;
  const step = `set state ${v1StateName(f)} -> ${v1StateName(t)}`;
  if (!isValidV1State(t) || t === V1_ERROR) {
    throw new MigrationError('ERR_MIGRATION_STATE', `${step}: ${v1StateName(t)} is not a state a client may request`, {
      step,
    });
  }
  if (isV1ErrorState(f)) {
    throw new MigrationError(
      'ERR_MIGRATION_STATE',
      `${step}: the device is in the error state; only VFIO_DEVICE_RESET recovers it`,
      { step },
    );
  }
  if (!(V1_ARCS.get(f) ?? []).includes(t)) {
    throw new MigrationError(
      'ERR_MIGRATION_STATE',
      `${step}: not a legal transition (from ${v1StateName(f)} the device may go to ${(V1_ARCS.get(f) ?? []).map(v1StateName).join(', ') || 'nowhere'})`,
      { step },
    );
  }
}
