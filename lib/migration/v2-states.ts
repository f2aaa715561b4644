// The v2 migration protocol's states: names, the FSM arcs of linux/vfio.h and the kernel's shortest path between two states.
import {
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING as RESUMING,
  VFIO_DEVICE_STATE_RUNNING as RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP as STOP,
  VFIO_DEVICE_STATE_STOP_COPY as STOP_COPY,
} from '../uapi';

export const V2_STATE_NAMES: Record<number, string> = {
  [VFIO_DEVICE_STATE_ERROR]: 'ERROR',
  [STOP]: 'STOP',
  [RUNNING]: 'RUNNING',
  [STOP_COPY]: 'STOP_COPY',
  [RESUMING]: 'RESUMING',
  [RUNNING_P2P]: 'RUNNING_P2P',
  [PRE_COPY]: 'PRE_COPY',
  [PRE_COPY_P2P]: 'PRE_COPY_P2P',
};

/**
 * Names accepted by setStateByName: every state but ERROR, which only a failed arc enters. A Map,
 * so no name reaches Object's own properties.
 */
export const V2_STATE_BY_NAME: ReadonlyMap<string, number> = new Map(
  Object.entries(V2_STATE_NAMES)
    .map(([state, name]) => [name, Number(state)] as const)
    .filter(([, state]) => state !== VFIO_DEVICE_STATE_ERROR),
);

export function v2StateName(state: number): string {
  return V2_STATE_NAMES[state] ?? `unknown state ${state}`;
}

export interface V2Support {
  p2p: boolean;
  preCopy: boolean;
}

/** The FSM arcs of linux/vfio.h, in the order a breadth-first search tries them. */
const BASE_ARCS: readonly [number, number][] = [
  [RUNNING_P2P, STOP],
  [STOP_COPY, STOP],
  [RESUMING, STOP],
  [RUNNING_P2P, RUNNING],
  [PRE_COPY, RUNNING],
  [RUNNING, RUNNING_P2P],
  [STOP, RUNNING_P2P],
  [PRE_COPY_P2P, RUNNING_P2P],
  [STOP, STOP_COPY],
  [STOP, RESUMING],
  [RUNNING, PRE_COPY],
  [RUNNING_P2P, PRE_COPY_P2P],
  [PRE_COPY, PRE_COPY_P2P],
  [PRE_COPY_P2P, PRE_COPY],
  [PRE_COPY_P2P, STOP_COPY],
];

const SAVING_GROUP = new Set([PRE_COPY, PRE_COPY_P2P, STOP_COPY]);

/** States a device with these flags supports (RUNNING and ERROR always; STOP_COPY states are required). */
export function supportedStates(support: V2Support): Set<number> {
  const s = new Set([RUNNING, STOP, STOP_COPY, RESUMING]);
  if (support.p2p) s.add(RUNNING_P2P);
  if (support.preCopy) s.add(PRE_COPY);
  if (support.p2p && support.preCopy) s.add(PRE_COPY_P2P);
  return s;
}

// v2Path's answers, per support flags (p2p | preCopy << 1) and `from << 8 | to`: a state change
// inside the downtime then costs no graph search (several per device, each one JS on the thread
// that drives every device).
const PATHS: Map<number, readonly number[] | null>[] = [new Map(), new Map(), new Map(), new Map()];

/**
 * The shortest path of FSM arcs from `from` to `to`, as the kernel picks it: saving-group states
 * (PRE_COPY, PRE_COPY_P2P, STOP_COPY) are interior only inside one session; an unsupported P2P state behaves as its
 * running twin (so its arcs fold into that state); PRE_COPY arcs exist only with PRE_COPY support.
 * Returns the states to set, in order, excluding `from` (frozen: the same array is returned to
 * every caller); null when `to` is unreachable or unsupported.
 */
export function v2Path(from: number, to: number, support: V2Support): readonly number[] | null {
  // No state lies outside a byte (the search would refuse it too): the key below cannot collide.
  if ((from & 0xff) !== from || (to & 0xff) !== to) return null;
  const memo = PATHS[supportIndex(support)]!;
  const key = (from << 8) | to;
  let path = memo.get(key);
  if (path === undefined) {
    const found = searchPath(from, to, support);
    path = found && Object.freeze(found);
    memo.set(key, path);
  }
  return path;
}

// The arcs each support folds into, built once per support: the first searches run inside a
// migration's downtime, where building the graph again for each (two folds per arc) cost 120 JS
// calls of the downtime's own thread.
const GRAPHS: (ReadonlyMap<number, readonly number[]> | undefined)[] = [];

/** Which of the four support combinations `support` is: the index of its memos. */
function supportIndex(support: V2Support): number {
  return (support.p2p ? 1 : 0) | (support.preCopy ? 2 : 0);
}

function arcGraph(support: V2Support): ReadonlyMap<number, readonly number[]> {
  const index = supportIndex(support);
  let graph = GRAPHS[index];
  if (graph) return graph;
  const states = supportedStates(support);
  const fold = (s: number): number | null => {
    if (states.has(s)) return s;
    if (s === RUNNING_P2P) return RUNNING;
    if (s === PRE_COPY_P2P && support.preCopy) return PRE_COPY;
    return null;
  };
  const next = new Map<number, number[]>();
  for (const [a, b] of BASE_ARCS) {
    const fa = fold(a);
    const fb = fold(b);
    if (fa === null || fb === null || fa === fb) continue;
    const list = next.get(fa) ?? [];
    if (!list.includes(fb)) list.push(fb);
    next.set(fa, list);
  }
  graph = next;
  GRAPHS[index] = graph;
  return graph;
}

/** v2Path's breadth-first search over the arcs this support folds into. */
function searchPath(from: number, to: number, support: V2Support): number[] | null {
  const states = supportedStates(support);
  if (!states.has(to) || !states.has(from)) return null;
  if (from === to) return [];
  const next = arcGraph(support);
  // STOP_COPY -> PRE_COPY(_P2P) is refused by the header ("not permitted"), directly or combined.
  if (from === STOP_COPY && (to === PRE_COPY || to === PRE_COPY_P2P)) return null;
  // Saving-group states may be interior only while one session continues (PRE_COPY -> STOP_COPY).
  const interiorSavingOk = SAVING_GROUP.has(from) && SAVING_GROUP.has(to);
  const prev = new Map<number, number>([[from, -1]]);
  const queue = [from];
  while (queue.length) {
    const cur = queue.shift()!;
    if (cur !== from && SAVING_GROUP.has(cur) && !interiorSavingOk) continue;
    for (const n of next.get(cur) ?? []) {
      if (prev.has(n)) continue;
      prev.set(n, cur);
      if (n === to) {
        const path = [n];
        for (let p = cur; p !== from; p = prev.get(p)!) path.unshift(p);
        return path;
      }
      queue.push(n);
    }
  }
  return null;
}
