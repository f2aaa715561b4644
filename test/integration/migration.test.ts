// Integration tests (VM guest, real kernel) of save/load for v1, v1-trapped and v2 against the project's test vendor driver.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { requireMigration, verify, MigrationError, type Device } from '../../lib';
import { readFileSync } from 'node:fs';
import { guestKernel, openFdCount } from './helpers';
import {
  TestDevice,
  arcsInFlightPeak,
  bar0Checksum,
  bar0Mutate,
  needsDriver,
  resetArcsPeak,
  type Kind,
} from '../support/test-driver';

function memorySink(): { chunks: Buffer[]; sink: (c: Buffer) => Promise<void>; source: () => AsyncIterable<Buffer> } {
  const chunks: Buffer[] = [];
  return {
    chunks,
    sink: async (c) => void chunks.push(Buffer.from(c)),
    source: () =>
      (async function* () {
        yield* chunks;
      })(),
  };
}

const created: TestDevice[] = [];
function make(kind: Kind, knobs: ConstructorParameters<typeof TestDevice>[1] = {}): TestDevice {
  const d = new TestDevice(kind, knobs);
  created.push(d);
  return d;
}
after(() => {
  for (const d of created) d.remove();
});

/** Saves src into memory, loads into dst, returns both devices' checksums and the stream. */
async function roundTrip(src: Device, dst: Device, saveOptions = {}) {
  const io = memorySink();
  const saved = await requireMigration(src).save(io.sink, saveOptions);
  const loaded = await requireMigration(dst).load(io.source());
  return { saved, loaded, io };
}

const KINDS: Kind[] = ['v1', 'v1-trapped', 'v2'];
const CHUNK = 64 * 1024;

for (const kind of KINDS) {
  describe(`test driver ${kind} on ${guestKernel || 'host'}`, { skip: needsDriver }, () => {
    for (const stateSize of [0, 1, 4096, CHUNK * 3 + 123, 64 << 20]) {
      test(`round trip of ${stateSize} bytes: destination checksum equals source`, async () => {
        const a = make(kind, { stateSize, chunkSize: CHUNK });
        const b = make(kind, { stateSize, chunkSize: CHUNK });
        using src = a.open();
        using dst = b.open();
        bar0Mutate(src, 0x1234n + BigInt(stateSize));
        const before = bar0Checksum(src);
        if (stateSize > 0) assert.notEqual(bar0Checksum(dst), before, 'devices differ before the load');
        const { saved, io } = await roundTrip(src, dst);
        assert.equal(bar0Checksum(dst), before);
        assert.equal(await requireMigration(src).state(), 'STOP');
        assert.equal(await requireMigration(dst).state(), 'RUNNING');
        const v = await verify(io.source());
        assert.equal(v.header.protocol, kind === 'v2' ? 'v2' : 'v1');
        assert.equal(v.records, saved.records);
        if (kind !== 'v2' && stateSize > 0) {
          // v1 records are transactions: never larger than the data section.
          for (const p of v.phases) assert.ok(p.bytes > 0n);
        }
      });
    }

    test(
      'pre-copy with the device dirtying itself: iterations happen and the result is exact',
      { skip: kind === 'v2' && guestKernel === '6.1' ? 'PRE_COPY needs kernel 6.2+' : false },
      async () => {
        const a = make(kind, { stateSize: 4 << 20, chunkSize: CHUNK, dirtyRate: 65536 });
        const b = make(kind, { stateSize: 4 << 20, chunkSize: CHUNK });
        using src = a.open();
        using dst = b.open();
        bar0Mutate(src, 77n);
        const phases = new Set<string>();
        const io = memorySink();
        const saved = await requireMigration(src).save(io.sink, {
          precopy: { maxIterations: 4 },
          onProgress: (p) => phases.add(p.phase),
        });
        assert.ok(saved.precopyIterations >= 1, `pre-copy iterated (${saved.precopyIterations})`);
        assert.ok(saved.precopyBytes > 0);
        assert.ok(phases.has('precopy') && phases.has('stop-copy'));
        const stopped = bar0Checksum(src);
        await requireMigration(dst).load(io.source());
        assert.equal(bar0Checksum(dst), stopped, 'destination equals the source as it stopped');
      },
    );

    test('abort mid-save: the source runs again with its state intact, the stream has no trailer', async () => {
      const a = make(kind, { stateSize: 8 << 20, chunkSize: CHUNK });
      using src = a.open();
      bar0Mutate(src, 5n);
      const before = bar0Checksum(src);
      const ac = new AbortController();
      const io = memorySink();
      let n = 0;
      const sink = async (c: Buffer) => {
        await io.sink(c);
        if (++n === 4) ac.abort(new Error('test abort'));
      };
      await assert.rejects(
        requireMigration(src).save(sink, { signal: ac.signal }),
        (e: MigrationError) => e.code === 'ERR_MIGRATION_ABORTED' && e.recovery === 'running',
      );
      assert.equal(await requireMigration(src).state(), 'RUNNING');
      assert.equal(bar0Checksum(src), before);
      await assert.rejects(verify(io.source()));
    });

    test('every fault point, source and destination: a clear error, source RUNNING, destination reset', async () => {
      const a = make(kind, { stateSize: 3 * CHUNK + 5, chunkSize: CHUNK });
      const b = make(kind, { stateSize: 3 * CHUNK + 5, chunkSize: CHUNK });
      const points = a.faultPoints();
      assert.ok(points.length > 5, `fault points listed: ${points.join(' ')}`);
      using src = a.open();
      using dst = b.open();
      bar0Mutate(src, 99n);
      const good = memorySink();
      await requireMigration(src).save(good.sink, { leave: 'running' });
      const expected = bar0Checksum(src);
      let failedSaves = 0;
      let failedLoads = 0;
      for (const point of points) {
        for (const suffix of ['', ' error']) {
          try {
            a.set('fault', `${point} EIO${suffix}`);
          } catch {
            continue; // the driver refuses this combination (e.g. mmap faults cannot enter the error state)
          }
          try {
            await requireMigration(src).save(memorySink().sink, { leave: 'running', precopy: { maxIterations: 1 } });
          } catch (err) {
            failedSaves++;
            assert.ok(err instanceof MigrationError, `${point}: ${String(err)}`);
            assert.match(
              err.message,
              /\bE[A-Z0-9]+\b|ERROR|error state/,
              `${point}${suffix}: the message names the errno or state`,
            );
            assert.ok(['running', 'reset'].includes(err.recovery), `${point}${suffix}: recovery ${err.recovery}`);
          }
          a.set('fault', 'none');
          assert.equal(await requireMigration(src).state(), 'RUNNING', `${point}${suffix}: the source runs`);

          b.set('fault', `${point} EIO${suffix}`);
          try {
            await requireMigration(dst).load(good.source());
            assert.equal(bar0Checksum(dst), expected, `${point}${suffix}: a load that succeeded is exact`);
          } catch (err) {
            failedLoads++;
            assert.ok(err instanceof MigrationError, `${point}: ${String(err)}`);
            assert.equal(err.recovery, 'reset', `${point}${suffix}: destination reset`);
            // A register fault is named as that register's step, also when its write shares a job with the data.
            const register = /^v1\.(read|write)\.(data_offset|data_size)$/.exec(point);
            if (register)
              assert.match(
                err.message,
                new RegExp(`${register[1]} ${register[2]} failed`),
                `${point}${suffix}: ${err.message}`,
              );
          }
          b.set('fault', 'none');
          assert.equal(
            await requireMigration(dst).state(),
            'RUNNING',
            `${point}${suffix}: destination out of RESUMING`,
          );
        }
      }
      assert.ok(failedSaves > 0 && failedLoads > 0, `faults were hit (saves ${failedSaves}, loads ${failedLoads})`);
    });
  });
}

