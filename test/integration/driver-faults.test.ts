// vfio_mig_test in the guest: every fault point fires once with the armed errno, where documented; "error" variants and the sysfs "error" command.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { hasPrecopy } from './helpers';
import { buildClient, cleanupClient, tmpFile } from '../support/vmtc';
import { TestDevice, needsDriver, removeAll, type Kind } from '../support/test-driver';

/** For each point: commands that reach it, the last one being the one that fails. */
function triggers(kind: Kind, junk: string): Record<string, string[]> {
  if (kind === 'v2') {
    return {
      'v2.get_state': ['v2get'],
      'v2.data_size': ['v2size'],
      'v2.data.read': ['v2set stop_copy', 'v2readn 100'],
      'v2.data.write': ['v2set resuming', `v2write ${junk}`],
      'v2.data.precopy_info': ['v2set pre_copy', 'v2info'],
      'v2.arc.running_running_p2p': ['v2set running_p2p'],
      'v2.arc.running_p2p_running': ['v2set running_p2p', 'v2set running'],
      'v2.arc.running_p2p_stop': ['v2set running_p2p', 'v2set stop'],
      'v2.arc.stop_running_p2p': ['v2set stop', 'v2set running_p2p'],
      'v2.arc.stop_stop_copy': ['v2set stop', 'v2set stop_copy'],
      'v2.arc.stop_copy_stop': ['v2set stop_copy', 'v2set stop'],
      'v2.arc.stop_resuming': ['v2set stop', 'v2set resuming'],
      'v2.arc.resuming_stop': ['v2set resuming', 'v2set stop'],
      'v2.arc.running_pre_copy': ['v2set pre_copy'],
      'v2.arc.pre_copy_running': ['v2set pre_copy', 'v2set running'],
      'v2.arc.running_p2p_pre_copy_p2p': ['v2set running_p2p', 'v2set pre_copy_p2p'],
      'v2.arc.pre_copy_p2p_running_p2p': ['v2set pre_copy_p2p', 'v2set running_p2p'],
      'v2.arc.pre_copy_pre_copy_p2p': ['v2set pre_copy', 'v2set pre_copy_p2p'],
      'v2.arc.pre_copy_p2p_pre_copy': ['v2set pre_copy_p2p', 'v2set pre_copy'],
      'v2.arc.pre_copy_p2p_stop_copy': ['v2set pre_copy_p2p', 'v2set stop_copy'],
    };
  }
  const t: Record<string, string[]> = {
    'v1.read.device_state': ['v1state'],
    'v1.write.device_state': ['v1set 1'],
    'v1.read.reserved': ['rd 9 4 4'],
    'v1.write.reserved': ['wr 9 4 4 0'],
    'v1.read.pending_bytes': ['v1to 3', 'rd 9 8 8'],
    'v1.read.data_offset': ['v1to 3', 'rd 9 16 8'],
    'v1.read.data_size': ['v1to 3', 'rd 9 16 8', 'rd 9 24 8'],
    'v1.write.data_size': ['v1to 4', 'wr 9 24 8 32'],
    'v1.read.data': ['rd 9 0x1000 4'],
    'v1.write.data': ['v1to 4', 'wr 9 0x1000 4 0'],
  };
  if (kind === 'v1') t['v1.mmap'] = ['mmap 9 0x1000 4096'];
  const path: Record<string, string[]> = {
    running: [],
    stop: ['v1to 0'],
    saving: ['v1to 2'],
    precopy: ['v1to 3'],
    resuming: ['v1to 4'],
  };
  const val: Record<string, number> = { stop: 0, running: 1, saving: 2, precopy: 3, resuming: 4 };
  for (const [from, to] of [
    ['running', 'stop'],
    ['running', 'saving'],
    ['running', 'precopy'],
    ['running', 'resuming'],
    ['stop', 'running'],
    ['stop', 'saving'],
    ['stop', 'resuming'],
    ['precopy', 'saving'],
    ['precopy', 'running'],
    ['saving', 'stop'],
    ['saving', 'running'],
    ['resuming', 'running'],
    ['resuming', 'stop'],
  ] as const) {
    t[`v1.transition.${from}_${to}`] = [...path[from]!, `v1to ${val[to]}`];
  }
  return t;
}

