// vfio_mig_test in the guest: the v1 migration region to the letter of the spec (transitions, registers, steps a-f, resuming a-c, error state).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, existsSync, unlinkSync } from 'node:fs';
import { buildClient, cleanupClient, ok, tmpFile } from '../support/vmtc';
import { TestDevice, V1, needsDriver, removeAll, type V1Name } from '../support/test-driver';

/** The transitions the driver accepts (README); everything else is EINVAL. */
const legal: Record<V1Name, V1Name[]> = {
  running: ['stop', 'saving', 'precopy', 'resuming'],
  stop: ['running', 'saving', 'resuming'],
  precopy: ['saving', 'running'],
  saving: ['stop', 'running'],
  resuming: ['running', 'stop'],
};
const names = Object.keys(V1) as V1Name[];

function records(file: string): Buffer[] {
  const b = readFileSync(file);
  const out: Buffer[] = [];
  for (let o = 0; o < b.length;) {
    const len = Number(b.readBigUInt64LE(o));
    out.push(b.subarray(o + 8, o + 8 + len));
    o += 8 + len;
  }
  return out;
}
function writeRecords(file: string, recs: Buffer[]): void {
  const parts: Buffer[] = [];
  for (const r of recs) {
    const h = Buffer.alloc(8);
    h.writeBigUInt64LE(BigInt(r.length));
    parts.push(h, r);
  }
  writeFileSync(file, Buffer.concat(parts));
}
function fresh(name: string): string {
  const f = tmpFile(name);
  if (existsSync(f)) unlinkSync(f);
  return f;
}

