// vfio_mig_test in the guest: the v2 protocol through vfio_migration_ops (arcs, data fd, PRE_COPY, PRECOPY_INFO, MIG_DATA_SIZE).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, existsSync, unlinkSync } from 'node:fs';
import { guestKernel, hasPrecopy } from './helpers';
import { buildClient, cleanupClient, ok, tmpFile } from '../support/vmtc';
import { TestDevice, needsDriver, removeAll } from '../support/test-driver';

const needsPrecopy: string | false = needsDriver || (hasPrecopy ? false : `kernel ${guestKernel} has no PRE_COPY`);

const STOP_COPY = 1n,
  P2P = 2n,
  PRE_COPY = 4n;

function fresh(name: string): string {
  const f = tmpFile(name);
  if (existsSync(f)) unlinkSync(f);
  return f;
}

describe('vfio_mig_test v2: vfio_migration_ops and the data fd', { skip: needsDriver }, () => {
  before(() => buildClient());
  after(() => {
    removeAll();
    cleanupClient();
  });

  test('VFIO_DEVICE_FEATURE_MIGRATION: STOP_COPY|P2P, plus PRE_COPY where the kernel has it; none and v1 answer ENOTTY', () => {
    const d = new TestDevice('v2');
    const [probe, st] = ok(d.run('v2probe', 'v2get'));
    assert.equal(BigInt(probe!.kv.flags!), STOP_COPY | P2P | (hasPrecopy ? PRE_COPY : 0n));
    assert.equal(st!.text, 'running');
    for (const kind of ['none', 'v1', 'v1-trapped'] as const) {
      const n = new TestDevice(kind);
      const [p, g] = n.run('v2probe', 'v2get');
      assert.equal(p!.err, 'ENOTTY', kind);
      assert.equal(g!.err, 'ENOTTY', kind);
      n.remove();
    }
    d.remove();
  });

  test('states and arcs: every reachable state, data fds only where the header says, ERROR not settable', () => {
    const d = new TestDevice('v2', { stateSize: 8192 });
    const cmds = [
      'v2set running_p2p',
      'v2get',
      'v2set stop',
      'v2get',
      'v2set running',
      'v2set stop_copy',
      'v2get',
      'v2set stop',
      'v2set resuming',
      'v2get',
      'v2set error',
      'v2set 9',
      'v2set running',
      'reset',
      'v2get',
    ];
    const r = d.run(...cmds);
    assert.equal(r[0]!.kv.fd, 'no');
    assert.equal(r[1]!.text, 'running_p2p');
    assert.equal(r[3]!.text, 'stop');
    assert.equal(r[5]!.kv.fd, 'yes', 'RUNNING -> STOP_COPY opens a saving fd');
    assert.equal(r[6]!.text, 'stop_copy');
    assert.ok(r[7]!.ok);
    assert.equal(r[8]!.kv.fd, 'yes', 'STOP -> RESUMING opens a resuming fd');
    assert.equal(r[9]!.text, 'resuming');
    assert.equal(r[10]!.err, 'EINVAL');
    assert.equal(r[11]!.err, 'EINVAL');
    assert.equal(r[12]!.err, 'EINVAL', 'an empty stream is incomplete: RESUMING -> STOP fails');
    assert.ok(r[13]!.ok);
    assert.equal(r[14]!.text, 'running');
    if (hasPrecopy) {
      const p = d.run(
        'v2set pre_copy',
        'v2get',
        'v2set pre_copy_p2p',
        'v2get',
        'v2set pre_copy',
        'v2set running',
        'v2set pre_copy_p2p',
        'v2set stop_copy',
        'v2set pre_copy',
        'v2get',
      );
      assert.equal(p[0]!.kv.fd, 'yes');
      assert.equal(p[1]!.text, 'pre_copy');
      assert.equal(p[2]!.kv.fd, 'no', 'the saving group shares one fd');
      assert.equal(p[3]!.text, 'pre_copy_p2p');
      assert.ok(p[4]!.ok && p[5]!.ok);
      assert.equal(p[6]!.kv.fd, 'yes');
      assert.equal(p[7]!.kv.fd, 'no');
      assert.equal(p[8]!.err, 'EINVAL', 'STOP_COPY -> PRE_COPY is not permitted');
      assert.equal(p[9]!.text, 'stop_copy');
    } else {
      const [p] = d.run('v2set pre_copy');
      assert.equal(p!.err, 'EINVAL', 'no PRE_COPY on this kernel');
    }
    d.remove();
  });

  for (const size of [0, 1, 4096, 5 * 4096 + 3, 1 << 20]) {
    test(`STOP_COPY round trip, state ${size} bytes: read to EOF (0), write, RESUMING -> STOP validates; checksums equal`, () => {
      const src = new TestDevice('v2', { stateSize: size, chunkSize: 4096 });
      const dst = new TestDevice('v2', { stateSize: size, chunkSize: 8192 });
      if (size) src.set('mutate', size + 11);
      const f = fresh(`v2-${size}.bin`);
      const r = ok(
        src.run('v2set stop_copy', `v2read ${f} 1000`, 'v2readn 100', 'v2readn 100', 'v2poll', 'v2set stop', 'v2get'),
      );
      assert.equal(r[1]!.kv.end, 'eof');
      assert.equal(r[2]!.kv.n, '0', 'end of stream stays 0');
      assert.equal(r[3]!.kv.n, '0');
      assert.ok(Number(r[4]!.kv.revents) & 1, 'readable at end of stream');
      ok(dst.run('v2set resuming', `v2write ${f} 333`, 'v2poll', 'v2set running'));
      assert.equal(dst.checksum(), src.checksum());
      src.remove();
      dst.remove();
    });
  }

  test('the data fd after the arc that ends its session: ENODEV; after close of the device fd: still safe', () => {
    const d = new TestDevice('v2', { stateSize: 65536 });
    d.set('mutate', 2);
    const r = d.run(
      'v2set stop_copy',
      'v2readn 64',
      'v2set stop',
      'v2readn 64',
      'v2poll',
      'v2set stop_copy',
      'closedev 0',
      'v2readn 64',
      'v2close',
    );
    assert.equal(r[1]!.kv.n, '64');
    assert.equal(r[3]!.err, 'ENODEV');
    assert.ok(Number(r[4]!.kv.revents) & 0x18, 'POLLERR|POLLHUP');
    assert.equal(r[7]!.err, 'ENODEV', 'closing the device ends the session');
    assert.equal(d.get('kind'), 'v2');
    d.remove();
  });

  test('bad streams are refused: flipped bit, truncated, wrong size, garbage; the device is reset to recover', () => {
    const src = new TestDevice('v2', { stateSize: 3 * 4096 });
    src.set('mutate', 77);
    const f = fresh('good.bin');
    ok(src.run('v2set stop_copy', `v2read ${f}`, 'v2set stop'));
    const good = readFileSync(f);
    const flip = Buffer.from(good);
    flip[100] = flip[100]! ^ 0x40;
    const variants: Array<[string, Buffer, 'write' | 'stop']> = [
      ['flipped bit', flip, 'write'],
      ['truncated inside a record', good.subarray(0, good.length - 10), 'stop'],
      ['truncated at the last record', good.subarray(0, good.length - 32), 'stop'],
      ['garbage', Buffer.alloc(64, 0x5a), 'write'],
      ['trailing bytes', Buffer.concat([good, Buffer.alloc(40)]), 'write'],
    ];
    for (const [name, data, where] of variants) {
      const dst = new TestDevice('v2', { stateSize: 3 * 4096 });
      const g = fresh('bad.bin');
      writeFileSync(g, data);
      const [, w, s, st, , after] = dst.run('v2set resuming', `v2write ${g}`, 'v2set stop', 'v2get', 'reset', 'v2get');
      if (where === 'write') assert.equal(w!.err, 'EINVAL', `${name}: write`);
      else assert.ok(w!.ok, `${name}: bytes accepted`);
      assert.equal(s!.err, 'EINVAL', `${name}: RESUMING -> STOP refused`);
      assert.equal(st!.text, 'resuming');
      assert.equal(after!.text, 'running');
      dst.remove();
    }
    const small = new TestDevice('v2', { stateSize: 2 * 4096 });
    const [, w] = small.run('v2set resuming', `v2write ${f}`);
    assert.equal(w!.err, 'EINVAL', 'a stream of another state size');
    small.remove();
    src.remove();
  });

  test('close mid-migration and reset mid-migration leave nothing behind', () => {
    const d = new TestDevice('v2', { stateSize: 1 << 20, dirtyRate: 100_000 });
    d.set('mutate', 1);
    ok(d.run('v2set stop_copy', 'v2readn 5000'));
    ok(d.run('v2set resuming', 'v2write /dev/null'));
    ok(d.run('v2set stop_copy', 'v2readn 4096', 'reset', 'v2get', 'v2close'));
    d.remove();
  });

  describe('PRE_COPY (6.2+)', { skip: needsPrecopy }, () => {
    test('PRECOPY_INFO: initial bytes fall as data is read, dirty bytes rise as the device dirties itself; ENOMSG when idle', () => {
      const d = new TestDevice('v2', { stateSize: 64 * 1024, chunkSize: 16384 });
      d.set('mutate', 5);
      const r = ok(
        d.run(
          'v2set pre_copy',
          'v2info',
          'v2readn 16384',
          'v2info',
          `v2read ${fresh('pc.bin')} 16384`,
          'v2info',
          'v2poll',
        ),
      );
      const init0 = BigInt(r[1]!.kv.initial!);
      const init1 = BigInt(r[3]!.kv.initial!);
      assert.equal(init0, 64n * 1024n + 32n, 'all pages plus the stream header');
      assert.equal(r[1]!.kv.dirty, '0');
      assert.ok(
        init1 < init0 && init0 - init1 <= 16384n,
        `initial bytes fall with the data read (${init0} -> ${init1})`,
      );
      assert.equal(r[4]!.kv.end, 'enomsg', 'temporary end of stream');
      assert.equal(r[5]!.kv.initial, '0');
      assert.equal(r[5]!.kv.dirty, '0');
      assert.equal(Number(r[6]!.kv.revents) & 1, 0, 'nothing to read: not readable');

      d.set('dirty_rate', 400_000);
      const dd = ok(
        d.run(
          'v2set pre_copy',
          `v2read ${fresh('pc2.bin')}`,
          'sleep 300',
          'v2info',
          'v2poll 1000',
          `v2read ${fresh('pc3.bin')}`,
          'v2set stop_copy',
          `v2read ${fresh('pc4.bin')}`,
        ),
      );
      assert.ok(BigInt(dd[3]!.kv.dirty!) > 0n, 'dirty bytes appear while running');
      assert.equal(dd[3]!.kv.initial, '0');
      assert.ok(Number(dd[4]!.kv.revents) & 1, 'poll wakes up on new dirty data');
      assert.ok(Number(dd[5]!.kv.bytes) > 0);
      assert.equal(dd[7]!.kv.end, 'eof');
      d.remove();
    });

    test('PRECOPY_INFO outside PRE_COPY is EINVAL; MIG_DATA_SIZE answers in every state', () => {
      const d = new TestDevice('v2', { stateSize: 3 * 4096 });
      d.set('mutate', 1);
      const r = d.run('v2size', 'v2set stop_copy', 'v2info', 'v2size', 'v2set stop', 'v2size');
      assert.ok(BigInt(r[0]!.value!) >= 3n * 4096n);
      assert.equal(r[2]!.err, 'EINVAL');
      assert.ok(r[3]!.ok && r[5]!.ok);
      d.remove();
    });

    test('live migration: PRE_COPY passes with a self-dirtying device, then STOP_COPY; restored == saved', () => {
      const src = new TestDevice('v2', { stateSize: 512 * 1024, chunkSize: 65536, dirtyRate: 300_000 });
      const dst = new TestDevice('v2', { stateSize: 512 * 1024 });
      src.set('mutate', 31);
      const f = fresh('live.bin');
      const r = ok(
        src.run(
          'v2set pre_copy',
          `v2read ${f} 65536 append`,
          'sleep 200',
          `v2read ${f} 65536 append`,
          'sleep 200',
          `v2read ${f} 65536 append`,
          'v2set stop_copy',
          `v2read ${f} 65536 append`,
          'v2set stop',
          'csum',
        ),
      );
      assert.ok(Number(r[3]!.kv.bytes) > 0, 'second pass had dirty data');
      ok(dst.run('v2set resuming', `v2write ${f} 100000`, 'v2set running'));
      assert.equal(dst.checksum(), r[9]!.value);
      src.remove();
      dst.remove();
    });
  });
});
