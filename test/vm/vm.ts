// The QEMU test harness: boots a fresh Debian guest kernel (6.12 or 6.1) with the
// host's / shared read-only over 9p, real VFIO devices (mtty, an e1000e bound to
// vfio-pci behind intel-iommu, the project's own modules) and runs one command in
// it at the project's path. See test/vm/README.md.
//
//   node dist/test/vm/vm.js [--kernel 6.12|6.1] [--timeout SEC] [options] [--] <command ...>
//
// The exit status of the command comes back through isa-debug-exit; the runner
// exits with it (124 when the guest timed out, 125 when the harness failed).
//
// This file is the command line and the harness's public face; the parts live beside it:
// config.ts (paths, series, options, prepare.sh), qemu-args.ts (QEMU's arguments and the
// guest's inputs, pure), console.ts (the guest console protocol and the verdict),
// supervise.ts (QEMU processes: spawn, timeout, kill, cleanup), run.ts (one run, start to end).
import { resolve } from 'node:path';
import { EXIT_HARNESS, EXIT_TIMEOUT, prepare, type GuestOptions } from './config';
import { runInGuest } from './run';

export {
  CACHE_DIR,
  checkPrepared,
  EXIT_HARNESS,
  EXIT_TIMEOUT,
  prepare,
  PREPARE_SCRIPT,
  PROJECT_ROOT,
  SERIES,
  seriesDir,
  type Accel,
  type GuestOptions,
  type GuestResult,
  type Series,
  type TextSink,
} from './config';
export { statusFromQemuExit, stripCR } from './console';
export { shQuote } from './qemu-args';
export { detectAccel, runInGuest } from './run';

// ------------------------------------------------------------------ CLI
const USAGE = `usage: npm run vm -- [options] [--] <command ...>
       node dist/test/vm/vm.js [options] [--] <command ...>

Boots a fresh guest and runs the command at the project's path; exits with its status
(${EXIT_TIMEOUT} when the guest timed out, ${EXIT_HARNESS} when the harness failed).
Without a command, and with a terminal, starts an interactive shell.

options:
  --kernel 6.12|6.1     guest kernel series (default 6.12)
  --timeout SEC         kill the guest after SEC seconds (default 600; 0 = never;
                        an interactive session has none unless given)
  --out DIR             host directory the guest can write to (VFIO_MIG_OUT, same path)
  --env KEY=VALUE       extra environment for the command (repeatable)
  --mem MIB, --smp N    guest memory (2048) and vCPUs (2)
  --accel auto|kvm|tcg  accelerator (auto: KVM only when a probe proved it works)
  -i, --interactive     forward stdin to the guest's terminal (default when stdin and stdout are TTYs)
  --batch               never interactive
  --no-mtty, --no-project-modules, --no-pci, --no-edu
                        do not load mtty / the project's modules, do not bind the e1000e,
                        no edu devices
  --no-prepare          do not run prepare.sh first
  --verbose             show the kernel console and /init's log on stderr
  -h, --help            this text`;

interface CliOptions extends GuestOptions {
  noPrepare: boolean;
  verbose: boolean;
}

export function parseArgs(args: readonly string[]): CliOptions | 'help' {
  // options come first ("--opt=value" or "--opt value"); the command starts at the first non-option
  const o: CliOptions = { command: [], noPrepare: false, verbose: false };
  let interactive: boolean | undefined;
  let timeout: number | undefined;
  const env: Record<string, string> = {};
  let i = 0;
  let inline: string | undefined;
  const value = (name: string): string => {
    const v = inline ?? args[++i];
    inline = undefined;
    if (v === undefined) throw new Error(`${name} needs a value`);
    return v;
  };
  for (; i < args.length; i++) {
    let a = args[i];
    inline = undefined;
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    if (eq > 0) {
      inline = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-') || a === '-') break;
    switch (a) {
      case '-h':
      case '--help':
        return 'help';
      case '--kernel': {
        const k = value(a);
        if (k !== '6.12' && k !== '6.1') throw new Error(`--kernel: 6.12 or 6.1, not ${k}`);
        o.kernel = k;
        break;
      }
      case '--timeout': {
        const t = Number(value(a));
        if (!Number.isFinite(t) || t < 0) throw new Error('--timeout: seconds, 0 for none');
        timeout = t;
        break;
      }
      case '--out':
        o.outDir = resolve(value(a));
        break;
      case '--env': {
        const kv = value(a);
        const k = kv.indexOf('=');
        if (k <= 0) throw new Error(`--env: KEY=VALUE, not ${kv}`);
        env[kv.slice(0, k)] = kv.slice(k + 1);
        break;
      }
      case '--mem':
        o.memoryMiB = Number(value(a));
        if (!Number.isInteger(o.memoryMiB) || o.memoryMiB < 256) throw new Error('--mem: MiB, at least 256');
        break;
      case '--smp':
        o.cpus = Number(value(a));
        if (!Number.isInteger(o.cpus) || o.cpus < 1) throw new Error('--smp: a positive integer');
        break;
      case '--accel': {
        const v = value(a);
        if (v !== 'auto' && v !== 'kvm' && v !== 'tcg') throw new Error('--accel: auto, kvm or tcg');
        o.accel = v;
        break;
      }
      case '-i':
      case '--interactive':
        interactive = true;
        break;
      case '--batch':
        interactive = false;
        break;
      case '--no-mtty':
        o.mtty = false;
        break;
      case '--no-project-modules':
        o.projectModules = false;
        break;
      case '--no-pci':
        o.pciDevice = false;
        break;
      case '--no-edu':
        o.eduDevices = false;
        break;
      case '--no-prepare':
        o.noPrepare = true;
        break;
      case '--verbose':
        o.verbose = true;
        break;
      default:
        throw new Error(`unknown option ${a}`);
    }
    if (inline !== undefined) throw new Error(`${a} takes no value`);
  }
  o.command = args.slice(i);
  const tty = Boolean(process.stdin.isTTY && process.stdout.isTTY);
  o.interactive = interactive ?? tty;
  if (o.command.length === 0) {
    if (!o.interactive) throw new Error('no command given (and no terminal for an interactive shell)');
    o.command = ['/bin/sh', '-l'];
  }
  o.timeoutMs = timeout !== undefined ? timeout * 1000 : o.interactive ? 0 : 600_000;
  if (Object.keys(env).length) o.env = env;
  return o;
}

async function main(): Promise<number> {
  let o: CliOptions | 'help';
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`vm: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (o === 'help') {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const kernel = o.kernel ?? '6.12';
  try {
    if (!o.noPrepare) prepare(kernel, { quiet: true, projectModules: o.projectModules });
    const r = await runInGuest({
      ...o,
      kernel,
      echo: process.stdout,
      consoleEcho: o.verbose ? process.stderr : null,
      verboseKernel: o.verbose,
    });
    if (o.verbose || r.error) {
      process.stderr.write(
        `vm: ${r.kernel} (${r.kver}, ${r.accel.toUpperCase()}): boot ${r.bootMs === null ? '-' : (r.bootMs / 1000).toFixed(1) + ' s'}, total ${(r.durationMs / 1000).toFixed(1)} s\n`,
      );
    }
    if (r.error) process.stderr.write(`vm: ${r.error}\n`);
    if (r.status !== null) return r.status;
    return r.timedOut ? EXIT_TIMEOUT : EXIT_HARNESS;
  } catch (err) {
    process.stderr.write(`vm: ${(err as Error).message}\n`);
    return EXIT_HARNESS;
  }
}

if (require.main === module) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`vm: ${String(err)}\n`);
      process.exitCode = EXIT_HARNESS;
    },
  );
}
