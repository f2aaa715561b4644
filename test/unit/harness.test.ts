// The QEMU harness's pure helpers (test/vm/): quoting, the isa-debug-exit status, the command line.
// The tests that boot guests are the harness tier, test/vm/harness.test.ts (run by npm run test:vm).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
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
});
