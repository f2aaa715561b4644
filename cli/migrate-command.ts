// vfio-mig migrate and vfio-mig receive: destinations (local, ssh://, exec:), the child that carries the channel, the report.
import type { ChildProcess } from 'node:child_process';
import type { Device, MigrateResult, PrecopyPolicy, Progress } from '../lib';
import { openDevice } from '../lib/device';
import { printable } from '../lib/printable';
import { requireMigration } from '../lib/migration/attach';
import { migrate } from '../lib/migration/migrate';
import { migrateLocal } from '../lib/migration/local';
import { receive } from '../lib/migration/receive';
import { MigrateError } from '../lib/migration/txn';
import { EXIT, UsageError, type CommandContext } from './commands';
import { formatBytes } from './progress';

/** Where the destinations are: devices of this host, or a receive reached through a command. */
export type Destination =
  { kind: 'local'; devices: string[] } | { kind: 'command'; devices: string[]; argv: string[]; label: string };

type Values = CommandContext['values'];

function deviceList(text: string, what: string): string[] {
  const list = text.split(',').map((s) => s.trim());
  if (!list.length || list.some((s) => !s))
    throw new UsageError(`${what}: an empty device name in '${printable(text)}'`);
  return list;
}

/** The flags a remote receive gets from this migrate. */
function receiveFlags(values: Values): string[] {
  const flags = ['--quiet'];
  if (values.timeout !== undefined) flags.push('--timeout', String(values.timeout));
  if (values.force) flags.push('--force');
  return flags;
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** --ssh-option KEY=VALUE (repeatable): each one becomes ssh's `-o KEY=VALUE`. */
function sshOptions(values: Values): string[] {
  const list = ([] as unknown[]).concat(values['ssh-option'] ?? []).map(String);
  for (const o of list) {
    // ssh would take a leading '-' as another flag, and 'Key value' is its config-file spelling
    if (!/^[A-Za-z][A-Za-z0-9]*=./.test(o))
      throw new UsageError(`--ssh-option takes KEY=VALUE (ssh's -o), not '${printable(o)}'`);
  }
  return list;
}

/** Parses `<destinations>`: local devices, ssh://[user@]host[:port]/B1[,B2], or exec:<shell command>. */
export function parseDestination(text: string, values: Values): Destination {
  if (text.startsWith('exec:')) {
    const command = text.slice(5);
    if (!command.trim()) throw new UsageError('exec: needs a shell command after the colon');
    return { kind: 'command', devices: [], argv: ['sh', '-c', command], label: 'exec' };
  }
  if (text.startsWith('ssh://')) {
    const m = /^ssh:\/\/(?:([^@/]+)@)?(\[[^\]]+\]|[^:/]+)(?::(\d+))?\/(.+)$/.exec(text);
    if (!m)
      throw new UsageError(
        `ssh destination must be ssh://[user@]host[:port]/DEVICE[,DEVICE...], not '${printable(text)}'`,
      );
    const [, user, host, port, list] = m;
    const devices = deviceList(list!, 'ssh destination');
    const remote = String(values['remote-command'] ?? 'vfio-mig');
    const command = [remote, 'receive', devices.join(','), ...receiveFlags(values)].map((s, i) =>
      i === 0 ? s : shellQuote(s),
    );
    const argv = [
      'ssh',
      '-T',
      '-o',
      'BatchMode=yes',
      ...sshOptions(values).flatMap((o) => ['-o', o]),
      ...(port ? ['-p', port] : []),
      `${user ? `${user}@` : ''}${host!.replace(/^\[|\]$/g, '')}`,
      command.join(' '),
    ];
    return { kind: 'command', devices, argv, label: host! };
  }
  return { kind: 'local', devices: deviceList(text, 'destinations') };
}

/** The exit status that says which side failed. */
export function migrateExitCode(err: MigrateError): number {
  if (err.committed || err.code === 'ERR_MIGRATION_AFTER_COMMIT') return EXIT.afterCommit;
  if (err.code === 'ERR_MIGRATION_ABORTED') return EXIT.aborted;
  if (err.side === 'destination') return EXIT.destination;
  if (err.side === 'channel') return EXIT.channel;
  return EXIT.source;
}

function openAll(specs: string[]): Device[] {
  const open: Device[] = [];
  try {
    for (const s of specs) open.push(openDevice(s));
    return open;
  } catch (err) {
    for (const d of open) d.close();
    throw err;
  }
}

/** One line per device and phase change, on stderr; nothing with --quiet. */
function progressLines(io: CommandContext['io'], quiet: boolean, names: string[]) {
  const last = new Map<number, string>();
  return {
    onProgress: (i: number, p: Progress): void => {
      if (quiet) return;
      const key = `${p.phase}${p.iteration}`;
      if (last.get(i) === key) return;
      last.set(i, key);
      const phase = p.phase === 'precopy' ? `pre-copy #${p.iteration + 1}` : p.phase;
      io.err(`${names[i]}: ${phase}, ${formatBytes(p.bytes)}\n`);
    },
    onEvent: (text: string): void => {
      if (!quiet) io.err(`${text}\n`);
    },
  };
}

/** What the downtime spent on each end's own work, as far as the clocks tell. */
function downtimeWork(r: MigrateResult, remote: boolean): string {
  if (!remote)
    return r.downtimeCpuMs === undefined ? '' : ` (this process's work, both ends, ${r.downtimeCpuMs} ms of it)`;
  const parts = [
    r.downtimeCpuMs !== undefined ? `this process's work ${r.downtimeCpuMs} ms of it` : '',
    r.destinationDowntimeCpuMs !== undefined ? `the destination's ${r.destinationDowntimeCpuMs} ms` : '',
  ].filter(Boolean);
  return parts.length ? ` (${parts.join(', ')})` : '';
}

