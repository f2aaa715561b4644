// The guest console protocol: /init's "@@vm" lines on the second serial port (phase, info, error,
// exit, hang report), the isa-debug-exit status, and the verdict and explanation of a finished run.
import type { Series, TextSink } from './config';

/** /init's phases, in order, with what the guest was doing in each. */
export const PHASES: Record<string, string> = {
  qemu: 'starting QEMU',
  kernel: 'kernel boot (before /init ran)',
  init: 'the start of /init',
  'mount-root': "loading the virtio/9p modules and mounting the host's / over 9p",
  mounts: 'mounting proc/sys/dev/tmpfs and the results share in the chroot',
  'load-vfio': 'loading vfio, vfio_iommu_type1, mdev, vfio-pci',
  'load-mtty': 'loading mtty.ko',
  'load-project-modules': "loading the project's modules",
  'bind-vfio-pci': 'binding the e1000e to vfio-pci',
  'bind-edu': 'binding the edu devices to vfio_mig_edu',
  command: 'running the command',
  shutdown: 'powering off after the command',
};

/** Keep at most this much of each stream (a runaway command must not exhaust the runner). */
const MAX_KEEP = 64 * 1024 * 1024;

/** Removes carriage returns (the guest's tty turns \n into \r\n). */
export function stripCR(text: string): string {
  return text.replace(/\r/g, '');
}

/** QEMU exits with (value << 1) | 1 when the guest writes value to isa-debug-exit. */
export function statusFromQemuExit(code: number | null): number | null {
  if (code === null || (code & 1) === 0) return null;
  return code >> 1;
}

/** Seconds before the timeout at which the guest reports what it is doing (the report itself takes a few). */
export function dumpMargin(timeoutMs: number): number {
  return timeoutMs >= 60_000 ? 15 : 8;
}

function lastLines(text: string, n: number): string {
  const lines = text.replace(/\n+$/, '').split('\n');
  return lines.slice(-n).join('\n');
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `  | ${l}`)
    .join('\n');
}

/**
 * What the guest said: the command's terminal (ttyS0, QEMU's stdout) and the console (ttyS1: the
 * kernel's log and /init's "@@vm" lines), with the state those lines carry.
 */
export class GuestConsole {
  output = '';
  log = '';
  phase = 'qemu';
  bootMs: number | null = null;
  /** From "@@vm exit N" and "@@vm error MESSAGE". */
  status: number | null = null;
  error: string | undefined;
  pci: string | undefined;
  readonly loaded: string[] = [];
  private partial = '';

  constructor(
    private readonly started: number,
    private readonly o: { interactive?: boolean; echo?: TextSink | null; consoleEcho?: TextSink | null } = {},
  ) {}

  /** A chunk of the command's terminal. */
  onOutput(chunk: string): void {
    if (this.phase === 'qemu' || this.phase === 'kernel') this.phase = 'kernel';
    const text = this.o.interactive ? chunk : stripCR(chunk);
    this.output += text;
    if (this.output.length > MAX_KEEP) this.output = this.output.slice(-MAX_KEEP / 2);
    this.o.echo?.write(text);
  }

  /** A chunk of the console. */
  onConsole(chunk: string): void {
    if (this.phase === 'qemu') this.phase = 'kernel';
    const text = stripCR(chunk);
    this.log += text;
    if (this.log.length > MAX_KEEP) this.log = this.log.slice(-MAX_KEEP / 2);
    this.o.consoleEcho?.write(text);
    this.partial += text;
    const lines = this.partial.split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.line(line);
  }

  /** The console has closed: a last line without its newline still counts. */
  end(): void {
    if (this.partial) this.line(this.partial);
    this.partial = '';
  }

