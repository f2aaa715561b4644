// Host tests of the copy-free save path (no kernel VFIO): checksummed reads, writev to a FileSink, larger pipes.
import { after, test } from 'node:test';
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { native } from '../../lib/native';
import { allocIoBuffer } from '../../lib/buffers';
import { enlargePipe, STREAM_PIPE_BYTES } from '../../lib/pipe';
import { mapFd } from '../../lib/mapping';
import { FileSink } from '../../lib/migration/stream/sink';
import { StreamEncoder, PHASE_STOP_COPY, verifyStream, type StreamHeader } from '../../lib/migration/stream';
import { FdSource } from '../../lib/migration/source';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-filesink-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 131 + seed) & 0xff;
  return b;
}

test('readChecksummedAsync: read and pread give the bytes and their zlib CRC-32, into native and JS memory', async () => {
  const file = join(dir, 'data.bin');
  const data = pattern(3 << 20, 7);
  writeFileSync(file, data);
  const fd = openSync(file, 'r');
  try {
    const io = allocIoBuffer(1 << 20);
    const whole = await native.readChecksummedAsync(fd, io, 0, io.length, -1);
    assert.equal(whole.bytes, 1 << 20);
    assert.equal(whole.crc, crc32(data.subarray(0, 1 << 20)));
    assert.ok(io.equals(data.subarray(0, 1 << 20)));
    const js = Buffer.alloc(5000);
    const at = await native.readChecksummedAsync(fd, js, 100, 4000, (2 << 20) + 3);
    assert.equal(at.bytes, 4000);
    assert.ok(js.subarray(100, 4100).equals(data.subarray((2 << 20) + 3, (2 << 20) + 4003)));
    assert.equal(at.crc, crc32(js.subarray(100, 4100)));
    // At the end of the file: 0 bytes, the CRC of nothing.
    const end = await native.readChecksummedAsync(fd, js, 0, 10, 3 << 20);
    assert.deepEqual(end, { bytes: 0, crc: 0 });
    // A range outside the view is refused before any syscall, synchronously.
    assert.throws(() => native.readChecksummedAsync(fd, js, 4990, 20, 0), RangeError);
  } finally {
    closeSync(fd);
  }
});

test('writevAllAsync writes views in order, refuses a pipe; FileSink streams equal the Writable ones byte for byte', async () => {
  const file = join(dir, 'out.bin');
  const fd = openSync(file, 'w');
  try {
    const parts = [Buffer.from('head'), pattern(2 << 20, 3), allocIoBuffer(3).fill(9), Buffer.from('tail')];
    assert.equal(await native.writevAllAsync(fd, parts), 4 + (2 << 20) + 3 + 4);
  } finally {
    closeSync(fd);
  }
  const written = readFileSync(file);
  assert.equal(written.subarray(0, 4).toString(), 'head');
  assert.ok(written.subarray(4, 4 + (2 << 20)).equals(pattern(2 << 20, 3)));
  assert.equal(written.subarray(-4).toString(), 'tail');
  const [r, w] = pipeFds();
  try {
    assert.throws(() => native.writevAllAsync(w, [Buffer.from('x')]), /regular files and block devices only/);
  } finally {
    closeSync(r);
    closeSync(w);
  }

  // The same records through a FileSink (with and without a CRC computed at read) and an async function.
  const header: StreamHeader = { protocol: 'v2', device: { kind: 'mdev', mdevType: 'x' } };
  const payloads = [pattern(1 << 20, 1), pattern(70_000, 2), pattern(0, 0), pattern(1 << 20, 4)];
  const viaFunction: Buffer[] = [];
  const plain = new StreamEncoder(async (c) => void viaFunction.push(Buffer.from(c)), header);
  const streamFile = join(dir, 'stream.vfmig');
  const sfd = openSync(streamFile, 'w');
  try {
    const direct = new StreamEncoder(new FileSink(sfd), header);
    for (const [i, p] of payloads.entries()) {
      const phase = i === payloads.length - 1 ? PHASE_STOP_COPY : 0;
      await plain.writeRecord(phase, p);
      await direct.writeRecord(phase, p, i % 2 ? undefined : crc32(p));
    }
    await plain.finish();
    await direct.finish();
  } finally {
    closeSync(sfd);
  }
  // The header carries a creation time only when given one: both streams are byte-identical.
  assert.ok(readFileSync(streamFile).equals(Buffer.concat(viaFunction)));
  const verified = await verifyStream(FdSource.open(streamFile));
  assert.equal(verified.records, 4n);
});