function reportText(r: MigrateResult, remote: boolean): string {
  const lines = r.devices.map(
    (d) =>
      `  ${d.source} -> ${d.destination ?? '?'} (${d.protocol}): ${formatBytes(d.bytes)} in ${d.records} records; pre-copy ${d.precopyIterations} passes ${formatBytes(d.precopyBytes)} ${d.precopyMs} ms, switchover-ack ${d.switchoverAckMs} ms, stop-and-copy ${formatBytes(d.stopCopyBytes)} ${d.stopCopyMs} ms`,
  );
  const p = r.phases;
  return [
    `migrated ${r.devices.length} device(s): ${formatBytes(r.bytes)}, downtime ${r.downtimeMs} ms${downtimeWork(r, remote)}, total ${(r.elapsedMs / 1000).toFixed(2)} s`,
    ...lines,
    `  phases: hello ${p.helloMs} ms, pre-copy ${p.precopyMs} ms, switchover-ack ${p.switchoverAckMs} ms, catch-up ${p.catchUpMs} ms, stop-and-copy ${p.stopCopyMs} ms, destination validation ${p.validateMs} ms, resume ${p.resumeMs} ms`,
  ].join('\n');
}

async function spawnChannel(
  dest: Extract<Destination, { kind: 'command' }>,
  io: CommandContext['io'],
): Promise<ChildProcess> {
  // Loaded for a remote end only: child_process brings node:net, which a local migrate never needs.
  const [{ spawn }, { createInterface }] = await Promise.all([import('node:child_process'), import('node:readline')]);
  const child = spawn(dest.argv[0]!, dest.argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
  // The remote end's progress and errors, relayed line by line.
  createInterface({ input: child.stderr! }).on('line', (line) => io.err(`[${dest.label}] ${printable(line)}\n`));
  child.stdin!.on('error', () => undefined);
  return child;
}

/** Waits for the child to exit; SIGKILL (this child, by its pid) if it lingers. */
async function reap(child: ChildProcess, ms: number): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

export async function migrateCommand(
  { values, positionals, io, signal, print }: CommandContext,
  precopy: PrecopyPolicy | false | undefined,
  timeoutMs: number | undefined,
): Promise<number> {
  const sources = deviceList(positionals[0]!, 'sources');
  const dest = parseDestination(positionals[1]!, values);
  if (dest.kind !== 'command' || dest.devices.length) {
    if (dest.devices.length !== sources.length)
      throw new UsageError(
        `${sources.length} source(s) but ${dest.devices.length} destination(s): they are paired in order`,
      );
  }
  const options = {
    precopy,
    switchoverAck: values['no-switchover-ack'] ? false : true,
    timeoutMs,
    resetSource: !!values['reset-source'],
    signal,
    ...progressLines(io, !!values.quiet, sources),
  };
  const srcDevices = openAll(sources);
  let dstDevices: Device[] = [];
  let child: ChildProcess | undefined;
  try {
    const srcMigrations = srcDevices.map(requireMigration);
    let result: MigrateResult;
    try {
      if (dest.kind === 'local') {
        dstDevices = openAll(dest.devices);
        const dst = dstDevices.map(requireMigration);
        result = await migrateLocal(
          srcMigrations.map((m, i) => [m, dst[i]!] as const),
          { ...options, force: !!values.force },
        );
      } else {
        child = await spawnChannel(dest, io);
        const exited = new Promise<void>((resolve) => child!.once('exit', () => resolve()));
        result = await migrate(srcMigrations, { readable: child.stdout!, writable: child.stdin! }, options);
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      }
    } catch (err) {
      if (err instanceof MigrateError) {
        const code = migrateExitCode(err);
        if (child) await reap(child, 5000);
        if (values.json)
          io.err(
            `${JSON.stringify({ error: { message: err.message, code: err.code, side: err.side, committed: err.committed, devices: err.devices, exitCode: code } }, null, 2)}\n`,
          );
        else io.err(`vfio-mig migrate: ${printable(err.message)}\n`);
        return code;
      }
      throw err;
    }
    print(reportText(result, dest.kind !== 'local'), result);
    return EXIT.ok;
  } finally {
    if (child) await reap(child, 5000);
    for (const d of [...srcDevices, ...dstDevices]) d.close();
  }
}

export async function receiveCommand(
  { values, positionals, io, signal }: CommandContext,
  timeoutMs: number | undefined,
): Promise<number> {
  const names = deviceList(positionals[0]!, 'devices');
  // stdout is the channel: everything for people goes to stderr.
  const devices = openAll(names);
  try {
    const lines = progressLines(io, !!values.quiet, names);
    const r = await receive(
      devices.map(requireMigration),
      { readable: process.stdin, writable: io.stdout },
      {
        force: !!values.force,
        timeoutMs,
        signal,
        ...lines,
      },
    );
    const text = `received ${r.devices.map((d) => `${d.device} (${formatBytes(d.bytes)}, ${d.records} records)`).join(', ')}; validation ${r.validateMs} ms, resume ${r.resumeMs} ms${r.downtimeCpuMs !== undefined ? `, this end's work in the downtime ${r.downtimeCpuMs} ms` : ''}`;
    io.err(`${values.json ? JSON.stringify(r) : text}\n`);
    return EXIT.ok;
  } catch (err) {
    if (err instanceof MigrateError) {
      io.err(`vfio-mig receive: ${printable(err.message)}\n`);
      // From this end: its own failure is the destination's; the source's reported failure is the source's.
      return migrateExitCode(err);
    }
    throw err;
  } finally {
    for (const d of devices) d.close();
  }
}