for (const kind of ['v1', 'v1-trapped'] as const) {
  const mmap = kind === 'v1' ? 'mmap' : '';
  describe(`vfio_mig_test ${kind}: the migration region`, { skip: needsDriver }, () => {
    before(() => buildClient());
    after(() => {
      removeAll();
      cleanupClient();
    });

    test('region 9: type capability (3, 1), trapped header page, data section at a page-aligned data_offset', () => {
      const d = new TestDevice(kind, { chunkSize: 16384 });
      const [r, small] = ok(d.run('region 9', 'region 9 32'));
      assert.equal(r!.kv.type, '3/1');
      assert.equal(BigInt(r!.kv.size!), 4096n + 16384n);
      const flags = Number(r!.kv.flags);
      assert.equal(flags & 3, 3, 'read/write');
      if (kind === 'v1') {
        assert.ok(flags & 4, 'mmap flag');
        assert.equal(r!.kv.sparse, '0x1000:0x4000', 'only the data section is mmap-able');
      } else {
        assert.equal(flags & 4, 0);
        assert.equal(r!.kv.sparse, undefined);
      }
      assert.ok(Number(small!.kv.argsz) > 32, 'argsz reports the room the capabilities need');
      assert.equal(small!.kv.cap_offset, '0');
      d.remove();
    });

    test('every legal and illegal device_state write, from every state (101b, 110b, 111b invalid)', () => {
      const d = new TestDevice(kind, { stateSize: 4096 });
      const cmds: string[] = [];
      const expect: Array<{ from: V1Name; to: number; legal: boolean }> = [];
      for (const from of names) {
        for (let to = 0; to < 8; to++) {
          cmds.push('reset');
          if (from !== 'running') cmds.push(`v1to ${V1[from]}`);
          cmds.push(`v1set ${to}`, 'v1state');
          const isLegal = to === V1[from] || (legal[from] as string[]).includes(names.find((n) => V1[n] === to) ?? '');
          expect.push({ from, to, legal: isLegal });
        }
      }
      const res = d.run(...cmds);
      let i = 0;
      for (const e of expect) {
        assert.ok(res[i++]!.ok, 'reset');
        if (e.from !== 'running') assert.ok(res[i++]!.ok, `reach ${e.from}`);
        const w = res[i++]!;
        const st = res[i++]!;
        if (e.legal) {
          assert.ok(w.ok, `${e.from} -> ${e.to} must be accepted: ${w.text}`);
          assert.equal(st.value, BigInt(e.to));
        } else {
          assert.equal(w.err, 'EINVAL', `${e.from} -> ${e.to} must fail with EINVAL`);
          assert.equal(st.value, BigInt(V1[e.from]), 'a failed write leaves the previous state');
        }
      }
      d.remove();
    });

    test('reserved: the reserved field reads 0 and ignores writes; device_state bits 3-31 are reported and must be preserved', () => {
      const d = new TestDevice(kind);
      d.set('reserved_bits', '0xdead0000');
      const r = d.run(
        'rd 9 4 4',
        'wr 9 4 4 0xffffffff',
        'rd 9 4 4',
        'v1state',
        'v1to 0',
        'v1state',
        'v1set 1',
        'v1set 0xdead0001',
        'v1state',
        'v1set 0xdead0009',
        'reset',
        'v1state',
      );
      assert.equal(r[0]!.value, 0n);
      assert.ok(r[1]!.ok);
      assert.equal(r[2]!.value, 0n);
      assert.equal(r[3]!.value, 0xdead0001n);
      assert.ok(r[4]!.ok, 'read-modify-write accepted');
      assert.equal(r[5]!.value, 0xdead0000n);
      assert.equal(r[6]!.err, 'EINVAL', 'clearing reserved bits is refused');
      assert.ok(r[7]!.ok);
      assert.equal(r[8]!.value, 0xdead0001n);
      assert.equal(r[9]!.err, 'EINVAL', 'setting a reserved bit is refused');
      assert.equal(r[11]!.value, 0xdead0001n, 'reset keeps the reported bits');
      d.remove();
    });

    test('native width and alignment only; read-only registers refuse writes', () => {
      const d = new TestDevice(kind);
      const bad = [
        'rd 9 0 8',
        'rd 9 0 2',
        'rd 9 2 2',
        'rd 9 1 4',
        'rd 9 4 8',
        'rd 9 8 4',
        'rd 9 12 4',
        'rd 9 16 4',
        'rd 9 20 4',
        'rd 9 24 4',
        'rd 9 28 4',
        'rd 9 32 4',
        'rd 9 0xff8 8',
        'rd 9 9 8',
        'rdn 9 0 32',
        'rdn 9 0xff0 32',
        'wr 9 8 8 1',
        'wr 9 16 8 0x1000',
        'wr 9 0 8 1',
        'wr 9 0 1 1',
        'rdn 9 0x1000 0x10001',
        'rd 9 0x10ffc 8',
      ];
      const r = d.run(...bad, 'rd 9 0x1001 1', 'rd 9 0x1003 2', 'rdn 9 0x1000 0x10000', 'v1state');
      bad.forEach((c, i) => assert.equal(r[i]!.err, 'EINVAL', c));
      assert.ok(
        r[bad.length]!.ok && r[bad.length + 1]!.ok && r[bad.length + 2]!.ok,
        'the data section takes any width',
      );
      assert.equal(r[bad.length + 3]!.value, 1n, 'nothing changed the state');
      assert.ok(d.counters()['bad_accesses']! >= BigInt(bad.length - 2));
      d.remove();
    });

    test('steps a-f: pending_bytes re-read has no side effects; data_offset/data_size re-read return the current buffer', () => {
      const d = new TestDevice(kind, { stateSize: 3 * 4096, chunkSize: 4096 });
      d.set('mutate', 7);
      const r = ok(
        d.run(
          'v1to 3',
          'rd 9 8 8',
          'rd 9 8 8',
          'rd 9 16 8',
          'rd 9 24 8',
          'rdn 9 0x1000 4096',
          'rd 9 16 8',
          'rd 9 24 8',
          'rdn 9 0x1000 4096',
          'rd 9 8 8',
          'rd 9 8 8',
          'rd 9 16 8',
          'rd 9 24 8',
          'rdn 9 0x1000 4096',
          'v1to 2',
          'v1drain /dev/null',
          'rd 9 8 8',
          'rd 9 16 8',
          'rd 9 24 8',
          'v1to 0',
          'v1state',
        ),
      );
      const [, p1, p2, off1, size1, data1, off2, size2, data2, p3, p4, , size3, data3] = r;
      assert.equal(p1!.value, 3n * 4096n + 32n, 'pre-copy: all pages plus the stream header');
      assert.equal(p2!.value, p1!.value, 'repeated pending_bytes read');
      assert.equal(off1!.value, 4096n, 'data_offset is the page after the header');
      assert.equal(size1!.value, 4096n, 'a full chunk');
      assert.equal(off2!.value, off1!.value);
      assert.equal(size2!.value, size1!.value);
      assert.equal(data2!.kv.hash, data1!.kv.hash, 'the same buffer until pending_bytes is read');
      assert.equal(p3!.value, p1!.value - (4096n - 48n) - 32n, 'step f consumed the buffer');
      assert.equal(p4!.value, p3!.value);
      assert.equal(size3!.value, 4096n);
      assert.notEqual(data3!.kv.hash, data1!.kv.hash, 'the next buffer');
      assert.ok(Number(r[15]!.kv.records) >= 1);
      assert.equal(r[16]!.value, 0n, 'stop-and-copy drained');
      assert.equal(r[18]!.value, 0n, 'no data after the end');
      assert.equal(r[20]!.value, 0n, 'STOP');
      d.remove();
    });

    test('pre-copy with a device that dirties itself: new data each pass, then a consistent stop-and-copy', () => {
      const src = new TestDevice(kind, { stateSize: 256 * 1024, chunkSize: 65536, dirtyRate: 200_000 });
      const dst = new TestDevice(kind, { stateSize: 256 * 1024, chunkSize: 65536 });
      src.set('mutate', 99);
      const f = fresh('dirty.rec');
      const r = ok(
        src.run(
          'v1to 3',
          `v1drain ${f} 1000 ${mmap}`,
          'sleep 300',
          'rd 9 8 8',
          `v1drain ${f} 1000 ${mmap}`,
          'v1to 2',
          `v1drain ${f} 1000000 ${mmap}`,
          'v1to 0',
          'csum',
        ),
      );
      assert.ok(r[3]!.value! > 0n, 'the device dirtied state during pre-copy');
      assert.ok(Number(src.counters()['dirty_ticks']) > 3);
      const [load, sum] = ok(dst.run(`v1load ${f} ${mmap}`, 'csum'));
      assert.ok(Number(load!.kv.records) > 4);
      assert.equal(sum!.value, r[8]!.value, 'restored == saved');
      assert.equal(dst.checksum(), src.checksum());
      src.remove();
      dst.remove();
    });

    for (const size of [0, 1, 4096, 3 * 4096 + 17, 1 << 20]) {
      test(`save/resume round trip, state ${size} bytes: checksums equal`, () => {
        const src = new TestDevice(kind, { stateSize: size, chunkSize: 4096 });
        const dst = new TestDevice(kind, { stateSize: size, chunkSize: 4096 });
        if (size) src.set('mutate', size + 5);
        dst.set('mutate', 1234);
        const f = fresh(`rt-${size}.rec`);
        const [save] = ok(src.run(`v1save ${f} 2 ${mmap}`));
        assert.ok(Number(save!.kv.records) >= 1);
        ok(dst.run(`v1load ${f} ${mmap}`));
        assert.equal(dst.checksum(), src.checksum());
        src.remove();
        dst.remove();
      });
    }

    test('1 GiB state, untouched but for what the device dirtied: round trip costs little', () => {
      const src = new TestDevice(kind, { stateSize: 1 << 30, dirtyRate: 50_000 });
      const dst = new TestDevice(kind, { stateSize: 1 << 30 });
      const f = fresh('gib.rec');
      ok(src.run('sleep 200', `v1save ${f} 3 ${mmap}`));
      assert.ok(Number(src.get('present_pages')) < 64);
      ok(dst.run(`v1load ${f} ${mmap}`));
      assert.equal(dst.checksum(), src.checksum());
      assert.ok(readFileSync(f).length < 1 << 20, 'zero pages travel as runs');
      src.remove();
      dst.remove();
    });

    test('resuming: transaction sizes and order are enforced; bad data enters the error state', () => {
      const src = new TestDevice(kind, { stateSize: 5 * 4096, chunkSize: 8192 });
      src.set('mutate', 3);
      const f = fresh('tx.rec');
      ok(src.run(`v1save ${f} 0 ${mmap}`));
      const recs = records(f);
      assert.ok(recs.length >= 3);
      const cases: Array<[string, Buffer[]]> = [
        ['split', [recs[0]!.subarray(0, 100), recs[0]!.subarray(100), ...recs.slice(1)]],
        ['reordered', [recs[1]!, recs[0]!, ...recs.slice(2)]],
        ['flipped bit', [Buffer.from(recs[0]!).fill(recs[0]![60]! ^ 1, 60, 61), ...recs.slice(1)]],
        ['duplicated', [recs[0]!, recs[0]!, ...recs.slice(1)]],
      ];
      for (const [name, list] of cases) {
        const dst = new TestDevice(kind, { stateSize: 5 * 4096, chunkSize: 8192 });
        const g = fresh(`bad-${name.replace(' ', '-')}.rec`);
        writeRecords(g, list);
        const [load, st, ...rest] = dst.run(
          `v1load ${g} ${mmap}`,
          'v1state',
          'v1set 1',
          'rd 9 8 8',
          'reset',
          'v1state',
        );
        assert.equal(load!.err, 'EINVAL', name);
        assert.equal(st!.value, 6n, `${name}: error state 110b`);
        assert.equal(rest[0]!.err, 'EINVAL', 'only reset leaves the error state');
        assert.equal(rest[1]!.err, 'EIO');
        assert.equal(rest[3]!.value, 1n, 'reset: running');
        dst.remove();
      }
      // a truncated stream: every record applies, but leaving RESUMING is refused
      const dst = new TestDevice(kind, { stateSize: 5 * 4096, chunkSize: 8192 });
      const g = fresh('trunc.rec');
      writeRecords(g, recs.slice(0, -1));
      const [load, st] = dst.run(`v1load ${g} ${mmap}`, 'v1state');
      assert.equal(load!.err, 'EINVAL');
      assert.equal(st!.value, 4n, 'still resuming');
      // a different state size is refused
      const other = new TestDevice(kind, { stateSize: 4 * 4096, chunkSize: 8192 });
      assert.equal(other.run(`v1load ${f} ${mmap}`)[0]!.err, 'EINVAL');
      dst.remove();
      other.remove();
      src.remove();
    });

    test('resuming with no data written: RESUMING -> RUNNING leaves the state as it was', () => {
      const d = new TestDevice(kind);
      d.set('mutate', 9);
      const before = d.checksum();
      ok(d.run('v1to 4', 'rd 9 16 8', 'rd 9 24 8', 'v1to 1'));
      assert.equal(d.checksum(), before);
      d.remove();
    });

    test('a v1 stream is refused by a v2 device, and a v1-trapped device takes a v1 stream', () => {
      const src = new TestDevice(kind, { stateSize: 8192 });
      src.set('mutate', 5);
      const f = fresh('cross.rec');
      ok(src.run(`v1save ${f}`));
      const other = new TestDevice(kind === 'v1' ? 'v1-trapped' : 'v1', { stateSize: 8192 });
      ok(other.run(`v1load ${f}`));
      assert.equal(other.checksum(), src.checksum());
      const raw = fresh('cross.raw');
      writeFileSync(raw, Buffer.concat(records(f)));
      const v2 = new TestDevice('v2', { stateSize: 8192 });
      const [, w] = v2.run('v2set resuming', `v2write ${raw}`);
      assert.equal(w!.err, 'EINVAL');
      src.remove();
      other.remove();
      v2.remove();
    });

    test('error state: entered on an internal error, reported as 110b, left only by VFIO_DEVICE_RESET', () => {
      const d = new TestDevice(kind);
      d.set('fault', 'v1.read.pending_bytes EIO error');
      const r = d.run(
        'v1to 3',
        'rd 9 8 8',
        'v1state',
        'v1set 1',
        'v1set 6',
        'v1to 0',
        'rd 9 16 8',
        'rd 9 24 8',
        'rd 9 0x1000 4',
        'wr 9 24 8 1',
        'reset',
        'v1state',
        'v1to 3',
        'rd 9 8 8',
      );
      assert.equal(r[1]!.err, 'EIO');
      assert.equal(r[2]!.value, 6n);
      for (const i of [3, 4, 5]) assert.equal(r[i]!.err, 'EINVAL');
      for (const i of [6, 7, 8, 9]) assert.equal(r[i]!.err, 'EIO');
      assert.equal(r[11]!.value, 1n);
      assert.ok(r[12]!.ok && r[13]!.ok, 'usable again after reset');
      assert.equal(d.counters()['errors_entered'], 1n);
      d.remove();
    });

    if (kind === 'v1') {
      test('mmap: VM_SHARED only, data section only, bounds checked; writes through the map reach resuming', () => {
        const d = new TestDevice(kind, { chunkSize: 8192 });
        const r = d.run(
          'mmap 9 0 4096',
          'mmap 9 0x1000 4096 private',
          'mmap 9 0x1000 12288',
          'mmap 9 0x2000 8192',
          'mmap 9 0x800 4096',
          'mmap 0 0 4096',
          'mmap 7 0 4096',
          'mmap 9 0x2000 4096',
          'mmap 9 0x1000 8192',
          'mwr 0 8 0x1122334455667788',
          'rd 9 0x1000 8',
          'v1to 4',
          'mwr 8 4 0xabcd',
          'rd 9 0x1008 4',
          'munmap',
        );
        for (let i = 0; i < 7; i++) assert.ok(!r[i]!.ok, `mapping ${i} refused`);
        assert.ok(r[7]!.ok && r[8]!.ok);
        assert.equal(r[10]!.value, 0x1122334455667788n, 'pread sees the map');
        assert.equal(r[13]!.value, 0xabcdn);
        d.remove();
      });
    }
  });
}
