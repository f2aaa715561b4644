// The commands of vfio-mig as a table: each with its own options, positional arguments and run function.
import { writeFileSync } from 'node:fs';
import type { OptionSpec } from './args';
import type { Device, PrecopyPolicy } from '../lib';
import { openDevice } from '../lib/device';
import { printable } from '../lib/printable';
import { requireMigration } from '../lib/migration/attach';
import { MigrationError } from '../lib/migration/errors';
import { DEFAULT_PRECOPY_ITERATIONS } from '../lib/migration/policy';
import { FdSource } from '../lib/migration/source';
import { enlargePipe } from '../lib/pipe';
import { infoText, type DirtyFacts } from './info-text';
import { openOutput, stdoutOutput, type Output } from './output';
import { ProgressView, formatBytes } from './progress';

export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 2,
  device: 3,
  protocol: 4,
  stream: 5,
  /** check: a MUST rule of the spec failed (or the device offers no migration protocol). */
  nonConformant: 6,
  /** migrate: the source side failed (10, after check's 6) before the commit (sources RUNNING again, destinations reset). */
  source: 10,
  /** migrate: the destination failed or refused before the commit (sources RUNNING again). */
  destination: 7,
  /** migrate: a failure after the commit (the message names both sides' states). */
  afterCommit: 8,
  /** migrate: the channel closed, broke or timed out before the commit (sources RUNNING again). */
  channel: 9,
  aborted: 130,
} as const;

export class UsageError extends Error {}

/** The command's output: text written at once, and the streams themselves for what needs one (cli/stdio.ts). */
export interface Io {
  /** Text to stdout. */
  out(text: string): void;
  /** Text to stderr. */
  err(text: string): void;
  /** stdout as a stream (a stream channel, `save -o -`), made on first use. */
  readonly stdout: NodeJS.WriteStream;
  /** Whether stderr is a terminal (progress is then a redrawn bar), asked on first use. */
  readonly errIsTerminal: boolean;
}

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface CommandContext {
  values: Values;
  positionals: string[];
  io: Io;
  signal?: AbortSignal;
  /** Prints the human text, or the data as JSON with --json. */
  print(human: string, data: unknown): void;
}

// Modules only some commands use are loaded by those commands (import() below): start-up is most
// of a short command's time, and a save should not pay for the checker or the migrate protocol.

export interface Command {
  /** Options of this command besides the global --json, --quiet and --help. */
  options: Readonly<Record<string, OptionSpec>>;
  /** Names of the positional arguments; a trailing '?' marks an optional one. */
  args: string[];
  /** Checks option values before anything is opened, so a usage error never touches a device. */
  check?(values: Values): void;
  run(ctx: CommandContext): Promise<number>;
}

/** Outputs being written: a forced exit (third signal) removes their temporary files synchronously. */
export const pendingOutputs = new Set<Output>();

export function json(value: unknown): string {
  return JSON.stringify(
    value,
    (_k, v) => (typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()) : v),
    2,
  );
}

/**
 * The stream to load or verify, read by the decoder into buffers it reuses (a file read through
 * fresh 8 MiB chunks spent more time in page faults than in the copy: bench/RESULTS.md).
 */
function openInput(input: string, signal?: AbortSignal): FdSource {
  try {
    // On a signal the source closes itself: a read waiting on a silent pipe ends as the abort.
    if (input !== '-') return FdSource.open(input, { signal });
    enlargePipe(0);
    return new FdSource(0, { name: 'stdin', signal });
  } catch (err) {
    throw new MigrationError('ERR_MIGRATION_IO', `cannot open ${input}: ${(err as Error).message}`, {
      cause: err,
      errno: (err as NodeJS.ErrnoException).code,
    });
  }
}

function integerOption(values: Values, name: string): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const text = String(v).trim();
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) throw new UsageError(`--${name} must be a non-negative integer, not '${String(v)}'`);
  return n;
}

/** --timeout SECONDS as milliseconds (0 = no limit); undefined when not given. */
function secondsOption(values: Values): number | undefined {
  const s = integerOption(values, 'timeout');
  return s === undefined ? undefined : s * 1000;
}

