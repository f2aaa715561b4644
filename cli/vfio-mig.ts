#!/usr/bin/env node
// vfio-mig: the command line of vfio-migration, built on the public API only.
import { parseArgs } from 'node:util';
import {
  DEFAULT_PRECOPY_ITERATIONS,
  listDevices,
  openDevice,
  printable,
  requireMigration,
  verify,
  FdSource,
  MigrationError,
  StreamError,
  SyscallError,
  VfioError,
  type Device,
  type Capability,
  type PrecopyPolicy,
} from '../lib';
import { ProgressView, formatBytes } from './progress';
import { openOutput, type Output } from './output';

/** Exit codes: documented in the README and in --help. */
export const EXIT = { ok: 0, failure: 1, usage: 2, device: 3, protocol: 4, stream: 5, aborted: 130 } as const;

class UsageError extends Error {}

const HELP: Record<string, string> = {
  main: `vfio-mig: save and restore the internal state of VFIO devices (v1 and v2 migration)

Usage: vfio-mig <command> [options]

Commands:
  list                         VFIO devices on this host, with migration protocol and state
  info <device>                regions, capabilities, IRQs and migration details of a device
  save <device> -o FILE|-      save the device state into a stream (FILE is written atomically)
  load <device> -i FILE|-      restore a stream into a device
  verify FILE|-                check a stream offline and print its header and totals
  state <device> [STATE]       read or set the migration state (expert use)
  reset <device>               VFIO_DEVICE_RESET

A <device> is a PCI address (0000:3b:00.1), an mdev UUID or a sysfs path.
Global options: --json (machine-readable output), --quiet (no progress), --help.
Exit codes: 0 ok, 1 other failure, 2 usage, 3 device not found/not bound/permission/busy,
4 device or protocol error, 5 bad or foreign stream, 130 aborted (Ctrl-C).

Across hosts:  vfio-mig save 0000:3b:00.1 -o - | ssh dst vfio-mig load 0000:3b:00.1 -i -`,
  list: `Usage: vfio-mig list [--json] [--no-probe]

Lists PCI devices bound to a VFIO driver and every mdev device, with IOMMU group, driver,
migration protocol (v1, v2 and its flags, none) and current migration state. --no-probe skips
opening each device (protocol and state then show as unknown).

Example:  vfio-mig list --json | jq '.[] | select(.migration == "v2")'`,
  info: `Usage: vfio-mig info <device> [--json]

Shows device flags, every region (size, offset, flags, capabilities: sparse mmap areas, type,
MSI-X mappable), IRQs, and the migration protocol with its details and current state.

Example:  vfio-mig info 0000:3b:00.1`,
  save: `Usage: vfio-mig save <device> -o FILE|- [options]

Saves the device state. With -o FILE the stream is written to a temporary file, fsynced and
renamed to FILE only when complete; with -o - it goes to stdout (progress stays on stderr).
If anything fails or you press Ctrl-C, the source device is returned to RUNNING and no
partial file is left under FILE.

Options:
  -o, --output FILE|-           where the stream goes (required)
  --precopy-iterations N        at most N pre-copy iterations while the device runs (default 0: none)
  --precopy-threshold BYTES     stop pre-copy once pending bytes fall below BYTES
  --precopy-time MS             stop pre-copy after MS milliseconds
  --leave running|stopped       source state after success (default stopped)
  --json, --quiet

Examples:
  vfio-mig save 0000:3b:00.1 -o dev.vfmig --precopy-iterations 4
  vfio-mig save 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 -o - | ssh dst vfio-mig load 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 -i -`,
  load: `Usage: vfio-mig load <device> -i FILE|- [options]

Restores a stream into the device. The header is checked before the device is touched, every
record's checksum before it reaches the device, and the trailer before the device leaves
RESUMING. On any failure the destination is reset.

Options:
  -i, --input FILE|-            the stream (- for stdin; required)
  --force                       load a stream saved from another kind of device
  --leave running|stopped       destination state after success (default running)
  --json, --quiet

Example:  vfio-mig load 0000:3b:00.1 -i dev.vfmig`,
  verify: `Usage: vfio-mig verify FILE|- [--json]

Checks a stream offline: magic, version, every checksum, the record sequence and the trailer.

Example:  vfio-mig verify dev.vfmig`,
  state: `Usage: vfio-mig state <device> [STATE] [--json]

Without STATE, prints the migration state. With STATE (RUNNING, STOP, ... as the device's
protocol names them), moves the device there along legal arcs. Expert use: a device left in a
saving or resuming state does nothing useful until moved back.

Example:  vfio-mig state 0000:3b:00.1 RUNNING`,
  reset: `Usage: vfio-mig reset <device> [--json]

Issues VFIO_DEVICE_RESET (this also recovers a device from the migration ERROR state).

Example:  vfio-mig reset 0000:3b:00.1`,
};

