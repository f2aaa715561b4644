// Host-side tests of the native addon against ordinary files and memfds (no kernel VFIO needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { join } from 'node:path';
import { native } from '../../lib/native';
import { SyscallError } from '../../lib/errors';
import { O_RDWR, layout } from '../../lib/uapi';
import * as uapi from '../../lib/uapi';
import { mapFd } from '../../lib/mapping';

function memfd(size: number): number {
  const fd = native.memfdCreate('vfio-migration-test');
  ftruncateSync(fd, size);
  return fd;
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

test('crc32 (sync) equals zlib, continues a running value, and leaves it unchanged over no bytes', () => {
  const data = Buffer.from(Array.from({ length: 70001 }, (_, i) => (i * 131 + 7) & 0xff));
  assert.equal(native.crc32(data, 0), zlibCrc32(data));
  const head = data.subarray(0, 12345);
  assert.equal(native.crc32(data.subarray(12345), native.crc32(head, 0)), zlibCrc32(data));
  for (const empty of [new Uint8Array(0), Buffer.alloc(0), data.subarray(5, 5)])
    assert.equal(native.crc32(empty, 0xdeadbeef), 0xdeadbeef);
  assert.throws(() => native.crc32('text' as unknown as Uint8Array, 0), TypeError);
  assert.throws(() => native.crc32(data, -1), RangeError);
});

test('struct layouts in lib/uapi.ts match the C compiler', () => {
  for (const [name, expected] of Object.entries(layout)) {
    const real = native.structs[name];
    assert.ok(real, `native exports ${name}`);
    assert.equal(real.size, expected.size, `sizeof(struct ${name})`);
    for (const [field, offset] of Object.entries(expected.fields)) {
      assert.equal(real.fields[field]?.offset, offset, `offsetof(struct ${name}, ${field})`);
    }
  }
});

test('constants in lib/uapi.ts match the C header', () => {
  const nameInTs: Record<string, string> = {
    VFIO_MIG_STATE_PRE_COPY: 'VFIO_DEVICE_STATE_PRE_COPY',
    VFIO_MIG_STATE_PRE_COPY_P2P: 'VFIO_DEVICE_STATE_PRE_COPY_P2P',
  };
  const ts = uapi as unknown as Record<string, number>;
  let checked = 0;
  for (const [name, value] of Object.entries(native.constants)) {
    if (name.startsWith('O_NONBLOCK')) continue;
    const tsName = nameInTs[name] ?? name;
    assert.equal(ts[tsName], value, `${tsName}`);
    checked++;
  }
  assert.ok(checked > 40);
});

test('width-exact pread/pwrite on a memfd, every width, little-endian at the right offset', () => {
  const fd = memfd(64);
  try {
    native.pwriteWidth(fd, 0, 1, 0xab);
    native.pwriteWidth(fd, 2, 2, 0xbeef);
    native.pwriteWidth(fd, 4, 4, 0xdeadbeef);
    native.pwriteWidth(fd, 8n, 8, 0x0123456789abcdefn);
    assert.equal(native.preadWidth(fd, 0, 1), 0xab);
    assert.equal(native.preadWidth(fd, 2, 2), 0xbeef);
    assert.equal(native.preadWidth(fd, 4, 4), 0xdeadbeef);
    assert.equal(native.preadWidth(fd, 8, 8), 0x0123456789abcdefn);
    const bytes = Buffer.alloc(16);
    assert.equal(native.pread(fd, bytes, 0, 16, 0), 16);
    assert.deepEqual(
      [...bytes],
      [0xab, 0, 0xef, 0xbe, 0xef, 0xbe, 0xad, 0xde, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01],
    );
  } finally {
    native.close(fd);
  }
});

test('a register read past the end is a short read, reported as EIO with the counts', () => {
  const fd = memfd(6);
  try {
    assert.throws(
      () => native.preadWidth(fd, 4, 4),
      (e: SyscallError) => e.code === 'EIO' && /short read \(2 of 4 bytes\)/.test(e.message),
    );
  } finally {
    native.close(fd);
  }
});

test('bulk pread/pwrite and read/write, sync and async', async () => {
  const fd = memfd(1 << 20);
  try {
    const data = Buffer.alloc(1 << 20);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    assert.equal(await native.pwriteAsync(fd, data, 0, data.length, 0), data.length);
    const back = Buffer.alloc(data.length);
    assert.equal(await native.preadAsync(fd, back, 0, back.length, 0), back.length);
    assert.ok(back.equals(data));
    const part = Buffer.alloc(100);
    assert.equal(native.pread(fd, part, 10, 50, 1000), 50);
    assert.ok(part.subarray(10, 60).equals(data.subarray(1000, 1050)));
    assert.equal(await native.preadWidthAsync(fd, 4, 4), data.readUInt32LE(4));
    await native.pwriteWidthAsync(fd, 16, 8, 42n);
    assert.equal(native.preadWidth(fd, 16, 8), 42n);
  } finally {
    native.close(fd);
  }
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-'));
  try {
    const path = join(dir, 'plain');
    const wfd = native.open(path, 0o1 | 0o100 /* O_WRONLY|O_CREAT */);
    assert.equal(native.write(wfd, Buffer.from('hello '), 0, 6), 6);
    assert.equal(await native.writeAsync(wfd, Buffer.from('world'), 0, 5), 5);
    native.close(wfd);
    assert.equal(readFileSync(path, 'utf8'), 'hello world');
    const rfd = native.open(path, 0);
    const buf = Buffer.alloc(32);
    assert.equal(await native.readAsync(rfd, buf, 0, 32), 11);
    assert.equal(native.read(rfd, buf, 0, 32), 0, 'end of file');
    native.close(rfd);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('a bulk write carrying a register write: data then register in one job; a failure names its stage', async () => {
  const fd = memfd(1 << 20);
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-'));
  try {
    const data = Buffer.alloc(300_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
    await native.pwriteAllAsync(fd, data, 1000, 200_000, 4096, fd, 8, 8, 200_000n);
    const back = Buffer.alloc(200_000);
    native.pread(fd, back, 0, back.length, 4096);
    assert.ok(back.equals(data.subarray(1000, 201_000)));
    assert.equal(native.preadWidth(fd, 8, 8), 200_000n);
    // Through a mapping: the copy, then the register.
    const map = mapFd(fd, 0n, 1 << 20);
    await map.writeFrom(65_536, data, 0, 100, [fd, 16, 4, 0xabcd]);
    assert.ok(Buffer.from(map.buffer, 65_536, 100).equals(data.subarray(0, 100)));
    assert.equal(native.preadWidth(fd, 16, 4), 0xabcd);
    // The register write fails (read-only fd): the data is written, the error says 'register'.
    const ro = native.open(`/proc/self/fd/${fd}`, 0);
    await assert.rejects(
      map.writeFrom(0, data, 0, 10, [ro, 24, 8, 1n]),
      (err: SyscallError) => err.code === 'EBADF' && err.stage === 'register' && err.syscall === 'pwrite',
    );
    await assert.rejects(native.pwriteAllAsync(fd, data, 0, 10, 0, ro, 24, 8, 1n), {
      code: 'EBADF',
      stage: 'register',
    });
    // The data write fails: the register is not written.
    native.pwriteWidth(fd, 32, 8, 7n);
    await assert.rejects(native.pwriteAllAsync(ro, data, 0, 10, 0, fd, 32, 8, 99n), { code: 'EBADF', stage: 'data' });
    assert.equal(native.preadWidth(fd, 32, 8), 7n);
    native.close(ro);
    map.unmap();
    assert.throws(() => native.pwriteAllAsync(fd, data, 0, 10, 0, fd, 0, 3 as 4, 1), RangeError);
  } finally {
    native.close(fd);
    rmSync(dir, { recursive: true });
  }
});

test('syscall errors carry code, negative errno, syscall and the ioctl name', async () => {
  const fd = native.open('/dev/null', O_RDWR);
  try {
    assert.throws(
      () => native.getApiVersion(fd),
      (e: unknown) => {
        assert.ok(e instanceof SyscallError);
        assert.equal(e.code, 'ENOTTY');
        assert.equal(e.errno, -25);
        assert.equal(e.syscall, 'ioctl');
        assert.match(e.message, /^ioctl VFIO_GET_API_VERSION ENOTTY/);
        return true;
      },
    );
    await assert.rejects(
      native.deviceResetAsync(fd),
      (e: SyscallError) => e.code === 'ENOTTY' && /VFIO_DEVICE_RESET/.test(e.message),
    );
    assert.throws(
      () => native.deviceGetRegionInfo(fd, 0),
      (e: SyscallError) => e.code === 'ENOTTY' && /VFIO_DEVICE_GET_REGION_INFO/.test(e.message),
    );
    assert.throws(
      () => native.migGetPrecopyInfo(fd),
      (e: SyscallError) => /VFIO_MIG_GET_PRECOPY_INFO/.test(e.message),
    );
    // A batch resolves each device's own outcome: here the same error for both, as errors, in order.
    const feature = Buffer.alloc(16);
    feature.writeUInt32LE(16, 0);
    const results = await native.deviceFeaturesAsync([fd, 987654], [feature, Buffer.from(feature)]);
    assert.equal(results.length, 2);
    assert.ok(results[0] instanceof SyscallError && results[0].code === 'ENOTTY');
    assert.match(String(results[0]), /VFIO_DEVICE_FEATURE/);
    assert.ok(results[1] instanceof SyscallError && results[1].code === 'EBADF');
    assert.deepEqual(await native.deviceFeaturesAsync([], []), []);
  } finally {
    native.close(fd);
  }
  assert.throws(
    () => native.open('/nonexistent/vfio', O_RDWR),
    (e: SyscallError) => e.code === 'ENOENT' && e.syscall === 'open' && /\/nonexistent\/vfio/.test(e.message),
  );
  await assert.rejects(
    native.preadAsync(987654, Buffer.alloc(4), 0, 4, 0),
    (e: SyscallError) => e.code === 'EBADF' && e.syscall === 'pread' && e.errno === -9,
  );
});

test('every fd the addon opens is O_CLOEXEC', () => {
  const fd = native.open('/dev/null', O_RDWR);
  const mfd = native.memfdCreate('x');
  try {
    for (const f of [fd, mfd]) {
      const flags = readFileSync(`/proc/self/fdinfo/${f}`, 'utf8').match(/flags:\s+(\d+)/);
      assert.ok(flags);
      assert.ok((parseInt(flags[1], 8) & 0o2000000) !== 0, `fd ${f} has O_CLOEXEC`);
    }
  } finally {
    native.close(fd);
    native.close(mfd);
  }
});

test('mmap is coherent with pread/pwrite; the view is zero-copy and detached at unmap', async () => {
  const fd = memfd(8192);
  try {
    const map = mapFd(fd, 0n, 8192);
    map.write(0, 4, 0x11223344);
    assert.equal(native.preadWidth(fd, 0, 4), 0x11223344);
    native.pwriteWidth(fd, 4096, 8, 0xfeedfacecafebeefn);
    assert.equal(map.read(4096, 8), 0xfeedfacecafebeefn);
    assert.equal(map.read(4096, 2), 0xbeef);
    const view = new Uint8Array(map.buffer);
    assert.equal(view.length, 8192);
    view[100] = 0x5a;
    assert.equal(native.preadWidth(fd, 100, 1), 0x5a);
    const out = Buffer.alloc(4096);
    native.pwrite(fd, Buffer.alloc(4096, 0x33), 0, 4096, 4096);
    await map.readInto(4096, out);
    assert.ok(out.equals(Buffer.alloc(4096, 0x33)));
    await map.writeFrom(0, Buffer.alloc(16, 0x77));
    assert.equal(native.preadWidth(fd, 8, 8), 0x7777777777777777n);
    map.unmap();
    map.unmap();
    assert.equal(map.mapped, false);
    assert.equal(view.length, 0, 'the old view is detached');
    assert.throws(() => map.read(0, 4), /unmapped/);
    assert.throws(() => map.buffer, /unmapped/);
  } finally {
    native.close(fd);
  }
});

test('mapping accessors refuse misaligned, out-of-range and wrong-typed access', () => {
  const fd = memfd(4096);
  const map = mapFd(fd, 0n, 4096);
  try {
    assert.throws(() => map.read(2, 4), RangeError);
    assert.throws(() => map.read(4096, 1), RangeError);
    assert.throws(() => map.read(4092, 8), RangeError);
    assert.throws(() => map.write(0, 8, 1 as unknown as bigint), TypeError);
    assert.throws(() => map.write(0, 1, 256), RangeError);
    assert.throws(() => map.read(0, 3 as 4), RangeError);
    assert.throws(() => map.readInto(4000, Buffer.alloc(200)), RangeError);
  } finally {
    map.unmap();
    native.close(fd);
  }
});

test('unmap while an async copy runs: the copy completes, the munmap waits for it', async () => {
  const fd = memfd(32 << 20);
  const map = mapFd(fd, 0n, 32 << 20);
  const target = Buffer.alloc(32 << 20);
  const copy = map.readInto(0, target);
  map.unmap();
  await copy;
  assert.equal(map.mapped, false);
  native.close(fd);
});

test('abuse: foreign receivers, wrong argument types and closed objects throw, never crash', () => {
  const fd = memfd(4096);
  const raw = new native.Mapping(fd, 0, 4096, 3);
  const proto = Object.getPrototypeOf(raw) as Record<string, (...a: unknown[]) => unknown>;
  assert.throws(() => proto.read.call({}, 0, 4));
  assert.throws(() => proto.unmap.call({}));
  assert.throws(() => proto.read.call(5, 0, 4));
  assert.throws(() => proto.readInto.call(Object.create(proto), 0, Buffer.alloc(4), 0, 4));
  assert.throws(() => Reflect.get(proto, 'buffer', {}));
  assert.throws(() => native.pread(fd, 'nope' as unknown as Buffer, 0, 4, 0), TypeError);
  assert.throws(() => native.pread(fd, Buffer.alloc(4), 0, 8, 0), RangeError);
  assert.throws(() => native.pread(fd, Buffer.alloc(4), 0, 4, -1), RangeError);
  assert.throws(() => native.pread(fd, Buffer.alloc(4), 0, 4, 2n ** 64n), RangeError);
  assert.throws(() => native.preadWidth(fd, 0, 3 as 4), RangeError);
  assert.throws(() => native.preadWidth(-1, 0, 4), RangeError);
  assert.throws(() => native.pwriteWidth(fd, 0, 8, 1), TypeError);
  assert.throws(() => native.deviceFeature(fd, Buffer.alloc(4)), RangeError);
  const lying = Buffer.alloc(16);
  lying.writeUInt32LE(4096, 0);
  assert.throws(() => native.deviceFeature(fd, lying), /argsz is larger/);
  // The batch checks every entry before any ioctl.
  const feature = Buffer.alloc(16);
  feature.writeUInt32LE(16, 0);
  assert.throws(() => native.deviceFeaturesAsync(fd as unknown as number[], []), TypeError);
  assert.throws(() => native.deviceFeaturesAsync([fd, fd], [feature]), /differ in length/);
  assert.throws(() => native.deviceFeaturesAsync([fd], [Buffer.alloc(4)]), RangeError);
  assert.throws(() => native.deviceFeaturesAsync([fd, fd], [feature, lying]), /argsz is larger/);
  assert.throws(() => native.deviceFeaturesAsync([-1], [feature]), RangeError);
  assert.throws(() => native.deviceFeaturesAsync([fd], ['x' as unknown as Buffer]), TypeError);
  assert.throws(() => (native.open as (...a: unknown[]) => number)(42), TypeError);
  assert.throws(() => (native.Mapping as unknown as () => void)(), TypeError);
  raw.unmap();
  assert.throws(() => raw.write(0, 4, 1), /unmapped/);
  native.close(fd);
  assert.throws(
    () => native.close(fd),
    (e: SyscallError) => e.code === 'EBADF',
  );
});

test('no fd leaks across a loop of open/close, memfd, mmap/unmap', () => {
  const before = openFds();
  for (let i = 0; i < 500; i++) {
    const fd = memfd(4096);
    const map = mapFd(fd, 0n, 4096);
    map.write(0, 4, i);
    map.unmap();
    native.close(fd);
    const n = native.open('/dev/null', O_RDWR);
    native.close(n);
  }
  assert.equal(openFds(), before);
});

test('an fd opened by a plain file path is usable by node:fs too', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-'));
  try {
    const path = join(dir, 'f');
    writeFileSync(path, Buffer.alloc(8));
    const fd = openSync(path, 'r+');
    native.pwriteWidth(fd, 0, 4, 7);
    closeSync(fd);
    assert.equal(readFileSync(path).readUInt32LE(0), 7);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

/** A FIFO opened for polling: `r` by the addon (non-blocking, opened before any writer), `w` by Node. */
function pollFifo(): { r: number; w: number; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-poll-'));
  const fifo = join(dir, 'p');
  execFileSync('mkfifo', [fifo]);
  const r = native.open(fifo, 0o4000 /* O_RDONLY | O_NONBLOCK: no writer yet */);
  return { r, w: openSync(fifo, 'w'), dir };
}

test('host: pollAsync with a zero timeout says what a fifo reports at once (nothing, POLLIN, POLLHUP) and never waits', async () => {
  const { POLLIN, POLLHUP } = native.constants as Record<string, number>;
  const { r, w, dir } = pollFifo();
  try {
    const t0 = Date.now();
    assert.equal(await native.pollAsync(r, POLLIN!, 0), 0, 'an empty fifo with a writer: nothing');
    assert.ok(Date.now() - t0 < 1000, 'a zero timeout: no wait');
    writeFileSync(w, 'x');
    assert.equal((await native.pollAsync(r, POLLIN!, 0)) & POLLIN!, POLLIN);
    closeSync(w);
    assert.ok((await native.pollAsync(r, POLLIN!, 0)) & POLLHUP!, 'the writer gone: POLLHUP');
    assert.throws(() => native.pollAsync(-1, POLLIN!, 0), /fd/);
    assert.throws(() => native.pollAsync(r, 0x10000, 0), RangeError);
  } finally {
    native.close(r);
    rmSync(dir, { recursive: true });
  }
});

test('host: pollAsync waits: it times out with 0 over an empty fifo, and wakes when data comes, without holding the JS thread', async () => {
  const { POLLIN } = native.constants as Record<string, number>;
  const { r, w, dir } = pollFifo();
  try {
    let t0 = Date.now();
    assert.equal(await native.pollAsync(r, POLLIN!, 150), 0, 'nothing came: 0');
    assert.ok(Date.now() - t0 >= 140, `it waited (${Date.now() - t0} ms)`);
    t0 = Date.now();
    let ticked = false;
    setTimeout(() => {
      ticked = true;
      writeFileSync(w, 'x');
    }, 100);
    assert.equal((await native.pollAsync(r, POLLIN!, 10000)) & POLLIN!, POLLIN);
    assert.ok(ticked, 'the JS thread ran the timer while the poll waited');
    assert.ok(Date.now() - t0 < 5000, `woken by the write, not the timeout (${Date.now() - t0} ms)`);
    assert.throws(() => native.pollAsync(r, POLLIN!, 60001), RangeError);
  } finally {
    closeSync(w);
    native.close(r);
    rmSync(dir, { recursive: true });
  }
});

test('host: pollWakeAsync tells data already pending (no wait began) from a wait that woke or ran out, and times the wait', async () => {
  const { POLLIN } = native.constants as Record<string, number>;
  const { r, w, dir } = pollFifo();
  try {
    writeFileSync(w, 'x');
    const pending = await native.pollWakeAsync(r, POLLIN!, 10000);
    assert.deepEqual(pending, { readyBefore: true, revents: POLLIN, waitedMs: 0 }, 'pending before: no wait');
    assert.equal(native.read(r, Buffer.alloc(16), 0, 16), 1, 'drained');
    const quiet = await native.pollWakeAsync(r, POLLIN!, 150);
    assert.equal(quiet.readyBefore, false);
    assert.equal(quiet.revents, 0, 'nothing came: 0');
    assert.ok(quiet.waitedMs >= 140 && quiet.waitedMs < 5000, `it waited its time (${quiet.waitedMs} ms)`);
    setTimeout(() => writeFileSync(w, 'y'), 100);
    const woke = await native.pollWakeAsync(r, POLLIN!, 10000);
    assert.equal(woke.readyBefore, false);
    assert.equal(woke.revents & POLLIN!, POLLIN);
    assert.ok(woke.waitedMs >= 50 && woke.waitedMs < 5000, `woken by the write (${woke.waitedMs} ms)`);
    assert.throws(() => native.pollWakeAsync(r, POLLIN!, 60001), RangeError);
    assert.throws(() => native.pollWakeAsync(r, 0x10000, 0), RangeError);
  } finally {
    closeSync(w);
    native.close(r);
    rmSync(dir, { recursive: true });
  }
});

/**
 * A child's script: loads `nativeJs`, then prints whether the bindings module was loaded and the
 * addon's CRC-32 of "123456789" (that the addon works).
 */
function addonProbe(nativeJs: string): string {
  return `const { native } = require(${JSON.stringify(nativeJs)});
    const viaBindings = Object.keys(require.cache).some((p) => /[\\/]node_modules[\\/]bindings[\\/]/.test(p));
    process.stdout.write(JSON.stringify({ viaBindings, crc: native.crc32(Buffer.from('123456789'), 0) }));`;
}

// Start-up: `require()` of the addon's path (as bindings does it, after its own module loads)
// resolves and realpaths the path first: in a fresh process in the test guest 32 ms against 13 ms
// for process.dlopen of the same file (56 ms through bindings); about 6 ms inside a command.
test('the addon of the build layout is loaded straight by its path, without the bindings module', () => {
  const out = execFileSync(process.execPath, ['-e', addonProbe(join(__dirname, '../../lib/native.js'))], {
    encoding: 'utf8',
  });
  const seen = JSON.parse(out) as { viaBindings: boolean; crc: number };
  assert.equal(seen.viaBindings, false, 'bindings was loaded');
  assert.equal(seen.crc, 0xcbf43926, 'the addon loaded works');
});

test('an addon outside the build layout is found by bindings; with none anywhere the error lists where it looked', (t) => {
  // A copy of the package's dist/lib beside an addon in out/Release (one of bindings' layouts).
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-addon-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const lib = join(dir, 'dist', 'lib');
  mkdirSync(lib, { recursive: true });
  for (const f of ['native.js', 'errors.js']) copyFileSync(join(__dirname, '../../lib', f), join(lib, f));
  const env = { ...process.env, NODE_PATH: join(__dirname, '../../../node_modules') };
  const load = addonProbe(join(lib, 'native.js'));
  const missing = spawnSync(process.execPath, ['-e', load], { env, encoding: 'utf8' });
  assert.notEqual(missing.status, 0);
  assert.match(missing.stderr, /Could not locate the bindings file/);
  assert.match(missing.stderr, new RegExp(`${join(dir, 'build', 'Release', 'vfio_native.node')}`));

  mkdirSync(join(dir, 'out', 'Release'), { recursive: true });
  copyFileSync(
    join(__dirname, '../../../build/Release/vfio_native.node'),
    join(dir, 'out', 'Release', 'vfio_native.node'),
  );
  const seen = JSON.parse(execFileSync(process.execPath, ['-e', load], { env, encoding: 'utf8' })) as {
    viaBindings: boolean;
    crc: number;
  };
  assert.deepEqual(seen, { viaBindings: true, crc: 0xcbf43926 });
});

test("the addon links to no V8 C++ symbol, and finds this Node's own V8 hints at run time", () => {
  // V8's C++ API is neither stable across Node releases nor buildable with their headers alike
  // (Node 24's need C++20): the hints are looked up in the running Node (native/heap.cc).
  const addon = join(__dirname, '../../../build/Release/vfio_native.node');
  const undefinedSymbols = execFileSync('nm', ['-D', '--undefined-only', addon], { encoding: 'utf8' });
  assert.deepEqual(
    undefinedSymbols.split('\n').filter((l) => /\b_ZN\d*v8/.test(l)),
    [],
    'V8 symbols the dynamic linker must resolve',
  );
  assert.equal(native.majorGcHint, true, `no loading hint found in ${process.version}`);
  assert.equal(native.feedbackHint, true, `no V8::SetFlagsFromString found in ${process.version}`);
});
