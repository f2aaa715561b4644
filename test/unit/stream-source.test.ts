// Host-side tests: decoding from a ByteSource (reused buffers, FdSource on real files and pipes) matches decoding from an iterable.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { crc32 as zlibCrc32 } from 'node:zlib';

import { native } from '../../lib/native';
import { O_RDONLY } from '../../lib/uapi';

const O_NONBLOCK = 0o4000;
import { ByteSourceReader, FdSource, MIN_CAPACITY, type ByteSource } from '../../lib/migration/source';
import { readAhead } from '../../lib/migration/pipeline';
import {
  PHASE_STOP_COPY,
  StreamDecoder,
  StreamEncoder,
  StreamError,
  verifyStream,
  type StreamRecord,
} from '../../lib/migration/stream';

const HEADER = { protocol: 'v2' as const, device: { kind: 'mdev', mdevType: 'test' } };

async function encode(payloads: Buffer[]): Promise<Buffer> {
  const parts: Buffer[] = [];
  const encoder = new StreamEncoder(async (chunk) => {
    parts.push(Buffer.from(chunk));
  }, HEADER);
  payloads.forEach((p, i) => void encoder.writeRecord(i === payloads.length - 1 ? PHASE_STOP_COPY : 0, p));
  await encoder.finish();
  return Buffer.concat(parts);
}

/** A ByteSource over memory that hands over at most `step(i)` bytes per underlying read, like a pipe. */
function memorySource(
  bytes: Buffer,
  step: (i: number) => number = () => bytes.length || 1,
): ByteSource & { closed: boolean } {
  let at = 0;
  let reads = 0;
  const src = {
    closed: false,
    async readAtLeast(buffer: Buffer, offset: number, min: number, max: number): Promise<number> {
      assert.ok(!src.closed, 'read after close');
      assert.ok(
        min <= max && offset + max <= buffer.length,
        `read range [${offset}, +${max}) min ${min} in a ${buffer.length}-byte buffer`,
      );
      let got = 0;
      while (got < min && at < bytes.length) {
        const n = Math.min(Math.max(1, step(reads++)), max - got, bytes.length - at);
        bytes.copy(buffer, offset + got, at, at + n);
        at += n;
        got += n;
        await Promise.resolve();
      }
      return got;
    },
    close(): void {
      src.closed = true;
    },
  };
  return src;
}

/**
 * memorySource that also checksums as it reads (as FdSource does for a file): the CRC of the first
 * `crcLength` bytes each read brought, by zlib. `refuse` makes it answer null, as FdSource does
 * for a pipe. Counts the checksummed reads.
 */
function checksummingSource(bytes: Buffer, step?: (i: number) => number, refuse = false) {
  const src = Object.assign(memorySource(bytes, step), { checksummed: 0 });
  return Object.assign(src, {
    async readAtLeastChecksummed(buffer: Buffer, offset: number, min: number, max: number, crcLength: number) {
      if (refuse) return null;
      assert.ok(crcLength <= max, `crcLength ${crcLength} > max ${max}`);
      const got = await src.readAtLeast(buffer, offset, min, max);
      src.checksummed++;
      return { bytes: got, crc: zlibCrc32(buffer.subarray(offset, offset + Math.min(got, crcLength))) };
    },
  });
}

async function* chunks(bytes: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < bytes.length; at += size) yield bytes.subarray(at, at + size);
}

interface Outcome {
  records: { phase: number; sequence: bigint; payload: Buffer }[];
  error?: { code: string; offset: number; record?: bigint; message: string };
}

async function decodeAll(source: AsyncIterable<Buffer> | ByteSource): Promise<Outcome> {
  const out: Outcome = { records: [] };
  try {
    for await (const r of new StreamDecoder(source).records())
      out.records.push({ ...r, payload: Buffer.from(r.payload) });
  } catch (err) {
    assert.ok(err instanceof StreamError, `not a StreamError: ${String(err)}`);
    out.error = { code: err.code, offset: err.offset, record: err.record, message: err.message };
  }
  return out;
}

const pattern = (i: number, n: number) => Buffer.alloc(n, (i * 37 + 11) & 0xff);

