// Unit tests of the v2 engine's remembered state (an arc without a GET first) against an in-process model of the device's ioctls (no kernel).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Device } from '../../lib/device';
import { V2Engine, v2StateName } from '../../lib/migration/v2';
import {
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_STATE_RESUMING as RESUMING,
  VFIO_DEVICE_STATE_RUNNING as RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP as STOP,
  VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
  layout,
} from '../../lib/uapi';

/** The device as the engine sees it: VFIO_DEVICE_FEATURE on the state, reset, the epoch; every call logged. */
class ModelDevice {
  state = RUNNING;
  calls: string[] = [];
  failNextSet = false;
  #epoch = 0;
  readonly name = 'model';

  get stateEpoch(): number {
    return this.#epoch;
  }

  async featureAsync(buf: Buffer): Promise<number> {
    this.#epoch++;
    const flags = buf.readUInt32LE(layout.vfio_device_feature.fields.flags);
    const at = layout.vfio_device_feature.size;
    const fields = layout.vfio_device_feature_mig_state.fields;
    await Promise.resolve();
    if (flags & VFIO_DEVICE_FEATURE_GET) {
      if ((flags & 0xffff) === VFIO_DEVICE_FEATURE_MIG_DATA_SIZE) {
        this.calls.push('get size');
        buf.writeBigUInt64LE(1234n, at);
        return 0;
      }
      this.calls.push('get');
      buf.writeUInt32LE(this.state, at + fields.device_state);
      return 0;
    }
    assert.equal(flags & 0xffff, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
    const to = buf.readUInt32LE(at + fields.device_state);
    this.calls.push(`set ${v2StateName(to)}`);
    if (this.failNextSet) {
      this.failNextSet = false;
      throw Object.assign(new Error('EIO: injected'), { code: 'EIO' });
    }
    this.state = to;
    buf.writeInt32LE(-1, at + fields.data_fd);
    return 0;
  }

  async reset(): Promise<void> {
    this.#epoch++;
    this.calls.push('reset');
    this.state = RUNNING;
  }

  /** Drains the log. */
  take(): string[] {
    return this.calls.splice(0);
  }
}

function engine(): { dev: ModelDevice; v2: V2Engine } {
  const dev = new ModelDevice();
  return { dev, v2: new V2Engine(dev as unknown as Device, { p2p: true, preCopy: false }) };
}

test('model: an arc after the engine set or read the state needs no GET; a GET of another feature keeps it', async () => {
  const { dev, v2 } = engine();
  await v2.setState(STOP);
  assert.deepEqual(dev.take(), ['get', 'set RUNNING_P2P', 'set STOP']);
  assert.equal(await v2.dataSizeEstimate(), 1234n);
  await v2.setState(RUNNING);
  assert.deepEqual(dev.take(), ['get size', 'set RUNNING_P2P', 'set RUNNING']);
  // setState to the state it is in: nothing at all.
  await v2.setState(RUNNING);
  assert.deepEqual(dev.take(), []);
});

test('model: a reset, or another call on the device, makes the engine read the state again', async () => {
  const { dev, v2 } = engine();
  await v2.setState(STOP);
  dev.take();
  await dev.reset();
  await v2.setState(STOP);
  assert.deepEqual(dev.take(), ['reset', 'get', 'set RUNNING_P2P', 'set STOP']);
  // Someone else moves the device (another engine, the checker's raw arcs): the next arc reads first.
  const other = new V2Engine(dev as unknown as Device, { p2p: true, preCopy: false });
  await other.setState(RUNNING);
  dev.take();
  await v2.setState(STOP);
  assert.deepEqual(dev.take(), ['get', 'set RUNNING_P2P', 'set STOP']);
  await v2.setArcRaw(RUNNING);
  dev.take();
  await v2.setState(STOP);
  assert.equal(dev.take()[0], 'get', 'a raw arc forgets the state');
});

test('model: a failed arc reports the state read back, and the next arc starts from it', async () => {
  const { dev, v2 } = engine();
  await v2.setState(STOP);
  dev.take();
  dev.failNextSet = true;
  await assert.rejects(v2.setState(RUNNING), /set state STOP -> RUNNING_P2P failed.*; device state is now STOP/);
  assert.deepEqual(dev.take(), ['set RUNNING_P2P', 'get']);
  await v2.setState(RUNNING);
  assert.deepEqual(dev.take(), ['set RUNNING_P2P', 'set RUNNING']);
});

test('model: a device without P2P has its stop-copy estimate read by quiesce(), not between its last pass and the stop', async () => {
  const dev = new ModelDevice();
  const v2 = new V2Engine(dev as unknown as Device, { p2p: false, preCopy: false });
  await v2.quiesce();
  assert.deepEqual(dev.take(), ['get size'], 'no P2P state to enter: only the estimate');
  let stopped = false;
  await v2.enterStopCopy(() => (stopped = true));
  assert.ok(stopped);
  assert.deepEqual(dev.take().slice(0, 3), ['get', 'set STOP', 'set STOP_COPY'], 'the stop follows at once');
});

test('model: setStateByName takes a state name in any case, and refuses ERROR and any other name before an ioctl', async () => {
  const { dev, v2 } = engine();
  await v2.setStateByName('stop');
  assert.deepEqual(dev.take(), ['get', 'set RUNNING_P2P', 'set STOP']);
  await v2.setStateByName('Running_P2P');
  assert.deepEqual(dev.take(), ['set RUNNING_P2P']);
  // Object's own property names are no state either (the lookup is a Map, not a plain object).
  for (const bad of ['ERROR', 'error', 'PRE', '', 'constructor', '__proto__', 'toString', 'hasOwnProperty']) {
    await assert.rejects(v2.setStateByName(bad), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_MIGRATION_STATE', bad);
      assert.match(err.message, /unknown v2 state '.*' \(one of RUNNING, STOP, STOP_COPY, RESUMING, RUNNING_P2P\)/);
      return true;
    });
  }
  assert.deepEqual(dev.take(), [], 'no ioctl for a refused name');
});