describe(`wrong streams and devices without migration on ${guestKernel || 'host'}`, { skip: needsDriver }, () => {
  test('a v1 stream is refused by a v2 device before anything is written; a none device has no migration', async () => {
    const a = make('v1', { stateSize: 10000 });
    const b = make('v2', { stateSize: 10000 });
    const c = make('none');
    using src = a.open();
    using dst = b.open();
    using plain = c.open();
    const io = memorySink();
    await requireMigration(src).save(io.sink);
    await assert.rejects(
      requireMigration(dst).load(io.source()),
      (e: MigrationError) => e.code === 'ERR_MIGRATION_MISMATCH' && /v1/.test(e.message),
    );
    assert.equal(await requireMigration(dst).state(), 'RUNNING');
    assert.equal(plain.migration, null);
    assert.throws(
      () => requireMigration(plain),
      (e: MigrationError) => e.code === 'ERR_MIGRATION_NONE',
    );
  });

  test('a v1 stream from the mmap type is refused by the trapped type unless forced', async () => {
    const a = make('v1', { stateSize: 10000 });
    const b = make('v1-trapped', { stateSize: 10000 });
    using src = a.open();
    using dst = b.open();
    bar0Mutate(src, 3n);
    const io = memorySink();
    await requireMigration(src).save(io.sink);
    await assert.rejects(
      requireMigration(dst).load(io.source()),
      (e: MigrationError) => e.code === 'ERR_MIGRATION_MISMATCH' && /mdevType/.test(e.message),
    );
    await requireMigration(dst).load(io.source(), { force: true });
    assert.equal(bar0Checksum(dst), bar0Checksum(src));
  });
});

describe(
  `several devices: P2P first, then stop, then save each on ${guestKernel || 'host'}`,
  { skip: needsDriver },
  () => {
    test('stopDevices moves every v2 device through RUNNING_P2P before any is stopped; saves from STOP are exact', async () => {
      const { stopDevices } = await import('../../lib');
      const sources = [
        make('v2', { stateSize: 100000 }),
        make('v2', { stateSize: 100000 }),
        make('v1', { stateSize: 100000 }),
      ];
      const targets = sources.map((s) => make(s.kind, { stateSize: 100000 }));
      const open = sources.map((s) => s.open());
      const dsts = targets.map((t) => t.open());
      try {
        open.forEach((d, i) => bar0Mutate(d, BigInt(i + 10)));
        await stopDevices(open.map((d) => requireMigration(d)));
        for (const d of open) assert.equal(await requireMigration(d).state(), 'STOP');
        const arcs = sources[0].get('counters');
        assert.match(arcs, /v2\.arcs/);
        for (let i = 0; i < open.length; i++) {
          const io = memorySink();
          await requireMigration(open[i]).save(io.sink);
          await requireMigration(dsts[i]).load(io.source());
          assert.equal(bar0Checksum(dsts[i]), bar0Checksum(open[i]));
        }
      } finally {
        [...open, ...dsts].forEach((d) => d.close());
      }
    });
  },
);

