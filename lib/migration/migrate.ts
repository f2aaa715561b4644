// migrate(): the source end of a live migration of one or several devices as one transaction over a channel.
import { Buffer } from 'node:buffer';
import { withEagerFeedback } from '../eager-feedback';
import { withGcHold, type GcHold } from '../gc-hold';
import { cpuMsBetween, threadCpuNs } from '../thread-cpu';
import { monotonicMs, spanMs } from '../clock';
import { MigrationError, type Recovery } from './errors';
import { encoderWindow } from './pipeline';
import { DEFAULT_PRECOPY_ITERATIONS, wantsPrecopy } from './policy';
import type { Migration } from './session';
import { catchUpPasses, precopyPasses, progressReporter, stopCopyPass, streamHeader } from './steps';
import { StreamEncoder } from './stream';
import { stopTogether } from './together';
import { Inbox, MigrateError, abortReason, asMigrateError, settleAll, settleWithin, type DeviceOutcome } from './txn';
import type { PrecopyPolicy, Progress } from './types';
import { FRAME, WIRE_VERSION, WireEnd, isInProcess, messageBody, type Channel } from './wire';

export const DEFAULT_MIGRATE_TIMEOUT_MS = 30_000;

/**
 * A migrate's pre-copy when the caller names none: up to DEFAULT_PRECOPY_ITERATIONS passes while
 * the devices run, ending early once nothing is pending or what is pending stops shrinking. Most
 * of the state then moves before the stop, so the downtime carries only what the workload dirtied.
 */
export const DEFAULT_MIGRATE_PRECOPY: Readonly<PrecopyPolicy> = Object.freeze({
  maxIterations: DEFAULT_PRECOPY_ITERATIONS,
});

export interface MigrateOptions {
  /**
   * Pre-copy policy (as save's). Undefined: DEFAULT_MIGRATE_PRECOPY, a live migration, for every
   * device that can pre-copy; false: straight to stop-and-copy (all the state moves while stopped).
   */
  precopy?: PrecopyPolicy | false;
  /** Wait for the destination to apply each pre-copied device's initial data before stopping (default true). */
  switchoverAck?: boolean;
  /** Longest wait for any answer of the peer, in ms (default 30 s); 0 = no limit. */
  timeoutMs?: number;
  /** VFIO_DEVICE_RESET the sources after the commit (move semantics). */
  resetSource?: boolean;
  signal?: AbortSignal;
  /** Progress of device `index` (its position in the list). */
  onProgress?: (index: number, progress: Progress) => void;
  /** A line about the transaction ('destination ready', 'commit', ...), for a verbose view. */
  onEvent?: (text: string) => void;
}

export interface DevicePhases {
  source: string;
  destination?: string;
  protocol: 'v1' | 'v2';
  precopyIterations: number;
  precopyBytes: number;
  precopyMs: number;
  /** Wait for the switchover-ack of this device (0 without one). */
  switchoverAckMs: number;
  /** From this device's stop to its trailer handed to the channel. */
  stopCopyMs: number;
  stopCopyBytes: number;
  records: number;
  bytes: number;
  /** What the destination measured: its validation (RESUMING -> STOP) and resume. */
  destinationLoad?: Record<string, unknown>;
}

export interface MigrateResult {
  devices: DevicePhases[];
  /** Payload bytes of every device. */
  bytes: number;
  /** Bytes that went over the channel (framing and stream headers included). */
  wireBytes: number;
  phases: {
    /** Hello until the destination was ready (RESUMING). */
    helloMs: number;
    precopyMs: number;
    switchoverAckMs: number;
    /** Joint pre-copy passes of all pre-copied devices after the acks, just before the stop (catchUpPasses). */
    catchUpMs: number;
    /** First source stop to the last trailer sent. */
    stopCopyMs: number;
    /** Last trailer sent to "loaded" (the destination validated every record, trailer, RESUMING -> STOP). */
    validateMs: number;
    /** Commit sent to "running" received. */
    resumeMs: number;
  };
  /**
   * First source stop (the issue of its stopping arc) to the destination's report that its last
   * device is RUNNING. All times of the result are in ms to a tenth, on a monotonic clock.
   */
  downtimeMs: number;
  /**
   * This thread's time on a CPU from the first stop to the destination's "running"
   * (the kernel's thread CPU clock; undefined where it has none). What the downtime spent on this
   * process's own work (both ends' when the destination is in the same process); the rest of it
   * this side waited: for the devices, the channel, the destination.
   */
  downtimeCpuMs?: number;
  /**
   * The destination's own time on a CPU in the downtime, as it reported it in RUNNING (from the
   * first sign of the stop there to its last device RUNNING; undefined from a receiver without
   * the clock). In one process both ends share one thread: then it is a part of downtimeCpuMs.
   */
  destinationDowntimeCpuMs?: number;
  elapsedMs: number;
  /** What the destination reported in its "running" message. */
  destination: Record<string, unknown>;
}

