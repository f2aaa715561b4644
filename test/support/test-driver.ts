// The test vendor driver (test/driver/, module vfio_mig_test) as tests, bench and demo see it: its name,
// mdev types, per-instance sysfs knobs, BAR0 registers, one class for an instance, leak accounting.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openDevice, type Device } from '../../lib';
import { createMdev, MDEV_BUS, MDEV_DEVICES, mdevTypes, removeMdev } from './mdev';
import { vmtc, type Result } from './vmtc';

export const DRIVER = 'vfio_mig_test';
/** The mdev parent the module registers. */
export const PARENT_DIR = join(MDEV_BUS, DRIVER);

/** The device types: v1 (data section mmap-able), v1 with the data section trapped, v2, no migration. */
export type Kind = 'v1' | 'v1-trapped' | 'v2' | 'none';
export const KINDS: readonly Kind[] = ['v1', 'v1-trapped', 'v2', 'none'];
/** The directory of a type under mdev_supported_types/. */
export const typeDirName = (kind: Kind): string => `${DRIVER}-${kind}`;

/** Per-instance attributes under /sys/bus/mdev/devices/UUID/vfio_mig_test/ (test/driver/README.md). */
export type Knob =
  | 'state_size'
  | 'chunk_size'
  | 'dirty_rate'
  | 'reserved_bits'
  | 'arc_delay_us'
  | 'fault'
  | 'fault_points'
  | 'bug'
  | 'bugs'
  | 'counters'
  | 'checksum'
  | 'generation'
  | 'mutate'
  | 'present_pages'
  | 'kind'
  | 'dma_write'
  | 'dma_log'
  | 'log_page_size';

/** One DMA write of dma_write: `length` bytes (default 1, at most 1 MiB) of `byte` (default 0xa5) at `iova`. */
export interface DmaWrite {
  iova: bigint;
  length?: number;
  byte?: number;
}

/** The driver's own DMA log as dma_log shows it (reading does not clear it). */
export interface DriverDmaLog {
  active: boolean;
  pageSize: bigint;
  /** First IOVA of every logged dirty page, in order. */
  pages: bigint[];
}

/** Knobs set when an instance is created (chunk_size before state_size: both need the device closed). */
export interface Knobs {
  stateSize?: number | bigint;
  chunkSize?: number;
  dirtyRate?: number;
  /** v2 only: how long each arc of the state machine sleeps in the driver (a device's firmware time). */
  arcDelayUs?: number;
}

/** node:test `skip` value for every test that needs the driver: false in a guest that loaded it, else the reason. */
export const needsDriver: string | false =
  process.env.VFIO_MIG_GUEST !== '1'
    ? 'needs the VM guest (npm run test:vm)'
    : process.env.VFIO_MIG_TEST_DRIVER !== '1' || !existsSync(PARENT_DIR)
      ? `the ${DRIVER} module is not loaded in this guest`
      : false;

const live = new Set<TestDevice>();

/** One mdev instance of the driver; remove() it (or removeAll() in an after hook). */
export class TestDevice {
  readonly uuid: string;

  constructor(
    readonly kind: Kind,
    knobs: Knobs = {},
  ) {
    const type = typeDirName(kind);
    if (!mdevTypes(DRIVER).includes(type))
      throw new Error(`${DRIVER} has no mdev type ${type} (types: ${mdevTypes(DRIVER).join(', ') || 'none'})`);
    this.uuid = createMdev(DRIVER, type);
    live.add(this);
    try {
      if (knobs.chunkSize !== undefined) this.set('chunk_size', knobs.chunkSize);
      if (knobs.stateSize !== undefined) this.set('state_size', knobs.stateSize);
      if (knobs.dirtyRate !== undefined) this.set('dirty_rate', knobs.dirtyRate);
      if (knobs.arcDelayUs !== undefined) this.set('arc_delay_us', knobs.arcDelayUs);
    } catch (err) {
      // a refused knob leaves no instance behind: the caller never got one to remove
      this.remove();
      throw err;
    }
  }

