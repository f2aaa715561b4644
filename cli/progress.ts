// Progress on stderr: a redrawn bar on a terminal, one plain line per phase otherwise.
import type { Progress } from '../lib';
import type { Io } from './commands';

export function formatBytes(n: number | bigint): string {
  let v = Number(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
}

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

export class ProgressView {
  // Undefined when quiet. Text goes out with write(2) (cli/stdio.ts): no stream, terminal or not.
  readonly #write: ((text: string) => void) | undefined;
  readonly #tty: boolean;
  #lastPhase = '';
  #drawn = false;

  constructor(io: Pick<Io, 'err' | 'errIsTerminal'>, options: { quiet?: boolean } = {}) {
    this.#write = options.quiet ? undefined : (text) => io.err(text);
    this.#tty = !options.quiet && io.errIsTerminal;
  }

  update = (p: Progress): void => {
    if (!this.#write) return;
    const phase = p.phase === 'precopy' ? `pre-copy #${p.iteration + 1}` : p.phase;
    const rate = `${formatBytes(p.throughput)}/s`;
    const pending = p.pendingBytes !== undefined ? `, pending ${formatBytes(p.pendingBytes)}` : '';
    if (this.#tty) {
      const eta =
        p.pendingBytes !== undefined && p.throughput > 0
          ? ` ETA ${formatEta(Number(p.pendingBytes) / p.throughput)}`
          : '';
      const width = 24;
      const total = p.pendingBytes !== undefined ? p.bytes + Number(p.pendingBytes) : 0;
      const filled =
        total > 0 ? Math.min(width, Math.round((p.bytes / total) * width)) : p.phase === 'done' ? width : 0;
      const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
      this.#write(`\r\x1b[K${phase.padEnd(12)} ${bar} ${formatBytes(p.bytes)}${pending} ${rate}${eta}`);
      this.#drawn = true;
      if (p.phase === 'done') this.finish();
    } else if (phase !== this.#lastPhase) {
      this.#write(`${phase}: ${formatBytes(p.bytes)} so far${pending}, ${rate}\n`);
    }
    this.#lastPhase = phase;
  };

  finish(): void {
    if (this.#drawn) this.#write?.('\n');
    this.#drawn = false;
  }
}