/** Model engines and a batch call that records which devices each of its calls held (Device.featuresAsync's contract). */
function fleet(count: number, support = { p2p: true, preCopy: false }) {
  const devs = Array.from({ length: count }, () => new ModelDevice());
  const engines = devs.map((dev) => new V2Engine(dev as unknown as Device, support));
  const batches: number[][] = [];
  const features = async (devices: readonly Device[], buffers: Uint8Array[]): Promise<(number | Error)[]> => {
    batches.push(devices.map((d) => devs.indexOf(d as unknown as ModelDevice)));
    return Promise.all(
      devices.map((d, i) => (d as unknown as ModelDevice).featureAsync(buffers[i] as Buffer).catch((e: Error) => e)),
    );
  };
  return { devs, engines, batches, features, take: () => devs.map((d) => d.take()) };
}

test('model: setStatesTogether takes one arc of every engine whose state it knows in one call, the rest on their own', async () => {
  const { devs, engines, batches, features, take } = fleet(3);
  await engines[0]!.setState(STOP);
  await engines[1]!.setState(STOP);
  take();
  // Engines 0 and 1 are known STOP, one arc from RUNNING_P2P; engine 2's state is unknown.
  await V2Engine.setStatesTogether(engines, RUNNING_P2P, { features });
  assert.deepEqual(batches, [[0, 1]]);
  assert.deepEqual(take(), [['set RUNNING_P2P'], ['set RUNNING_P2P'], ['get', 'set RUNNING_P2P']]);
  assert.deepEqual(
    devs.map((d) => d.state),
    [RUNNING_P2P, RUNNING_P2P, RUNNING_P2P],
  );
  // Now every state is known: the next stage is one call for all three, with no GET.
  await V2Engine.setStatesTogether(engines, RUNNING, { features });
  assert.deepEqual(batches[1], [0, 1, 2]);
  assert.deepEqual(take(), [['set RUNNING'], ['set RUNNING'], ['set RUNNING']]);
  // Already there: nothing at all, and nothing said to be issued.
  let issued = 0;
  await V2Engine.setStatesTogether(engines, RUNNING, { features, onIssue: () => issued++ });
  assert.equal(issued, 0);
  assert.equal(batches.length, 2);
  assert.deepEqual(take(), [[], [], []]);
  // Two arcs away (RUNNING -> STOP goes through RUNNING_P2P): each engine its own path.
  await V2Engine.setStatesTogether(engines, STOP, {
    features,
    onIssue: () => {
      issued++;
      assert.deepEqual(devs[0]!.calls, [], 'onIssue runs before any ioctl');
    },
  });
  assert.equal(issued, 1);
  assert.equal(batches.length, 2);
  assert.deepEqual(take(), [
    ['set RUNNING_P2P', 'set STOP'],
    ['set RUNNING_P2P', 'set STOP'],
    ['set RUNNING_P2P', 'set STOP'],
  ]);
});

