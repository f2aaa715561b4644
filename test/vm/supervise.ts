// Process supervision of the guests: spawn QEMU with its console socket, forward a terminal, kill at
// the timeout or on abort, and never leave a QEMU or a run directory behind (exit, signals, pdeathsig).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, rmSync, statSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { QemuEnd } from './console';

// Every QEMU this process starts is killed when it exits or gets a fatal signal;
// QEMU also gets SIGKILL from the kernel if this process dies (setpriv --pdeathsig).
const live = new Set<ChildProcess>();
const liveRunDirs = new Set<string>();
const FATAL_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
/** Run directories are named so: the sweep recognizes those of runners that were killed outright. */
export const RUN_DIR_PREFIX = 'vfio-mig-vm-';

function killAll(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  for (const dir of liveRunDirs) rmSync(dir, { recursive: true, force: true });
  liveRunDirs.clear();
}

/** Run directories left by runners that were killed outright (SIGKILL), older than a day. */
export function sweepStaleRunDirs(): void {
  try {
    const day = Date.now() - 24 * 3600_000;
    for (const name of readdirSync(tmpdir())) {
      if (!name.startsWith(RUN_DIR_PREFIX)) continue;
      const p = join(tmpdir(), name);
      if (statSync(p).mtimeMs < day) rmSync(p, { recursive: true, force: true });
    }
  } catch {
    /* best effort */
  }
}

/** A run directory to remove when this process exits or is killed by a signal, unless released first. */
export function holdRunDir(dir: string): void {
  liveRunDirs.add(dir);
}
export function releaseRunDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  liveRunDirs.delete(dir);
}

function onSignal(sig: NodeJS.Signals): void {
  killAll();
  live.clear();
  uninstallHandlers();
  restoreTty();
  // default action now: terminate with the signal
  process.kill(process.pid, sig);
}

let handlersInstalled = false;
function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', killAll);
  for (const s of FATAL_SIGNALS) process.on(s, onSignal);
}
function uninstallHandlers(): void {
  if (!handlersInstalled) return;
  handlersInstalled = false;
  process.off('exit', killAll);
  for (const s of FATAL_SIGNALS) process.off(s, onSignal);
}

let rawTty = false;
function restoreTty(): void {
  if (rawTty && process.stdin.isTTY) {
    process.stdin.setRawMode(false);
    rawTty = false;
  }
}

let setprivOk: boolean | undefined;
export function hasSetpriv(): boolean {
  if (setprivOk === undefined) {
    const r = spawnSync('setpriv', ['--pdeathsig', 'SIGKILL', 'true'], { stdio: 'ignore' });
    setprivOk = r.status === 0;
  }
  return setprivOk;
}

export interface SuperviseOptions {
  /** The Unix socket QEMU connects the console serial port to (listened on before QEMU starts). */
  ctlPath: string;
  /** Forward this process's stdin (raw when a TTY) to QEMU's stdin. */
  interactive?: boolean;
  /** SIGTERM (then SIGKILL 2 s later) after this many ms; 0 = never. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** The command's terminal (QEMU's stdout) and the console socket, as they arrive. */
  onOutput(chunk: string): void;
  onConsole(chunk: string): void;
}

/** Runs QEMU to its end; resolves (never rejects for QEMU's sake) with how it ended and its pid. */
export async function superviseQemu(argv: readonly string[], o: SuperviseOptions): Promise<QemuEnd & { pid?: number }> {
  let qemuStderr = '';
  let timedOut = false;
  let aborted = false;

  const ctlServer = createServer();
  let ctlSocket: Socket | undefined;
  await new Promise<void>((res, rej) => {
    ctlServer.once('error', rej);
    ctlServer.listen(o.ctlPath, () => res());
  });
  ctlServer.on('connection', (sock) => {
    if (ctlSocket) {
      sock.destroy();
      return;
    }
    ctlSocket = sock;
    sock.setEncoding('utf8');
    sock.on('data', o.onConsole);
    sock.on('error', () => undefined);
  });

  const child = spawn(argv[0], argv.slice(1), {
    stdio: [o.interactive ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  installHandlers();

  if (o.interactive && child.stdin) {
    if (process.stdin.isTTY) {
      process.stdin.setRawMode(true);
      rawTty = true;
    }
    process.stdin.on('data', (d: Buffer) => child.stdin?.write(d));
    process.stdin.resume();
    child.stdin.on('error', () => undefined);
  }

  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', o.onOutput);
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    qemuStderr += chunk;
  });

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; spawnError?: Error }>((res) => {
    child.on('error', (err) => res({ code: null, signal: null, spawnError: err }));
    child.on('close', (code, signal) => res({ code, signal }));
  });

  let killTimer: NodeJS.Timeout | undefined;
  const kill = (): void => {
    child.kill('SIGTERM');
    killTimer = setTimeout(() => child.kill('SIGKILL'), 2000);
  };
  const timer =
    o.timeoutMs > 0
      ? setTimeout(() => {
          timedOut = true;
          kill();
        }, o.timeoutMs)
      : undefined;
  const onAbort = (): void => {
    aborted = true;
    kill();
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  if (o.signal?.aborted) onAbort();

  const { code, signal, spawnError } = await exited;
  // the console socket may still hold the last bytes
  if (ctlSocket && !ctlSocket.readableEnded) {
    const sock = ctlSocket;
    await new Promise<void>((res) => {
      const t = setTimeout(res, 500);
      sock.once('end', () => {
        clearTimeout(t);
        res();
      });
      sock.once('close', () => {
        clearTimeout(t);
        res();
      });
    });
  }
  ctlSocket?.destroy();
  ctlServer.close();
  if (timer) clearTimeout(timer);
  if (killTimer) clearTimeout(killTimer);
  o.signal?.removeEventListener('abort', onAbort);
  live.delete(child);
  if (live.size === 0) uninstallHandlers();
  if (o.interactive) {
    process.stdin.pause();
    process.stdin.removeAllListeners('data');
    restoreTty();
  }
  return { code, signal, spawnError, timedOut, aborted, stderr: qemuStderr, pid: child.pid };
}
