// The protocol-independent shapes of a migration: engine interface, options, progress and results.
import type { StreamRecord } from './stream';

/** What a save or load is doing, for progress (a stream record's `phase` is a number: see stream.ts). */
export type ProgressPhase = 'precopy' | 'stop-copy' | 'resuming' | 'done';
/** @deprecated the old name of ProgressPhase */
export type Phase = ProgressPhase;

export interface Progress {
  phase: ProgressPhase;
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

/**
 * Callback that takes one chunk of a save; the payload view may be reused after it resolves.
 * `payloadCrc` is the payload's CRC-32 when the engine's read computed it (native, off the JS thread).
 */
export type EmitChunk = (phase: number, payload: Uint8Array, payloadCrc?: number) => Promise<void>;

/** Where a saving device stands, as its engine reads it. */
export interface PendingData {
  /** Bytes the device reports as still to move (v2: an estimate); undefined when it cannot tell. */
  bytes: bigint | undefined;
  /** False while the device still has its initial data to send (v2 initial_bytes > 0); v1 always true. */
  initialDone: boolean;
}

/** One pass of data out of a saving device (CopyPass.stage says whether it still runs). */
export interface CopyPass {
  stage: 'precopy' | 'stop-copy';
  /**
   * Takes one chunk. The engine may refill a chunk's buffer once the next emit() has resolved:
   * the caller keeps at most one emit in flight (EmitWindow), so two buffers used in turn suffice.
   */
  emit: (payload: Uint8Array, payloadCrc?: number) => Promise<void>;
  /**
   * Optional: a buffer for the next chunk (up to `size` bytes) that emit() sends without copying
   * it (a record of the stream's own, for a destination in this process), or undefined. Once
   * emitted, such a buffer is the sink's: the engine asks for a fresh one for each chunk.
   */
  buffer?(size: number): Buffer | undefined;
  /**
   * Gives back a chunk buffer the engine did not emit (a pass that ended on an empty read), so a
   * buffer() it came from can hand it out again; any other buffer is ignored.
   */
  unusedBuffer?(buf: Buffer): void;
  /** false: emit() ignores payloadCrc (an in-process stream), so the engine need not compute it. Default: true. */
  checksum?: boolean;
  /** What pending() said just before this pass (v1: spec step a), so the engine need not ask again. */
  pending?: PendingData;
  /** Pre-copy only: end the pass after this many bytes (a device that dirties itself never runs dry). */
  budget?: bigint;
  signal?: AbortSignal;
  /** After each chunk: bytes of this pass so far, and what is pending when the engine knows it for free. */
  onChunk(bytesThisPass: number, pending?: bigint): void;
}

/** A device's migration state as the recovery ladder needs it. */
export interface StateReading {
  name: string;
  running: boolean;
  error: boolean;
}

/**
 * One migration protocol bound to one device: protocol steps only, no policy. The session
 * (session.ts) composes them into save and load, and owns pre-copy policy, abort and recovery;
 * the conformance checker and migrate drive the same steps.
 */
export interface MigrationEngine {
  readonly protocol: 'v1' | 'v2';
  /** Protocol facts for the stream header and `info` (region layout, flags). */
  describe(): Record<string, unknown>;
  /** Names the protocol accepts for setStateByName (expert use). */
  readonly stateNames: readonly string[];
  stateName(): Promise<string>;
  /** Moves the device to a named state along the protocol's legal arcs (expert use). */
  setStateByName(name: string): Promise<void>;
  readState(): Promise<StateReading>;

  /** The kernel's estimate of the stop-and-copy size (v2, kernel 6.3+); undefined when there is none. */
  dataSizeEstimate?(): Promise<bigint | undefined>;
  /** Whether the device can be saved while it runs (v1: always; v2: PRE_COPY). */
  readonly canPrecopy: boolean;
  /** RUNNING -> pre-copy (v1 RUNNING|SAVING, v2 PRE_COPY). */
  enterPrecopy(): Promise<void>;
  /** What the device still has to send, in pre-copy or stop-and-copy. */
  pending(): Promise<PendingData>;
  /** Moves one pass of data to pass.emit; resolves the bytes moved. Stop-and-copy passes run dry. */
  copy(pass: CopyPass): Promise<number>;
  /**
   * RUNNING -> RUNNING_P2P or PRE_COPY -> PRE_COPY_P2P where offered (no new peer-to-peer DMA),
   * keeping a pre-copy session's data; absent or a no-op where there is no P2P state (v1). An
   * engine may also ask here what enterStopCopy() would ask before the stop (v2: the estimate).
   */
  quiesce?(): Promise<void>;
  /** Stops the device (through RUNNING_P2P where offered) into stop-and-copy; `onStopped` runs as the stopping arc is issued: the downtime's start. */
  enterStopCopy(onStopped: () => void): Promise<void>;
  /** After the last stop-and-copy pass: STOP, then RUNNING when asked. */
  finishSave(leave: 'running' | 'stopped'): Promise<void>;

  /** Into RESUMING, ready for records. */
  enterResuming(): Promise<void>;
  /** Writes one record (v1: one transaction of the same size). */
  writeRecord(record: StreamRecord): Promise<void>;
  /** RESUMING -> STOP (where the driver validates the whole stream), then RUNNING unless asked not to. */
  finishLoad(leave: 'running' | 'stopped'): Promise<void>;

  /** To RUNNING along legal arcs (recovery of a source). */
  toRunning(): Promise<void>;
  /** Drops what an unfinished save or load holds (data_fd, data section mappings). Idempotent. */
  release(): void;
  close(): void;
}
