// vmtc, the tiny C client of the test driver (test/driver/client/vmtc.c): built with cc, run once
// per call (one open of the device), its "ok ..." / "err ERRNO n ..." lines parsed.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/** The project root, from dist/test/support/. */
const ROOT = resolve(__dirname, '..', '..', '..');

export interface Result {
  ok: boolean;
  /** errno name when !ok ('EINVAL') */
  err?: string;
  /** text after "ok " */
  text: string;
  /** key=value pairs of the text */
  kv: Record<string, string>;
  /** the first word of the text as a bigint, when numeric */
  value?: bigint;
}

let clientPath = '';
let clientDir = '';

/** Compiles vmtc with the host's cc into a temp dir (once per test file). */
export function buildClient(): string {
  if (clientPath) return clientPath;
  clientDir = mkdtempSync(join(tmpdir(), 'vmtc-'));
  clientPath = join(clientDir, 'vmtc');
  execFileSync('cc', ['-O2', '-Wall', '-o', clientPath, join(ROOT, 'test/driver/client/vmtc.c')], { stdio: 'pipe' });
  return clientPath;
}

export function tmpFile(name: string): string {
  buildClient();
  return join(clientDir, name);
}

export function cleanupClient(): void {
  if (clientDir) rmSync(clientDir, { recursive: true, force: true });
  clientDir = clientPath = '';
}

function parse(line: string): Result {
  if (line.startsWith('ok')) {
    const text = line.slice(2).trim();
    const kv: Record<string, string> = {};
    for (const w of text.split(' ')) {
      const i = w.indexOf('=');
      if (i > 0) kv[w.slice(0, i)] = w.slice(i + 1);
    }
    const first = text.split(' ')[0] ?? '';
    const value = /^(0x[0-9a-f]+|\d+)$/i.test(first) ? BigInt(first) : undefined;
    return { ok: true, text, kv, value };
  }
  const m = /^err (\S+) (\d+)(.*)$/.exec(line);
  if (m) {
    const kv: Record<string, string> = {};
    for (const w of (m[3] ?? '').trim().split(' ')) {
      const i = w.indexOf('=');
      if (i > 0) kv[w.slice(0, i)] = w.slice(i + 1);
    }
    return { ok: false, err: m[1], text: line, kv };
  }
  throw new Error(`vmtc: unexpected output line '${line}'`);
}

export function vmtc(uuid: string, cmds: string[], timeoutMs = 120_000): Result[] {
  const r = spawnSync(buildClient(), [uuid, ...cmds], { encoding: 'utf8', timeout: timeoutMs });
  if (r.error) throw r.error;
  const lines = r.stdout.split('\n').filter((l) => l.length > 0);
  if (r.status !== 0) throw new Error(`vmtc ${cmds.join(' | ')}: exit ${r.status}: ${r.stdout}${r.stderr}`);
  if (lines.length !== cmds.length)
    throw new Error(`vmtc: ${cmds.length} commands, ${lines.length} lines: ${r.stdout}${r.stderr}`);
  return lines.map(parse);
}

/** Asserts every result is ok and returns them. */
export function ok(results: Result[]): Result[] {
  results.forEach((res, i) => {
    if (!res.ok) throw new Error(`command ${i} failed: ${res.text}`);
  });
  return results;
}
