// The floor of a live migrate's downtime in the guest: the same device calls (arcs, data_fd reads and writes), raw, with no protocol.
//
// node dist/bench/floor.js SRC1[,SRC2...] DST1[,DST2...]: v2 test-driver devices, paired in order,
// in a fresh process (cold, as a command runs). Each source pre-copies its state into its
// destination while it runs (PRE_COPY, then PRE_COPY_P2P and one more pass, as migrate's catch-up
// does), then the downtime: every source to STOP_COPY at once, each device's stop-copy data read
// to its end and written into its destination, RESUMING -> STOP, then every destination to
// RUNNING_P2P and then RUNNING. Timed as migrate times its downtime: the first stopping arc's issue
// to the last RUNNING. No stream, no records, no checksums, no channel: what migrate's protocol
// costs on top is its downtime minus this. Prints one JSON line. bench/guest.ts runs it in V8's
// interpreter only (why: floorRuns).
import { isSyscallError } from '../lib/errors';
import { openDevice, type Device } from '../lib';
import { V2Engine, requireMigration } from '../lib/migration';
import type { FdHandle } from '../lib/fd-handle';
import { native } from '../lib/native';
import { cpuMsBetween, threadCpuNs } from '../lib/thread-cpu';
import {
  VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
} from '../lib/uapi';
import { bar0Checksum } from '../test/support/test-driver';

const CHUNK = 1 << 20;

/** The device's v2 engine, for its one-SET primitive (setArcRaw: no path, no state tracking). */
function engineOf(device: Device): V2Engine {
  const engine = requireMigration(device).engine;
  if (!(engine instanceof V2Engine)) throw new Error(`${device.name}: not a v2 device`);
  return engine;
}

/**
 * Reads `from` and writes each chunk into `to` until a read brings nothing (0; in pre-copy also
 * ENOMSG or EAGAIN, "nothing for now"). At most `maxReads` reads: a dirtying source never runs dry.
 */
async function move(from: number, to: number, buf: Buffer, maxReads = Infinity): Promise<number> {
  let moved = 0;
  for (let reads = 0; reads < maxReads; reads++) {
    let n: number;
    try {
      n = await native.readAsync(from, buf, 0, CHUNK);
    } catch (err) {
      if (isSyscallError(err, 'ENOMSG') || isSyscallError(err, 'EAGAIN')) return moved;
      throw err;
    }
    if (n === 0) return moved;
    for (let done = 0; done < n;) done += await native.writeAsync(to, buf, done, n - done);
    moved += n;
  }
  return moved;
}

async function main(): Promise<void> {
  const [srcArg, dstArg] = process.argv.slice(2);
  const srcIds = (srcArg ?? '').split(',').filter(Boolean);
  const dstIds = (dstArg ?? '').split(',').filter(Boolean);
  if (!srcIds.length || srcIds.length !== dstIds.length)
    throw new Error('usage: floor.js SRC1[,SRC2...] DST1[,DST2...]');
  const sources = srcIds.map((id) => openDevice(id));
  const dests = dstIds.map((id) => openDevice(id));
  const handles: FdHandle[] = [];
  try {
    const [src, dst] = [sources.map(engineOf), dests.map(engineOf)];
    // One SET each; a session-starting arc's data_fd is kept (and closed at the end).
    const arc = async (engine: V2Engine, to: number): Promise<number> => {
      const handle = await engine.setArcRaw(to);
      if (!handle) return -1;
      handles.push(handle);
      return handle.fd;
    };
    const bufs = sources.map(() => Buffer.alloc(CHUNK));
    const destFds = await Promise.all(
      dst.map(async (d) => {
        await arc(d, VFIO_DEVICE_STATE_STOP);
        return arc(d, VFIO_DEVICE_STATE_RESUMING);
      }),
    );
    // Pre-copy while running, then quiesced (P2P) and one more pass: only the stop arc is left.
    const srcFds = await Promise.all(src.map((s) => arc(s, PRE_COPY)));
    await Promise.all(sources.map((_s, i) => move(srcFds[i]!, destFds[i]!, bufs[i]!, 1024)));
    await Promise.all(src.map((s) => arc(s, PRE_COPY_P2P)));
    await Promise.all(sources.map((_s, i) => move(srcFds[i]!, destFds[i]!, bufs[i]!, 64)));

    // The downtime.
    let firstStop = 0;
    let cpuAtStop: bigint | undefined;
    const stopCopyBytes = await Promise.all(
      src.map(async (s, i) => {
        // As migrate: from the first stopping arc's issue (the device stops inside that ioctl).
        if (!firstStop) {
          firstStop = performance.now();
          cpuAtStop = threadCpuNs();
        }
        await arc(s, VFIO_DEVICE_STATE_STOP_COPY);
        const moved = await move(srcFds[i]!, destFds[i]!, bufs[i]!);
        await arc(dst[i]!, VFIO_DEVICE_STATE_STOP);
        return moved;
      }),
    );
    await Promise.all(dst.map((d) => arc(d, RUNNING_P2P)));
    await Promise.all(dst.map((d) => arc(d, VFIO_DEVICE_STATE_RUNNING)));
    const downtimeMs = performance.now() - firstStop;
    const cpuMs = cpuMsBetween(cpuAtStop, threadCpuNs());
    // The sources are stopped (STOP_COPY) until they are closed: their state is final.
    const exact = sources.every((s, i) => bar0Checksum(s) === bar0Checksum(dests[i]!));
    console.log(JSON.stringify({ devices: sources.length, downtimeMs, cpuMs, stopCopyBytes, exact }));
  } finally {
    for (const handle of handles) handle.close();
    for (const d of [...sources, ...dests]) d.close();
  }
}

main().catch((err) => {
  console.error(`bench floor: ${err instanceof Error ? err.stack : String(err)}`);
  process.exit(1);
});
