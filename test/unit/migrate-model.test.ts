// Unit tests of migrate/receive against in-process MODEL devices (test/models/v1-device.ts) on the host: wire format and transaction.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import type { Device } from '../../lib/device';
import {
  FRAME,
  Migration,
  RECEIVE_QUEUE_BYTES,
  MigrateError,
  V1Engine,
  WIRE_VERSION,
  channelPair,
  migrate,
  migrateLocal,
  receive,
} from '../../lib/migration';
import { WireEnd, decodePreamble, encodeFrame, encodePreamble } from '../../lib/migration/wire';
import { V1ModelDevice, type ModelOptions } from '../models/v1-device';
import { eagerFeedbackScopes } from '../../lib/eager-feedback';
import { majorGcHolds } from '../../lib/gc-hold';

function model(seed: number, opts: Partial<ModelOptions> = {}): { dev: V1ModelDevice; mig: Migration } {
  const dev = new V1ModelDevice({ stateSize: 20000, chunkSize: 4096, ...opts });
  if (seed) dev.fill(seed);
  const asDevice = dev as unknown as Device;
  return { dev, mig: new Migration(asDevice, new V1Engine(asDevice, dev.info)) };
}

test('host: the preamble and a frame encode and decode; a foreign preamble is refused', async () => {
  const p = encodePreamble();
  assert.equal(p.length, 12);
  assert.equal(p.subarray(0, 8).toString('latin1'), 'VFIOMIGW');
  assert.equal(decodePreamble(p), WIRE_VERSION);
  assert.throws(() => decodePreamble(Buffer.from('VFIOMIG\0\x01\x00\x00\x00', 'latin1')), /does not speak/);
  const [a, b] = channelPair();
  const wa = new WireEnd(a);
  const wb = new WireEnd(b);
  await wa.writePreamble();
  await wa.sendMessage(FRAME.hello, 3, { x: 1 });
  await wa.send(FRAME.data, 2, Buffer.from([1, 2, 3]));
  assert.equal(await wb.readPreamble(), WIRE_VERSION);
  const f1 = await wb.read();
  assert.deepEqual([f1!.type, f1!.device, JSON.parse(f1!.payload.toString())], [FRAME.hello, 3, { x: 1 }]);
  const f2 = await wb.read();
  assert.deepEqual([f2!.type, f2!.device, [...f2!.payload]], [FRAME.data, 2, [1, 2, 3]]);
  // The exact bytes: type, reserved, u16 device, u32 length, payload.
  assert.deepEqual([...encodeFrame(0x10, 0x0102, Buffer.from([9]))], [0x10, 0, 2, 1, 1, 0, 0, 0, 9]);
  wa.close();
  assert.equal(await wb.read(), null);
});

test('model: one device migrates; the destination holds the state and runs, the source is stopped (committed)', async () => {
  const src = model(5);
  const dst = model(0);
  const r = await migrateLocal([[src.mig, dst.mig]]);
  assert.ok(dst.dev.state.equals(src.dev.state));
  assert.equal(dst.dev.deviceState, 1, 'destination RUNNING');
  assert.equal(src.dev.deviceState, 0, 'source STOP');
  assert.ok(r.devices[0]!.bytes >= 20000);
  assert.ok(r.downtimeMs >= 0 && r.downtimeMs <= r.elapsedMs);
  assert.equal(r.receiver.devices[0]!.bytes, r.devices[0]!.bytes);
});

test("model: each end reports its own work in the downtime; the destination's reaches the source in RUNNING", async () => {
  const src = model(7);
  const dst = model(0);
  const r = await migrateLocal([[src.mig, dst.mig]]);
  assert.equal(typeof r.downtimeCpuMs, 'number', 'the host kernel has the thread CPU clock');
  assert.equal(typeof r.receiver.downtimeCpuMs, 'number');
  assert.equal(r.destinationDowntimeCpuMs, r.receiver.downtimeCpuMs, 'relayed as the receiver measured it');
  // One thread, and the destination's span (its first sign of the stop to its RUNNING) lies
  // inside the source's (the first stop to RUNNING received): never more, up to the rounding.
  assert.ok(
    r.destinationDowntimeCpuMs! <= r.downtimeCpuMs! + 0.1,
    `destination ${r.destinationDowntimeCpuMs} ms, source ${r.downtimeCpuMs} ms`,
  );
});

