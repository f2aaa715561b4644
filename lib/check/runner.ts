// checkDevice: saves the device's state, runs the selected rules of its protocol, loads the state back, reports.
import { monotonicMs, msSince } from '../clock';
import type { Device } from '../device';
import { probeMigration } from '../migration/probe';
import type { MigrationEngine } from '../migration/types';
import { V1Engine } from '../migration/v1';
import { V2Engine } from '../migration/v2';
import { VFIO_DEVICE_FLAGS_PCI, VFIO_PCI_CONFIG_REGION_INDEX } from '../uapi';
import { CheckContext, errnoName, hex, openFdCount } from './context';
import { RULES, unknownSelectors } from './rules';
import type { CheckOptions, CheckReport, Verdict } from './types';
import { checkV1 } from './v1';
import { checkV2 } from './v2';
import { checkDmaLogging } from './dmalog';

/** The project's test driver (test/driver/): PCI vendor 0x5654, state checksum at BAR0 0x10. */
export const TEST_DRIVER_VENDOR = 0x5654;
const TEST_DRIVER_CHECKSUM = 0x10;

function testDriverChecksum(device: Device): (() => bigint) | undefined {
  try {
    if (!(device.info.flags & VFIO_DEVICE_FLAGS_PCI)) return undefined;
    if (device.region(VFIO_PCI_CONFIG_REGION_INDEX).read(0, 2) !== TEST_DRIVER_VENDOR) return undefined;
    const bar0 = device.region(0);
    bar0.read(TEST_DRIVER_CHECKSUM, 8);
    return () => bar0.read(TEST_DRIVER_CHECKSUM, 8);
  } catch {
    return undefined;
  }
}

/**
 * The whole state as the engine saves it (stop-and-copy only), so it can be loaded back at the end,
 * and its checksum read while the device is stopped: a device that dirties itself while running
 * has another state a moment before the stop.
 */
export async function saveState(
  engine: MigrationEngine,
  checksum: (() => bigint) | undefined,
): Promise<{ records: Buffer[]; sum: bigint | undefined }> {
  const records: Buffer[] = [];
  await engine.enterStopCopy(() => {});
  const sum = checksum?.();
  await engine.copy({
    stage: 'stop-copy',
    emit: async (payload) => {
      records.push(Buffer.from(payload));
    },
    onChunk() {},
  });
  await engine.finishSave('running');
  return { records, sum };
}

/**
 * Loads the saved state back and runs the device. The checksum is read before the device runs
 * (and may dirty itself) again, as the saved one was read stopped: on v2 in STOP; on v1, which
 * leaves _RESUMING only for _RUNNING, in _RESUMING after the last record (the test driver, the
 * only device with a checksum, applies each record as it is written).
 */
export async function restoreState(
  engine: MigrationEngine,
  device: Device,
  records: Buffer[],
  checksum: (() => bigint) | undefined,
): Promise<bigint | undefined> {
  engine.release();
  await device.reset();
  await engine.enterResuming();
  let sequence = 0n;
  for (const payload of records) await engine.writeRecord({ phase: 0, sequence: sequence++, payload });
  if (engine instanceof V1Engine) {
    const sum = checksum?.();
    await engine.finishLoad('running');
    return sum;
  }
  await engine.finishLoad('stopped');
  const sum = checksum?.();
  await engine.toRunning();
  return sum;
}

/**
 * Checks a device's migration driver against the spec of its protocol. The device's state is
 * saved first and loaded back at the end (report.restore says whether that worked). Rules that
 * reset the device or stop it are marked `disruptive` in the catalogue.
 */
