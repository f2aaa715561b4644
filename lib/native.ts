// The one place that loads the native addon, with the typed interface of everything it exports.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { SyscallError } from './errors';

export type Width = 1 | 2 | 4 | 8;
export type Offset = number | bigint;

/** A register pwrite run after a bulk write in the same pool job: fd, position, width, value. */
export type RegisterWriteArgs = [fd: number, position: Offset, width: Width, value: number | bigint];

export interface NativeMapping {
  /** Volatile load of exactly `width` bytes at an offset aligned to it. */
  read(offset: number, width: 1 | 2 | 4): number;
  read(offset: number, width: 8): bigint;
  read(offset: number, width: Width): number | bigint;
  /** Volatile store of exactly `width` bytes. */
  write(offset: number, width: 1 | 2 | 4, value: number): void;
  write(offset: number, width: 8, value: bigint): void;
  write(offset: number, width: Width, value: number | bigint): void;
  /** Copies mapping[offset, +length) into target off the JS thread. */
  readInto(offset: number, target: Uint8Array, targetOffset: number, length: number): Promise<void>;
  /** readInto that also resolves the CRC-32 of the bytes copied, computed by the same pool job. */
  readInto(offset: number, target: Uint8Array, targetOffset: number, length: number, checksum: true): Promise<number>;
  /** Copies source into mapping[offset, +length) off the JS thread, then the optional register write (fd, position, width, value) in the same job. */
  writeFrom(
    offset: number,
    source: Uint8Array,
    sourceOffset: number,
    length: number,
    ...registerWrite: [] | RegisterWriteArgs
  ): Promise<void>;
  /** Detaches `buffer` and unmaps (after in-flight copies); idempotent. */
  unmap(): void;
  /** A zero-copy view of the mapping, detached at unmap. */
  readonly buffer: ArrayBuffer;
  readonly length: number;
  readonly mapped: boolean;
  /** Mapped with PROT_WRITE; a read-only mapping refuses write, writeFrom and buffer. */
  readonly writable: boolean;
  /**
   * VFIO_IOMMU_MAP_DMA of [offset, +length) at iova in a container. The address stays native;
   * the memory stays mapped (even past unmap()) until each DMA mapping is released.
   */
  dmaMap(containerFd: number, offset: number, length: number, iova: bigint, flags: number): void;
  /** VFIO_IOMMU_UNMAP_DMA (with the dirty bitmap when one is given); releases one DMA hold; returns bytes unmapped. */
  dmaUnmap(containerFd: number, iova: bigint, size: bigint, bitmap?: Uint8Array, pgsize?: bigint): bigint;
  /** Drops one DMA hold without an ioctl (the container is gone, and its DMA mappings with it). */
  dmaRelease(): void;
}

/** What pollWakeAsync saw: events already pending, or the wait's end and length. */
export interface PollWake {
  readyBefore: boolean;
  revents: number;
  waitedMs: number;
}

export interface StructLayout {
  size: number;
  fields: Record<string, { offset: number; size: number }>;
}

export interface NativeAddon {
  setErrorClass(cls: new (message: string) => Error): void;

  /**
   * A zeroed Buffer over native-owned memory. An async job given a range inside it pins the
   * memory for the job's duration and works on it in place; any other buffer is bounced through
   * a copy (reads are delivered on completion, and reject with ERR_BUFFER_DETACHED when the
   * buffer was detached meanwhile).
   */
  allocBuffer(size: number): Buffer;
  /** allocBuffer, its pages written once on the pool: the JS thread's first writes then cost no page faults. */
  allocBufferAsync(size: number): Promise<Buffer>;
  /** Hints V8 to hold off major garbage collections (true) or not (false); nothing where majorGcHint is false (lib/gc-hold.ts). */
  deferMajorGc(on: boolean): void;
  /** Whether deferMajorGc() reaches this V8: it found Isolate::SetIsLoading (Node 24 on) or SetRAILMode (Node 20, 22) in the running Node. */
  readonly majorGcHint: boolean;
  /** V8 gives each function its feedback vector at its first call (true) or after it has run a while, its default (false) (lib/eager-feedback.ts); nothing where feedbackHint is false. */
  eagerFeedback(on: boolean): void;
  /** Whether eagerFeedback() reaches this V8: it found V8::SetFlagsFromString in the running Node. */
  readonly feedbackHint: boolean;
  /** Nanoseconds the calling thread has spent on a CPU (CLOCK_THREAD_CPUTIME_ID), or undefined without that clock. */
  threadCpuNs(): bigint | undefined;
  /** Makes every readAtLeastAsync started with this cancelId reject with ECANCELED. */
  cancelReads(cancelId: number): void;

