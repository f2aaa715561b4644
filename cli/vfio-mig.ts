// vfio-mig: the command line of vfio-migration: arguments, dispatch to the command table, errors and exit codes.
import { SyscallError, VfioError } from '../lib/errors';
import { parseCommandLine, type OptionSpec } from './args';
import { MigrationError } from '../lib/migration/errors';
import { StreamError } from '../lib/migration/stream/errors';
import { printable } from '../lib/printable';
import { COMMANDS, EXIT, UsageError, json, pendingOutputs, type Io } from './commands';
import { OutputError } from './output';
import { processIo } from './stdio';
import { version } from '../lib/migration/identity';

export { EXIT };

/** Options every command takes, before or after its name. */
export const GLOBAL_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  help: { type: 'boolean', short: 'h' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean', short: 'q' },
  version: { type: 'boolean' },
};

const DEVICE_CODES = [
  'ERR_VFIO_NOT_FOUND',
  'ERR_VFIO_NOT_BOUND',
  'ERR_VFIO_PERMISSION',
  'ERR_VFIO_BUSY',
  'ERR_VFIO_GROUP_NOT_VIABLE',
];

function exitCodeOf(err: unknown): number {
  if (err instanceof UsageError || String((err as { code?: string })?.code).startsWith('ERR_PARSE_ARGS'))
    return EXIT.usage;
  if (err instanceof VfioError) return DEVICE_CODES.includes(err.code) ? EXIT.device : EXIT.protocol;
  if (err instanceof MigrationError) {
    if (err.code === 'ERR_MIGRATION_ABORTED') return EXIT.aborted;
    if (err.code === 'ERR_MIGRATION_STREAM' || err.code === 'ERR_MIGRATION_MISMATCH') return EXIT.stream;
    if (err.code === 'ERR_MIGRATION_IO') return EXIT.failure;
    return EXIT.protocol;
  }
  if (err instanceof StreamError) return EXIT.stream;
  if (err instanceof OutputError) return EXIT.failure;
  // A stream file that cannot be read (a directory, EIO) is an I/O failure, not a device error.
  if (err instanceof SyscallError && (err.syscall === 'open' || err.syscall === 'read')) return EXIT.failure;
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

/** The --json error object: everything a script needs to tell failures apart. */
function errorObject(err: unknown, exitCode: number): Record<string, unknown> {
  const e = err as {
    code?: string;
    step?: string;
    errno?: string;
    record?: bigint;
    offset?: number;
    recovery?: string;
    cause?: unknown;
  } | null;
  return {
    message: err instanceof Error ? err.message : String(err),
    code: e?.code ?? null,
    exitCode,
    step: e?.step,
    errno: e?.errno,
    record: e?.record,
    offset: err instanceof StreamError ? err.offset : (e?.cause as StreamError | undefined)?.offset,
    recovery: e?.recovery,
  };
}

/** A help page; the texts (which list the checker's rules) are loaded only when asked for. */
async function helpText(topic: string): Promise<string> {
  return (await import('./help')).HELP[topic]!;
}

/** Splits argv into the command and its arguments; global options may come before the command. */
function splitCommand(argv: string[]): { command: string | undefined; rest: string[]; globals: string[] } {
  const globals: string[] = [];
  let i = 0;
  while (i < argv.length && argv[i]!.startsWith('-') && argv[i] !== '-') globals.push(argv[i++]!);
  return { command: argv[i], rest: argv.slice(i + 1), globals };
}

export async function main(argv: string[], io: Io = processIo(), signal?: AbortSignal): Promise<number> {
  const { command, rest, globals } = splitCommand(argv);
  let asJson = false;
  try {
    const pre = parseCommandLine(globals, GLOBAL_OPTIONS, false);
    asJson = !!pre.values.json;
    if (command === 'help') {
      const topic = rest[0];
      if (topic !== undefined && !COMMANDS[topic]) throw new UsageError(`no help for '${topic}': not a command`);
      io.out(`${await helpText(topic ?? 'main')}\n`);
      return EXIT.ok;
    }
    if (!command && pre.values.version) {
      io.out(`vfio-mig ${version()}\n`);
      return EXIT.ok;
    }
    if (!command) {
      io.out(`${await helpText('main')}\n`);
      return pre.values.help ? EXIT.ok : EXIT.usage;
    }
    const spec = COMMANDS[command];
    if (!spec) throw new UsageError(`unknown command '${command}' (vfio-mig --help lists them)`);
    const parsed = parseCommandLine(rest, { ...GLOBAL_OPTIONS, ...spec.options }, true);
    const values = { ...pre.values, ...parsed.values } as Record<string, string | boolean | undefined>;
    asJson = !!values.json;
    if (values.help) {
      io.out(`${await helpText(command)}\n`);
      return EXIT.ok;
    }
    const required = spec.args.filter((a) => !a.endsWith('?'));
    if (parsed.positionals.length < required.length) {
      const missing = required[parsed.positionals.length]!;
      throw new UsageError(
        missing === 'device'
          ? 'missing <device>: a PCI address, an mdev UUID or a sysfs path'
          : `missing ${missing}: vfio-mig ${command} ${spec.args.join(' ')}`,
      );
    }
    if (parsed.positionals.length > spec.args.length) {
      const extra = parsed.positionals.slice(spec.args.length).map((p) => `'${printable(p)}'`);
      throw new UsageError(`${command} takes ${spec.args.length || 'no'} argument(s); unexpected ${extra.join(' ')}`);
    }
    spec.check?.(values);
    const print = (human: string, data: unknown) => io.out(asJson ? `${json(data)}\n` : `${human}\n`);
    return await spec.run({ values, positionals: parsed.positionals, io, signal, print });
  } catch (err) {
    const code = exitCodeOf(err);
    if (asJson) {
      io.err(`${json({ error: errorObject(err, code) })}\n`);
    } else {
      // Messages can quote stream content and paths: escaped, so they cannot drive the terminal.
      io.err(
        `vfio-mig ${command ?? ''}: ${(err instanceof Error ? err.message : String(err)).split('\n').map(printable).join('\n')}\n`,
      );
      const h = hint(err);
      if (h) io.err(`hint: ${h}\n`);
      if (code === EXIT.usage && command && COMMANDS[command]) io.err(`(vfio-mig ${command} --help shows usage)\n`);
    }
    return code;
  }
}

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** Runs the CLI as this process: its arguments, stdio, signals and exit status (called by cli/launcher.ts). */
export function run(): void {
  const io = processIo();
  const controller = new AbortController();
  let interrupts = 0;
  // First signal: abort, which returns a source to RUNNING or resets a destination and removes a
  // partial output (exit 130). Second: say what is still running. Third: end at once (partial
  // output removed).
  const onSignal = (name: NodeJS.Signals) => {
    interrupts++;
    if (interrupts === 1) controller.abort(new Error(`interrupted by ${name}`));
    else if (interrupts === 2)
      io.err(`vfio-mig: ${name} again: recovering the device first; once more exits without recovery\n`);
    else {
      pendingOutputs.forEach((o) => o.discard());
      // Not process.exit(): at exit libuv joins its thread pool, and a pool thread blocked writing
      // to a stalled FIFO or pipe would hold the process for ever. Dying of the signal itself
      // ends every thread at once; the shell reports 128 + the signal's number (130 for SIGINT).
      for (const s of SIGNALS) process.removeAllListeners(s);
      process.kill(process.pid, name);
    }
  };
  for (const s of SIGNALS) process.on(s, () => onSignal(s));
  process.on('exit', () => pendingOutputs.forEach((o) => o.discard()));
  main(process.argv.slice(2), io, controller.signal).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      io.err(`vfio-mig: internal error: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = EXIT.failure;
    },
  );
}
