// The benchmark's chart: ours against the C client per path and size, as horizontal bars of the time ratio, in plain SVG.

export interface Bar {
  /** The path and size, e.g. "v2 64 MiB save to a file". */
  label: string;
  /** C time / our time: 1 is as fast as the C client, above 1 faster. */
  ratio: number;
  /** The ratio of the slowest and of the fastest run pairing, drawn as a whisker. */
  low?: number;
  high?: number;
  group: string;
}

const esc = (text: string): string =>
  text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/**
 * One row per bar, grouped (a heading per group), a scale from 0 to the largest ratio (at least
 * 1.2), dashed lines at the targets 0.8 and 1.0. Bars under `target` are drawn in a second colour.
 */
export function ratioChart(title: string, bars: Bar[], target = 0.8): string {
  const labelWidth = 300;
  const plotWidth = 420;
  const rowHeight = 18;
  const top = 46;
  const max = Math.max(1.2, ...bars.map((b) => b.high ?? b.ratio)) * 1.05;
  const x = (r: number) => labelWidth + (Math.max(0, r) / max) * plotWidth;
  const out: string[] = [];
  let y = top;
  let group = '';
  for (const b of bars) {
    if (b.group !== group) {
      group = b.group;
      y += 6;
      out.push(`<text x="8" y="${y + 12}" font-weight="bold">${esc(group)}</text>`);
      y += rowHeight;
    }
    const colour = b.ratio >= target ? '#2f7d32' : '#c0392b';
    out.push(`<text x="${labelWidth - 6}" y="${y + 12}" text-anchor="end">${esc(b.label)}</text>`);
    out.push(
      `<rect x="${labelWidth}" y="${y + 3}" width="${(x(b.ratio) - labelWidth).toFixed(1)}" height="${rowHeight - 6}" fill="${colour}"/>`,
    );
    if (b.low !== undefined && b.high !== undefined)
      out.push(
        `<line x1="${x(b.low).toFixed(1)}" x2="${x(b.high).toFixed(1)}" y1="${y + rowHeight / 2}" y2="${y + rowHeight / 2}" stroke="#222"/>`,
      );
    out.push(`<text x="${(x(b.ratio) + 4).toFixed(1)}" y="${y + 12}">${b.ratio.toFixed(2)}</text>`);
    y += rowHeight;
  }
  const height = y + 30;
  const guides = [target, 1]
    .map(
      (r) =>
        `<line x1="${x(r).toFixed(1)}" x2="${x(r).toFixed(1)}" y1="${top}" y2="${y}" stroke="#555" stroke-dasharray="4 3"/>` +
        `<text x="${x(r).toFixed(1)}" y="${y + 16}" text-anchor="middle">${r.toFixed(1)}x</text>`,
    )
    .join('');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth + plotWidth + 60}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="8" y="20" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<text x="8" y="36" fill="#444">C client time / our time (higher is faster; whisker: slowest to fastest run pairing; dashed: the 0.8x target and parity)</text>`,
    guides,
    ...out,
    '</svg>',
  ].join('\n');
}