  open(path: string, flags: number): number;
  close(fd: number): void;
  memfdCreate(name: string): number;
  /** isatty(3): whether `fd` is a terminal. */
  isatty(fd: number): boolean;

  preadWidth(fd: number, offset: Offset, width: 1 | 2 | 4): number;
  preadWidth(fd: number, offset: Offset, width: 8): bigint;
  preadWidth(fd: number, offset: Offset, width: Width): number | bigint;
  preadWidthAsync(fd: number, offset: Offset, width: Width): Promise<number | bigint>;
  pwriteWidth(fd: number, offset: Offset, width: Width, value: number | bigint): void;
  pwriteWidthAsync(fd: number, offset: Offset, width: Width, value: number | bigint): Promise<void>;

  pread(fd: number, buffer: Uint8Array, bufferOffset: number, length: number, position: Offset): number;
  preadAsync(fd: number, buffer: Uint8Array, bufferOffset: number, length: number, position: Offset): Promise<number>;
  pwrite(fd: number, buffer: Uint8Array, bufferOffset: number, length: number, position: Offset): number;
  pwriteAsync(fd: number, buffer: Uint8Array, bufferOffset: number, length: number, position: Offset): Promise<number>;
  /** Writes the whole range (short writes continued), then the optional register write, in one pool job; a failure's `stage` is 'data' or 'register'. */
  pwriteAllAsync(
    fd: number,
    buffer: Uint8Array,
    bufferOffset: number,
    length: number,
    position: Offset,
    ...registerWrite: [] | RegisterWriteArgs
  ): Promise<void>;
  read(fd: number, buffer: Uint8Array, bufferOffset: number, length: number): number;
  readAsync(fd: number, buffer: Uint8Array, bufferOffset: number, length: number): Promise<number>;
  /**
   * readAtLeastAsync for a regular file or block device (EINVAL for anything else), then the
   * CRC-32 of the first crcLength bytes read (fewer if fewer came), in the same pool job.
   */
  readAtLeastChecksummedAsync(
    fd: number,
    buffer: Uint8Array,
    bufferOffset: number,
    min: number,
    max: number,
    crcLength: number,
  ): Promise<{ bytes: number; crc: number }>;
  /** One read (position -1) or pread, then the CRC-32 of the bytes read, on the same pool thread. */
  readChecksummedAsync(
    fd: number,
    buffer: Uint8Array,
    bufferOffset: number,
    length: number,
    position: Offset | -1,
  ): Promise<{ bytes: number; crc: number }>;
  /** writev of whole views in order, short writes continued, one pool job; regular files and block devices only. */
  writevAllAsync(fd: number, buffers: Uint8Array[]): Promise<number>;
  /** The CRC-32 of the whole view, continued from `running` (0 to start), at once. */
  crc32(buffer: Uint8Array, running: number): number;
  /** The CRC-32 of a range: on the libuv pool for native-owned memory, at once (settled) for other memory. */
  crc32Async(buffer: Uint8Array, bufferOffset: number, length: number): Promise<number>;
  /** F_SETPIPE_SZ: resolves the pipe's capacity after the call. */
  setPipeSize(fd: number, bytes: number): number;
  /**
   * One poll() of `fd` for `events` (constants.POLLIN, ...) on the libuv pool, waiting at most
   * `timeoutMs` (0: not at all; at most 60000): resolves the revents reported, 0 when none came.
   */
  pollAsync(fd: number, events: number, timeoutMs: number): Promise<number>;
  /**
   * Whether a wait that begins with nothing pending wakes: one pool job polls `fd` at once and,
   * only when nothing is pending, waits at most `timeoutMs` (at most 60000). `readyBefore`: the
   * events were already there and no wait began (`revents` are those); else `revents` is what the
   * wait ended with (0: the time ran out) and `waitedMs` its length on the pool thread.
   */
  pollWakeAsync(fd: number, events: number, timeoutMs: number): Promise<PollWake>;
  /**
   * Reads into buffer[bufferOffset, +max) until at least min bytes came or the input ended. A
   * regular file is read on the pool; a pipe, socket or terminal on a thread of its own, which
   * cancelReads(cancelId) and environment teardown wake (the read then rejects with ECANCELED).
   */
  readAtLeastAsync(
    fd: number,
    buffer: Uint8Array,
    bufferOffset: number,
    min: number,
    max: number,
    cancelId?: number,
  ): Promise<number>;
  write(fd: number, buffer: Uint8Array, bufferOffset: number, length: number): number;
  writeAsync(fd: number, buffer: Uint8Array, bufferOffset: number, length: number): Promise<number>;

