// Presentation-free renderings of a check report: the text a driver author reads, JUnit XML, JSON.
import { RULES } from './rules';
import type { CheckReport, Verdict } from './types';

type Row = CheckReport['findings'][number];
const ORDER: Record<Verdict, number> = { fail: 0, warn: 1, pass: 2, skip: 3 };
const MARK: Record<Verdict, string> = { fail: 'FAIL', warn: 'WARN', pass: 'pass', skip: 'skip' };

/** Areas in catalogue order; inside an area failures first, then warnings, passes, skips. */
export function groupByArea(findings: readonly Row[]): [string, Row[]][] {
  const areas: string[] = [];
  for (const r of RULES) if (!areas.includes(r.area)) areas.push(r.area);
  const out: [string, Row[]][] = [];
  for (const area of areas) {
    const rows = findings.filter((f) => f.rule.area === area);
    if (!rows.length) continue;
    rows.sort((a, b) => ORDER[a.verdict] - ORDER[b.verdict]);
    out.push([area, rows]);
  }
  // areas with failures come first, so the first screen shows what is wrong
  const worst = (rows: Row[]): number => Math.min(...rows.map((r) => ORDER[r.verdict]));
  return out.sort((a, b) => worst(a[1]) - worst(b[1]));
}

function evidenceText(e: Row['evidence']): string {
  return Object.entries(e)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(',') : String(v)}`)
    .join(' ');
}

/** The human report: a summary line, then areas, failures with the spec's sentence and what was seen. */
export function formatReport(report: CheckReport, options: { verbose?: boolean } = {}): string {
  const lines: string[] = [];
  const c = report.counts;
  lines.push(
    `vfio-mig check ${report.device} (${report.protocol ?? 'no migration'}): ${report.conformant ? 'conformant' : 'NOT CONFORMANT'}: ` +
      `${c.fail} failed, ${c.warn} warnings, ${c.pass} passed, ${c.skip} skipped`,
  );
  for (const [area, rows] of groupByArea(report.findings)) {
    const shown = options.verbose
      ? rows
      : rows.filter((r) => r.verdict !== 'skip' || !/^(not selected|the device speaks)/.test(r.detail));
    if (!shown.length) continue;
    lines.push('', `${area}:`);
    for (const r of shown) {
      lines.push(`  ${MARK[r.verdict]} ${r.id} [${r.rule.level}]: ${r.detail}`);
      if (r.verdict === 'fail' || r.verdict === 'warn' || options.verbose) {
        lines.push(`       spec (${r.rule.source}): "${r.rule.spec}"`);
        lines.push(`       checked: ${r.rule.test}`);
        const ev = evidenceText(r.evidence);
        if (ev) lines.push(`       seen: ${ev}`);
      }
    }
  }
  lines.push('', `device state: ${report.restore.ok ? 'restored' : 'NOT RESTORED'}: ${report.restore.detail}`);
  if (report.checksum === 'none')
    lines.push('note: no state checksum on this device: equal state after a round trip could not be proven');
  return lines.join('\n') + '\n';
}

const xml = (s: string): string =>
  s
    .replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[ch]!)
    // XML 1.0 has no way to carry most control characters
    // eslint-disable-next-line no-control-regex -- matching them is the point
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '?');

/** JUnit XML: one testsuite per area, one testcase per rule; fail -> failure, skip -> skipped, warn -> system-out. */
export function formatJunit(report: CheckReport): string {
  const out: string[] = ['<?xml version="1.0" encoding="UTF-8"?>'];
  const c = report.counts;
  out.push(
    `<testsuites name="vfio-mig check ${xml(report.device)}" tests="${report.findings.length}" failures="${c.fail}" skipped="${c.skip}" time="${(report.elapsedMs / 1000).toFixed(3)}">`,
  );
  for (const [area, rows] of groupByArea(report.findings)) {
    const f = rows.filter((r) => r.verdict === 'fail').length;
    const s = rows.filter((r) => r.verdict === 'skip').length;
    out.push(`  <testsuite name="${xml(area)}" tests="${rows.length}" failures="${f}" skipped="${s}">`);
    for (const r of rows) {
      const time = ((r.ms ?? 0) / 1000).toFixed(3);
      out.push(`    <testcase classname="vfio-mig.${xml(r.rule.protocol)}" name="${xml(r.id)}" time="${time}">`);
      if (r.verdict === 'fail')
        out.push(
          `      <failure message="${xml(r.detail)}" type="${r.rule.level}">${xml(`spec (${r.rule.source}): ${r.rule.spec}\nchecked: ${r.rule.test}\nseen: ${evidenceText(r.evidence)}`)}</failure>`,
        );
      else if (r.verdict === 'skip') out.push(`      <skipped message="${xml(r.detail)}"/>`);
      else if (r.verdict === 'warn') out.push(`      <system-out>${xml(`WARNING: ${r.detail}`)}</system-out>`);
      out.push('    </testcase>');
    }
    out.push('  </testsuite>');
  }
  out.push('</testsuites>');
  return out.join('\n') + '\n';
}

/** The report as plain JSON (the catalogue entry of each rule included). */
export function reportJson(report: CheckReport): unknown {
  return report;
}
