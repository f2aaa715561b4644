// Host-side tests of the vfio-mig binary (spawned): help, usage errors, exit codes, verify of good and corrupt streams.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StreamEncoder, PHASE_STOP_COPY } from '../../lib/migration/stream';
import { isoTime, version } from '../../lib/migration/identity';
import { binArgs } from '../support/cli-child';

const run = (...args: string[]) => spawnSync(process.execPath, binArgs(...args), { encoding: 'utf8' });

async function streamBytes(): Promise<Buffer> {
  const parts: Buffer[] = [];
  const enc = new StreamEncoder(async (c) => void parts.push(Buffer.from(c)), {
    protocol: 'v1',
    device: { kind: 'mdev', mdevType: 'x-v1' },
  });
  await enc.writeRecord(0, Buffer.alloc(1000, 1));
  await enc.writeRecord(PHASE_STOP_COPY, Buffer.alloc(3000, 2));
  await enc.finish();
  return Buffer.concat(parts);
}

test('--help for the tool and every command, with examples', () => {
  const main = run('--help');
  assert.equal(main.status, 0);
  for (const cmd of ['list', 'info', 'save', 'load', 'verify', 'state', 'reset', 'check']) {
    assert.match(main.stdout, new RegExp(`\\n  ${cmd}`));
    const r = run(cmd, '--help');
    assert.equal(r.status, 0, cmd);
    assert.match(r.stdout, /Usage: vfio-mig/);
    assert.match(r.stdout, /Example/);
  }
});

test('usage errors exit 2; a missing device exits 3 with its name', () => {
  assert.equal(run().status, 2);
  const unknown = run('frobnicate');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /unknown command 'frobnicate'/);
  assert.equal(run('save', '0000:00:1f.7').status, 2, 'save without -o');
  assert.equal(run('save', '--bogus').status, 2);
  const missing = run('info', '0000:7f:1f.7');
  assert.equal(missing.status, 3);
  assert.match(missing.stderr, /0000:7f:1f.7/);
  const json = run('info', '0000:7f:1f.7', '--json');
  assert.equal(JSON.parse(json.stderr).error.code, 'ERR_VFIO_NOT_FOUND');
});

