// The floor of a live migrate's downtime in the guest: the same device calls (arcs, data_fd reads and writes), raw, with no protocol.
//
// node dist/bench/floor.js SRC1[,SRC2...] DST1[,DST2...]: v2 test-driver devices, paired in order,
// in a fresh process (cold, as a command runs). Each source pre-copies its state into its
// destination while it runs (PRE_COPY, then PRE_COPY_P2P and one more pass, as migrate's catch-up
// does), then the downtime: every source to STOP_COPY at once, each device's stop-copy data read
// to its end and written into its destination, RESUMING -> STOP, then every destination to
// RUNNING_P2P and then RUNNING. Timed as migrate times its downtime: the first completed stop to
// the last RUNNING. No stream, no records, no checksums, no channel: what migrate's protocol
// costs on top is its downtime minus this. Prints one JSON line. bench/guest.ts runs it in V8's
// interpreter only (why: floorRuns).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isSyscallError } from '../lib/errors';
import { openDevice, type Device } from '../lib';
import { native } from '../lib/native';
import { cpuMsBetween, threadCpuNs } from '../lib/thread-cpu';
import {
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_STATE_PRE_COPY as PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P as PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P as RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  layout,
} from '../lib/uapi';
import { DRIVER } from '../test/support/test-driver';
import { MDEV_DEVICES } from '../test/support/mdev';

const CHUNK = 1 << 20;
const HEAD = layout.vfio_device_feature.size;

/** One SET of MIG_DEVICE_STATE; resolves the data_fd the kernel returned, or -1. */
async function arc(device: Device, to: number): Promise<number> {
  const buf = Buffer.alloc(HEAD + layout.vfio_device_feature_mig_state.size);
  buf.writeUInt32LE(buf.length, layout.vfio_device_feature.fields.argsz);
  buf.writeUInt32LE(
    VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    layout.vfio_device_feature.fields.flags,
  );
  buf.writeUInt32LE(to, HEAD + layout.vfio_device_feature_mig_state.fields.device_state);
  buf.writeInt32LE(-1, HEAD + layout.vfio_device_feature_mig_state.fields.data_fd);
  await device.featureAsync(buf);
  return buf.readInt32LE(HEAD + layout.vfio_device_feature_mig_state.fields.data_fd);
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

const checksum = (uuid: string) => BigInt(readFileSync(join(MDEV_DEVICES, uuid, DRIVER, 'checksum'), 'utf8').trim());

async function main(): Promise<void> {
  const [srcArg, dstArg] = process.argv.slice(2);
  const srcIds = (srcArg ?? '').split(',').filter(Boolean);
  const dstIds = (dstArg ?? '').split(',').filter(Boolean);
  if (!srcIds.length || srcIds.length !== dstIds.length)
    throw new Error('usage: floor.js SRC1[,SRC2...] DST1[,DST2...]');
  const sources = srcIds.map((id) => openDevice(id));
  const dests = dstIds.map((id) => openDevice(id));
  const fds: number[] = [];
  try {
    const bufs = sources.map(() => Buffer.alloc(CHUNK));
    const destFds = await Promise.all(
      dests.map(async (d) => {
        await arc(d, VFIO_DEVICE_STATE_STOP);
        return arc(d, VFIO_DEVICE_STATE_RESUMING);
      }),
    );
    fds.push(...destFds);
    // Pre-copy while running, then quiesced (P2P) and one more pass: only the stop arc is left.
    const srcFds = await Promise.all(sources.map((s) => arc(s, PRE_COPY)));
    fds.push(...srcFds);
    await Promise.all(sources.map((_s, i) => move(srcFds[i]!, destFds[i]!, bufs[i]!, 1024)));
    await Promise.all(sources.map((s) => arc(s, PRE_COPY_P2P)));
    await Promise.all(sources.map((_s, i) => move(srcFds[i]!, destFds[i]!, bufs[i]!, 64)));

    // The downtime.
    let firstStop = 0;
    let cpuAtStop: bigint | undefined;
    const stopCopyBytes = await Promise.all(
      sources.map(async (s, i) => {
        await arc(s, VFIO_DEVICE_STATE_STOP_COPY);
        if (!firstStop) {
          firstStop = performance.now();
          cpuAtStop = threadCpuNs();
        }
        const moved = await move(srcFds[i]!, destFds[i]!, bufs[i]!);
        await arc(dests[i]!, VFIO_DEVICE_STATE_STOP);
        return moved;
      }),
    );
    await Promise.all(dests.map((d) => arc(d, RUNNING_P2P)));
    await Promise.all(dests.map((d) => arc(d, VFIO_DEVICE_STATE_RUNNING)));
    const downtimeMs = performance.now() - firstStop;
    const cpuMs = cpuMsBetween(cpuAtStop, threadCpuNs());
    // The sources are stopped (STOP_COPY) until they are closed: their state is final.
    const exact = srcIds.every((id, i) => checksum(id) === checksum(dstIds[i]!));
    console.log(JSON.stringify({ devices: sources.length, downtimeMs, cpuMs, stopCopyBytes, exact }));
  } finally {
    for (const fd of fds) if (fd >= 0) native.close(fd);
    for (const d of [...sources, ...dests]) d.close();
  }
}

main().catch((err) => {
  console.error(`bench floor: ${err instanceof Error ? err.stack : String(err)}`);
  process.exit(1);
});