function json(value: unknown): string {
  return JSON.stringify(
    value,
    (_k, v) => (typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()) : v),
    2,
  );
}

interface Io {
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
}

/**
 * The stream to load or verify, read by the decoder into buffers it reuses (a file read through
 * fresh 8 MiB chunks spent more time in page faults than in the copy: bench/RESULTS.md).
 */
function openInput(input: string, signal?: AbortSignal): FdSource {
  try {
    const source = input === '-' ? new FdSource(0, { name: 'stdin' }) : FdSource.open(input);
    // A read waiting on a silent pipe ends only when the source is closed.
    signal?.addEventListener('abort', () => source.close(), { once: true });
    return source;
  } catch (err) {
    throw new MigrationError('ERR_MIGRATION_IO', `cannot open ${input}: ${(err as Error).message}`, {
      cause: err,
      errno: (err as NodeJS.ErrnoException).code,
    });
  }
}

function exitCodeOf(err: unknown): number {
  if (err instanceof UsageError || String((err as { code?: string })?.code).startsWith('ERR_PARSE_ARGS'))
    return EXIT.usage;
  if (err instanceof VfioError)
    return [
      'ERR_VFIO_NOT_FOUND',
      'ERR_VFIO_NOT_BOUND',
      'ERR_VFIO_PERMISSION',
      'ERR_VFIO_BUSY',
      'ERR_VFIO_GROUP_NOT_VIABLE',
    ].includes(err.code)
      ? EXIT.device
      : EXIT.protocol;
  if (err instanceof MigrationError) {
    if (err.code === 'ERR_MIGRATION_ABORTED') return EXIT.aborted;
    if (err.code === 'ERR_MIGRATION_STREAM' || err.code === 'ERR_MIGRATION_MISMATCH') return EXIT.stream;
    if (err.code === 'ERR_MIGRATION_IO') return EXIT.failure;
    return EXIT.protocol;
  }
  if (err instanceof StreamError) return EXIT.stream;
  if (err instanceof SyscallError) return EXIT.protocol;
  return EXIT.failure;
}

function hint(err: unknown): string {
  if (err instanceof MigrationError && err.code === 'ERR_MIGRATION_MISMATCH')
    return 'if the devices are compatible, retry with --force';
  if (err instanceof VfioError && err.code === 'ERR_VFIO_BUSY')
    return 'close the other user of the device (a VM, another vfio-mig) and retry';
  return '';
}

function capabilityText(c: Capability): string {
  switch (c.kind) {
    case 'sparse-mmap':
      return `sparse-mmap ${c.areas.map((a) => `[0x${a.offset.toString(16)}, +0x${a.size.toString(16)})`).join(' ') || '(no areas)'}`;
    case 'type':
      return `type (${c.type}, ${c.subtype})${c.type === 3 && c.subtype === 1 ? ' = v1 migration' : ''}`;
    case 'msix-mappable':
      return 'msix-mappable';
    default:
      return `unknown id ${c.id} v${c.version} (${c.bytes.length} bytes)`;
  }
}

function precopyOption(values: Record<string, string | boolean | undefined>): PrecopyPolicy | false {
  const num = (name: string) => {
    const v = values[name];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new UsageError(`--${name} must be a non-negative number, not '${v}'`);
    return n;
  };
  const iterations = num('precopy-iterations');
  const threshold = num('precopy-threshold');
  const timeMs = num('precopy-time');
  if (!iterations && threshold === undefined && timeMs === undefined) return false;
  return { maxIterations: iterations ?? DEFAULT_PRECOPY_ITERATIONS, threshold, timeMs };
}

function leaveOption(value: unknown, fallback: 'running' | 'stopped'): 'running' | 'stopped' {
  if (value === undefined) return fallback;
  if (value !== 'running' && value !== 'stopped')
    throw new UsageError(`--leave must be running or stopped, not '${String(value)}'`);
  return value;
}

/** Outputs being written: a forced exit (third signal) removes their temporary files synchronously. */
const pendingOutputs = new Set<Output>();

async function withDevice<T>(spec: string | undefined, fn: (d: Device) => Promise<T>): Promise<T> {
  if (!spec) throw new UsageError('missing <device>: a PCI address, an mdev UUID or a sysfs path');
  const device = openDevice(spec);
  try {
    return await fn(device);
  } finally {
    device.close();
  }
}