test('verify: a good stream passes with totals; a corrupt one exits 5 naming the record', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-cli-'));
  try {
    const bytes = await streamBytes();
    writeFileSync(join(dir, 'good.vfmig'), bytes);
    const ok = run('verify', join(dir, 'good.vfmig'), '--json');
    assert.equal(ok.status, 0, ok.stderr);
    const r = JSON.parse(ok.stdout);
    assert.equal(r.records, 2);
    assert.equal(r.payloadBytes, 4000);
    assert.equal(r.header.protocol, 'v1');
    const human = run('verify', join(dir, 'good.vfmig'));
    assert.match(human.stdout, /OK[\s\S]*stop-and-copy: 1 records/);
    const bad = Buffer.from(bytes);
    bad[bad.length - 500] ^= 0x10;
    writeFileSync(join(dir, 'bad.vfmig'), bad);
    const fail = run('verify', join(dir, 'bad.vfmig'));
    assert.equal(fail.status, 5);
    assert.match(fail.stderr, /record 1/);
    writeFileSync(join(dir, 'cut.vfmig'), bytes.subarray(0, bytes.length - 40));
    const cut = run('verify', join(dir, 'cut.vfmig'));
    assert.equal(cut.status, 5);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('host: each command takes only its own options and arguments; values are checked before a device is opened', async () => {
  const missing = '11111111-2222-3333-4444-555555555555';
  const usage = (r: ReturnType<typeof run>, re: RegExp) => {
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, re);
  };
  usage(run('list', '--force', '-o', 'x'), /Unknown option '--force'/);
  usage(run('verify', 'a.vfmig', 'b.vfmig'), /unexpected 'b.vfmig'/);
  usage(run('reset', missing, 'extra'), /unexpected 'extra'/);
  usage(run('save', missing, '-o', '/tmp/x', '--precopy-iterations', ''), /non-negative integer, not ''/);
  usage(run('save', missing, '-o', '/tmp/x', '--precopy-iterations', '1.5'), /non-negative integer, not '1.5'/);
  usage(run('save', missing, '-o', '/tmp/x', '--precopy-threshold=-1'), /non-negative integer/);
  usage(run('migrate', missing, missing, '--no-precopy', '--precopy-iterations', '2'), /--no-precopy contradicts/);
  usage(run('migrate', missing, missing, '--precopy', '2'), /Unknown option '--precopy'/);
  // --no-precopy alone is accepted: the missing device is what fails (exit 3).
  assert.equal(run('migrate', missing, missing, '--no-precopy').status, 3);
  // Exit 2, not 3: the bad value is found before the (missing) device would be opened.
  usage(run('load', missing, '-i', '/tmp/x', '--leave', 'bad'), /--leave must be running or stopped/);
  usage(run('help', 'nosuch'), /not a command/);
  const helpVerify = run('help', 'verify');
  assert.equal(helpVerify.status, 0);
  assert.match(helpVerify.stdout, /^Usage: vfio-mig verify/);
  const globalFirst = run('--json', 'verify', '/nonexistent.vfmig');
  assert.equal(globalFirst.status, 1, globalFirst.stderr);
  assert.equal(JSON.parse(globalFirst.stderr).error.exitCode, 1);
});

test('host: verify of a directory exits 1 naming it; --json errors carry offset and record; stream text is escaped', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-cli-'));
  try {
    const asDir = run('verify', dir);
    assert.equal(asDir.status, 1, asDir.stderr);
    assert.ok(asDir.stderr.includes(dir), asDir.stderr);
    const bytes = await streamBytes();
    bytes[bytes.length - 2000] ^= 1;
    const bad = join(dir, 'bad.vfmig');
    writeFileSync(bad, bytes);
    const r = run('verify', bad, '--json');
    assert.equal(r.status, 5);
    const error = JSON.parse(r.stderr).error;
    assert.equal(typeof error.offset, 'number');
    assert.equal(error.record, 1);
    // A file name with an escape sequence is printed escaped.
    const evil = join(dir, 'evil\u001b[2J.vfmig');
    writeFileSync(evil, await streamBytes());
    const shown = run('verify', evil);
    assert.equal(shown.status, 0, shown.stderr);
    assert.ok(!shown.stdout.includes('\u001b'), 'an escape character reached the terminal');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('host: check: rule selectors are checked before a device is opened; help lists every rule and exit status 6', async () => {
  const { RULES } = await import('../../lib/check');
  const bad = run('check', '--only', 'v1.state,nosuch.rule', 'no-such-device');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /no rule matches nosuch\.rule/);
  assert.doesNotMatch(bad.stderr, /no-such-device/);
  assert.equal(run('check', '--skip', 'v3', 'x').status, 2);
  assert.equal(run('check', '--frobnicate', 'x').status, 2);
  assert.equal(run('check', '--only', 'v1.state', '/nonexistent-device').status, 3);
  const help = run('help', 'check');
  assert.equal(help.status, 0);
  for (const r of RULES) assert.match(help.stdout, new RegExp(`\\n    ${r.id.replace(/\./g, '\\.')} +${r.level}`));
  assert.match(help.stdout, /6 a MUST rule failed/);
  assert.match(run('--help').stdout, /6 not conformant/);
});

test('--version prints the package version, from the bundled bin as from the library', () => {
  const pkg = JSON.parse(readFileSync(join(__dirname, '../../../package.json'), 'utf8')) as { version: string };
  const r = run('--version');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, `vfio-mig ${pkg.version}\n`);
  assert.equal(version(), pkg.version);
  // the bundle has it written in at build time rather than reading package.json at every command
  const bundle = readFileSync(join(__dirname, '../../bin/cli.js'), 'utf8');
  assert.ok(bundle.includes(JSON.stringify(pkg.version)), 'the bundle carries the version');
  assert.ok(!bundle.includes('VFIO_MIG_BUNDLED_VERSION'), 'the build replaced the placeholder');
});

test('isoTime (unit, no kernel): the same text as toISOString over four millennia, at every digit width', () => {
  const times = [0, 1, 9, 10, 99, 100, 999, Date.UTC(1000, 0, 1), Date.UTC(9999, 11, 31, 23, 59, 59, 999), Date.now()];
  let seed = 12345;
  for (let i = 0; i < 2000; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    times.push(Date.UTC(1000, 0, 1) + (seed / 2147483648) * (Date.UTC(9999, 0, 1) - Date.UTC(1000, 0, 1)));
  }
  for (const t of times) assert.equal(isoTime(Math.floor(t)), new Date(Math.floor(t)).toISOString(), String(t));
  for (const t of [Date.UTC(-1, 0, 1), Date.UTC(999, 11, 31), 8.64e15])
    assert.equal(isoTime(t), new Date(t).toISOString());
});