export async function checkDevice(device: Device, options: CheckOptions = {}): Promise<CheckReport> {
  const bad = unknownSelectors([...(options.only ?? []), ...(options.skip ?? [])]);
  if (bad.length)
    throw new RangeError(`no rule matches ${bad.map((s) => `'${s}'`).join(', ')} (see vfio-mig help check)`);
  const startedAt = new Date().toISOString();
  const started = monotonicMs();
  const fdsBefore = openFdCount();
  const ctx = new CheckContext(options);
  const found = probeMigration(device);
  const checksum = testDriverChecksum(device);
  let engine: MigrationEngine | null = null;
  let restore = { ok: true, detail: 'nothing to restore: the device has no migration protocol' };

  if (found) {
    engine =
      found.protocol === 'v1'
        ? new V1Engine(device, found.region)
        : new V2Engine(device, { p2p: found.p2p, preCopy: found.preCopy });
    // read before anything else touches the device (v1.state.default)
    const initialV1 = engine instanceof V1Engine ? await engine.readDeviceState() : 0;
    const initialName = await engine.stateName();
    let saved: Buffer[] | null = null;
    let sumBefore: bigint | undefined;
    try {
      ({ records: saved, sum: sumBefore } = await saveState(engine, checksum));
    } catch (err) {
      engine.release();
      restore = {
        ok: false,
        detail: `the state could not be saved before the checks (${errnoName(err)}); it was not restored`,
      };
      try {
        await device.reset();
      } catch {
        /* reported through the rules */
      }
    }
    try {
      if (engine instanceof V1Engine)
        await checkV1(
          ctx,
          { engine, info: found.protocol === 'v1' ? found.region : engine.region.info, initialState: initialV1 },
          checksum,
        );
      else {
        await checkV2(ctx, { engine: engine as V2Engine, flags: found.protocol === 'v2' ? found.flags : 0n }, checksum);
        await checkDmaLogging(ctx, device);
      }
    } finally {
      engine.release();
    }
    if (saved) {
      try {
        const sumAfter = await restoreState(engine, device, saved, checksum);
        const state = await engine.stateName();
        if (sumBefore !== undefined && sumAfter !== sumBefore)
          restore = {
            ok: false,
            detail: `state loaded back, but the checksum is ${hex(sumAfter ?? 0n)}, not ${hex(sumBefore)}`,
          };
        else
          restore = {
            ok: true,
            detail: `state saved before the checks (${saved.length} records) and loaded back; device ${state}${initialName !== state ? ` (it was ${initialName})` : ''}${sumBefore !== undefined ? `, checksum ${hex(sumBefore)} again` : ''}`,
          };
      } catch (err) {
        restore = { ok: false, detail: `loading the saved state back failed: ${(err as Error).message}` };
      } finally {
        engine.release();
      }
    }
    const fdsAfter = openFdCount();
    const ev = { before: fdsBefore, after: fdsAfter };
    if (fdsBefore < 0) ctx.skip('both.fd-leak', '/proc/self/fd is not readable');
    else if (fdsAfter !== fdsBefore)
      ctx.fail('both.fd-leak', `${fdsAfter - fdsBefore} more open fds after the checks`, ev);
    else ctx.pass('both.fd-leak', `${fdsBefore} open fds before and after`, ev);
  }

  const protocol = found?.protocol ?? null;
  const counts: Record<Verdict, number> = { pass: 0, fail: 0, warn: 0, skip: 0 };
  const findings = RULES.map((rule) => {
    let f = ctx.findings.get(rule.id);
    if (!f) {
      const why = !ctx.selected(rule.id)
        ? 'not selected (--only/--skip)'
        : !protocol
          ? 'the device offers no migration protocol'
          : rule.protocol !== 'both' && rule.protocol !== protocol
            ? `the device speaks ${protocol}`
            : 'not reached: an earlier step of its check failed';
      f = { id: rule.id, verdict: 'skip', detail: why, evidence: {} };
    }
    counts[f.verdict]++;
    return { ...f, rule };
  });
  return {
    device: device.name,
    protocol,
    checksum: checksum ? 'test-driver' : 'none',
    startedAt,
    elapsedMs: msSince(started),
    findings,
    restore,
    conformant: protocol !== null && !findings.some((f) => f.verdict === 'fail' && f.rule.level === 'MUST'),
    counts,
  };
}
