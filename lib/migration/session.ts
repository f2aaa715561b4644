// save()/load() for any protocol: the engines' steps composed with pre-copy policy, progress, abort and recovery.
import type { Device } from '../device';
import { monotonicMs, msSince } from '../clock';
import { MigrationError, abortError } from './errors';
import { deviceIdentity, headerRefusal, identityMismatches } from './identity';
import { encoderWindow, readAhead } from './pipeline';
import { wantsPrecopy } from './policy';
import { precopyPasses, progressReporter, stopCopyPass, streamHeader } from './steps';
import { recoverDestination, recoverSource, withRecovery } from './recovery';
import {
  StreamDecoder,
  StreamEncoder,
  verifyStream,
  type StreamHeader,
  type StreamSink,
  type StreamSource,
  type VerifyResult,
} from './stream';
import type { LoadOptions, LoadResult, MigrationEngine, PrecopyPolicy, SaveOptions, SaveResult } from './types';

/** The migration API of one device, the same for v1 and v2. */
export class Migration {
  readonly device: Device;
  readonly engine: MigrationEngine;
  /** Never VFIO_DEVICE_RESET a device on recovery (it is then reported as 'failed'). */
  readonly noReset: boolean;

  constructor(device: Device, engine: MigrationEngine, options: { noReset?: boolean } = {}) {
    this.device = device;
    this.engine = engine;
    this.noReset = options.noReset ?? false;
  }

  get protocol(): 'v1' | 'v2' {
    return this.engine.protocol;
  }

  /** Protocol details: v1 region layout, v2 flags (what the stream header records). */
  describe(): Record<string, unknown> {
    return this.engine.describe();
  }

  /** The kernel's estimate of the stop-and-copy size (v2, 6.3+), or undefined. */
  async dataSizeEstimate(): Promise<bigint | undefined> {
    return this.engine.dataSizeEstimate?.();
  }

  /** The states setState() accepts. */
  get stateNames(): readonly string[] {
    return this.engine.stateNames;
  }

  /** The device's migration state, as a name ('RUNNING', 'STOP', ...). */
  state(): Promise<string> {
    return this.engine.stateName();
  }

  /** Moves the device to a named state (expert use: 'RUNNING', 'STOP', ...). */
  setState(name: string): Promise<void> {
    return this.engine.setStateByName(name);
  }

  /** After a failed or aborted save of this device: back to RUNNING, else reset; says which. */
  recoverSource(): ReturnType<typeof recoverSource> {
    return recoverSource(this.engine, this.device, this.noReset);
  }

  /**
   * Saves the device state into `sink`. On any failure or abort the source returns to RUNNING
   * (or is reset when it is in the error state) and no trailer is written, so the partial
   * stream can never pass for a complete one.
   */
  async save(sink: StreamSink, options: SaveOptions = {}): Promise<SaveResult> {
    const start = monotonicMs();
    const report = progressReporter(start, options.onProgress);
    if (options.signal?.aborted)
      throw withRecovery(
        new MigrationError('ERR_MIGRATION_ABORTED', 'aborted before the save started', { step: 'start' }),
        'none',
        'source',
      );
    const header = streamHeader(this.device, this.engine, options.meta);
    const encoder = new StreamEncoder(sink, header);
    // One emit in flight while the engine reads the next chunk from the device.
    const window = encoderWindow(encoder);
    let stoppedAt = 0;
    try {
      await encoder.writeHeader();
      const precopy = wantsPrecopy(options.precopy) && this.engine.canPrecopy;
      const pre = precopy
        ? await precopyPasses(this.engine, options.precopy as PrecopyPolicy, window, report, options.signal)
        : { iterations: 0, bytes: 0 };
      if (options.signal?.aborted) throw abortError(options.signal, 'entering stop-and-copy');
      await this.engine.enterStopCopy(() => {
        stoppedAt = monotonicMs();
      });
      await stopCopyPass(this.engine, window, report, options.signal, pre.bytes);
      await this.engine.finishSave(options.leave ?? 'stopped');
      // Whole ms, as save() has always reported them.
      const stopCopyMs = stoppedAt ? msSince(stoppedAt) : 0;
      const totals = await encoder.finish();
      await options.commit?.();
      report('done', 0, Number(totals.payloadBytes), 0n, true);
      return {
        records: totals.records,
        bytes: totals.payloadBytes,
        precopyIterations: pre.iterations,
        precopyBytes: pre.bytes,
        stopCopyMs,
        elapsedMs: msSince(start),
      };
    } catch (err) {
      // Let the emit in flight settle so nothing reaches the sink after save() rejects.
      await window.flush().catch(() => undefined);
      // After an abort, whatever failed (a sink the caller dropped on the abort) failed because of it.
      const failure =
        options.signal?.aborted && (err as MigrationError).code !== 'ERR_MIGRATION_ABORTED'
          ? Object.assign(abortError(options.signal, 'writing the stream'), { cause: err })
          : err;
      throw withRecovery(failure, await this.recoverSource(), 'source');
    }
  }

