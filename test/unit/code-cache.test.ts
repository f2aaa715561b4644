// Host-side tests of the bin's start-up path: the V8 code cache the build writes, and the launcher without it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const DIST = join(__dirname, '../..');
const BIN_DIR = join(DIST, 'bin');
const node = (args: string[]) => spawnSync(process.execPath, args, { encoding: 'utf8' });

test('the code cache the build wrote is accepted by this Node in a fresh process', () => {
  const file = join(BIN_DIR, 'cli.js');
  const probe = `process.stdout.write(String(require(${JSON.stringify(join(DIST, 'cli/code-cache.js'))}).codeCacheAccepted(${JSON.stringify(file)}, ${JSON.stringify(`${file}.cache`)})))`;
  const r = node(['-e', probe]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'true', 'V8 rejected dist/bin/cli.js.cache: commands would compile from source');
});

test('a missing, corrupt or stale code cache costs speed only: the command runs the same', (t) => {
  const expected = node([join(BIN_DIR, 'vfio-mig.js'), '--help']);
  assert.equal(expected.status, 0, expected.stderr);
  // A copy of the package's files a command reads: the launcher, the bundle, package.json, the addon.
  const root = mkdtempSync(join(tmpdir(), 'vfio-mig-cache-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const bin = join(root, 'dist/bin');
  mkdirSync(bin, { recursive: true });
  for (const f of ['vfio-mig.js', 'cli.js']) copyFileSync(join(BIN_DIR, f), join(bin, f));
  copyFileSync(join(DIST, '../package.json'), join(root, 'package.json'));
  mkdirSync(join(root, 'build/Release'), { recursive: true });
  const addon = 'build/Release/vfio_native.node';
  copyFileSync(join(DIST, '..', addon), join(root, addon));
  const cases: [string, (() => void) | null][] = [
    ['missing', null],
    ['corrupt', () => writeFileSync(join(bin, 'cli.js.cache'), Buffer.alloc(4096, 0xa5))],
    ['empty', () => writeFileSync(join(bin, 'cli.js.cache'), '')],
    // another bundle's cache: V8 checks the source, not just the format
    [
      'stale',
      () => {
        copyFileSync(join(BIN_DIR, 'cli.js.cache'), join(bin, 'cli.js.cache'));
        writeFileSync(join(bin, 'cli.js'), '/* changed */\n', { flag: 'a' });
      },
    ],
  ];
  for (const [name, prepare] of cases) {
    prepare?.();
    const r = node([join(bin, 'vfio-mig.js'), '--help']);
    assert.equal(r.status, 0, `${name} cache: ${r.stderr}`);
    assert.equal(r.stdout, expected.stdout, `${name} cache: the output differs`);
    assert.equal(r.stderr, '', `${name} cache: the launcher wrote to stderr`);
  }
});