test('model: one failed arc in a joint job fails with its state read back; the others took theirs and stay known', async () => {
  const { devs, engines, features, take } = fleet(3);
  await V2Engine.setStatesTogether(engines, STOP, { features });
  take();
  devs[1]!.failNextSet = true;
  await assert.rejects(
    V2Engine.setStatesTogether(engines, RUNNING_P2P, { features }),
    /set state STOP -> RUNNING_P2P failed.*; device state is now STOP/,
  );
  assert.deepEqual(take(), [['set RUNNING_P2P'], ['set RUNNING_P2P', 'get'], ['set RUNNING_P2P']]);
  assert.deepEqual(
    devs.map((d) => d.state),
    [RUNNING_P2P, STOP, RUNNING_P2P],
  );
  // The next stage starts from what each engine knows: no GET anywhere.
  await V2Engine.setStatesTogether(engines, RUNNING_P2P, { features });
  assert.deepEqual(take(), [[], ['set RUNNING_P2P'], []]);
  // A job that fails as a whole (a closed fd, a detached buffer) fails every engine in it.
  const broken = async (): Promise<(number | Error)[]> => {
    throw Object.assign(new Error('EBADF: closed'), { code: 'EBADF' });
  };
  await assert.rejects(
    V2Engine.setStatesTogether(engines, RUNNING, { features: broken }),
    /RUNNING_P2P -> RUNNING failed/,
  );
  assert.deepEqual(take(), [['get'], ['get'], ['get']], 'each engine reads its state back');
});

test('model: enterStopCopyTogether stops every engine, each arc one call for all, and says when each stopped', async () => {
  const { devs, engines, batches, features, take } = fleet(3);
  // Known RUNNING (a GET each), then together: RUNNING_P2P, the estimates, STOP, STOP_COPY.
  await Promise.all(engines.map((e) => e.getState()));
  take();
  const stopped: number[] = [];
  // The downtime starts as the stopping arc is issued: each device has not been asked to stop yet.
  const seenAtStop: string[][] = [];
  await V2Engine.enterStopCopyTogether(
    engines,
    (i) => {
      stopped.push(i);
      seenAtStop.push([...devs[i]!.calls]);
    },
    features,
  );
  assert.deepEqual(stopped, [0, 1, 2]);
  for (const calls of seenAtStop) assert.deepEqual(calls, ['set RUNNING_P2P', 'get size']);
  assert.deepEqual(batches, [
    [0, 1, 2],
    [0, 1, 2],
    [0, 1, 2],
  ]);
  for (const calls of take()) assert.deepEqual(calls, ['set RUNNING_P2P', 'get size', 'set STOP', 'set STOP_COPY']);
  assert.deepEqual(
    devs.map((d) => d.state),
    [STOP_COPY, STOP_COPY, STOP_COPY],
  );
});

test('model: finishLoadTogether takes every loaded engine RESUMING -> STOP in one call; a refusal fails it after all ended', async () => {
  const { devs, engines, batches, features, take } = fleet(3);
  await V2Engine.setStatesTogether(engines, RESUMING, { features });
  take();
  batches.length = 0;
  await V2Engine.finishLoadTogether(engines, features);
  assert.deepEqual(batches, [[0, 1, 2]]);
  assert.deepEqual(take(), [['set STOP'], ['set STOP'], ['set STOP']]);
  // A driver that refuses what it was given (its validation at RESUMING -> STOP).
  await V2Engine.setStatesTogether(engines, RESUMING, { features });
  take();
  devs[2]!.failNextSet = true;
  await assert.rejects(
    V2Engine.finishLoadTogether(engines, features),
    /RESUMING -> STOP failed.*device state is now RESUMING/,
  );
  assert.deepEqual(
    devs.map((d) => d.state),
    [STOP, STOP, RESUMING],
  );
});