export async function main(
  argv: string[],
  io: Io = { stdout: process.stdout, stderr: process.stderr },
  signal?: AbortSignal,
): Promise<number> {
  const command = argv[0];
  let values: Record<string, string | boolean | undefined> = {};
  let positionals: string[] = [];
  const log = (s: string) => io.stderr.write(`${s}\n`);
  try {
    if (!command || command === '--help' || command === '-h' || command === 'help') {
      io.stdout.write(`${HELP.main}\n`);
      return command ? EXIT.ok : EXIT.usage;
    }
    if (!HELP[command] || command === 'main')
      throw new UsageError(`unknown command '${command}' (vfio-mig --help lists them)`);
    const parsed = parseArgs({
      args: argv.slice(1),
      allowPositionals: true,
      strict: true,
      options: {
        help: { type: 'boolean', short: 'h' },
        json: { type: 'boolean' },
        quiet: { type: 'boolean', short: 'q' },
        output: { type: 'string', short: 'o' },
        input: { type: 'string', short: 'i' },
        force: { type: 'boolean' },
        leave: { type: 'string' },
        'no-probe': { type: 'boolean' },
        'precopy-iterations': { type: 'string' },
        'precopy-threshold': { type: 'string' },
        'precopy-time': { type: 'string' },
      },
    });
    values = parsed.values as typeof values;
    positionals = parsed.positionals;
    if (values.help) {
      io.stdout.write(`${HELP[command]}\n`);
      return EXIT.ok;
    }
    const asJson = !!values.json;
    const print = (human: string, data: unknown) => io.stdout.write(asJson ? `${json(data)}\n` : `${human}\n`);

    switch (command) {
      case 'list': {
        const devices = await listDevices({ probe: !values['no-probe'] });
        const rows = devices.map((d) => {
          const flags = d.migrationFlags
            ? `(${['STOP_COPY', d.migrationFlags.p2p && 'P2P', d.migrationFlags.preCopy && 'PRE_COPY'].filter(Boolean).join('|')})`
            : '';
          return `${d.name.padEnd(38)} ${d.kind.padEnd(5)} ${(d.driver ?? '-').padEnd(16)} group ${String(d.group ?? '-').padEnd(4)} ${`${d.migration}${flags}`.padEnd(28)} ${d.state ?? (d.probeError ? `? ${d.probeError}` : '')}`;
        });
        print(rows.length ? rows.join('\n') : 'no VFIO devices on this host', devices);
        return EXIT.ok;
      }
      case 'info':
        return await withDevice(positionals[0], async (device) => {
          const regions = device.regions();
          const irqs = device.irqs();
          const migration = device.migration;
          const state = migration ? await migration.state() : undefined;
          const data = {
            name: device.name,
            sysfs: device.sysfs,
            flags: device.info.flags,
            regions,
            irqs,
            migration: migration ? { protocol: migration.protocol, ...migration.describe(), state } : null,
          };
          const lines = [
            `${device.name} (${device.sysfs?.kind ?? 'device'}, driver ${device.sysfs?.driver ?? '?'}, group ${device.group?.number ?? '?'})`,
            `flags 0x${device.info.flags.toString(16)}, ${device.info.numRegions} regions, ${device.info.numIrqs} IRQ indexes`,
            'regions:',
            ...regions.map(
              (r) =>
                `  ${String(r.index).padStart(2)}: size 0x${r.size.toString(16)} offset 0x${r.offset.toString(16)} ${[r.readable && 'read', r.writable && 'write', r.mmapable && 'mmap'].filter(Boolean).join(',')}${r.capabilities.length ? `; ${r.capabilities.map(capabilityText).join('; ')}` : ''}`,
            ),
            'irqs:',
            ...irqs.map((i) => `  ${i.index}: count ${i.count} flags 0x${i.flags.toString(16)}`),
            migration
              ? `migration: ${migration.protocol} ${JSON.stringify(migration.describe())}, state ${state}`
              : 'migration: none',
          ];
          print(lines.join('\n'), data);
          return EXIT.ok;
        });
      case 'save': {
        const output = values.output as string | undefined;
        if (!output) throw new UsageError('save needs -o FILE (or -o - for stdout)');
        if (!positionals[0]) throw new UsageError('missing <device>: a PCI address, an mdev UUID or a sysfs path');
        const options = { precopy: precopyOption(values), leave: leaveOption(values.leave, 'stopped'), signal };
        // The output is checked and created before the device is opened: a bad -o costs no downtime.
        const file = output === '-' ? null : openOutput(output);
        if (file) pendingOutputs.add(file);
        try {
          return await withDevice(positionals[0], async (device) => {
            const migration = requireMigration(device);
            const view = new ProgressView(io.stderr, { quiet: !!values.quiet });
            const sink = file ? file.stream : io.stdout;
            try {
              // commit runs inside save(): if the fsync or rename fails, the source is recovered.
              const result = await migration.save(sink, { ...options, onProgress: view.update, commit: file?.commit });
              view.finish();
              const summary = { device: device.name, protocol: migration.protocol, output, ...result };
              const human = `saved ${device.name} (${migration.protocol}): ${formatBytes(result.bytes)} in ${result.records} records, ${result.precopyIterations} pre-copy iterations, ${(result.elapsedMs / 1000).toFixed(2)} s, stop-and-copy ${result.stopCopyMs} ms`;
              if (output === '-') io.stderr.write(`${asJson ? json(summary) : human}\n`);
              else print(human, summary);
              return EXIT.ok;
            } finally {
              view.finish();
            }
          });
        } finally {
          file?.discard();
          if (file) pendingOutputs.delete(file);
        }
      }
      case 'load': {
        const input = values.input as string | undefined;
        if (!input) throw new UsageError('load needs -i FILE (or -i - for stdin)');
        return await withDevice(positionals[0], async (device) => {
          const migration = requireMigration(device);
          const view = new ProgressView(io.stderr, { quiet: !!values.quiet });
          const source = openInput(input, signal);
          try {
            const result = await migration.load(source, {
              force: !!values.force,
              leave: leaveOption(values.leave, 'running'),
              signal,
              onProgress: view.update,
            });
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
      case 'verify': {
        const input = positionals[0];
        if (!input) throw new UsageError('verify needs FILE (or - for stdin)');
        const r = await verify(openInput(input, signal)).catch((err: unknown) => {
          if (!signal?.aborted) throw err;
          throw new MigrationError('ERR_MIGRATION_ABORTED', `verify ${input}: ${String(signal.reason)}`, {
            cause: err,
          });
        });
        print(
          [
            `${printable(input)}: OK`,
            // The header comes from the stream, which anyone may have written: nothing raw reaches the terminal.
            `protocol ${r.header.protocol}, device ${printable(JSON.stringify(r.header.device))}`,
            `created ${printable(String(r.header.created ?? '?'))} by ${printable(JSON.stringify(r.header.tool ?? '?'))}`,
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
      case 'state':
        return await withDevice(positionals[0], async (device) => {
          const migration = requireMigration(device);
          if (positionals[1]) await migration.setState(positionals[1]);
          const state = await migration.state();
          print(state, { device: device.name, protocol: migration.protocol, state });
          return EXIT.ok;
        });
      case 'reset':
        return await withDevice(positionals[0], async (device) => {
          await device.reset();
          print(`reset ${device.name}`, { device: device.name, reset: true });
          return EXIT.ok;
        });
    }
    throw new UsageError(`unknown command '${command}'`);
  } catch (err) {
    const code = exitCodeOf(err);
    const message = err instanceof Error ? err.message : String(err);
    if (values.json) {
      io.stderr.write(
        `${json({ error: { message, code: (err as { code?: string }).code ?? null, exitCode: code, step: (err as MigrationError).step, errno: (err as MigrationError).errno, recovery: (err as MigrationError).recovery } })}\n`,
      );
    } else {
      // A message may quote a stream or a device's sysfs; its lines stay lines, their control characters are escaped.
      log(`vfio-mig ${command ?? ''}: ${message.split('\n').map(printable).join('\n')}`);
      const h = hint(err);
      if (h) log(`hint: ${h}`);
      if (code === EXIT.usage && command && HELP[command]) log(`(vfio-mig ${command} --help shows usage)`);
    }
    return code;
  }
}

if (require.main === module) {
  const controller = new AbortController();
  let interrupts = 0;
  // First signal: abort, which returns a source to RUNNING or resets a destination and removes a
  // partial output. Second: say what is still running. Third: exit at once (partial output removed).
  const onSignal = (name: string) => {
    interrupts++;
    if (interrupts === 1) controller.abort(new Error(`interrupted by ${name}`));
    else if (interrupts === 2)
      process.stderr.write(`vfio-mig: ${name} again: recovering the device first; once more exits without recovery\n`);
    else process.exit(EXIT.aborted);
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGHUP', () => onSignal('SIGHUP'));
  process.on('exit', () => pendingOutputs.forEach((o) => o.discard()));
  // A closed pipe downstream (ssh gone) is a stream failure, reported by save itself.
  process.stdout.on('error', () => undefined);
  main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr }, controller.signal).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`vfio-mig: internal error: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = EXIT.failure;
    },
  );
}
