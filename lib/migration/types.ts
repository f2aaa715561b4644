// The protocol-independent shapes of a migration: engine interface, options, progress and results.
import type { StreamRecord } from './stream';

export type Phase = 'precopy' | 'stop-copy' | 'resuming' | 'done';

export interface Progress {
  phase: Phase;
  /** Pre-copy iteration (0-based); 0 in other phases. */
  iteration: number;
  /** Payload bytes moved so far. */
  bytes: number;
  /** Bytes the device still reports as pending (an estimate for v2), when known. */
  pendingBytes?: bigint;
  /** Bytes per second since the start. */
  throughput: number;
  elapsedMs: number;
}

export interface PrecopyPolicy {
  /** At most this many pre-copy iterations (0 = no pre-copy). */
  maxIterations?: number;
  /** Stop pre-copy once the pending bytes fall below this. */
  threshold?: bigint | number;
  /** Stop pre-copy after this many milliseconds. */
  timeMs?: number;
}

export interface SaveOptions {
  /** Pre-copy policy; false or undefined = straight to stop-and-copy. */
  precopy?: PrecopyPolicy | false;
  /** State of the source after a successful save: STOP (default, as after a migration) or RUNNING. */
  leave?: 'stopped' | 'running';
  signal?: AbortSignal;
  onProgress?: (progress: Progress) => void;
  /** Extra fields for the stream header. */
  meta?: Record<string, unknown>;
  /**
   * Makes the complete stream durable (fsync, rename): awaited after the trailer is written and
   * before save() resolves. If it fails, the save fails like any other step and the source device
   * returns to RUNNING, so a device is never left stopped without a stream that holds its state.
   */
  commit?: () => Promise<void>;
}

export interface LoadOptions {
  /** Load a stream whose device identity differs. */
  force?: boolean;
  /** State of the destination after a successful load (default running). */
  leave?: 'running' | 'stopped';
  signal?: AbortSignal;
  onProgress?: (progress: Progress) => void;
  /** Opt out of VFIO_DEVICE_RESET when the device is found in the error state. */
  noReset?: boolean;
}

export interface SaveResult {
  records: bigint;
  bytes: bigint;
  precopyIterations: number;
  precopyBytes: number;
  /** Time from stopping the device to the end of stop-and-copy: what a VM sees as downtime. */
  stopCopyMs: number;
  elapsedMs: number;
}

export interface LoadResult {
  records: bigint;
  bytes: bigint;
  elapsedMs: number;
}

/** Callback an engine uses to emit one chunk; the payload view may be reused after it resolves. */
export type EmitChunk = (phase: number, payload: Uint8Array) => Promise<void>;

export interface SaveContext {
  emit: EmitChunk;
  policy: PrecopyPolicy | false;
  leave: 'stopped' | 'running';
  signal?: AbortSignal;
  progress: (phase: Phase, iteration: number, bytes: number, pending?: bigint) => void;
  /** Set by the engine when the device stops (start of downtime). */
  markStopped(): void;
}

export interface LoadContext {
  leave: 'running' | 'stopped';
  signal?: AbortSignal;
  progress: (phase: Phase, iteration: number, bytes: number, pending?: bigint) => void;
}

/** One migration protocol bound to one device. */
export interface MigrationEngine {
  readonly protocol: 'v1' | 'v2';
  /** Protocol facts for the stream header (region layout, flags). */
  describe(): Record<string, unknown>;
  /** Current state as a readable name. */
  stateName(): Promise<string>;
  /** Names the protocol accepts for setState (expert use). */
  readonly stateNames: readonly string[];
  /** Moves the device to a named state along the protocol's legal arcs (expert use). */
  setStateByName(name: string): Promise<void>;
  save(ctx: SaveContext): Promise<{ precopyIterations: number; precopyBytes: number }>;
  load(records: AsyncIterable<StreamRecord>, ctx: LoadContext): Promise<void>;
  /** After a failed or aborted save: back to RUNNING (or reset), never silently. */
  recoverSource(): Promise<import('./errors').Recovery>;
  /** After a failed load: reset, out of RESUMING. */
  recoverDestination(): Promise<import('./errors').Recovery>;
  close(): void;
}