function precopyOption(values: Values): PrecopyPolicy | false {
  const iterations = integerOption(values, 'precopy-iterations');
  const threshold = integerOption(values, 'precopy-threshold');
  const timeMs = integerOption(values, 'precopy-time');
  if (!iterations && threshold === undefined && timeMs === undefined) return false;
  return { maxIterations: iterations ?? DEFAULT_PRECOPY_ITERATIONS, threshold, timeMs };
}

/**
 * migrate's pre-copy: undefined (none of the options) leaves the library's default, a live
 * pre-copy for devices that offer it; --no-precopy or --precopy-iterations 0 go straight to
 * stop-and-copy.
 */
function migratePrecopyOption(values: Values): PrecopyPolicy | false | undefined {
  const named = Object.keys(precopyOptions).filter((k) => values[k] !== undefined);
  if (values['no-precopy']) {
    if (named.length) throw new UsageError(`--no-precopy contradicts --${named[0]}`);
    return false;
  }
  // --precopy-iterations 0 gives a policy of no passes, which migrate() takes as none.
  return named.length ? precopyOption(values) : undefined;
}

function leaveOption(value: unknown, fallback: 'running' | 'stopped'): 'running' | 'stopped' {
  if (value === undefined) return fallback;
  if (value !== 'running' && value !== 'stopped')
    throw new UsageError(`--leave must be running or stopped, not '${String(value)}'`);
  return value;
}

async function withDevice<T>(spec: string, fn: (d: Device) => Promise<T>): Promise<T> {
  const device = openDevice(spec);
  try {
    return await fn(device);
  } finally {
    device.close();
  }
}

const precopyOptions = {
  'precopy-iterations': { type: 'string' },
  'precopy-threshold': { type: 'string' },
  'precopy-time': { type: 'string' },
} as const;

async function save({ values, positionals, io, signal, print }: CommandContext): Promise<number> {
  const output = values.output as string;
  const options = { precopy: precopyOption(values), leave: leaveOption(values.leave, 'stopped'), signal };
  // The output is checked and created before the device is opened: a bad -o costs no downtime.
  const file = output === '-' ? stdoutOutput(io.stdout, signal) : openOutput(output, { signal });
  pendingOutputs.add(file);
  try {
    return await withDevice(positionals[0]!, async (device) => {
      const migration = requireMigration(device);
      const view = new ProgressView(io, { quiet: !!values.quiet });
      try {
        // commit runs inside save(): if the fsync or rename fails, the source is recovered.
        const result = await migration.save(file.sink, { ...options, onProgress: view.update, commit: file.commit });
        view.finish();
        const summary = { device: device.name, protocol: migration.protocol, output, ...result };
        const human = `saved ${device.name} (${migration.protocol}): ${formatBytes(result.bytes)} in ${result.records} records, ${result.precopyIterations} pre-copy iterations, ${(result.elapsedMs / 1000).toFixed(2)} s, stop-and-copy ${result.stopCopyMs} ms`;
        if (output === '-') io.err(`${values.json ? json(summary) : human}\n`);
        else print(human, summary);
        return EXIT.ok;
      } finally {
        view.finish();
      }
    });
  } finally {
    file.discard();
    pendingOutputs.delete(file);
  }
}

async function load({ values, positionals, io, signal, print }: CommandContext): Promise<number> {
  const input = values.input as string;
  const leave = leaveOption(values.leave, 'running');
  return withDevice(positionals[0]!, async (device) => {
    const migration = requireMigration(device);
    const view = new ProgressView(io, { quiet: !!values.quiet });
    const source = openInput(input, signal);
    try {
      const result = await migration.load(source, { force: !!values.force, leave, signal, onProgress: view.update });
      view.finish();
      print(
        `loaded ${device.name} (${migration.protocol}): ${formatBytes(result.bytes)} in ${result.records} records, ${(result.elapsedMs / 1000).toFixed(2)} s`,
        { device: device.name, protocol: migration.protocol, input, ...result },
      );
      return EXIT.ok;
    } finally {
      view.finish();
      source.close();
    }
  });
}