  private line(line: string): void {
    const m = /@@vm (\w+) ?(.*)$/.exec(line);
    if (!m) return;
    const [, kind, rest] = m;
    if (kind === 'phase') {
      this.phase = rest.trim();
      if (this.phase === 'command') this.bootMs = Date.now() - this.started;
    } else if (kind === 'exit') {
      this.status = Number.parseInt(rest, 10);
    } else if (kind === 'error') {
      this.error = rest;
    } else if (kind === 'info') {
      const [key, value] = rest.split(' ');
      if (key === 'pci') this.pci = value;
      if (key === 'loaded') this.loaded.push(value);
    }
  }

  /** The hang report /init wrote shortly before the timeout, or ''. */
  hangReport(timeoutMs: number): string {
    const begin = this.log.lastIndexOf('@@vm hang-report begin');
    if (begin < 0) return '';
    const report = this.log.slice(begin).split('\n');
    return `what the guest was doing ${Math.floor(timeoutMs / 1000) - dumpMargin(timeoutMs)} s into the run (/init's hang report):\n${indent(report.slice(0, 250).join('\n'))}`;
  }
}

/** How the QEMU process ended, and why the runner stopped it if it did. */
export interface QemuEnd {
  code: number | null;
  signal: NodeJS.Signals | null;
  spawnError?: Error;
  timedOut: boolean;
  aborted: boolean;
  /** What QEMU wrote to stderr. */
  stderr: string;
}

/** QEMU's stderr without what is known and harmless (the e1000e's network is deliberately not connected). */
function qemuSaid(stderr: string): string {
  return stderr
    .split('\n')
    .filter((l) => l.trim() && !/warning: hub \d+ is not connected to host network/.test(l))
    .join('\n');
}

/** Where the run got to: the phase, the last console and output lines, QEMU's words, the hang report. */
function where(con: GuestConsole, end: QemuEnd, timeoutMs: number): string {
  const said = qemuSaid(end.stderr);
  return [
    `phase reached: ${con.phase} (${PHASES[con.phase] ?? con.phase})`,
    con.log.trim()
      ? `last console lines (kernel + /init):\n${indent(lastLines(con.log.replace(/@@vm hang-report begin[\s\S]*$/, ''), 15))}`
      : 'no console output at all',
    con.output.trim() ? `last output lines:\n${indent(lastLines(con.output, 15))}` : 'no output from the command',
    said ? `QEMU said:\n${indent(lastLines(said, 10))}` : '',
    end.timedOut ? con.hangReport(timeoutMs) : '',
  ]
    .filter(Boolean)
    .join('\n');
}

/** The command's status, or the error that says why there is none. */
export function verdict(
  con: GuestConsole,
  end: QemuEnd,
  run: { kernel: Series; timeoutMs: number; qemu: string },
): { status: number | null; error?: string } {
  const { kernel, timeoutMs } = run;
  const fromQemu = statusFromQemuExit(end.code);
  if (end.spawnError) return { status: null, error: `could not start QEMU (${run.qemu}): ${end.spawnError.message}` };
  if (end.timedOut) {
    return {
      status: null,
      error: `the ${kernel} guest timed out after ${Math.round(timeoutMs / 1000)} s and was killed\n${where(con, end, timeoutMs)}`,
    };
  }
  if (end.aborted) return { status: null, error: `the ${kernel} guest was aborted\n${where(con, end, timeoutMs)}` };
  if (con.error !== undefined) {
    return { status: null, error: `the ${kernel} guest's /init failed: ${con.error}\n${where(con, end, timeoutMs)}` };
  }
  if (con.status !== null) {
    if (fromQemu !== null && fromQemu !== (con.status & 0x7f)) {
      return { status: con.status, error: `guest reported status ${con.status} but QEMU exited with ${end.code}` };
    }
    return { status: con.status };
  }
  // the status line was lost, the debug-exit port still carries 7 bits
  if (fromQemu !== null && con.phase === 'command') return { status: fromQemu };
  const how = end.signal
    ? `was killed by ${end.signal}`
    : end.code === 0
      ? 'powered off without handing back a status (kernel panic?)'
      : `exited with code ${end.code}`;
  return { status: null, error: `QEMU ${how}\n${where(con, end, timeoutMs)}` };
}