describe(
  `several v2 devices, one state change job (real kernel) on ${guestKernel || 'host'}`,
  { skip: needsDriver },
  () => {
    test("setStatesTogether moves every device each arc in one deviceFeaturesAsync call; data_fds are adopted close-on-exec; one device's error is its own", async () => {
      const { Device, uapi } = await import('../../lib');
      const { V2Engine } = await import('../../lib/migration/v2');
      const before = openFdCount();
      const devices = [
        make('v2', { stateSize: 8192 }),
        make('v2', { stateSize: 8192 }),
        make('v2', { stateSize: 8192 }),
      ].map((t) => t.open());
      try {
        const engines = devices.map((d) => requireMigration(d).engine as InstanceType<typeof V2Engine>);
        for (const e of engines) assert.equal(await e.getState(), uapi.VFIO_DEVICE_STATE_RUNNING);
        await V2Engine.setStatesTogether(engines, uapi.VFIO_DEVICE_STATE_RUNNING_P2P);
        await V2Engine.setStatesTogether(engines, uapi.VFIO_DEVICE_STATE_STOP);
        for (const d of devices) assert.equal(await requireMigration(d).state(), 'STOP');
        await V2Engine.setStatesTogether(engines, uapi.VFIO_DEVICE_STATE_RESUMING);
        for (const e of engines) {
          const fd = e.dataFd?.fd;
          assert.ok(fd !== undefined && fd >= 0, 'each RESUMING session adopted its data_fd');
          const flags = Number.parseInt(
            /^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!,
            8,
          );
          assert.ok(flags & 0o2000000, `data_fd ${fd} is O_CLOEXEC`);
        }
        // The raw batch: a GET on one device and a SET of a state that does not exist on another.
        const { vfio_device_feature: head, vfio_device_feature_mig_state: mig } = uapi.layout;
        const feature = (flags: number, state = 0): Buffer => {
          const b = Buffer.alloc(head.size + mig.size);
          b.writeUInt32LE(b.length, head.fields.argsz);
          b.writeUInt32LE(flags, head.fields.flags);
          b.writeUInt32LE(state, head.size + mig.fields.device_state);
          b.writeInt32LE(-1, head.size + mig.fields.data_fd);
          return b;
        };
        const get = feature(uapi.VFIO_DEVICE_FEATURE_GET | uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
        const bad = feature(uapi.VFIO_DEVICE_FEATURE_SET | uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 9);
        const results = await Device.featuresAsync([devices[0]!, devices[1]!], [get, bad]);
        assert.equal(results[0], 0);
        assert.equal(get.readUInt32LE(head.size + mig.fields.device_state), uapi.VFIO_DEVICE_STATE_RESUMING);
        assert.ok(
          results[1] instanceof Error && (results[1] as Error & { code?: string }).code === 'EINVAL',
          String(results[1]),
        );
        assert.equal(
          await requireMigration(devices[1]!).state(),
          'RESUMING',
          'the refused SET left the device as it was',
        );
      } finally {
        for (const d of devices) d.close();
      }
      assert.equal(openFdCount(), before, 'no fd left open');
    });

    test("setStatesTogether runs the devices' arcs at once: a slow device's firmware time is paid once, not once per device", async () => {
      const { uapi } = await import('../../lib');
      const { V2Engine } = await import('../../lib/migration/v2');
      // Each arc sleeps 100 ms in the driver, holding its device's lock, as a real device's
      // quiesce or save does. The driver counts the arcs in progress at once: no clock involved.
      const devices = [0, 1, 2].map(() => make('v2', { stateSize: 8192, arcDelayUs: 100_000 }).open());
      try {
        const engines = devices.map((d) => requireMigration(d).engine as InstanceType<typeof V2Engine>);
        for (const e of engines) assert.equal(await e.getState(), uapi.VFIO_DEVICE_STATE_RUNNING);
        const targets = { RUNNING_P2P: uapi.VFIO_DEVICE_STATE_RUNNING_P2P, STOP: uapi.VFIO_DEVICE_STATE_STOP };
        for (const [name, target] of Object.entries(targets)) {
          resetArcsPeak();
          await V2Engine.setStatesTogether(engines, target);
          assert.equal(arcsInFlightPeak(), devices.length, `the ${devices.length} arcs to ${name} overlapped`);
        }
        for (const d of devices) assert.equal(await requireMigration(d).state(), 'STOP');
      } finally {
        for (const d of devices) d.close();
      }
    });
  },
);