  /**
   * Loads a stream into the device. The header is checked before the device is touched; every
   * record's checksum before it reaches the device; the trailer before the device leaves
   * RESUMING. Any failure resets the destination.
   */
  async load(source: StreamSource, options: LoadOptions = {}): Promise<LoadResult> {
    const start = monotonicMs();
    const report = progressReporter(start, options.onProgress);
    const decoder = new StreamDecoder(source);
    let header: StreamHeader;
    try {
      header = await decoder.readHeader();
    } catch (err) {
      throw withRecovery(err, 'none', 'destination');
    }
    const refusal = headerRefusal(header, this.protocol, this.device, !!options.force);
    if (refusal) {
      throw new MigrationError(
        'ERR_MIGRATION_MISMATCH',
        'mismatches' in refusal
          ? `the stream was saved from another kind of device (${refusal.mismatches.join('; ')}); use force to load it anyway; nothing was written to the device`
          : `the stream was saved with migration protocol ${String(refusal.protocol)}, this device speaks ${this.protocol}; nothing was written to the device`,
      );
    }
    try {
      if (options.signal?.aborted)
        throw new MigrationError('ERR_MIGRATION_ABORTED', 'aborted before the load started', { step: 'start' });
      await this.engine.enterResuming();
      let bytes = 0;
      // Record N+1 is decoded (and checksummed) while record N goes into the device.
      for await (const record of readAhead(decoder.records())) {
        if (options.signal?.aborted) throw abortError(options.signal, `resuming, record ${record.sequence}`);
        await this.engine.writeRecord(record);
        bytes += record.payload.length;
        report('resuming', 0, bytes);
      }
      await this.engine.finishLoad(options.leave ?? 'running');
    } catch (err) {
      const recovery = await recoverDestination(this.engine, this.device, this.noReset || !!options.noReset);
      // Aborting closes a source that waits on a silent pipe (the CLI does on a signal): its read
      // then fails, and that failure is the abort, not an I/O error.
      const signal = options.signal;
      const aborted =
        signal?.aborted && !(err instanceof MigrationError && err.code === 'ERR_MIGRATION_ABORTED')
          ? Object.assign(abortError(signal, 'resuming'), { cause: err })
          : err;
      throw withRecovery(aborted, recovery, 'destination');
    }
    // The whole stream was consumed, so the decoder verified the trailer and has its totals.
    const totals = decoder.totals!;
    report('done', 0, Number(totals.payloadBytes), undefined, true);
    return { records: totals.records, bytes: totals.payloadBytes, elapsedMs: msSince(start) };
  }

  /** Releases what an unfinished save or load holds; the device stays open (it is the caller's). */
  close(): void {
    this.engine.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Checks a stream offline: magic, version, every checksum, sequence and the trailer. */
export function verify(source: StreamSource): Promise<VerifyResult> {
  return verifyStream(source);
}

/**
 * Stops several devices the way linux/vfio.h recommends for multi-device migration: every
 * v2 device that supports it first enters RUNNING_P2P (no new peer-to-peer DMA), and only
 * then are all of them stopped. Save each afterwards; a save from STOP goes straight to
 * stop-and-copy. On failure the devices already moved are returned to RUNNING.
 */
export async function stopDevices(migrations: readonly Migration[]): Promise<void> {
  const moved: Migration[] = [];
  try {
    for (const m of migrations) {
      if (m.stateNames.includes('RUNNING_P2P')) {
        await m.setState('RUNNING_P2P');
        moved.push(m);
      }
    }
    for (const m of migrations) {
      await m.setState('STOP');
      if (!moved.includes(m)) moved.push(m);
    }
  } catch (err) {
    for (const m of moved) await m.recoverSource().catch(() => 'failed');
    throw err;
  }
}

export { deviceIdentity, identityMismatches };