  attr(name: Knob): string {
    return join(MDEV_DEVICES, this.uuid, DRIVER, name);
  }
  set(name: Knob, value: string | number | bigint): void {
    writeFileSync(this.attr(name), String(value));
  }
  /** Writes a knob and returns the errno code of a failure, or null. */
  trySet(name: Knob, value: string | number | bigint): string | null {
    try {
      this.set(name, value);
      return null;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code ?? 'E?';
    }
  }
  get(name: Knob): string {
    return readFileSync(this.attr(name), 'utf8').trim();
  }
  counters(): Record<string, bigint> {
    const out: Record<string, bigint> = {};
    for (const line of this.get('counters').split('\n')) {
      const [k, v] = line.split(' ');
      if (k && v !== undefined) out[k] = BigInt(v);
    }
    return out;
  }
  /**
   * Makes the instance DMA-write through its container (vfio_dma_rw from a kernel worker), in
   * order; the device must be open and running. Writes inside logged ranges are logged.
   */
  dmaWrite(writes: readonly DmaWrite[]): void {
    const spec = writes.map((w) => `0x${w.iova.toString(16)}:${w.length ?? 1}:${w.byte ?? 0xa5}`).join(' ');
    // sysfs hands a store at most a page: a longer spec would arrive cut (EINVAL for the cut entry)
    if (spec.length >= 4096)
      throw new RangeError(`dma_write spec of ${spec.length} bytes: split it (sysfs takes < 4096)`);
    this.set('dma_write', spec);
  }
  dmaLog(): DriverDmaLog {
    const [head = '', ...lines] = this.get('dma_log').split('\n');
    const [state, page] = head.split(' ');
    return {
      active: state === 'active',
      pageSize: BigInt(page ?? 0),
      pages: lines.filter(Boolean).map((l) => BigInt(l)),
    };
  }
  /** The state checksum through sysfs (bar0Checksum reads the same value through the device). */
  checksum(): bigint {
    return BigInt(this.get('checksum'));
  }
  faultPoints(): string[] {
    return this.get('fault_points').split(/\s+/).filter(Boolean);
  }
  /** Opens the instance through the project's device layer. */
  open(): Device {
    return openDevice(this.uuid);
  }
  /** Runs vmtc commands on this instance (one open of the device). */
  run(...cmds: string[]): Result[] {
    return vmtc(this.uuid, cmds);
  }
  remove(): void {
    removeMdev(this.uuid);
    live.delete(this);
  }
}

/** Removes every instance this process created and has not removed. */
export function removeAll(): void {
  for (const d of [...live]) d.remove();
}

/** UUIDs of every instance of the driver, whoever created them. */
export function instancesOfDriver(): string[] {
  try {
    return readdirSync(MDEV_DEVICES).filter((u) => {
      try {
        return existsSync(join(MDEV_DEVICES, u, DRIVER));
      } catch {
        return false;
      }
    });
  } catch {
    return [];
  }
}

/** The module's count of live allocations (0 when no instance exists: anything else is a leak). */
export function liveAllocs(): number {
  return Number(readFileSync(`/sys/module/${DRIVER}/parameters/live_allocs`, 'utf8').trim());
}

const ARCS_PEAK = `/sys/module/${DRIVER}/parameters/arcs_in_flight_peak`;

/** The most v2 arcs in progress at once, over every device, since resetArcsPeak(). */
export function arcsInFlightPeak(): number {
  return Number(readFileSync(ARCS_PEAK, 'utf8').trim());
}

/** Starts a new arcsInFlightPeak() measure (from the arcs in progress now). */
export function resetArcsPeak(): void {
  writeFileSync(ARCS_PEAK, '0');
}

/** BAR0 registers (u64, native width only): the state's checksum and generation, and mutate (write a seed). */
export const BAR0 = { checksum: 0x10, generation: 0x18, mutate: 0x20 } as const;

/** The state checksum, read through the project's device layer (BAR0, native width). */
export function bar0Checksum(device: Device): bigint {
  return device.region(0).read(BAR0.checksum, 8);
}
export function bar0Generation(device: Device): bigint {
  return device.region(0).read(BAR0.generation, 8);
}
/** Fills the device state deterministically from a seed. */
export function bar0Mutate(device: Device, seed: bigint): void {
  device.region(0).write(BAR0.mutate, 8, seed);
}