test('model: a RUNNING whose downtimeCpuMs is not a duration is ignored, not reported', async () => {
  // As JSON text: 1e400 parses to Infinity.
  for (const hostile of ['-1', '"many"', 'null', '1e400', '{}']) {
    const src = model(8);
    const dst = model(0);
    const toDst = new PassThrough();
    const toSrc = new PassThrough();
    const fromDst = new PassThrough();
    // Frame headers are written as chunks of their own: RUNNING's header and body are replaced.
    let dropBody = false;
    fromDst.on('data', (c: Buffer) => {
      if (dropBody) {
        dropBody = false;
        return;
      }
      if (c.length === 8 && c[0] === FRAME.running) {
        dropBody = true;
        const body = `{"resumeMs":1,"downtimeCpuMs":${hostile},"devices":[]}`;
        toSrc.write(encodeFrame(FRAME.running, 0, Buffer.from(body)));
        return;
      }
      toSrc.write(c);
    });
    const recv = receive([dst.mig], { readable: toDst, writable: fromDst });
    recv.catch(() => undefined);
    const r = await migrate([src.mig], { readable: toSrc, writable: toDst });
    await recv;
    assert.equal(r.destinationDowntimeCpuMs, undefined, `downtimeCpuMs ${hostile}`);
    assert.ok(dst.dev.state.equals(src.dev.state));
  }
});

test('model: a source that answers "ready" before the receiver saw its own write of it complete: no frame is lost', async () => {
  // The receiver's writes are called back a few ms late (a busy channel) while their bytes
  // reach the source at once, so the source's first DATA frames can arrive before the receiver
  // continues after sending "ready". They must still reach the device's stream.
  const toDestination = new PassThrough();
  const toSource = new PassThrough();
  const late = new PassThrough();
  const realWrite = late.write.bind(late);
  late.write = ((chunk: Buffer, cb?: (err?: Error | null) => void) =>
    realWrite(chunk, (err?: Error | null) => setTimeout(() => cb?.(err), 20))) as typeof late.write;
  late.on('data', (c: Buffer) => toSource.write(c));
  const src = model(6);
  const dst = model(0);
  const recv = receive([dst.mig], { readable: toDestination, writable: late });
  recv.catch(() => undefined);
  await migrate([src.mig], { readable: toSource, writable: toDestination }, { timeoutMs: 5000 });
  await recv;
  assert.ok(dst.dev.state.equals(src.dev.state));
});

test('model: migrate pre-copies by default (a live migration); precopy: false goes straight to stop-and-copy', async () => {
  for (const precopy of [undefined, false] as const) {
    const src = model(4);
    const dst = model(0);
    const r = await migrateLocal([[src.mig, dst.mig]], precopy === undefined ? {} : { precopy });
    assert.ok(dst.dev.state.equals(src.dev.state));
    const d = r.devices[0]!;
    if (precopy === false) {
      assert.equal(d.precopyIterations, 0);
      assert.equal(d.stopCopyBytes, d.bytes, 'every byte moved while stopped');
    } else {
      assert.ok(d.precopyIterations >= 1, 'pre-copied');
      assert.ok(
        d.precopyBytes > 0 && d.stopCopyBytes < d.bytes,
        `${d.precopyBytes} pre-copied, ${d.stopCopyBytes} stopped`,
      );
    }
  }
});

test('model: three devices with pre-copy and switchover-ack migrate together', async () => {
  const pairs = [1, 2, 3].map((s) => [model(s, { dirtyPerRead: 3 }), model(0)] as const);
  const r = await migrateLocal(
    pairs.map(([s, d]) => [s.mig, d.mig] as const),
    { precopy: { maxIterations: 3 }, switchoverAck: true },
  );
  for (const [s, d] of pairs) assert.ok(d.dev.state.equals(s.dev.state));
  assert.equal(r.devices.length, 3);
  assert.ok(r.devices.every((d) => d.precopyIterations >= 1));
});

