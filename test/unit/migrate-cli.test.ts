// Host unit tests of vfio-mig migrate's argument handling: destination forms, exit statuses by failing side.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MigrateError } from '../../lib';
import { EXIT } from '../../cli/commands';
import { migrateExitCode, parseDestination } from '../../cli/migrate-command';

test('host: destinations: local lists, ssh:// with user and port, exec:', () => {
  assert.deepEqual(parseDestination('B1,B2', {}), { kind: 'local', devices: ['B1', 'B2'] });
  const ssh = parseDestination('ssh://root@dst:2222/0000:5e:00.1,abc', { timeout: '10' });
  assert.equal(ssh.kind, 'command');
  assert.deepEqual(ssh.devices, ['0000:5e:00.1', 'abc']);
  assert.deepEqual(ssh.kind === 'command' && ssh.argv, [
    'ssh',
    '-T',
    '-o',
    'BatchMode=yes',
    '-p',
    '2222',
    'root@dst',
    'vfio-mig receive 0000:5e:00.1,abc --quiet --timeout 10',
  ]);
  const other = parseDestination('ssh://h/B', { 'remote-command': 'npx vfio-mig' });
  assert.equal(other.kind === 'command' && other.argv.at(-1), 'npx vfio-mig receive B --quiet');
  const opts = parseDestination('ssh://h:22/B', { 'ssh-option': ['IdentityFile=/k', 'StrictHostKeyChecking=no'] });
  assert.deepEqual(opts.kind === 'command' && opts.argv.slice(0, 10), [
    'ssh',
    '-T',
    '-o',
    'BatchMode=yes',
    '-o',
    'IdentityFile=/k',
    '-o',
    'StrictHostKeyChecking=no',
    '-p',
    '22',
  ]);
  for (const bad of ['-oProxyCommand=x', 'IdentityFile /k', '=x', 'Port='])
    assert.throws(() => parseDestination('ssh://h/B', { 'ssh-option': [bad] }), /--ssh-option takes KEY=VALUE/);
  const exec = parseDestination('exec:socat - TCP:h:7000', {});
  assert.deepEqual(exec.kind === 'command' && exec.argv, ['sh', '-c', 'socat - TCP:h:7000']);
  assert.throws(() => parseDestination('exec:', {}), /needs a shell command/);
  assert.throws(() => parseDestination('ssh://host', {}), /ssh:\/\/\[user@\]host/);
  assert.throws(() => parseDestination('A,,B', {}), /empty device name/);
});

test('host: the exit status names the side that failed', () => {
  const e = (side: MigrateError['side'], code = 'ERR_MIGRATION_PEER', committed = false) =>
    migrateExitCode(new MigrateError(code as never, 'x', side, { committed }));
  assert.equal(e('source', 'ERR_MIGRATION_DEVICE'), EXIT.source);
  assert.equal(e('destination'), EXIT.destination);
  assert.equal(e('channel', 'ERR_MIGRATION_CHANNEL'), EXIT.channel);
  assert.equal(e('destination', 'ERR_MIGRATION_AFTER_COMMIT', true), EXIT.afterCommit);
  assert.equal(e('source', 'ERR_MIGRATION_ABORTED'), EXIT.aborted);
  assert.deepEqual([EXIT.source, EXIT.destination, EXIT.afterCommit, EXIT.channel], [10, 7, 8, 9]);
});
