// vfio-mig as a child process a guest test can signal while it runs: its stderr so far, a wait for a line, its exit.
import { spawn, type ChildProcess } from 'node:child_process';
import { delimiter, dirname, join } from 'node:path';
import { BIN_NODE_FLAGS } from '../../cli/node-flags';

/** The bundled CLI, as users run it. */
export const VFIO_MIG_BIN = join(__dirname, '../../bin/vfio-mig.js');

/**
 * node's arguments for `vfio-mig args` as the bin's first lines run it (cli/node-flags.ts), for
 * this test's own node: the bin run directly would start the first node on PATH, not this one.
 */
export function binArgs(...args: string[]): string[] {
  return [...BIN_NODE_FLAGS, VFIO_MIG_BIN, ...args];
}

/** The same as one shell command line, for `exec:` destinations and --remote-command. */
export const VFIO_MIG_COMMAND = [process.execPath, ...binArgs()].join(' ');

/** This environment with this test's node first on PATH: the bin run directly, through its first lines, starts it. */
export function binEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: [dirname(process.execPath), process.env.PATH].filter(Boolean).join(delimiter) };
}

export interface CliChild {
  child: ChildProcess;
  /** What the process wrote to stderr so far. */
  stderr(): string;
  /** Resolves once stderr matches (or the process exited). */
  stderrMatch(re: RegExp): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

/**
 * Starts `vfio-mig args`. With `drainStdout`, a piped stdout is read and dropped (a test that
 * does not read it must not stall the command); otherwise the test reads it.
 */
export function cliChild(
  args: string[],
  stdio: ('pipe' | 'ignore')[] = ['ignore', 'pipe', 'pipe'],
  { drainStdout = false } = {},
): CliChild {
  const child = spawn(process.execPath, binArgs(...args), { stdio });
  let stderr = '';
  const waiters: { re: RegExp; resolve: () => void }[] = [];
  if (drainStdout) child.stdout?.resume();
  child.stderr!.on('data', (d) => {
    stderr += d;
    for (const w of [...waiters]) {
      if (!w.re.test(stderr)) continue;
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve();
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on('exit', (code, signal) => {
      for (const w of waiters) w.resolve();
      resolve({ code, signal, stderr });
    }),
  );
  return {
    child,
    exited,
    stderr: () => stderr,
    stderrMatch: (re) =>
      re.test(stderr) ? Promise.resolve() : new Promise((resolve) => waiters.push({ re, resolve })),
  };
}