test('model: the major-GC hold covers the downtime only: none while pre-copying, held when the destination validates, released after', async () => {
  const src = model(9);
  const seen: { access: string; holds: number }[] = [];
  const dst = model(0, {
    fault: (access) => {
      if (access === 'pwrite data' || access === 'write device_state') seen.push({ access, holds: majorGcHolds() });
    },
  });
  const r = await migrateLocal([[src.mig, dst.mig]]);
  const trace = seen.map((s) => `${s.access} ${s.holds}`).join(', ');
  assert.ok(r.devices[0]!.precopyIterations > 0, 'pre-copied');
  assert.equal(seen.find((s) => s.access === 'pwrite data')?.holds, 0, 'not held during pre-copy');
  // The destination's device_state writes: STOP -> RESUMING before the stop, RESUMING -> STOP
  // (validation) in the downtime, then RUNNING after the commit.
  const states = seen.filter((s) => s.access === 'write device_state').map((s) => s.holds);
  assert.equal(states[0], 0, `not held while entering RESUMING (${trace})`);
  assert.ok(
    states.slice(1).some((n) => n >= 1),
    `held when the destination validates (${trace})`,
  );
  assert.equal(majorGcHolds(), 0, 'released');
});

test('model: feedback is eager through both ends, from before the first record to their end, whether they succeed or fail', async () => {
  const src = model(9);
  const open: number[] = [];
  const dst = model(0, {
    fault: (access) => {
      if (access === 'pwrite data') open.push(eagerFeedbackScopes());
    },
  });
  await migrateLocal([[src.mig, dst.mig]]);
  assert.ok(open.length > 0, 'the destination wrote data');
  assert.deepEqual(new Set(open), new Set([2]), 'migrate() and receive() each held a scope while data moved');
  assert.equal(eagerFeedbackScopes(), 0, 'both closed');

  let writes = 0;
  const failing = model(0, {
    fault: (a) => {
      if (a.startsWith('write data') && ++writes === 3) throw Object.assign(new Error('injected EIO'), { code: 'EIO' });
    },
  });
  await assert.rejects(migrateLocal([[model(3).mig, failing.mig]]));
  assert.equal(eagerFeedbackScopes(), 0, 'both closed after a failure');
});

test('model: a destination fault while loading: the source RUNNING with its state, the destination reset', async () => {
  const src = model(7);
  const before = Buffer.from(src.dev.state);
  let writes = 0;
  const dst = model(0, {
    fault: (a) => {
      if (a.startsWith('write data') && ++writes === 3) throw Object.assign(new Error('injected EIO'), { code: 'EIO' });
    },
  });
  await assert.rejects(migrateLocal([[src.mig, dst.mig]]), (err: MigrateError) => {
    assert.equal(err.name, 'MigrateError');
    assert.equal(err.side, 'destination');
    assert.equal(err.committed, false);
    assert.match(err.message, /RUNNING again/);
    return true;
  });
  assert.equal(src.dev.deviceState, 1, 'source RUNNING');
  assert.ok(src.dev.state.equals(before), 'source state intact');
  assert.ok(dst.dev.resets >= 1, 'destination reset');
  assert.equal(majorGcHolds(), 0, 'the major-GC hold released');
});

