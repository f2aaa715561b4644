// save()/load() for any protocol: stream header and identity, progress, abort, and the rollback rules of DESIGN.md.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Device } from '../device';
import { MigrationError, type Recovery } from './errors';
import {
  StreamDecoder,
  StreamEncoder,
  StreamError,
  verifyStream,
  type StreamHeader,
  type StreamSink,
  type StreamSource,
  type VerifyResult,
} from './stream';
import { readAhead } from './pipeline';
import type { LoadOptions, LoadResult, MigrationEngine, Phase, Progress, SaveOptions, SaveResult } from './types';

let toolVersion: string | undefined;
function version(): string {
  if (toolVersion === undefined) {
    try {
      toolVersion = String(JSON.parse(readFileSync(join(__dirname, '../../../package.json'), 'utf8')).version);
    } catch {
      toolVersion = 'unknown';
    }
  }
  return toolVersion;
}

/** What a stream records about its source device, and what a destination is compared on. */
export function deviceIdentity(device: Device): Record<string, unknown> {
  const s = device.sysfs;
  if (!s) return { kind: 'unknown', name: device.name };
  if (s.kind === 'pci') {
    return {
      kind: 'pci',
      vendor: s.vendor,
      device: s.device,
      subsystemVendor: s.subsystemVendor,
      subsystemDevice: s.subsystemDevice,
      driver: s.driver,
    };
  }
  return { kind: 'mdev', mdevType: s.mdevType, driver: s.driver };
}

/** Differences between a stream's device identity and a destination's, empty when they match. */
export function identityMismatches(saved: Record<string, unknown>, here: Record<string, unknown>): string[] {
  const keys =
    saved.kind === 'pci'
      ? ['kind', 'vendor', 'device', 'subsystemVendor', 'subsystemDevice']
      : saved.kind === 'mdev'
        ? ['kind', 'mdevType']
        : ['kind'];
  return keys
    .filter((k) => saved[k] !== here[k])
    .map((k) => `${k}: stream has ${JSON.stringify(saved[k])}, device has ${JSON.stringify(here[k])}`);
}

