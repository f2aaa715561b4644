// receive(): the destination end of a migrate: checks the hello, RESUMING, loads and validates, runs after the commit.
import { withEagerFeedback } from '../eager-feedback';
import { withGcHold, type GcHold } from '../gc-hold';
import { monotonicMs, spanMs } from '../clock';
import { headerRefusal } from './identity';
import { readAhead } from './pipeline';
import { recoverDestination } from './recovery';
import type { Migration } from './session';
import { progressReporter } from './steps';
import { PHASE_STOP_COPY, StreamDecoder, type StreamHeader } from './stream';
import { headerProblem } from './stream/header';
import { releaseRecord } from './stream/sink';
import { printable } from '../printable';
import { cpuMsBetween, threadCpuNs } from '../thread-cpu';
import { ByteQueue, Inbox, MigrateError, asMigrateError, settleAll, settleWithin, type DeviceOutcome } from './txn';
import type { Progress } from './types';
import { resumeTogether, stopLoadedTogether } from './together';
import { FRAME, WIRE_VERSION, WireEnd, WireError, isInProcess, messageBody, type Channel, type Frame } from './wire';
import { DEFAULT_MIGRATE_TIMEOUT_MS, recoveryWords } from './migrate';

export interface ReceiveOptions {
  /** Load streams whose device identity differs from the destination's. */
  force?: boolean;
  /** Longest silence of the source, in ms, and longest wait for the commit (default 30 s); 0 = no limit. */
  timeoutMs?: number;
  signal?: AbortSignal;
  onProgress?: (index: number, progress: Progress) => void;
  onEvent?: (text: string) => void;
}

/** Times in ms to a tenth, on a monotonic clock (clock.ts). */
export interface ReceiveResult {
  devices: { device: string; protocol: 'v1' | 'v2'; records: number; bytes: number; loadMs: number }[];
  /** RESUMING -> STOP of every device (the drivers' validation), the longest. */
  validateMs: number;
  /** Commit received to the last device RUNNING. */
  resumeMs: number;
  /**
   * This thread's time on a CPU from the first sign of the sources' stop (a stop-copy record or
   * the end of a stream) to the last device RUNNING (the kernel's thread CPU clock; undefined
   * where it has none): this end's own work in the downtime. Sent to the source in RUNNING.
   */
  downtimeCpuMs?: number;
  elapsedMs: number;
}

interface Hello {
  version?: number;
  devices?: StreamHeader[];
  switchoverAck?: boolean[];
}

/** Why this destination cannot take this hello, or undefined when it can. */
export function helloProblem(hello: Hello, destinations: readonly Migration[], force: boolean): string | undefined {
  if (!Array.isArray(hello.devices)) return 'the hello lists no devices';
  if (hello.devices.length !== destinations.length)
    return `the source migrates ${hello.devices.length} device(s), this receiver was given ${destinations.length}`;
  for (const [i, h] of hello.devices.entries()) {
    const m = destinations[i]!;
    if (h === null || typeof h !== 'object') return `device ${i}: no stream header`;
    // The same shape rules as a stream file's header: a hello is as untrusted as a file.
    const bad = headerProblem(h as Parameters<typeof headerProblem>[0]);
    if (bad) return `device ${i}: bad stream header: ${printable(bad.problem)}`;
    const refusal = headerRefusal(h, m.protocol, m.device, force);
    if (refusal && 'mismatches' in refusal)
      return `device ${i} (${m.device.name}) is another kind of device than its source (${refusal.mismatches.join('; ')}); use --force to take it anyway`;
    if (refusal)
      return `device ${i} (${m.device.name}): the source speaks migration protocol ${String(refusal.protocol)}, this device ${m.protocol}`;
  }
  return undefined;
}

/**
 * Bytes of one device's stream the receiver queues before it holds the channel back. A few
 * records keep the device's writes fed while the next ones arrive; more only costs memory
 * (it was 64 MiB per device: a destination slower than the source queued up to that much, and
 * in one process every queued record is a buffer the source had to allocate). One device's full
 * queue holds back the others' frames too, which then have as much queued each.
 */
export const RECEIVE_QUEUE_BYTES = 4 << 20;

/**
 * Receives a migrate from the other end of `channel` into `destinations`, paired in order. Until
 * the source's commit, any failure resets every destination device; after it, they run.
 */
export function receive(
  destinations: readonly Migration[],
  channel: Channel,
  options: ReceiveOptions = {},
): Promise<ReceiveResult> {
  // Feedback from the first call on (lib/eager-feedback.ts); the GC hold taken when the sources'
  // stop shows (stop-copy data, or a stream's end), released once the devices run.
  return withEagerFeedback(() => withGcHold((gc) => receiveHolding(destinations, channel, options, gc)));
}