test('model: one source fails while another reads: no recovery starts before every device step has ended', async () => {
  // Source 0 fails its second data read; source 1's first data read is held for 300 ms, so it is
  // in flight when source 0 fails. Recovering source 1 (a state write, or a reset) before its
  // read returned would race the driver: the model records any access during the read.
  let release: () => void = () => undefined;
  const held = new Promise<void>((resolve) => (release = resolve));
  setTimeout(() => release(), 300).unref();
  let reads0 = 0;
  const src0 = model(3, {
    fault: (a) => {
      if (a === 'pread data' && ++reads0 === 2) throw Object.assign(new Error('injected EIO'), { code: 'EIO' });
    },
  });
  const src1 = model(5, { stall: (_a, n) => (n === 1 ? held : undefined) });
  const before = [Buffer.from(src0.dev.state), Buffer.from(src1.dev.state)];
  await assert.rejects(
    migrateLocal([
      [src0.mig, model(0).mig],
      [src1.mig, model(0).mig],
    ]),
    (err: MigrateError) => {
      assert.equal(err.side, 'source');
      assert.match(err.message, /injected EIO/, 'the first failure is the one reported, not the others stopping');
      return true;
    },
  );
  assert.deepEqual(src1.dev.overlapped, [], 'no access to source 1 while its read was in flight');
  for (const [i, s] of [src0, src1].entries()) {
    assert.equal(s.dev.deviceState, 1, `source ${i} RUNNING`);
    assert.ok(s.dev.state.equals(before[i]!), `source ${i} state intact`);
  }
});

test('model: one source fails while another waits on a stalled channel: both settle, the channel is dropped, both RUNNING', async () => {
  // The relay towards the destination stops forwarding once the pre-copy starts, so source 1's
  // writes wait on back-pressure nobody relieves; source 0's first data read then fails. The
  // failure must not wait for the peer's timeout: the channel goes a second after it.
  const toDestination = new PassThrough({ readableObjectMode: true, readableHighWaterMark: 4 });
  const relayed = new PassThrough({ readableObjectMode: true, readableHighWaterMark: 4 });
  const back = new PassThrough({ readableObjectMode: true, readableHighWaterMark: 4 });
  let stalled = false;
  toDestination.on('data', (c: Buffer) => {
    if (stalled) toDestination.pause();
    else relayed.write(c);
  });
  const src0 = model(3, {
    stall: () => {
      stalled = true;
      return new Promise((_resolve, reject) =>
        setTimeout(() => reject(Object.assign(new Error('injected EIO'), { code: 'EIO' })), 300),
      );
    },
  });
  const src1 = model(5, { stateSize: 1 << 20 });
  const dst = [model(0), model(0)];
  const recv = receive(
    dst.map((d) => d.mig),
    { readable: relayed, writable: back },
  );
  recv.catch(() => undefined);
  const t0 = Date.now();
  await assert.rejects(
    migrate([src0.mig, src1.mig], { readable: back, writable: toDestination }),
    (err: MigrateError) => {
      assert.match(err.message, /injected EIO/);
      return true;
    },
  );
  const ms = Date.now() - t0;
  assert.ok(ms < 5000, `ended in ${ms} ms, not at a timeout`);
  assert.deepEqual(src1.dev.overlapped, []);
  assert.equal(src0.dev.deviceState, 1, 'source 0 RUNNING');
  assert.equal(src1.dev.deviceState, 1, 'source 1 RUNNING');
  relayed.end();
  await assert.rejects(recv);
  assert.ok(
    dst.every((d) => d.dev.resets >= 1),
    'destinations reset',
  );
});

test('model: a destination whose device writes stall holds the source back after RECEIVE_QUEUE_BYTES, not the whole state', async () => {
  const chunk = 64 << 10;
  const stateSize = 24 << 20;
  let reads = 0;
  const src = model(5, {
    stateSize,
    chunkSize: chunk,
    stall: (access, n) => {
      if (access === 'pread data') reads = n;
      return undefined;
    },
  });
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const dst = model(0, {
    stateSize,
    chunkSize: chunk,
    stall: (access) => (access === 'pwrite data' ? held : undefined),
  });
  const run = migrateLocal([[src.mig, dst.mig]], { precopy: false });
  // The source reads on until the channel holds it back; then nothing moves until the writes go on.
  for (let last = -1; reads !== last;) {
    last = reads;
    await new Promise((r) => setTimeout(r, 200));
  }
  const read = reads * chunk;
  // What the source read is queued: at the receiver, in the in-process pipe, in its own window.
  assert.ok(read <= RECEIVE_QUEUE_BYTES + 8 * chunk, `the source read ${read} bytes ahead of a stalled destination`);
  assert.ok(read >= chunk, 'the source did start');
  assert.ok(
    read <= stateSize / 2,
    `the source read ${read} of ${stateSize} bytes: a stalled destination queued most of the state`,
  );
  release();
  await run;
  assert.ok(dst.dev.state.equals(src.dev.state));
});

