// Unit tests of the v1 client's policy logic against an in-process MODEL of the vendor driver (test/models/v1-device.ts), not a kernel.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Device } from '../../lib/device';
import {
  Migration,
  MigrationError,
  V1Engine,
  V1_ARCS,
  checkV1Transition,
  isValidV1State,
  splitByAreas,
  verify,
} from '../../lib/migration';
import { V1ModelDevice, type ModelOptions } from '../models/v1-device';
import { SyscallError } from '../../lib/errors';
import { FdSource } from '../../lib/migration/source';
import { native } from '../../lib/native';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A FIFO as [read fd (non-blocking, for the FdSource), write fd], removed from the file system at once. */
function pipe(): [number, number] {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-v1-'));
  try {
    execFileSync('mkfifo', [join(dir, 'p')]);
    const r = native.open(join(dir, 'p'), 0o4000 /* O_RDONLY | O_NONBLOCK */);
    return [r, openSync(join(dir, 'p'), 'w')];
  } finally {
    rmSync(dir, { recursive: true });
  }
}
import type { MigrationEngine } from '../../lib/migration/types';

function model(opts: Partial<ModelOptions> = {}): { dev: V1ModelDevice; mig: Migration } {
  const dev = new V1ModelDevice({ stateSize: 10000, chunkSize: 4096, ...opts });
  const asDevice = dev as unknown as Device;
  return { dev, mig: new Migration(asDevice, new V1Engine(asDevice, dev.info)) };
}

function collector(): { chunks: Buffer[]; sink: (c: Buffer) => Promise<void>; source: () => AsyncIterable<Buffer> } {
  const chunks: Buffer[] = [];
  return {
    chunks,
    sink: async (c) => {
      chunks.push(Buffer.from(c));
    },
    source: () =>
      (async function* () {
        yield* chunks;
      })(),
  };
}

test('model: the transition table allows the spec arcs and refuses the rest before any device access', () => {
  for (let from = 0; from < 8; from++) {
    for (let to = 0; to < 8; to++) {
      const allowed = (V1_ARCS.get(from) ?? []).includes(to);
      if (allowed) assert.doesNotThrow(() => checkV1Transition(from, to));
      else
        assert.throws(
          () => checkV1Transition(from, to),
          (e: MigrationError) => e.code === 'ERR_MIGRATION_STATE',
        );
    }
  }
  assert.equal(isValidV1State(0b101), false);
  assert.equal(isValidV1State(0b111), false);
  assert.equal(isValidV1State(0b100), true);
  assert.throws(() => checkV1Transition(0b100, 0b010), /RESUMING -> SAVING \(stop-and-copy\): not a legal transition/);
});

test('splitByAreas keeps mmap-covered and trapped parts as single large segments', () => {
  const areas = [{ offset: 4096n, size: 8192n }];
  assert.deepEqual(splitByAreas(4096n, 8192, areas), [{ regionOffset: 4096n, bufferOffset: 0, length: 8192, area: 0 }]);
  assert.deepEqual(splitByAreas(2048n, 4096, areas), [
    { regionOffset: 2048n, bufferOffset: 0, length: 2048, area: -1 },
    { regionOffset: 4096n, bufferOffset: 2048, length: 2048, area: 0 },
  ]);
  assert.deepEqual(splitByAreas(12000n, 1000, areas), [
    { regionOffset: 12000n, bufferOffset: 0, length: 288, area: 0 },
    { regionOffset: 12288n, bufferOffset: 288, length: 712, area: -1 },
  ]);
  assert.deepEqual(splitByAreas(100n, 50, []), [{ regionOffset: 100n, bufferOffset: 0, length: 50, area: -1 }]);
});

for (const mmap of [true, false]) {
  for (const stateSize of [0, 1, 4092, 4096, 10000, 100000]) {
    test(`model: save then load round trip, ${stateSize} bytes, ${mmap ? 'mmap' : 'trapped'} data section`, async () => {
      const src = model({ stateSize, mmap });
      src.dev.fill(3);
      const dst = model({ stateSize, mmap });
      const io = collector();
      const saved = await src.mig.save(io.sink);
      assert.equal(src.dev.deviceState, 0, 'source ends in STOP');
      assert.equal(saved.bytes, BigInt(stateSize === 0 ? 0 : stateSize + 4 * Math.ceil(stateSize / 4092)));
      const checked = await verify(io.source());
      assert.equal(checked.records, saved.records);
      await dst.mig.load(io.source());
      assert.equal(dst.dev.deviceState, 1, 'destination ends RUNNING');
      assert.ok(dst.dev.state.equals(src.dev.state));
    });
  }
}