/** Calls onProgress at phase changes and at most every 100 ms in between. */
function progressReporter(start: number, onProgress?: (p: Progress) => void) {
  let lastPhase: Phase | undefined;
  let lastIteration = -1;
  let lastAt = 0;
  return (phase: Phase, iteration: number, bytes: number, pendingBytes?: bigint, force = false) => {
    if (!onProgress) return;
    const now = Date.now();
    if (!force && phase === lastPhase && iteration === lastIteration && now - lastAt < 100) return;
    lastPhase = phase;
    lastIteration = iteration;
    lastAt = now;
    const elapsedMs = now - start;
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

function withRecovery(err: unknown, recovery: Recovery, role: 'source' | 'destination'): MigrationError {
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
  const said: Record<Recovery, string> = {
    none: '',
    running: `the ${role} device is RUNNING again`,
    stopped: `the ${role} device is stopped`,
    reset: `the ${role} device was reset (VFIO_DEVICE_RESET)`,
    failed: `the ${role} device could not be recovered: reset it before use`,
  };
  if (said[error.recovery] && !error.message.includes(said[error.recovery]))
    error.message += `; ${said[error.recovery]}`;
  return error;
}

/** The migration API of one device, the same for v1 and v2. */
export class Migration {
  readonly device: Device;
  readonly engine: MigrationEngine;

  constructor(device: Device, engine: MigrationEngine) {
    this.device = device;
    this.engine = engine;
  }

  get protocol(): 'v1' | 'v2' {
    return this.engine.protocol;
  }

  /** Releases what the engine holds (v1 data-section mappings, a v2 data_fd); the device stays open. */
  close(): void {
    this.engine.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** The device's migration state, as a name ('RUNNING', 'STOP', ...). */
  state(): Promise<string> {
    return this.engine.stateName();
  }

  /** Moves the device to a named state (expert use: 'RUNNING', 'STOP', ...). */
  setState(name: string): Promise<void> {
    return this.engine.setStateByName(name);
  }

  /**
   * Saves the device state into `sink`. On any failure or abort the source returns to RUNNING
   * (or is reset when it is in the error state) and no trailer is written, so the partial
   * stream can never pass for a complete one.
   */
  async save(sink: StreamSink, options: SaveOptions = {}): Promise<SaveResult> {
    const start = Date.now();
    const report = progressReporter(start, options.onProgress);
    if (options.signal?.aborted)
      throw withRecovery(
        new MigrationError('ERR_MIGRATION_ABORTED', 'aborted before the save started', { step: 'start' }),
        'none',
        'source',
      );
    const header: StreamHeader = {
      ...options.meta,
      protocol: this.protocol,
      device: deviceIdentity(this.device),
      migration: this.engine.describe(),
      tool: { name: 'vfio-migration', version: version() },
      created: new Date().toISOString(),
    };
    const encoder = new StreamEncoder(sink, header);
    let stoppedAt = 0;
    let stopCopyMs = 0;
    try {
      await encoder.writeHeader();
      const r = await this.engine.save({
        emit: (phase, payload) => encoder.writeRecord(phase, payload),
        policy: options.precopy ?? false,
        leave: options.leave ?? 'stopped',
        signal: options.signal,
        progress: report,
        markStopped: () => {
          stoppedAt = Date.now();
        },
      });
      stopCopyMs = stoppedAt ? Date.now() - stoppedAt : 0;
      const totals = await encoder.finish();
      report('done', 0, Number(totals.payloadBytes), 0n, true);
      return {
        records: totals.records,
        bytes: totals.payloadBytes,
        precopyIterations: r.precopyIterations,
        precopyBytes: r.precopyBytes,
        stopCopyMs,
        elapsedMs: Date.now() - start,
      };
    } catch (err) {
      const recovery = await this.engine.recoverSource();
      throw withRecovery(err, recovery, 'source');
    }
  }

  /**
   * Loads a stream into the device. The header is checked before the device is touched; every
   * record's checksum before it reaches the device; the trailer before the device leaves
   * RESUMING. Any failure resets the destination.
   */
  async load(source: StreamSource, options: LoadOptions = {}): Promise<LoadResult> {
    const start = Date.now();
    const report = progressReporter(start, options.onProgress);
    const decoder = new StreamDecoder(source);
    let header: StreamHeader;
    try {
      header = await decoder.readHeader();
    } catch (err) {
      throw withRecovery(err, 'none', 'destination');
    }
    if (header.protocol !== this.protocol) {
      throw new MigrationError(
        'ERR_MIGRATION_MISMATCH',
        `the stream was saved with migration protocol ${header.protocol}, this device speaks ${this.protocol}; nothing was written to the device`,
      );
    }
    const mismatches = identityMismatches(header.device, deviceIdentity(this.device));
    if (mismatches.length && !options.force) {
      throw new MigrationError(
        'ERR_MIGRATION_MISMATCH',
        `the stream was saved from another kind of device (${mismatches.join('; ')}); use force to load it anyway; nothing was written to the device`,
      );
    }
    try {
      if (options.signal?.aborted)
        throw new MigrationError('ERR_MIGRATION_ABORTED', 'aborted before the load started', { step: 'start' });
      await this.engine.load(readAhead(decoder.records()), {
        leave: options.leave ?? 'running',
        signal: options.signal,
        progress: report,
      });
    } catch (err) {
      const recovery = await this.engine.recoverDestination();
      throw withRecovery(err, recovery, 'destination');
    }
    // The engine consumed the whole stream, so the decoder verified the trailer and has its totals.
    const totals = decoder.totals!;
    report('done', 0, Number(totals.payloadBytes), undefined, true);
    return { records: totals.records, bytes: totals.payloadBytes, elapsedMs: Date.now() - start };
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
      if (m.engine.stateNames.includes('RUNNING_P2P')) {
        await m.setState('RUNNING_P2P');
        moved.push(m);
      }
    }
    for (const m of migrations) {
      await m.setState('STOP');
      if (!moved.includes(m)) moved.push(m);
    }
  } catch (err) {
    for (const m of moved) await m.engine.recoverSource().catch(() => 'failed');
    throw err;
  }
}