test('model: the destination refuses a mismatch with its own message; the source never stopped', async () => {
  const src = model(1);
  const dst = model(0);
  const pair = channelPair();
  const recv = receive([dst.mig, model(0).mig], pair[1]);
  recv.catch(() => undefined);
  await assert.rejects(migrate([src.mig], pair[0]), (err: MigrateError) => {
    assert.equal(err.side, 'destination');
    assert.match(err.message, /migrates 1 device\(s\), this receiver was given 2/);
    return true;
  });
  await assert.rejects(recv, /refused/);
  assert.ok(!src.dev.accesses.some((a) => a.includes('device_state')), 'the source device state was never written');
  assert.equal(dst.dev.resets, 0);
});

test('model: a receiver of another version refuses clearly', async () => {
  const dst = model(0);
  const [a, b] = channelPair();
  const recv = receive([dst.mig], b);
  const w = new WireEnd(a);
  await w.writePreamble(2);
  await assert.rejects(recv, /speaks migrate protocol version 2; this receiver .* speaks version 1 only/);
  assert.equal(await w.readPreamble(), 1);
  const err = await w.read();
  assert.equal(err!.type, FRAME.error);
  assert.match(JSON.parse(err!.payload.toString()).message, /version 2/);
});

test('model: the channel closes before the commit: the source RUNNING, the destination reset', async () => {
  const src = model(9);
  const dst = model(0);
  // A channel of streams, with a relay that cuts it after ~10 kB towards the destination.
  const toDestination = new PassThrough();
  const toSource = new PassThrough();
  const cut = new PassThrough();
  let passed = 0;
  toDestination.on('data', (c: Buffer) => {
    passed += c.length;
    if (passed < 10000) cut.write(c);
    else cut.end();
  });
  const recv = receive([dst.mig], { readable: cut, writable: toSource });
  recv.catch(() => undefined);
  await assert.rejects(migrate([src.mig], { readable: toSource, writable: toDestination }), (err: MigrateError) => {
    assert.equal(err.committed, false);
    return true;
  });
  await assert.rejects(recv);
  assert.equal(src.dev.deviceState, 1);
  assert.ok(dst.dev.resets >= 1);
});

test('model: abort at the source before the commit returns the source to RUNNING', async () => {
  const src = model(4, { dirtyPerRead: 5 });
  const dst = model(0);
  const ac = new AbortController();
  let n = 0;
  const p = migrateLocal([[src.mig, dst.mig]], {
    signal: ac.signal,
    precopy: { maxIterations: 50 },
    onProgress: () => {
      if (++n === 2) ac.abort(new Error('Ctrl-C'));
    },
  });
  await assert.rejects(p, (err: MigrateError) => err.code === 'ERR_MIGRATION_ABORTED' || /abort/i.test(err.message));
  assert.equal(src.dev.deviceState, 1);
  assert.ok(dst.dev.resets >= 1);
});

test('model: a receiver that never answers: the source times out RUNNING', async () => {
  const src = model(2);
  const [a] = channelPair();
  await assert.rejects(migrate([src.mig], a, { timeoutMs: 200 }), (err: MigrateError) => {
    assert.equal(err.code, 'ERR_MIGRATION_TIMEOUT');
    assert.equal(err.side, 'channel');
    return true;
  });
  assert.equal(src.dev.deviceState, 1);
});

test('model: Ctrl-C while the receiver has not started: aborted at once, the source untouched', async () => {
  const src = model(3);
  const [a] = channelPair();
  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error('interrupted by SIGINT')), 50);
  const t0 = Date.now();
  await assert.rejects(migrate([src.mig], a, { signal: ac.signal, timeoutMs: 10_000 }), (err: MigrateError) => {
    assert.equal(err.code, 'ERR_MIGRATION_ABORTED');
    return true;
  });
  assert.ok(Date.now() - t0 < 5000);
  assert.equal(src.dev.deviceState, 1);
});