test('model: spec steps a-f in order: pending, offset, size, data, then pending again', async () => {
  const { dev, mig } = model({ stateSize: 5000 });
  await mig.save(collector().sink);
  const seq = dev.accesses.filter((a) => a !== 'read device_state' && a !== 'write device_state');
  assert.deepEqual(seq.slice(0, 9), [
    'read pending_bytes',
    'read data_offset',
    'read data_size',
    'pread data',
    'read pending_bytes',
    'read data_offset',
    'read data_size',
    'pread data',
    'read pending_bytes',
  ]);
});

test('model: reserved bits 3-31 are preserved by every state write', async () => {
  const { dev, mig } = model({ stateSize: 100 });
  dev.reserved = 0xabcd0008;
  await mig.save(collector().sink);
  assert.equal(dev.deviceState, 0);
});

test('model: pre-copy with a self-dirtying device: iterations stop by policy and the result is exact', async () => {
  const src = model({ stateSize: 50000, dirtyPerRead: 50 });
  src.dev.fill(9);
  const io = collector();
  const events: string[] = [];
  const r = await src.mig.save(io.sink, { precopy: { maxIterations: 3 }, onProgress: (p) => events.push(p.phase) });
  assert.ok(r.precopyIterations >= 1 && r.precopyIterations <= 3);
  assert.ok(r.precopyBytes > 0);
  assert.ok(events.includes('precopy') && events.includes('stop-copy') && events.at(-1) === 'done');
  const dst = model({ stateSize: 50000 });
  await dst.mig.load(io.source());
  assert.ok(dst.dev.state.equals(src.dev.state), 'destination equals the source as it was when stopped');
});

test('model: pre-copy threshold stops iterating at once when pending is below it', async () => {
  const src = model({ stateSize: 1000 });
  const r = await src.mig.save(collector().sink, { precopy: { maxIterations: 5, threshold: 1 << 20 } });
  assert.equal(r.precopyIterations, 0);
});

test('model: data_size 0 while pending_bytes > 0 is a protocol error, and the source runs again', async () => {
  const { dev } = model({ stateSize: 100 });
  const region = dev.region(9);
  const orig = region.read;
  dev.region = () =>
    ({ ...region, read: (o: number, w: number) => (o === 24 ? 0n : orig(o, w)) }) as ReturnType<
      V1ModelDevice['region']
    >;
  const m = new Migration(dev as unknown as Device, new V1Engine(dev as unknown as Device, dev.info));
  const io = collector();
  await assert.rejects(
    m.save(io.sink),
    (e: MigrationError) =>
      e.code === 'ERR_MIGRATION_PROTOCOL' &&
      /data_size is 0 while pending_bytes is 100/.test(e.message) &&
      e.recovery === 'running',
  );
  assert.equal(dev.deviceState, 1);
  await assert.rejects(verify(io.source()), /trailer|incomplete/, 'no trailer was written');
});

test('model: data_offset outside the region is refused before any data access', async () => {
  const { dev } = model({ stateSize: 100 });
  const region = dev.region(9);
  const orig = region.readAsync;
  dev.region = () =>
    ({
      ...region,
      readAsync: async (o: number, w: number) => {
        const v = await orig(o, w);
        return o === 16 ? 1n << 40n : v;
      },
    }) as ReturnType<V1ModelDevice['region']>;
  const m = new Migration(dev as unknown as Device, new V1Engine(dev as unknown as Device, dev.info));
  await assert.rejects(
    m.save(collector().sink),
    (e: MigrationError) => e.code === 'ERR_MIGRATION_PROTOCOL' && /outside the data section/.test(e.message),
  );
  assert.ok(!dev.accesses.includes('pread data'));
});

test('model: a failing step names the step and errno; the source goes back to RUNNING', async () => {
  let armed = true;
  const { dev, mig } = model({
    stateSize: 10000,
    fault: (a) => {
      if (armed && a === 'read data_size') {
        armed = false;
        const e = new Error('pread EIO') as Error & { code: string };
        e.code = 'EIO';
        throw Object.assign(new SyscallError('pread EIO'), { code: 'EIO', errno: -5, syscall: 'pread' });
      }
    },
  });
  await assert.rejects(
    mig.save(collector().sink),
    (e: MigrationError) =>
      e.code === 'ERR_MIGRATION_DEVICE' &&
      e.step === 'read data_size' &&
      e.errno === 'EIO' &&
      e.recovery === 'running' &&
      /RUNNING again/.test(e.message),
  );
  assert.equal(dev.deviceState, 1);
});

