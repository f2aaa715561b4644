// Integration tests (VM guest) against the kernel's own mtty sample: a v2 peer with PRE_COPY on 6.12, no migration on 6.1.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice, requireMigration, MigrationError } from '../../lib';
import { guestKernel, needsMdevParent } from './helpers';
import { createMdev, removeMdev } from '../support/mdev';

function memorySink() {
  const chunks: Buffer[] = [];
  return {
    chunks,
    sink: async (c: Buffer) => void chunks.push(Buffer.from(c)),
    source: () =>
      (async function* () {
        yield* chunks;
      })(),
  };
}

describe('mtty migration', { skip: needsMdevParent('mtty') }, () => {
  const uuids: string[] = [];
  after(() => uuids.forEach(removeMdev));

  test(
    '6.1: a clear "no migration" error, not a crash',
    { skip: guestKernel !== '6.1' ? 'mtty migrates only on 6.7+' : false },
    () => {
      const uuid = createMdev('mtty', 'mtty-1');
      uuids.push(uuid);
      using dev = openDevice(uuid);
      assert.equal(dev.migration, null);
      assert.throws(
        () => requireMigration(dev),
        (e: MigrationError) => e.code === 'ERR_MIGRATION_NONE' && /no migration protocol/.test(e.message),
      );
    },
  );

  test(
    '6.12: full save/load round trip with pre-copy; a second save of the destination gives the same bytes',
    { skip: guestKernel === '6.1' ? 'mtty has no migration on 6.1' : false },
    async () => {
      const a = createMdev('mtty', 'mtty-1');
      const b = createMdev('mtty', 'mtty-1');
      uuids.push(a, b);
      using src = openDevice(a);
      using dst = openDevice(b);
      const m = requireMigration(src);
      assert.equal(m.protocol, 'v2');
      const first = memorySink();
      const saved = await m.save(first.sink, { precopy: { maxIterations: 3 }, leave: 'running' });
      assert.ok(saved.bytes > 0n);
      await requireMigration(dst).load(first.source());
      assert.equal(await requireMigration(dst).state(), 'RUNNING');
      const second = memorySink();
      await requireMigration(dst).save(second.sink, { precopy: { maxIterations: 3 }, leave: 'running' });
      const { verifyStream, StreamDecoder } = await import('../../lib/migration/stream');
      await verifyStream(second.source());
      const payload = async (src: AsyncIterable<Buffer>) => {
        const d = new StreamDecoder(src);
        await d.readHeader();
        const parts: Buffer[] = [];
        for await (const r of d.records()) parts.push(Buffer.from(r.payload));
        return Buffer.concat(parts);
      };
      assert.deepEqual(await payload(second.source()), await payload(first.source()));
    },
  );
});