  getApiVersion(containerFd: number): number;
  checkExtension(containerFd: number, extension: number): number;
  setIommu(containerFd: number, iommuType: number): void;
  groupGetStatus(groupFd: number): number;
  groupSetContainer(groupFd: number, containerFd: number): void;
  groupUnsetContainer(groupFd: number): void;
  groupGetDeviceFd(groupFd: number, name: string): number;
  deviceGetInfo(deviceFd: number): Buffer;
  deviceGetRegionInfo(deviceFd: number, index: number): Buffer;
  deviceGetIrqInfo(deviceFd: number, index: number): Buffer;
  deviceReset(deviceFd: number): void;
  deviceResetAsync(deviceFd: number): Promise<void>;
  deviceFeature(deviceFd: number, feature: Uint8Array): number;
  deviceFeatureAsync(deviceFd: number, feature: Uint8Array): Promise<number>;
  /**
   * VFIO_DEVICE_FEATURE on every device at once, a pool job each, settled together (one wake-up
   * of the JS thread); one entry per device: the ioctl's return value, or the syscall error it
   * failed with (every ioctl runs regardless).
   */
  deviceFeaturesAsync(deviceFds: number[], features: Uint8Array[]): Promise<(number | Error)[]>;
  migGetPrecopyInfo(dataFd: number): Buffer;
  migGetPrecopyInfoAsync(dataFd: number): Promise<Buffer>;

  /** VFIO_IOMMU_GET_INFO: struct vfio_iommu_type1_info with its capability chain. */
  iommuGetInfo(containerFd: number): Buffer;
  /** VFIO_IOMMU_DIRTY_PAGES with _START or _STOP. */
  iommuDirtyPages(containerFd: number, flags: number): void;
  /** VFIO_IOMMU_DIRTY_PAGES _GET_BITMAP of [iova, +size) into bitmap (its whole length is given as bitmap.size). */
  iommuDirtyBitmap(containerFd: number, iova: bigint, size: bigint, pgsize: bigint, bitmap: Uint8Array): void;
  /** DMA_LOGGING_START for (iova, length) pairs; resolves to the page size the driver chose. */
  deviceDmaLoggingStart(deviceFd: number, pageSize: bigint, ranges: BigUint64Array): bigint;
  /** DMA_LOGGING_REPORT of [iova, +length) into bitmap (bits are only set, never cleared), off the JS thread. */
  deviceDmaLoggingReportAsync(
    deviceFd: number,
    iova: bigint,
    length: bigint,
    pageSize: bigint,
    bitmap: Uint8Array,
  ): Promise<void>;

  Mapping: new (fd: number, offset: Offset, length: number, prot: number) => NativeMapping;
  structs: Record<string, StructLayout>;
  constants: Record<string, number>;
}

/**
 * The addon: build/Release (or build/Debug) of the package root, two levels above this file in
 * dist/lib and in the CLI's bundle (dist/bin) alike, opened by process.dlopen. `require()` of the
 * same path (what bindings does) first resolves and realpaths it: in a fresh process in the test
 * guest, 32 ms against 13 ms for the dlopen alone (56 ms through bindings); inside a command,
 * where the module loader is warm already, about 6 ms. Other layouts (a prebuilt addon
 * elsewhere) go through bindings' search and its error message.
 */
function loadAddon(): NativeAddon {
  const root = join(__dirname, '..', '..');
  for (const build of ['Release', 'Debug']) {
    const file = join(root, 'build', build, 'vfio_native.node');
    // A missing file is the next candidate; one that exists and fails to load is the error.
    if (!existsSync(file)) continue;
    const module = { exports: {} };
    process.dlopen(module, file);
    return module.exports as NativeAddon;
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- bindings has no ES module form; loaded only here
  const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => unknown;
  return bindings({ bindings: 'vfio_native', module_root: root }) as NativeAddon;
}

export const native = loadAddon();
native.setErrorClass(SyscallError);
