// Steps of a save shared by save() and migrate(): the stream header, progress, pre-copy passes, the stop-and-copy pass.
import { monotonicMs } from '../clock';
import { abortError } from './errors';
import { deviceIdentity, isoTime, version } from './identity';
import { precopyStop } from './policy';
import { PHASE_STOP_COPY, type StreamHeader } from './stream';
import type { MigrationEngine, PendingData, PrecopyPolicy, Progress, ProgressPhase } from './types';
import type { Device } from '../device';
import type { EmitWindow } from './pipeline';
import { settleAll } from './txn';

/**
 * Calls onProgress at phase changes and at most every 100 ms in between; `start` is a
 * monotonicMs() reading, and elapsedMs counts whole ms from it.
 */
export function progressReporter(start: number, onProgress?: (p: Progress) => void) {
  let lastPhase: ProgressPhase | undefined;
  let lastIteration = -1;
  let lastAt = 0;
  return (phase: ProgressPhase, iteration: number, bytes: number, pendingBytes?: bigint, force = false) => {
    if (!onProgress) return;
    const now = monotonicMs();
    if (!force && phase === lastPhase && iteration === lastIteration && now - lastAt < 100) return;
    lastPhase = phase;
    lastIteration = iteration;
    lastAt = now;
    const elapsedMs = Math.round(now - start);
    onProgress({
      phase,
      iteration,
      bytes,
      pendingBytes,
      elapsedMs,
      throughput: elapsedMs > 0 ? (bytes * 1000) / elapsedMs : 0,
    });
  };
}
export type Report = ReturnType<typeof progressReporter>;

/** The header of the stream a device's save writes. */
export function streamHeader(device: Device, engine: MigrationEngine, meta?: Record<string, unknown>): StreamHeader {
  return {
    ...meta,
    protocol: engine.protocol,
    device: deviceIdentity(device),
    migration: engine.describe(),
    tool: { name: 'vfio-migration', version: version() },
    created: isoTime(Date.now()),
  };
}

export interface PrecopyOutcome {
  iterations: number;
  bytes: number;
  /** Whether the device said its initial data is out (v1: always). */
  initialDone: boolean;
}

/**
 * One pre-copy pass while the device runs: at most what `pending` says, as records of phase
 * `iteration`; progress counts on from `before` bytes. Resolves the bytes moved.
 */
function precopyPass(
  engine: MigrationEngine,
  out: EmitWindow,
  report: Report,
  pending: PendingData,
  iteration: number,
  before: number,
  signal: AbortSignal | undefined,
): Promise<number> {
  return engine.copy({
    stage: 'precopy',
    pending,
    ...out.passTo(iteration),
    budget: pending.bytes,
    signal,
    onChunk: (passBytes, left) => report('precopy', iteration, before + passBytes, left),
  });
}

/**
 * Pre-copy passes while the device runs, until the policy says stop. With `untilInitialDone`,
 * the iteration and time limits do not end pre-copy before the device's initial data is out
 * (a switchover-ack needs it); the caller bounds that wait.
 */
export async function precopyPasses(
  engine: MigrationEngine,
  policy: PrecopyPolicy,
  out: EmitWindow,
  report: Report,
  signal: AbortSignal | undefined,
  untilInitialDone = false,
): Promise<PrecopyOutcome> {
  await engine.enterPrecopy();
  const started = monotonicMs();
  let iterations = 0;
  let bytes = 0;
  let previous: bigint | undefined;
  let pending: PendingData;
  for (;;) {
    if (signal?.aborted) throw abortError(signal, `pre-copy iteration ${iterations}`);
    pending = await engine.pending();
    report('precopy', iterations, bytes, pending.bytes);
    const stop = precopyStop(policy, pending, { iterations, previous, elapsedMs: monotonicMs() - started });
    if (stop && !(untilInitialDone && !pending.initialDone && (stop === 'iterations' || stop === 'time'))) break;
    previous = pending.bytes;
    const moved = await precopyPass(engine, out, report, pending, iterations, bytes, signal);
    bytes += moved;
    iterations++;
    // A running device with nothing more to give: further passes would spin.
    if (moved === 0 && pending.initialDone) break;
  }
  await out.flush();
  return { iterations, bytes, initialDone: pending.initialDone };
}

/** A device in pre-copy, as catchUpPasses() drives it: its stream, its progress, its pass count so far. */
export interface PrecopyLane {
  engine: MigrationEngine;
  out: EmitWindow;
  report: Report;
  /** Passes done (the next pass's records take this as their phase); updated here. */
  iterations: number;
  /** Pre-copy bytes so far; updated here. */
  bytes: number;
}

/** At most this many joint passes of catchUpPasses(). */
export const CATCH_UP_ROUNDS = 3;

/**
 * Joint pre-copy passes over devices that each finished their own pre-copy, just before they
 * stop together. Each device kept running (and dirtying) while it waited for its
 * switchover-ack and for the slowest of the others; a pass on all of them at once takes what
 * that wait dirtied, so the stop carries only what the last joint pass let through. Passes
 * repeat while the devices' pending total shrinks, up to CATCH_UP_ROUNDS. A failure of one lane
 * waits for the others' steps to end (settleAll), calling `onFailure` first so they can stop.
 */
export async function catchUpPasses(
  lanes: readonly PrecopyLane[],
  signal: AbortSignal | undefined,
  onFailure?: (err: unknown) => void,
): Promise<void> {
  let previous: bigint | undefined;
  for (let round = 0; round < CATCH_UP_ROUNDS; round++) {
    if (signal?.aborted) throw abortError(signal, 'the pre-copy catch-up');
    const pending = await settleAll(lanes, (l) => l.engine.pending(), onFailure);
    // Unknown counts as something to take.
    const total = pending.reduce((sum, p) => sum + (p.bytes ?? 1n), 0n);
    if (total === 0n || (previous !== undefined && total >= previous)) return;
    previous = total;
    await settleAll(
      lanes,
      async (lane, i) => {
        if (pending[i]!.bytes === 0n || lane.iterations >= PHASE_STOP_COPY) return;
        const { engine, out, report } = lane;
        const moved = await precopyPass(engine, out, report, pending[i]!, lane.iterations, lane.bytes, signal);
        await out.flush();
        lane.bytes += moved;
        lane.iterations++;
      },
      onFailure,
    );
  }
}

/** The stop-and-copy pass, after enterStopCopy: every byte the stopped device holds. */
export async function stopCopyPass(
  engine: MigrationEngine,
  out: EmitWindow,
  report: Report,
  signal: AbortSignal | undefined,
  before: number,
): Promise<number> {
  const pending = await engine.pending();
  report('stop-copy', 0, before, pending.bytes);
  const moved = await engine.copy({
    stage: 'stop-copy',
    pending,
    ...out.passTo(PHASE_STOP_COPY),
    signal,
    onChunk: (bytes, left) => report('stop-copy', 0, before + bytes, left),
  });
  await out.flush();
  return moved;
}