async function verifyCommand({ positionals, signal, print }: CommandContext): Promise<number> {
  const input = positionals[0]!;
  // An abort closes the source (openInput): the read in progress rejects as the abort; said here
  // in verify's own words.
  const { verify } = await import('../lib/migration/session');
  const r = await verify(openInput(input, signal)).catch((err: unknown) => {
    if (!signal?.aborted) throw err;
    const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason);
    throw new MigrationError('ERR_MIGRATION_ABORTED', `verify ${input}: ${reason}`, { cause: err });
  });
  // Header fields come from the stream: printed escaped, never as terminal control sequences.
  const h = r.header;
  print(
    [
      `${printable(input)}: OK`,
      `protocol ${printable(String(h.protocol))}, device ${printable(JSON.stringify(h.device))}`,
      `created ${printable(String(h.created ?? '?'))} by ${printable(JSON.stringify(h.tool ?? '?'))}`,
      `${r.records} records, ${formatBytes(r.payloadBytes)} payload, ${formatBytes(r.streamBytes)} stream`,
      ...r.phases.map(
        (p) =>
          `  ${p.phase === 0xffffffff ? 'stop-and-copy' : `pre-copy ${p.phase}`}: ${p.records} records, ${formatBytes(p.bytes)}`,
      ),
    ].join('\n'),
    { file: input, ok: true, ...r },
  );
  return EXIT.ok;
}

/** What `info` says about dirty tracking; a probe that fails says why instead of failing the command. */
async function dirtyFacts(device: Device): Promise<DirtyFacts> {
  const { probeDmaLogging } = await import('../lib/dirty/logging');
  const why = (err: unknown) => (err instanceof Error ? err.message : String(err));
  let dmaLoggingMissing: string | null;
  try {
    const probe = probeDmaLogging(device);
    dmaLoggingMissing = probe.supported ? null : probe.reason;
  } catch (err) {
    dmaLoggingMissing = why(err);
  }
  let iommu: DirtyFacts['iommu'];
  try {
    const migration = device.container?.dma.info().migration;
    iommu = migration
      ? { pageSizes: migration.pageSizes, maxBitmapBytes: migration.maxBitmapBytes }
      : { missing: device.container ? 'the IOMMU has no migration capability' : 'no container' };
  } catch (err) {
    iommu = { missing: why(err) };
  }
  return { dmaLoggingMissing, iommu };
}

/** --only/--skip: comma-separated rule ids or prefixes, repeatable. */
function ruleList(value: unknown): string[] {
  const list = (Array.isArray(value) ? value : value === undefined ? [] : [value]) as string[];
  return list
    .flatMap((v) => String(v).split(','))
    .map((v) => v.trim())
    .filter(Boolean);
}

async function checkRuleOptions(values: Values): Promise<void> {
  const { unknownSelectors } = await import('../lib/check/rules');
  const bad = unknownSelectors([...ruleList(values.only), ...ruleList(values.skip)]);
  if (bad.length) throw new UsageError(`no rule matches ${bad.join(', ')} (vfio-mig help check lists them)`);
}

async function checkCommand({ values, positionals, io, print }: CommandContext): Promise<number> {
  // the rule selectors are checked before the device is opened
  await checkRuleOptions(values);
  const { checkDevice, formatJunit, formatReport } = await import('../lib/check');
  return withDevice(positionals[0]!, async (device) => {
    const report = await checkDevice(device, {
      only: ruleList(values.only),
      skip: ruleList(values.skip),
      onFinding: values.quiet || values.json ? undefined : (f) => io.err(`  ${f.verdict.padEnd(4)} ${f.id}\n`),
    });
    if (typeof values.junit === 'string') writeFileSync(values.junit, formatJunit(report));
    print(formatReport(report).trimEnd(), report);
    return report.conformant ? EXIT.ok : EXIT.nonConformant;
  });
}