/** All devices that offer it through RUNNING_P2P (PRE_COPY_P2P from PRE_COPY) before any of them stops. */
async function quiesce(sources: readonly Migration[]): Promise<void> {
  await settleAll(sources, async (m) => m.engine.quiesce?.());
}

/**
 * Migrates `sources` (each open, with its migration) to the `receive()` at the other end of
 * `channel`, paired in order. Until the commit, any failure returns every source to RUNNING and
 * the destination resets its devices; the error says which side failed (MigrateError.side).
 */
export function migrate(
  sources: readonly Migration[],
  channel: Channel,
  options: MigrateOptions = {},
): Promise<MigrateResult> {
  // Feedback from the first call on (lib/eager-feedback.ts); the GC hold taken at the first
  // stop, released once the destination runs (or on any way out).
  return withEagerFeedback(() => withGcHold((gc) => migrateHolding(sources, channel, options, gc)));
}

async function migrateHolding(
  sources: readonly Migration[],
  channel: Channel,
  options: MigrateOptions,
  gc: GcHold,
): Promise<MigrateResult> {
  if (!sources.length) throw new TypeError('migrate: no source devices');
  if (sources.length > 0xffff) throw new RangeError('migrate: at most 65535 devices');
  const began = monotonicMs();
  const timeoutMs = options.timeoutMs ?? DEFAULT_MIGRATE_TIMEOUT_MS;
  const signal = options.signal;
  const event = options.onEvent ?? (() => undefined);
  const wantAck = options.switchoverAck ?? true;
  const policy = options.precopy === undefined ? DEFAULT_MIGRATE_PRECOPY : options.precopy;
  const precopy = wantsPrecopy(policy) ? policy : undefined;
  const wire = new WireEnd(channel);
  const inbox = new Inbox(wire, 'destination');
  let step = 'hello';
  let touched = false;
  const headers = sources.map((m) => streamHeader(m.device, m.engine, { migrate: { version: WIRE_VERSION } }));
  const acked = sources.map((m) => !!precopy && m.engine.canPrecopy && wantAck);
  const phases: DevicePhases[] = sources.map((m) => ({
    source: m.device.name,
    protocol: m.protocol,
    precopyIterations: 0,
    precopyBytes: 0,
    precopyMs: 0,
    switchoverAckMs: 0,
    stopCopyMs: 0,
    stopCopyBytes: 0,
    records: 0,
    bytes: 0,
  }));
  const timing = { ready: 0, catchUp: 0, firstStop: 0, sent: 0, loaded: 0, running: 0 };
  let cpuAtStop: bigint | undefined;
  const local = new AbortController();
  let started = false;
  let dropChannel: NodeJS.Timeout | undefined;
  const onAbort = (): void => {
    local.abort(signal!.reason);
    // Waiting for the peer's preamble: only closing the channel ends that read.
    if (!started) wire.close('aborted');
    // A write waiting on a channel nobody drains (a stalled peer) would hold the abort off until
    // the peer's timeout: the failure path gets a second to send its ERROR, then the channel goes.
    else dropChannel = setTimeout(() => wire.destroy('aborted'), 1000).unref();
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  // The destination is gone or failed: stop the device copies at once, and drop what is queued
  // for a reader that may never drain it (a write waiting on back-pressure would hang).
  inbox.onPeerFailure = (err) => {
    local.abort(err);
    wire.destroy('the destination failed');
  };
  const wait = (type: number, device: number, what: string, ms = timeoutMs) =>
    inbox.wait(type, device, ms, what, local.signal);
  // The first source device failure: what the user is told, since the channel's end that
  // follows (and the other devices' aborts) only echo it.
  let deviceFailure: unknown;
  // One device's step failed (settleAll waits for the others before any recovery): the others
  // stop at their next chunk, and a step held by a write nobody drains (a stalled peer) ends
  // when the channel goes, a second later.
  const stopDevices = (err: unknown): void => {
    if (!local.signal.aborted) {
      deviceFailure = err;
      local.abort(err);
    }
    dropChannel ??= setTimeout(() => wire.destroy('a source device failed'), 1000).unref();
  };
  try {
    if (signal?.aborted) throw abortReason(signal, 'the start');
    await wire.writePreamble();
    await wire.sendMessage(FRAME.hello, 0, {
      version: WIRE_VERSION,
      devices: headers,
      switchoverAck: acked,
      timeoutMs,
    });
    const peerVersion = await wire.readPreamble(timeoutMs || undefined);
    inbox.start();
    started = true;
    if (peerVersion !== WIRE_VERSION) {
      // The peer says why in an ERROR frame (its layout never changes); wait briefly for it.
      await wait(FRAME.ready, 0, 'the destination', 5000).catch((err: unknown) => {
        throw err instanceof MigrateError && err.code === 'ERR_MIGRATION_PEER'
          ? err
          : new MigrateError(
              'ERR_MIGRATION_REFUSED',
              `the destination speaks migrate protocol version ${peerVersion}, this source ${WIRE_VERSION}`,
              'destination',
            );
      });
    } else {
      const ready = await wait(FRAME.ready, 0, 'the destination to enter RESUMING');
      const body = messageBody<{ devices?: { name?: string }[] }>(ready);
      body.devices?.forEach((d, i) => {
        if (phases[i]) phases[i].destination = String(d.name);
      });
    }
    timing.ready = monotonicMs();
    event('destination ready (RESUMING)');

    // Between two ends in this process the records are handed over by reference: no checksums.
    const checksums = !isInProcess(channel);
    const encoders = sources.map(
      (_m, i) => new StreamEncoder((chunk) => wire.send(FRAME.data, i, chunk), headers[i]!, { checksums }),
    );
    const windows = encoders.map(encoderWindow);
    const reports = sources.map((_m, i) =>
      progressReporter(began, options.onProgress && ((p) => options.onProgress!(i, p))),
    );

    step = 'pre-copy';
    touched = true;
    await settleAll(
      sources,
      async (m, i) => {
        const t0 = monotonicMs();
        await encoders[i]!.writeHeader();
        if (!precopy || !m.engine.canPrecopy) return;
        const pre = await precopyPasses(m.engine, precopy, windows[i]!, reports[i]!, local.signal, acked[i]);
        phases[i]!.precopyIterations = pre.iterations;
        phases[i]!.precopyBytes = pre.bytes;
        phases[i]!.precopyMs = spanMs(t0, monotonicMs());
        if (!acked[i]) return;
        const t1 = monotonicMs();
        await wire.sendMessage(FRAME.initialDone, i, { records: Number(encoders[i]!.totals.records) });
        await wait(FRAME.switchoverAck, i, `the switchover-ack of ${m.device.name}`);
        phases[i]!.switchoverAckMs = spanMs(t1, monotonicMs());
      },
      stopDevices,
    );
    if (acked.some(Boolean)) event('switchover-ack from the destination');
    // All devices to RUNNING_P2P / PRE_COPY_P2P before any stops (linux/vfio.h). Done before the
    // catch-up passes (a P2P-quiesced device still runs, dirties and pre-copies), so that only
    // the stop arc lies between a device's last pass and its stop: less is dirtied meanwhile.
    step = 'quiesce (P2P)';
    if (local.signal.aborted) throw abortReason(local.signal, step);
    await quiesce(sources);
    step = 'pre-copy catch-up';
    const catchUpStart = monotonicMs();
    const caught = phases.flatMap((p, i) => (p.precopyIterations > 0 ? [i] : []));
    const lanes = caught.map((i) => ({
      engine: sources[i]!.engine,
      out: windows[i]!,
      report: reports[i]!,
      iterations: phases[i]!.precopyIterations,
      bytes: phases[i]!.precopyBytes,
    }));
    await catchUpPasses(lanes, local.signal, stopDevices);
    lanes.forEach((lane, k) => {
      phases[caught[k]!]!.precopyIterations = lane.iterations;
      phases[caught[k]!]!.precopyBytes = lane.bytes;
    });
    timing.catchUp = spanMs(catchUpStart, monotonicMs());

    step = 'stop-and-copy';
    if (local.signal.aborted) throw abortReason(local.signal, 'stop-and-copy');
    // The downtime: no major GC of this process until the destination runs (lib/gc-hold.ts).
    gc.take();
    // All the devices stop together (the v2 ones each arc in one call), then each moves its data.
    const stoppedAt = sources.map(() => 0);
    await stopTogether(
      sources.map((m) => m.engine),
      (i) => {
        stoppedAt[i] = monotonicMs();
        if (!timing.firstStop) {
          timing.firstStop = stoppedAt[i];
          // As the first stopping arc is issued (the device stops inside that ioctl), not before
          // the engines' own work that precedes it, which the workload does not see.
          cpuAtStop = threadCpuNs();
        }
      },
    );
    await settleAll(
      sources,
      async (m, i) => {
        const moved = await stopCopyPass(m.engine, windows[i]!, reports[i]!, local.signal, phases[i]!.precopyBytes);
        const totals = await encoders[i]!.finish();
        // An empty DATA frame ends this device's stream: the decoder checks nothing follows the trailer.
        await wire.send(FRAME.data, i, Buffer.alloc(0), true);
        phases[i]!.stopCopyBytes = moved;
        phases[i]!.stopCopyMs = spanMs(stoppedAt[i]!, monotonicMs());
        phases[i]!.records = Number(totals.records);
        phases[i]!.bytes = Number(totals.payloadBytes);
      },
      stopDevices,
    );
    timing.sent = monotonicMs();
    event('stop-and-copy sent; waiting for the destination to validate');

    step = 'validation';
    const loaded = messageBody<{ devices?: Record<string, unknown>[] }>(
      await wait(FRAME.loaded, 0, 'the destination to validate the streams (loaded)'),
    );
    loaded.devices?.forEach((d, i) => {
      if (phases[i]) phases[i].destinationLoad = d;
    });
    timing.loaded = monotonicMs();
    if (local.signal.aborted) throw abortReason(local.signal, 'the commit');

    step = 'commit';
    await wire.sendMessage(FRAME.commit, 0, {});
    event('committed');
  } catch (err) {
    const first = deviceFailure ?? (inbox.failure && !(err instanceof MigrateError) ? inbox.failure : err);
    let error = asMigrateError(first, 'source', step);
    // Ctrl-C is what happened, whatever the abort broke on its way (a closed channel, a cancelled read).
    if (signal?.aborted && error.code !== 'ERR_MIGRATION_ABORTED' && error.code !== 'ERR_MIGRATION_PEER')
      error = abortReason(signal, step);
    // A failure on this side goes to the destination, so it resets at once instead of at EOF.
    if (error.side !== 'destination' || error.code !== 'ERR_MIGRATION_PEER') {
      await sendError(wire, error);
    }
    inbox.fail(error);
    wire.close('the migration failed');
    signal?.removeEventListener('abort', onAbort);
    clearTimeout(dropChannel);
    error.devices = touched
      ? await Promise.all(sources.map((m) => outcome(m, m.recoverSource())))
      : sources.map((m) => ({ device: m.device.name, role: 'source' as const, recovery: 'running' as const }));
    const states = error.devices.map((d) => `${d.device} ${recoveryWords(d.recovery)}`).join(', ');
    error.message += `; before the commit: source ${states}; the destination resets its devices`;
    throw error;
  }

  // Committed: the destination owns the workload now. A failure from here on cannot undo it.
  let running: MigrateResult['destination'];
  try {
    running = messageBody(await wait(FRAME.running, 0, 'the destination to run (after the commit)'));
  } catch (err) {
    signal?.removeEventListener('abort', onAbort);
    clearTimeout(dropChannel);
    wire.close('failed after the commit');
    await Promise.allSettled(sources.map((m) => m.engine.finishSave('stopped')));
    const cause = asMigrateError(err, 'source', 'after the commit');
    const error = new MigrateError(
      'ERR_MIGRATION_AFTER_COMMIT',
      `after the commit: ${cause.message}; the source devices (${sources.map((m) => m.device.name).join(', ')}) are stopped with their state handed over${options.resetSource ? ' (not reset)' : ''}; the destination devices were loaded and validated and should be RUNNING, but the destination did not confirm it: check them`,
      cause.side,
      { cause, committed: true, step: 'after the commit' },
    );
    error.devices = sources.map((m) => ({ device: m.device.name, role: 'source', recovery: 'committed' }));
    throw error;
  }
  timing.running = monotonicMs();
  const downtimeCpuMs = cpuMsBetween(cpuAtStop, threadCpuNs());
  gc.release();
  signal?.removeEventListener('abort', onAbort);
  clearTimeout(dropChannel);
  wire.close('done');
  await leaveSaving(sources, !!options.resetSource);
  return {
    devices: phases,
    bytes: phases.reduce((a, p) => a + p.bytes, 0),
    wireBytes: wire.bytesOut,
    phases: {
      helloMs: spanMs(began, timing.ready),
      precopyMs: Math.max(0, ...phases.map((p) => p.precopyMs)),
      switchoverAckMs: Math.max(0, ...phases.map((p) => p.switchoverAckMs)),
      catchUpMs: timing.catchUp,
      stopCopyMs: spanMs(timing.firstStop, timing.sent),
      validateMs: spanMs(timing.sent, timing.loaded),
      resumeMs: spanMs(timing.loaded, timing.running),
    },
    downtimeMs: spanMs(timing.firstStop, timing.running),
    downtimeCpuMs,
    destinationDowntimeCpuMs: reportedMs(running['downtimeCpuMs']),
    elapsedMs: spanMs(began, monotonicMs()),
    destination: running,
  };
}

/**
 * After the destination confirmed RUNNING: every source leaves its saving state for STOP (then
 * is reset if asked). This waits until now on purpose: until the destination runs, the sources
 * hold the only state that is sure to be whole, and a source that fails to leave STOP_COPY (a
 * driver may go to its error state, which only a reset leaves) must not abort a migration whose
 * copy was validated, nor cost the downtime an arc. A failure is one after the commit.
 */
async function leaveSaving(sources: readonly Migration[], resetSource: boolean): Promise<void> {
  const left = await Promise.allSettled(sources.map((m) => m.engine.finishSave('stopped')));
  const reset = resetSource
    ? await Promise.allSettled(sources.map((m) => m.device.reset()))
    : sources.map(() => undefined);
  const problems = sources.flatMap((m, i) => {
    const leaving = left[i]!;
    const resetting = reset[i];
    if (leaving.status === 'fulfilled' && resetting?.status !== 'rejected') return [];
    const why = [
      leaving.status === 'rejected' ? `leaving its saving state failed: ${messageOf(leaving.reason)}` : '',
      resetting?.status === 'rejected' ? `the reset failed: ${messageOf(resetting.reason)}` : '',
    ].filter(Boolean);
    const now = resetting?.status === 'fulfilled' ? 'it was reset' : 'reset it before use';
    return [`${m.device.name}: ${why.join('; ')}; ${now}`];
  });
  if (!problems.length) return;
  const error = new MigrateError(
    'ERR_MIGRATION_AFTER_COMMIT',
    `after the commit: the destination devices are RUNNING (confirmed) with the state; source ${problems.join('; source ')}`,
    'source',
    { committed: true, step: 'after the commit (sources leave their saving state)' },
  );
  error.devices = sources.map((m, i) => ({
    device: m.device.name,
    role: 'source',
    recovery: reset[i]?.status === 'fulfilled' ? 'reset' : left[i]!.status === 'fulfilled' ? 'committed' : 'failed',
  }));
  throw error;
}

/** A duration the peer reported, if it is one (the peer's message is untrusted input). */
function reportedMs(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function sendError(wire: WireEnd, error: MigrateError): Promise<void> {
  const body = { message: error.message, code: error.code, side: error.side, step: error.step, recovery: 'running' };
  await settleWithin(wire.sendMessage(FRAME.error, 0, body), 1000);
}

async function outcome(m: Migration, recovery: Promise<Recovery>): Promise<DeviceOutcome> {
  return { device: m.device.name, role: 'source', recovery: await recovery.catch(() => 'failed' as const) };
}

export function recoveryWords(r: DeviceOutcome['recovery']): string {
  switch (r) {
    case 'running':
      return 'RUNNING again';
    case 'reset':
      return 'reset (VFIO_DEVICE_RESET)';
    case 'committed':
      return 'stopped (committed)';
    case 'failed':
      return 'NOT recovered: reset it before use';
    default:
      return r;
  }
}

export { MigrationError };