async function receiveHolding(
  destinations: readonly Migration[],
  channel: Channel,
  options: ReceiveOptions,
  gc: GcHold,
): Promise<ReceiveResult> {
  const began = monotonicMs();
  const timeoutMs = options.timeoutMs ?? DEFAULT_MIGRATE_TIMEOUT_MS;
  const event = options.onEvent ?? (() => undefined);
  const wire = new WireEnd(channel);
  const inbox = new Inbox(wire, 'source');
  let step = 'hello';
  let committed = false;
  let watchdog: NodeJS.Timeout | undefined;
  // Read when the sources' stop first shows here: the downtime runs on this end from then on.
  let cpuAtStop: bigint | undefined;
  const stopShows = (): void => {
    gc.take();
    cpuAtStop ??= threadCpuNs();
  };
  const onAbort = (): void =>
    inbox.fail(
      new MigrateError('ERR_MIGRATION_ABORTED', `receive aborted: ${String(options.signal?.reason)}`, 'destination'),
    );
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const queues = destinations.map(() => new ByteQueue(RECEIVE_QUEUE_BYTES));
  const result: ReceiveResult['devices'] = destinations.map((m) => ({
    device: m.device.name,
    protocol: m.protocol,
    records: 0,
    bytes: 0,
    loadMs: 0,
  }));
  try {
    await wire.writePreamble();
    const version = await wire.readPreamble(timeoutMs || undefined);
    if (version !== WIRE_VERSION) {
      throw new MigrateError(
        'ERR_MIGRATION_REFUSED',
        `the source speaks migrate protocol version ${version}; this receiver (vfio-migration) speaks version ${WIRE_VERSION} only: use the same version of vfio-mig on both ends`,
        'destination',
        { step },
      );
    }
    inbox.start();
    const hello = messageBody<Hello>(await inbox.wait(FRAME.hello, 0, timeoutMs, 'the hello'));
    if (hello.version !== WIRE_VERSION)
      throw new MigrateError('ERR_MIGRATION_REFUSED', `hello of version ${String(hello.version)}`, 'destination');
    const problem = helloProblem(hello, destinations, !!options.force);
    if (problem)
      throw new MigrateError('ERR_MIGRATION_REFUSED', `refused: ${problem}; nothing was stopped`, 'destination');

    step = 'enter RESUMING';
    await settleAll(destinations, (m) => m.engine.enterResuming());
    const ackAt: (number | undefined)[] = destinations.map(() => undefined);
    const acked: boolean[] = destinations.map(() => false);
    const maybeAck = async (i: number): Promise<void> => {
      const at = ackAt[i];
      if (at === undefined || acked[i] || result[i]!.records < at) return;
      acked[i] = true;
      await wire.sendMessage(FRAME.switchoverAck, i, {});
    };
    inbox.onFrame = (frame: Frame): void | Promise<void> => {
      const i = frame.device;
      if (i >= destinations.length) throw new MigrateError('ERR_MIGRATION_CHANNEL', `frame for device ${i}`, 'source');
      if (frame.type === FRAME.data) {
        if (frame.payload.length === 0) return queues[i]!.end();
        return queues[i]!.push(frame.payload);
      }
      if (frame.type === FRAME.initialDone) {
        ackAt[i] = Number(messageBody<{ records?: number }>(frame).records ?? 0);
        return maybeAck(i);
      }
      throw new MigrateError('ERR_MIGRATION_CHANNEL', `unexpected ${frame.type} frame during the load`, 'source');
    };
    // Only now "ready": the source may answer with DATA before this side's write of it is even
    // called back (in one process, or over a busy channel), and a frame with no handler would be lost.
    await wire.sendMessage(FRAME.ready, 0, { devices: destinations.map((m) => ({ name: m.device.name })) });
    // A source that hangs without closing the channel: nothing arrives and nothing is written for timeoutMs.
    inbox.lastActivity = monotonicMs();
    if (timeoutMs > 0) {
      watchdog = setInterval(
        () => {
          if (monotonicMs() - inbox.lastActivity > timeoutMs)
            inbox.fail(new WireError('ERR_WIRE_TIMEOUT', `nothing from the source for ${timeoutMs} ms`));
        },
        Math.min(1000, timeoutMs),
      );
    }
    event('RESUMING; ready');

    step = 'load';
    const loads = destinations.map(async (m, i) => {
      const t0 = monotonicMs();
      const report = progressReporter(began, options.onProgress && ((p) => options.onProgress!(i, p)));
      // From a source in this process (isInProcess), payloads come unchecksummed and by reference.
      const decoder = new StreamDecoder(queues[i]!, { checksums: !isInProcess(channel) });
      const header = await decoder.readHeader();
      if (JSON.stringify(header.device) !== JSON.stringify(hello.devices![i]!.device) || header.protocol !== m.protocol)
        throw new MigrateError(
          'ERR_MIGRATION_STREAM',
          `device ${i}: the stream header differs from the hello`,
          'source',
        );
      for await (const record of readAhead(decoder.records())) {
        if (record.phase === PHASE_STOP_COPY) stopShows();
        await m.engine.writeRecord(record);
        // Written: an in-process source may reuse the record's memory (a no-op for a copy).
        releaseRecord(record.payload);
        result[i]!.records++;
        result[i]!.bytes += record.payload.length;
        inbox.lastActivity = monotonicMs();
        report('resuming', 0, result[i]!.bytes);
        await maybeAck(i);
      }
      // The sources have stopped (this one's stream is whole): the downtime runs.
      stopShows();
      return t0;
    });
    for (const l of loads) l.catch(() => undefined);
    const loadStarts = await Promise.race([Promise.all(loads), inbox.failed()]);
    // Every trailer checked out: RESUMING -> STOP is where the drivers validate what they were
    // given, all the devices at once (the v2 ones in one call).
    await stopLoadedTogether(destinations.map((m) => m.engine));
    const loadedAt = monotonicMs();
    loadStarts.forEach((t0, i) => (result[i]!.loadMs = spanMs(t0, loadedAt)));
    const validateMs = spanMs(Math.min(...loadStarts), loadedAt);
    // The load is over: from here frames wait for inbox.wait(), which finds one that came early
    // (the source may send the commit before this side's "loaded" write is called back).
    inbox.onFrame = undefined;
    await wire.sendMessage(FRAME.loaded, 0, { devices: result });
    event('loaded and validated; waiting for the commit');

    step = 'wait for the commit';
    await inbox.wait(FRAME.commit, 0, timeoutMs, 'the commit');
    committed = true;
    const t = monotonicMs();
    step = 'resume after the commit';
    await resumeTogether(destinations.map((m) => m.engine));
    const resumeMs = spanMs(t, monotonicMs());
    const downtimeCpuMs = cpuMsBetween(cpuAtStop, threadCpuNs());
    await wire.sendMessage(FRAME.running, 0, {
      resumeMs,
      downtimeCpuMs,
      devices: destinations.map((m) => m.device.name),
    });
    // The watchdog keeps watching until here, out of the downtime: the first clearInterval of a
    // process cost 1.8 ms of one device's downtime in the guest (docs/performance.md).
    clearInterval(watchdog);
    options.signal?.removeEventListener('abort', onAbort);
    wire.close('done');
    event('RUNNING');
    return { devices: result, validateMs, resumeMs, downtimeCpuMs, elapsedMs: spanMs(began, monotonicMs()) };
  } catch (err) {
    clearInterval(watchdog);
    options.signal?.removeEventListener('abort', onAbort);
    const cause = inbox.failure && !(err instanceof MigrateError) ? inbox.failure : err;
    const error = asMigrateError(cause, 'destination', step);
    if (error.code !== 'ERR_MIGRATION_PEER') {
      await settleWithin(
        wire.sendMessage(FRAME.error, 0, {
          message: error.message,
          code: error.code,
          side: error.side,
          step: error.step,
        }),
        1000,
      );
    }
    inbox.fail(error);
    for (const q of queues) q.end(error);
    wire.close('the migration failed');
    if (committed) {
      const states = await Promise.all(destinations.map((m) => m.state().catch(() => 'unknown')));
      throw new MigrateError(
        'ERR_MIGRATION_AFTER_COMMIT',
        `after the commit: ${error.message}; destination devices: ${destinations.map((m, i) => `${m.device.name} ${states[i]}`).join(', ')}; the source devices are stopped (committed)`,
        'destination',
        { cause: error, committed: true, step },
      );
    }
    // Before the commit, a destination holds nothing the workload needs: reset what was touched.
    const touched = step !== 'hello';
    error.devices = await Promise.all(
      destinations.map(async (m): Promise<DeviceOutcome> => ({
        device: m.device.name,
        role: 'destination',
        recovery: touched
          ? await recoverDestination(m.engine, m.device, m.noReset).catch(() => 'failed' as const)
          : 'none',
      })),
    );
    if (touched)
      error.message += `; destination ${error.devices.map((d) => `${d.device} ${recoveryWords(d.recovery)}`).join(', ')}; the source returns its devices to RUNNING`;
    throw error;
  }
}