test('enlargePipe grows a pipe to 1 MiB and leaves other fds alone', () => {
  const [r, w] = pipeFds();
  try {
    assert.equal(enlargePipe(w), STREAM_PIPE_BYTES);
    assert.equal(enlargePipe(r), STREAM_PIPE_BYTES, 'both ends name the same pipe');
  } finally {
    closeSync(r);
    closeSync(w);
  }
  const fd = openSync(join(dir, 'plain'), 'w');
  try {
    assert.equal(enlargePipe(fd), undefined);
  } finally {
    closeSync(fd);
  }
});

/** Two fds on one pipe: a FIFO opened read-write (which does not wait for a writer), then write-only. */
function pipeFds(): [number, number] {
  const fifo = join(dir, `fifo-${process.hrtime.bigint()}`);
  execFileSync('mkfifo', [fifo]);
  const r = openSync(fifo, 'r+');
  const w = openSync(fifo, 'w');
  return [r, w];
}

test('a mapping copies out and checksums in one job (the v1 mmap data section path)', async () => {
  const file = join(dir, 'mapped.bin');
  const data = pattern(64 << 10, 11);
  writeFileSync(file, data);
  const fd = openSync(file, 'r+');
  const map = mapFd(fd, 0n, data.length);
  try {
    const target = allocIoBuffer(40_000);
    const crc = await map.readIntoChecksummed(1000, target, 100, 30_000);
    assert.ok(target.subarray(100, 30_100).equals(data.subarray(1000, 31_000)));
    assert.equal(crc, crc32(data.subarray(1000, 31_000)));
    // A JS-owned target is bounced and delivered, with the same checksum.
    const js = Buffer.alloc(500);
    assert.equal(await map.readIntoChecksummed(0, js, 0, 500), crc32(data.subarray(0, 500)));
    assert.ok(js.equals(data.subarray(0, 500)));
  } finally {
    map.unmap();
    closeSync(fd);
  }
});

test('crc32Async (the load side: large payloads are checked on the pool) equals zlib, on native and JS memory', async () => {
  const data = pattern(300_000, 5);
  const io = allocIoBuffer(data.length);
  data.copy(io);
  assert.equal(await native.crc32Async(io, 0, io.length), crc32(data));
  assert.equal(await native.crc32Async(data, 17, 1000), crc32(data.subarray(17, 1017)));
  assert.equal(await native.crc32Async(data, 0, 0), 0);
  assert.throws(() => native.crc32Async(data, 299_999, 2), RangeError);
});

test('a pipe read takes what is already there on the spot, then waits on its own thread for the rest', async () => {
  const [r, w] = pipeFds();
  try {
    const buf = allocIoBuffer(100);
    writeSync(w, Buffer.from('0123456789'));
    // min 20: ten bytes are there, the other ten come later, through the wait thread
    const pending = native.readAtLeastAsync(r, buf, 0, 20, 100, 7);
    await new Promise((resolve) => setTimeout(resolve, 50));
    writeSync(w, Buffer.from('abcdefghij'));
    assert.equal(await pending, 20);
    assert.equal(buf.subarray(0, 20).toString(), '0123456789abcdefghij');
    // all of it there already: settled without a thread, into JS-owned memory too
    writeSync(w, Buffer.from('xyz'));
    const js = Buffer.alloc(8);
    assert.equal(await native.readAtLeastAsync(r, js, 2, 3, 6, 7), 3);
    assert.equal(js.subarray(2, 5).toString(), 'xyz');
  } finally {
    closeSync(r);
    closeSync(w);
  }
});