describe('stream decoder over a ByteSource (in-process byte sources)', () => {
  it('gives the same records and the same errors as over an iterable, for every flipped bit and every cut', async () => {
    const payloads = [pattern(0, 10), Buffer.alloc(0), pattern(2, 300), pattern(3, 3)];
    const bytes = await encode(payloads);
    for (let pos = 0; pos < bytes.length; pos++) {
      const bad = Buffer.from(bytes);
      bad[pos]! ^= 1 << (pos % 8);
      const want = await decodeAll(chunks(bad, 7));
      assert.ok(want.error, `flip at ${pos} accepted`);
      assert.deepEqual(await decodeAll(memorySource(bad, (i) => (i % 3) + 1)), want, `flip at ${pos}`);
      assert.deepEqual(await decodeAll(memorySource(bad)), want, `flip at ${pos}, one read`);
    }
    for (let cut = 0; cut <= bytes.length; cut++) {
      const want = await decodeAll(chunks(bytes.subarray(0, cut), 5));
      assert.deepEqual(await decodeAll(memorySource(bytes.subarray(0, cut), () => 4)), want, `cut at ${cut}`);
    }
    const trailing = Buffer.concat([bytes, Buffer.from('x')]);
    assert.deepEqual(await decodeAll(memorySource(trailing)), await decodeAll(chunks(trailing, 64)));
    assert.equal((await decodeAll(memorySource(trailing))).error?.code, 'ERR_STREAM_FORMAT');
  });

  it('keeps a record intact while the next is decoded, across buffer switches of every size', async () => {
    // Sizes around the reader's buffer capacity (256 KiB) and look-ahead (4 KiB) force every
    // kind of switch: header straddling, payload larger than the buffer, many small records.
    const sizes = [1, 4096, 4064, 4065, 262_144, 262_145, 1 << 20, 17, 0, 300_000, 5, 5, 5, 1 << 20, 4096 * 3, 1];
    const payloads = sizes.map((n, i) => pattern(i, n));
    const bytes = await encode(payloads);
    for (const step of [() => bytes.length, () => 65_536, (i: number) => 1 + ((i * 7919) % 9000)]) {
      const decoder = new StreamDecoder(memorySource(bytes, step));
      let previous: StreamRecord | undefined;
      let i = 0;
      // readAhead is how session.load consumes the decoder: one record held, the next being read.
      for await (const r of readAhead(decoder.records())) {
        if (previous)
          assert.ok(
            previous.payload.equals(payloads[i - 1]!),
            `record ${i - 1} was overwritten while record ${i} was read`,
          );
        assert.ok(r.payload.equals(payloads[i]!), `record ${i} (${sizes[i]} bytes)`);
        await new Promise((resolve) => setImmediate(resolve)); // the read of the next record runs meanwhile
        assert.ok(r.payload.equals(payloads[i]!), `record ${i} changed while held`);
        previous = r;
        i++;
      }
      assert.equal(i, sizes.length);
      assert.equal(decoder.totals?.records, BigInt(sizes.length));
    }
  });

  it('reader: a view survives the two buffer switches one record can cause (header, then payload)', async () => {
    const bytes = Buffer.alloc(3 << 20);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31) >> 3;
    const reader = new ByteSourceReader(memorySource(bytes));
    await reader.read(1 << 20); // the first buffer: 1 MiB plus the look-ahead
    // A payload that ends 10 bytes short of that buffer's end: the next header cannot fit.
    const held = await reader.read(4096 - 10);
    const copy = Buffer.from(held!);
    const header = await reader.read(32); // switch 1, to a new MIN_CAPACITY buffer
    const payload = await reader.read(MIN_CAPACITY + 1000); // switch 2: more than that buffer holds
    assert.ok(header && payload);
    assert.ok(held!.equals(copy), 'the held payload was overwritten');
    const at = (1 << 20) + 4096 - 10;
    assert.ok(header.equals(bytes.subarray(at, at + 32)));
    assert.ok(payload.equals(bytes.subarray(at + 32, at + 32 + MIN_CAPACITY + 1000)));
  });

  it('reader: a read larger than the first buffer grows it as data arrives, views kept valid', async () => {
    // 40 MiB: past the first allocation (16 MiB ahead of the data), so the buffer doubles twice.
    const big = 40 << 20;
    const bytes = Buffer.alloc(big + (2 << 20));
    for (let i = 0; i < bytes.length; i += 4) bytes.writeUInt32LE(i, i);
    const reader = new ByteSourceReader(memorySource(bytes, () => 1 << 20));
    const held = await reader.read(1 << 20);
    const copy = Buffer.from(held!);
    const payload = await reader.read(big);
    assert.ok(payload && payload.equals(bytes.subarray(1 << 20, (1 << 20) + big)), 'the grown read');
    assert.ok(held!.equals(copy), 'the held view was overwritten by the growing read');
    const next = await reader.read(32);
    assert.ok(payload.equals(bytes.subarray(1 << 20, (1 << 20) + big)), 'the grown buffer was reused too early');
    assert.ok(next!.equals(bytes.subarray((1 << 20) + big, (1 << 20) + big + 32)));
    // The source ends short of a lying length: null, and the bytes that came are counted.
    const lie = new ByteSourceReader(memorySource(bytes.subarray(0, 5000), () => 100));
    assert.equal(await lie.read(1 << 30), null);
    assert.equal(lie.received, 5000);
  });

  it("reader: readChecksummed gives zlib's CRC of exactly the bytes read, look-ahead prefix combined", async () => {
    const bytes = Buffer.from(Array.from({ length: 9 << 20 }, (_, i) => (i * 2654435761) >>> 24));
    const sizes = [1, 31, 4096, 5000, MIN_CAPACITY - 3, MIN_CAPACITY + 7, 1 << 20, 3 << 20, 17, 2 << 20];
    for (const step of [undefined, (i: number) => 1 + ((i * 7919) % 70000)]) {
      const src = checksummingSource(bytes, step);
      const reader = new ByteSourceReader(src);
      let at = 0;
      let withCrc = 0;
      for (const [i, n] of sizes.entries()) {
        // A plain read between checksummed ones leaves a look-ahead in the buffer.
        if (i % 3 === 2) {
          assert.ok((await reader.read(13))!.equals(bytes.subarray(at, at + 13)));
          at += 13;
        }
        const r = (await reader.readChecksummed(n))!;
        assert.ok(r.bytes.equals(bytes.subarray(at, at + n)), `read ${i}: ${n} bytes at ${at}`);
        if (r.crc !== undefined) {
          withCrc++;
          assert.equal(r.crc, zlibCrc32(bytes.subarray(at, at + n)), `read ${i}: CRC of ${n} bytes at ${at}`);
        }
        at += n;
      }
      assert.ok(withCrc >= sizes.length / 2, `only ${withCrc} reads came with a CRC`);
      assert.ok(src.checksummed >= withCrc);
      // Past the end: null, as read() gives.
      assert.equal(await reader.readChecksummed(bytes.length), null);
    }
  });

  it('decodes the same from a source that checksums as it reads, one that refuses, and an iterable; a flipped payload bit is caught', async () => {
    const payloads = [1, 70000, MIN_CAPACITY * 2 + 5, 3, 1 << 20].map((n, i) => Buffer.alloc(n, i + 1));
    const good = await encode(payloads);
    const bad = Buffer.from(good);
    bad[bad.length - 100] ^= 0x10; // inside the last payload
    for (const bytes of [good, bad]) {
      const expected = await decodeAll(chunks(bytes, 4096));
      const checked = checksummingSource(bytes);
      assert.deepEqual(await decodeAll(checked), expected);
      assert.ok(checked.checksummed > 0, 'no read was checksummed');
      assert.deepEqual(await decodeAll(checksummingSource(bytes, undefined, true)), expected);
    }
    const caught = await decodeAll(checksummingSource(bad));
    assert.equal(caught.error?.code, 'ERR_STREAM_CHECKSUM');
    assert.equal(caught.error?.record, 4n);
  });

  it('closes the source after the end, an error or an early break', async () => {
    const bytes = await encode([pattern(0, 100), pattern(1, 100)]);
    const done = memorySource(bytes);
    await decodeAll(done);
    assert.ok(done.closed);
    const cut = memorySource(bytes.subarray(0, 150));
    assert.equal((await decodeAll(cut)).error?.code, 'ERR_STREAM_TRUNCATED');
    assert.ok(cut.closed);
    const early = memorySource(bytes);
    for await (const _ of new StreamDecoder(early).records()) break;
    assert.ok(early.closed);
  });
});