export const COMMANDS: Record<string, Command> = {
  list: {
    options: { 'no-probe': { type: 'boolean' } },
    args: [],
    async run({ values, print }) {
      const { listDevices } = await import('../lib/list');
      const devices = await listDevices({ probe: !values['no-probe'] });
      const rows = devices.map((d) => {
        const flags = d.migrationFlags
          ? `(${['STOP_COPY', d.migrationFlags.p2p && 'P2P', d.migrationFlags.preCopy && 'PRE_COPY'].filter(Boolean).join('|')})`
          : '';
        return `${d.name.padEnd(38)} ${d.kind.padEnd(5)} ${(d.driver ?? '-').padEnd(16)} group ${String(d.group ?? '-').padEnd(4)} ${`${d.migration}${flags}`.padEnd(28)} ${d.state ?? (d.probeError ? `? ${d.probeError}` : '')}`;
      });
      print(rows.length ? rows.join('\n') : 'no VFIO devices on this host', devices);
      return EXIT.ok;
    },
  },
  info: {
    options: {},
    args: ['device'],
    run: ({ positionals, print }) =>
      withDevice(positionals[0]!, async (device) => {
        const regions = device.regions();
        const irqs = device.irqs();
        const migration = device.migration;
        const state = migration ? await migration.state() : undefined;
        const dataSize = migration ? await migration.dataSizeEstimate() : undefined;
        const dirty = await dirtyFacts(device);
        const data = {
          name: device.name,
          sysfs: device.sysfs,
          flags: device.info.flags,
          regions,
          irqs,
          migration: migration ? { protocol: migration.protocol, ...migration.describe(), state, dataSize } : null,
          dirty,
        };
        const human = infoText({
          name: device.name,
          kind: device.sysfs?.kind ?? 'VFIO',
          driver: device.sysfs?.driver ?? '?',
          group: String(device.group?.number ?? '?'),
          flags: device.info.flags,
          regions,
          irqs,
          migration: migration
            ? { protocol: migration.protocol, details: migration.describe(), state: state!, dataSize }
            : null,
          dirty,
        });
        print(human, data);
        return EXIT.ok;
      }),
  },
  save: {
    options: { output: { type: 'string', short: 'o' }, leave: { type: 'string' }, ...precopyOptions },
    args: ['device'],
    check(values) {
      if (values.output === undefined) throw new UsageError('save needs -o FILE (or -o - for stdout)');
      precopyOption(values);
      leaveOption(values.leave, 'stopped');
    },
    run: save,
  },
  load: {
    options: { input: { type: 'string', short: 'i' }, force: { type: 'boolean' }, leave: { type: 'string' } },
    args: ['device'],
    check(values) {
      if (values.input === undefined) throw new UsageError('load needs -i FILE (or -i - for stdin)');
      leaveOption(values.leave, 'running');
    },
    run: load,
  },
  verify: { options: {}, args: ['FILE|-'], run: verifyCommand },
  check: {
    options: {
      only: { type: 'string', multiple: true },
      skip: { type: 'string', multiple: true },
      junit: { type: 'string' },
    },
    args: ['device'],
    run: checkCommand,
  },
  migrate: {
    options: {
      ...precopyOptions,
      'no-precopy': { type: 'boolean' },
      'switchover-ack': { type: 'boolean' },
      'no-switchover-ack': { type: 'boolean' },
      timeout: { type: 'string' },
      'reset-source': { type: 'boolean' },
      'remote-command': { type: 'string' },
      'ssh-option': { type: 'string', multiple: true },
      force: { type: 'boolean' },
    },
    args: ['sources', 'destinations'],
    check(values) {
      migratePrecopyOption(values);
      integerOption(values, 'timeout');
    },
    run: async (ctx) =>
      (await import('./migrate-command')).migrateCommand(
        ctx,
        migratePrecopyOption(ctx.values),
        secondsOption(ctx.values),
      ),
  },
  receive: {
    options: { timeout: { type: 'string' }, force: { type: 'boolean' } },
    args: ['devices'],
    check(values) {
      integerOption(values, 'timeout');
    },
    run: async (ctx) => (await import('./migrate-command')).receiveCommand(ctx, secondsOption(ctx.values)),
  },
  state: {
    options: {},
    args: ['device', 'STATE?'],
    run: ({ positionals, print }) =>
      withDevice(positionals[0]!, async (device) => {
        const migration = requireMigration(device);
        if (positionals[1]) await migration.setState(positionals[1]);
        const state = await migration.state();
        print(state, { device: device.name, protocol: migration.protocol, state });
        return EXIT.ok;
      }),
  },
  reset: {
    options: {},
    args: ['device'],
    run: ({ positionals, print }) =>
      withDevice(positionals[0]!, async (device) => {
        await device.reset();
        print(`reset ${device.name}`, { device: device.name, reset: true });
        return EXIT.ok;
      }),
  },
};