test('model: a state write that leaves the device in the error state is recovered by reset, and says so', async () => {
  const { dev, mig } = model({
    stateSize: 100,
    fault: (a) => {
      if (a === 'write device_state' && dev.deviceState === 1) {
        dev.deviceState = 6;
        throw Object.assign(new SyscallError('pwrite EIO'), { code: 'EIO', errno: -5, syscall: 'pwrite' });
      }
    },
  });
  await assert.rejects(
    mig.save(collector().sink),
    (e: MigrationError) =>
      e.code === 'ERR_MIGRATION_STATE' &&
      e.recovery === 'reset' &&
      /ERROR/.test(e.message) &&
      /VFIO_DEVICE_RESET/.test(e.message),
  );
  assert.equal(dev.resets, 1);
  assert.equal(dev.deviceState, 1);
});

test('model: abort mid-save: the source runs again and the stream has no trailer', async () => {
  const { dev, mig } = model({ stateSize: 100000, chunkSize: 4096 });
  const ac = new AbortController();
  const io = collector();
  let n = 0;
  const sink = async (c: Buffer) => {
    await io.sink(c);
    if (++n === 5) ac.abort(new Error('operator pressed Ctrl-C'));
  };
  await assert.rejects(
    mig.save(sink, { signal: ac.signal }),
    (e: MigrationError) => e.code === 'ERR_MIGRATION_ABORTED' && /Ctrl-C/.test(e.message) && e.recovery === 'running',
  );
  assert.equal(dev.deviceState, 1);
  await assert.rejects(verify(io.source()));
});

test('model: a corrupt or truncated stream leaves the destination reset with an error naming the record', async () => {
  const src = model({ stateSize: 20000 });
  src.dev.fill(1);
  const io = collector();
  await src.mig.save(io.sink);
  const whole = Buffer.concat(io.chunks);
  const cut = whole.subarray(0, whole.length - 30);
  const dst = model({ stateSize: 20000 });
  await assert.rejects(
    dst.mig.load(
      (async function* () {
        yield cut;
      })(),
    ),
    (e: MigrationError) => e.code === 'ERR_MIGRATION_STREAM' && e.recovery === 'reset',
  );
  assert.equal(dst.dev.resets, 1);
  assert.equal(dst.dev.deviceState, 1, 'out of RESUMING');
  const flipped = Buffer.from(whole);
  flipped[whole.length - 100] ^= 1;
  const dst2 = model({ stateSize: 20000 });
  await assert.rejects(
    dst2.mig.load(
      (async function* () {
        yield flipped;
      })(),
    ),
    (e: MigrationError) => e.code === 'ERR_MIGRATION_STREAM' && e.record !== undefined && e.recovery === 'reset',
  );
});

test('model: a load waiting on a stalled pipe, aborted by closing its source, is an abort (not I/O) and resets', async () => {
  const src = model({ stateSize: 20000 });
  src.dev.fill(3);
  const io = collector();
  await src.mig.save(io.sink);
  const whole = Buffer.concat(io.chunks);
  const [r, w] = pipe();
  writeSync(w, whole.subarray(0, whole.length >> 1)); // half the stream, then nothing: the writer stalls
  const source = new FdSource(r, { closeFd: true });
  const ac = new AbortController();
  // What vfio-mig does on a signal: the abort closes the input, which cancels the waiting read.
  ac.signal.addEventListener('abort', () => source.close(), { once: true });
  const dst = model({ stateSize: 20000 });
  setTimeout(() => ac.abort(new Error('interrupted by SIGINT')), 100);
  try {
    await assert.rejects(
      dst.mig.load(source, { signal: ac.signal }),
      (e: MigrationError) =>
        e.code === 'ERR_MIGRATION_ABORTED' && /interrupted by SIGINT/.test(e.message) && e.recovery === 'reset',
    );
  } finally {
    closeSync(w);
  }
  assert.equal(dst.dev.resets, 1);
});

test('host test: a Migration closes its engine through close() and Symbol.dispose, both methods of the class', () => {
  let closed = 0;
  const engine = { protocol: 'v1', close: () => void closed++ } as unknown as MigrationEngine;
  {
    using m = new Migration({} as Device, engine);
    assert.equal(Object.hasOwn(m, 'close'), false, 'close is not patched onto the object');
    m.close();
  }
  assert.equal(closed, 2, 'close() and the dispose at the end of the block each reached the engine');
});