for (const kind of ['v1', 'v1-trapped', 'v2'] as const) {
  describe(`vfio_mig_test ${kind}: fault injection`, { skip: needsDriver }, () => {
    let junk = '';
    before(() => {
      buildClient();
      junk = tmpFile('junk.bin');
      writeFileSync(junk, Buffer.alloc(64, 1));
    });
    after(() => {
      removeAll();
      cleanupClient();
    });

    test('fault_points lists exactly the points this kernel and type have, and each fires once with its errno', () => {
      const d = new TestDevice(kind, { stateSize: 8192 });
      const listed = d.get('fault_points').split('\n').filter(Boolean).sort();
      const table = triggers(kind, junk);
      const expected = Object.keys(table)
        .filter((p) => hasPrecopy || !(p.includes('pre_copy') || p === 'v2.data_size' || p === 'v2.data.precopy_info'))
        .sort();
      assert.deepEqual(listed, expected, 'fault_points matches the documented points of this type and kernel');
      const errnos = ['EIO', 'ENOSPC', 'EPROTO', 'ENOMEM', 'EAGAIN'];
      listed.forEach((point, i) => {
        const errno = errnos[i % errnos.length]!;
        const cmds = table[point]!;
        d.set('fault', `${point} ${errno}`);
        assert.equal(d.get('fault'), `${point} ${errno}`);
        const fired = Number(d.counters()['faults_fired']);
        const r = d.run(...cmds);
        const last = r[cmds.length - 1]!;
        assert.equal(last.err, errno, `${point}: ${last.text}`);
        r.slice(0, -1).forEach((x, j) => assert.ok(x.ok, `${point}: step ${cmds[j]} must succeed (${x.text})`));
        assert.equal(d.get('fault'), 'none', `${point} is one-shot`);
        assert.equal(Number(d.counters()['faults_fired']), fired + 1);
        // the same steps succeed without the fault
        const again = d.run(...cmds);
        assert.ok(
          again[cmds.length - 1]!.ok ||
            point.endsWith('resuming_stop') ||
            point === 'v2.data.write' ||
            point === 'v1.write.data_size',
          `${point} without fault: ${again[cmds.length - 1]!.text}`,
        );
      });
      d.remove();
    });

    test('a failed transition leaves the previous state; with "error" it enters the error state until reset', () => {
      const d = new TestDevice(kind);
      if (kind === 'v2') {
        d.set('fault', 'v2.arc.stop_stop_copy EIO');
        const r = d.run('v2set stop_copy', 'v2get');
        assert.equal(r[0]!.err, 'EIO');
        assert.equal(r[1]!.text, 'stop', 'the arcs before the failed one happened');
        d.set('fault', 'v2.arc.stop_copy_stop ENOMEM error');
        const e = d.run('v2set stop_copy', 'v2set stop', 'v2get', 'v2set running', 'reset', 'v2get');
        assert.equal(e[1]!.err, 'ENOMEM');
        assert.equal(e[2]!.text, 'error');
        assert.equal(e[3]!.err, 'EINVAL', 'no way out of ERROR but reset');
        assert.equal(e[5]!.text, 'running');
      } else {
        d.set('fault', 'v1.transition.precopy_saving EIO');
        const r = d.run('v1to 3', 'v1to 2', 'v1state', 'v1to 2', 'v1state');
        assert.equal(r[1]!.err, 'EIO');
        assert.equal(r[2]!.value, 3n, 'the previous state');
        assert.equal(r[4]!.value, 2n);
        d.set('fault', 'v1.transition.running_resuming EIO error');
        const e = d.run('v1to 4', 'v1state', 'reset', 'v1state');
        assert.equal(e[0]!.err, 'EIO');
        assert.equal(e[1]!.value, 6n);
        assert.equal(e[3]!.value, 1n);
      }
      d.remove();
    });

    test('writing "error" to fault puts the open device into the error state now', async () => {
      const d = new TestDevice(kind);
      const child = spawn(
        buildClient(),
        [d.uuid, 'sleep 1500', kind === 'v2' ? 'v2get' : 'v1state', 'reset', kind === 'v2' ? 'v2get' : 'v1state'],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let out = '';
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      const done = new Promise<number | null>((res) => child.on('close', res));
      const t0 = Date.now();
      while (d.counters()['opens'] !== 1n && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
      assert.equal(d.trySet('state_size', 4096), 'EBUSY', 'state_size is fixed while open');
      assert.equal(d.trySet('chunk_size', 8192), 'EBUSY');
      assert.equal(d.trySet('dirty_rate', 1000), null, 'dirty_rate can change any time');
      d.set('fault', 'error');
      assert.equal(await done, 0);
      const lines = out.trim().split('\n');
      assert.equal(lines[1], kind === 'v2' ? 'ok error' : 'ok 0x6');
      assert.equal(lines[3], kind === 'v2' ? 'ok running' : 'ok 0x1');
      d.remove();
    });
  });
}
