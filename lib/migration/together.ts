// The state changes of a migrate's downtime on all its devices at once: the v2 ones each arc in one call, any other device on its own.
import { VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_RUNNING_P2P } from '../uapi';
import { settleAll } from './txn';
import type { MigrationEngine } from './types';
import { V2Engine } from './v2';

/** Runs `v2` on the v2 engines and `alone` on every other, all at once; waits for all, then throws the first failure. */
function partitioned(
  engines: readonly MigrationEngine[],
  v2: (engines: V2Engine[], indexes: number[]) => Promise<void>,
  alone: (engine: MigrationEngine, index: number) => Promise<void>,
): Promise<unknown> {
  const batched: V2Engine[] = [];
  const indexes: number[] = [];
  const steps: (() => Promise<void>)[] = [];
  engines.forEach((engine, i) => {
    if (engine instanceof V2Engine) {
      batched.push(engine);
      indexes.push(i);
    } else steps.push(() => alone(engine, i));
  });
  if (batched.length) steps.push(() => v2(batched, indexes));
  return settleAll(steps, (step) => step());
}

/** Every source's enterStopCopy(); `onStopped(i)` as source i's stopping arc is issued. */
export async function stopTogether(
  engines: readonly MigrationEngine[],
  onStopped: (index: number) => void,
): Promise<void> {
  await partitioned(
    engines,
    (v2, indexes) => V2Engine.enterStopCopyTogether(v2, (k) => onStopped(indexes[k]!)),
    (engine, i) => engine.enterStopCopy(() => onStopped(i)),
  );
}

/** Every destination's finishLoad('stopped'), once all their streams checked out: RESUMING -> STOP. */
export async function stopLoadedTogether(engines: readonly MigrationEngine[]): Promise<void> {
  await partitioned(
    engines,
    (v2) => V2Engine.finishLoadTogether(v2),
    (engine) => engine.finishLoad('stopped'),
  );
}

/**
 * The destinations after the commit. linux/vfio.h: every device to RUNNING_P2P before any to
 * RUNNING. Each stage runs on all the devices at once: this is downtime.
 */
export async function resumeTogether(engines: readonly MigrationEngine[]): Promise<void> {
  const p2p = engines.filter((e): e is V2Engine => e instanceof V2Engine && e.support.p2p);
  await V2Engine.setStatesTogether(p2p, VFIO_DEVICE_STATE_RUNNING_P2P);
  await partitioned(
    engines,
    (v2) => V2Engine.setStatesTogether(v2, VFIO_DEVICE_STATE_RUNNING),
    (engine) => engine.toRunning(),
  );
}