test('model: the channel dies after the destination said "loaded", before the commit: source RUNNING, destination reset', async () => {
  const src = model(6);
  const dst = model(0);
  const toDst = new PassThrough();
  const toSrc = new PassThrough();
  const fromSrc = new PassThrough();
  const fromDst = new PassThrough();
  let cut = false;
  fromSrc.on('data', (c: Buffer) => (cut ? undefined : toDst.write(c)));
  fromDst.on('data', (c: Buffer) => {
    if (cut) return;
    // Frame headers are written as chunks of their own: cut at LOADED's, both directions at once.
    if (c.length === 8 && c[0] === FRAME.loaded) {
      cut = true;
      toSrc.end();
      toDst.end();
      return;
    }
    toSrc.write(c);
  });
  const recv = receive([dst.mig], { readable: toDst, writable: fromDst });
  recv.catch(() => undefined);
  await assert.rejects(migrate([src.mig], { readable: toSrc, writable: fromSrc }), (err: MigrateError) => {
    assert.equal(err.committed, false);
    assert.equal(err.side, 'channel');
    return true;
  });
  await assert.rejects(recv, (err: MigrateError) => err.committed === false);
  assert.ok(cut);
  assert.equal(src.dev.deviceState, 1, 'source RUNNING');
  assert.ok(dst.dev.resets >= 1, 'destination reset');
  assert.equal(majorGcHolds(), 0, 'both ends released the major-GC hold');
  assert.equal(eagerFeedbackScopes(), 0, 'both ends closed their eager-feedback scopes');
});

/** A receiver of one model device, and a source end that sent the preamble and the hello, then nothing. */
async function helloedReceiver(timeoutMs: number) {
  const dst = model(0);
  const [a, b] = channelPair();
  const recv = receive([dst.mig], b, { timeoutMs });
  const source = new WireEnd(a);
  await source.writePreamble();
  await source.sendMessage(FRAME.hello, 0, {
    version: 1,
    devices: [{ protocol: 'v1', device: { kind: 'unknown', name: 'model' } }],
    switchoverAck: [false],
  });
  return { dst, recv, source };
}

test('model: a source that hangs after the hello: the receiver times out and resets its device', async () => {
  const { dst, recv } = await helloedReceiver(300);
  await assert.rejects(recv, (err: MigrateError) => {
    assert.equal(err.code, 'ERR_MIGRATION_TIMEOUT');
    assert.match(err.message, /nothing from the source for 300 ms/);
    return true;
  });
  assert.ok(dst.dev.resets >= 1, 'destination reset');
});

test("model: the receiver's watchdog is not fooled by the wall clock: a step forward fails no healthy wait, a step back hides no hang", async () => {
  const realNow = Date.now;
  try {
    // An hour forward just after the hello (an NTP step): the source is quiet for 1.2 s of a 2 s timeout.
    const quiet = await helloedReceiver(2000);
    await new Promise((r) => setTimeout(r, 50));
    Date.now = () => realNow() + 3_600_000;
    await new Promise((r) => setTimeout(r, 1200));
    quiet.source.close();
    await assert.rejects(quiet.recv, (err: MigrateError) => {
      assert.notEqual(err.code, 'ERR_MIGRATION_TIMEOUT', err.message);
      return true;
    });
    // An hour back: a source that hangs is still caught after its timeout.
    Date.now = realNow;
    const hung = await helloedReceiver(300);
    await new Promise((r) => setTimeout(r, 50));
    Date.now = () => realNow() - 3_600_000;
    const guard = setTimeout(() => hung.source.close(), 3000);
    await assert.rejects(hung.recv, (err: MigrateError) => {
      assert.equal(err.code, 'ERR_MIGRATION_TIMEOUT', err.message);
      return true;
    });
    clearTimeout(guard);
    hung.source.close();
  } finally {
    Date.now = realNow;
  }
});