/** v1 device_state values. */
export const V1 = { stop: 0, running: 1, saving: 2, precopy: 3, resuming: 4 } as const;
export type V1Name = keyof typeof V1;

/** A deliberate spec violation of the driver (sysfs `bug`) and the checker rule that must catch it. */
export interface Bug {
  name: string;
  protocol: 'v1' | 'v2';
  /** Exists only when the kernel has PRE_COPY (6.2+). */
  precopy: boolean;
  rule: string;
  what: string;
  /** Bytes per second the device must dirty itself for the rule to see the bug (dirty_rate). */
  dirtyRate?: number;
}

/** The `bug` catalogue of test/driver/README.md, with the checker rule each one breaks. */
export const BUGS: readonly Bug[] = [
  {
    name: 'v1.pending_reread',
    protocol: 'v1',
    precopy: false,
    rule: 'v1.pending.reread',
    what: 'each read of a non-zero pending_bytes adds one more',
  },
  {
    name: 'v1.data_offset_outside',
    protocol: 'v1',
    precopy: false,
    rule: 'v1.data.in-region',
    what: 'data_offset points past the data section (at the end of the region)',
  },
  {
    name: 'v1.invalid_state_accepted',
    protocol: 'v1',
    precopy: false,
    rule: 'v1.state.invalid-refused',
    what: 'writes of 101b and 111b succeed',
  },
  {
    name: 'v1.reserved_lost',
    protocol: 'v1',
    precopy: false,
    rule: 'v1.state.reserved-kept',
    what: 'a transition clears device_state bits 3-31 (set reserved_bits to see it)',
  },
  {
    name: 'v2.enomsg_stop_copy',
    protocol: 'v2',
    precopy: false,
    rule: 'v2.stopcopy.no-enomsg',
    what: 'STOP_COPY end of stream is ENOMSG instead of 0',
  },
  {
    name: 'v2.precopy_info_any_state',
    protocol: 'v2',
    precopy: true,
    rule: 'v2.precopy-info.states',
    what: 'VFIO_MIG_GET_PRECOPY_INFO answers in STOP_COPY',
  },
  {
    name: 'v2.data_size_low',
    protocol: 'v2',
    precopy: true,
    rule: 'v2.data-size.estimate',
    what: 'MIG_DATA_SIZE reports 1/16 of its estimate',
  },
  {
    name: 'v2.truncated_stream_accepted',
    protocol: 'v2',
    precopy: false,
    rule: 'v2.resuming.truncated',
    what: 'RESUMING -> STOP accepts an incomplete stream',
  },
  {
    name: 'v2.fd_readable_after_stop',
    protocol: 'v2',
    precopy: false,
    rule: 'v2.datafd.after-session',
    what: 'a read of a data fd whose session ended returns 0 instead of ENODEV',
  },
  {
    name: 'v2.segmentation_strict',
    protocol: 'v2',
    precopy: false,
    rule: 'v2.resuming.segmentation',
    what: 'a write() of the resuming fd shorter than a record header (32 bytes) fails EINVAL',
  },
  {
    name: 'v2.poll_eof_unreadable',
    protocol: 'v2',
    precopy: false,
    rule: 'v2.stopcopy.poll',
    what: 'in STOP_COPY, poll() of the saving fd reports nothing, even at the end of stream',
  },
  {
    name: 'v2.poll_precopy_readable',
    protocol: 'v2',
    precopy: true,
    rule: 'v2.precopy.poll',
    what: "poll() of the saving fd reports readable at PRE_COPY's temporary end of stream",
  },
  {
    name: 'v2.poll_no_wake',
    protocol: 'v2',
    precopy: true,
    rule: 'v2.precopy.poll-wakes',
    what: 'in PRE_COPY, data the device dirties does not wake a poll() waiting on the saving fd',
    dirtyRate: 1 << 20,
  },
  {
    name: 'reset_stops',
    protocol: 'v1',
    precopy: false,
    rule: 'v1.reset.running',
    what: 'VFIO_DEVICE_RESET leaves the protocol in STOP instead of RUNNING',
  },
  {
    name: 'reset_stops',
    protocol: 'v2',
    precopy: false,
    rule: 'v2.reset.running',
    what: 'VFIO_DEVICE_RESET leaves the protocol in STOP instead of RUNNING',
  },
];