describe('FdSource (host kernel: files and pipes)', () => {
  const openFds = () => readdirSync('/proc/self/fd').length;

  it('reads a stream from a file, closes the fd it opened, and leaks none over many runs', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfmig-src-'));
    try {
      const payloads = [pattern(0, 1 << 20), pattern(1, 12_345), pattern(2, 1 << 20)];
      const path = join(dir, 's.vfmig');
      writeFileSync(path, await encode(payloads));
      const before = openFds();
      for (let k = 0; k < 20; k++) {
        const got = await decodeAll(FdSource.open(path));
        assert.equal(got.error, undefined);
        assert.deepEqual(
          got.records.map((r) => r.payload.length),
          payloads.map((p) => p.length),
        );
        got.records.forEach((r, i) => assert.ok(r.payload.equals(payloads[i]!)));
      }
      assert.equal(openFds(), before, 'fds leaked');
      assert.throws(() => FdSource.open(join(dir, 'missing')), { code: 'ENOENT' });
      assert.equal((await verifyStream(FdSource.open(path))).records, 3n);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is disposable: leaving a `using` block closes the file it opened', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfmig-src-'));
    try {
      const path = join(dir, 'empty.vfmig');
      writeFileSync(path, '');
      const before = openFds();
      {
        using source = FdSource.open(path);
        assert.equal(openFds(), before + 1);
        assert.equal(source.name, path);
      }
      assert.equal(openFds(), before, 'the fd was closed at the end of the block');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads from a pipe fed in small pieces, blocking or non-blocking, and leaves a borrowed fd open', async () => {
    const payloads = [pattern(0, 200_000), pattern(1, 3), pattern(2, 700_000)];
    const bytes = await encode(payloads);
    const dir = mkdtempSync(join(tmpdir(), 'vfmig-fifo-'));
    try {
      writeFileSync(join(dir, 'stream'), bytes);
      for (const nonBlocking of [false, true]) {
        const fifo = join(dir, `fifo-${nonBlocking}`);
        execFileSync('mkfifo', [fifo]);
        const before = openFds();
        // A child writes the stream into the FIFO in 1000-byte pieces, waiting between them.
        const writer = `const fs=require('fs');const b=fs.readFileSync(process.argv[1]);const fd=fs.openSync(process.argv[2],'w');let i=0;(function w(){if(i>=b.length)return fs.closeSync(fd);fs.writeSync(fd,b.subarray(i,i+=1000));setTimeout(w,i%50000?0:5);})()`;
        const child = spawn(process.execPath, ['-e', writer, join(dir, 'stream'), fifo], { stdio: 'inherit' });
        const blocking = native.open(fifo, O_RDONLY); // returns once the child opened its end
        let fd = blocking;
        if (nonBlocking) {
          fd = native.open(`/proc/self/fd/${blocking}`, O_RDONLY | O_NONBLOCK);
          native.close(blocking);
        }
        const got = await decodeAll(new FdSource(fd, { name: 'fifo' }));
        assert.equal(got.error, undefined, got.error?.message);
        assert.equal(got.records.length, payloads.length);
        got.records.forEach((r, i) => assert.ok(r.payload.equals(payloads[i]!), `record ${i}`));
        // Borrowed: still open after the decoder closed its source.
        assert.equal(openFds(), before + 1);
        native.close(fd);
        await new Promise((resolve) => (child.exitCode !== null ? resolve(null) : child.once('exit', resolve)));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("checksums a file's reads on the pool, and answers null for a pipe (read plainly by its wait thread)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfmig-src-'));
    try {
      const file = join(dir, 'data');
      const data = Buffer.from(Array.from({ length: 300000 }, (_, i) => (i * 31) & 0xff));
      writeFileSync(file, data);
      using source = FdSource.open(file);
      const buffer = Buffer.alloc(400000);
      const r = await source.readAtLeastChecksummed(buffer, 10, 1000, 400000 - 10, 5000);
      assert.deepEqual(r, { bytes: data.length, crc: zlibCrc32(data.subarray(0, 5000)) });
      assert.ok(buffer.subarray(10, 10 + data.length).equals(data));
      // crcLength past what came: the CRC of what came.
      using again = FdSource.open(file);
      const all = await again.readAtLeastChecksummed(buffer, 0, 1, 400000, 400000);
      assert.deepEqual(all, { bytes: data.length, crc: zlibCrc32(data) });
      const fifo = join(dir, 'fifo');
      execFileSync('mkfifo', [fifo]);
      // O_RDWR: a FIFO open that needs no writer (Linux).
      const fd = native.open(fifo, 2);
      try {
        const pipeSource = new FdSource(fd);
        assert.equal(await pipeSource.readAtLeastChecksummed(buffer, 0, 1, 100, 100), null);
        // The native call itself refuses a pipe: a pool thread must never wait on one.
        assert.throws(() => native.readAtLeastChecksummedAsync(fd, buffer, 0, 1, 100, 100), /EINVAL/);
      } finally {
        native.close(fd);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a read error naming the input, with the syscall error as its cause', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfmig-src-'));
    try {
      const fd = openSync(dir, 'r'); // read() on a directory fails with EISDIR
      const decoder = new StreamDecoder(new FdSource(fd, { closeFd: true, name: dir }));
      await assert.rejects(decoder.readHeader(), (e: Error & { code: string; errno: string; cause: unknown }) => {
        assert.equal(e.code, 'ERR_MIGRATION_IO');
        assert.equal(e.errno, 'EISDIR');
        assert.ok(e.message.includes(dir), e.message);
        assert.deepEqual({ ...(e.cause as object) }, { ...(e.cause as object), code: 'EISDIR', syscall: 'read' });
        return true;
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
