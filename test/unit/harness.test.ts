// The QEMU harness's pure helpers (test/vm/): quoting, the isa-debug-exit status, the command line.
// The tests that boot guests are the harness tier, test/vm/harness.test.ts (run by npm run test:vm).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { failedTests, parseCounts } from '../vm/run-suite';
import { parseArgs, shQuote, statusFromQemuExit, stripCR } from '../vm/vm';

describe('harness helpers', () => {
  test('shQuote survives the shell', () => {
    const words = ['plain', 'with space', "it's", '$HOME', '`x`', '', 'a\nb', '--flag=1'];
    const r = spawnSync('sh', ['-c', `printf '%s\\0' ${words.map(shQuote).join(' ')}`], { encoding: 'utf8' });
    assert.deepEqual(r.stdout.split('\0').slice(0, -1), words);
  });

  test('stripCR and the isa-debug-exit status', () => {
    assert.equal(stripCR('a\r\nb\r\n'), 'a\nb\n');
    assert.equal(statusFromQemuExit(1), 0);
    assert.equal(statusFromQemuExit(7), 3);
    assert.equal(statusFromQemuExit(0), null, 'a plain power-off carries no status');
    assert.equal(statusFromQemuExit(null), null);
  });

  test('parseArgs: options first, the command as given', () => {
    const o = parseArgs(['--kernel', '6.1', '--timeout=30', '--batch', 'sh', '-c', 'exit 3']);
    assert.ok(o !== 'help');
    assert.equal(o.kernel, '6.1');
    assert.equal(o.timeoutMs, 30_000);
    assert.deepEqual(o.command, ['sh', '-c', 'exit 3']);
    const p = parseArgs(['--batch', '--', '--weird', 'x']);
    assert.ok(p !== 'help');
    assert.deepEqual(p.command, ['--weird', 'x']);
    assert.throws(() => parseArgs(['--kernel', '5.10', 'true']), /6\.12 or 6\.1/);
    assert.throws(() => parseArgs(['--batch']), /no command/);
  });

  test("failedTests reads node:test's own closing list of failures (a real node --test run)", () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-failed-'));
    try {
      const file = join(dir, 'some.test.js');
      writeFileSync(
        file,
        [
          "const { describe, test } = require('node:test');",
          "describe('outer', () => {",
          "  test('inner fails', () => { throw new Error('exited 5200 ms after the signal\\nsecond line'); });",
          "  test('inner passes', () => {});",
          '});',
          "test('top (fails)', () => { require('node:assert/strict').equal(1, 2); });",
        ].join('\n'),
      );
      // Without this test runner's context, which would make the child skip its files.
      const env = { ...process.env };
      delete env['NODE_TEST_CONTEXT'];
      const r = spawnSync(process.execPath, ['--test', '--test-reporter=spec', file], {
        encoding: 'utf8',
        cwd: dir,
        env,
      });
      assert.equal(r.status, 1, r.stderr);
      const failed = failedTests(r.stdout);
      assert.deepEqual(
        failed.map((f) => [f.name, f.message]),
        [
          ['inner fails', 'Error: exited 5200 ms after the signal / second line'],
          ['top (fails)', 'AssertionError [ERR_ASSERTION]: Expected values to be strictly equal: / 1 !== 2'],
        ],
      );
      assert.match(failed[0]!.location, /some\.test\.js:3:\d+$/);
      assert.equal(parseCounts(r.stdout).fail, 2);
      assert.deepEqual(failedTests('\u2139 tests 1\n\u2139 pass 1\n'), [], 'a passing run lists nothing');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
