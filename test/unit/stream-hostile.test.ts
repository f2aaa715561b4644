// Hostile streams: header JSON built to crash or mislead, lying lengths, terminal escapes, NUL bytes in paths.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { crc32 } from 'node:zlib';

import { FdSource, printable } from '../../lib';
import { native } from '../../lib/native';
import { StreamDecoder, StreamEncoder, StreamError, verifyStream, type StreamHeader } from '../../lib/migration/stream';
import { binArgs } from '../support/cli-child';

/** A stream whose header JSON is `json` (bytes as given, every checksum right), with one record. */
function streamWithJson(json: string | Buffer): Buffer {
  const body = Buffer.isBuffer(json) ? json : Buffer.from(json, 'utf8');
  const fixed = Buffer.alloc(16);
  Buffer.from('VFIOMIG\0', 'latin1').copy(fixed);
  fixed.writeUInt16LE(1, 8);
  fixed.writeUInt32LE(body.length, 12);
  const head = Buffer.concat([fixed, body]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(head));
  return Buffer.concat([head, crc]);
}

async function verifyError(bytes: Buffer): Promise<unknown> {
  try {
    await verifyStream(Readable.from([bytes]));
  } catch (err) {
    return err;
  }
  assert.fail('the stream verified');
}

const deep = (n: number, leaf = '0'): string => '['.repeat(n) + leaf + ']'.repeat(n);

describe('hostile stream headers', () => {
  const cases: [string, string, RegExp][] = [
    ['deep protocol', `{"protocol":${deep(200_000)},"device":{}}`, /protocol/],
    ['deep extra field', `{"protocol":"v1","device":{},"x":${deep(200_000)}}`, /nested deeper than/],
    ['deep device', `{"protocol":"v1","device":{"a":${deep(50)}}}`, /nested deeper than|device\.a/],
    ['created not a string', '{"protocol":"v1","device":{},"created":{"toString":1}}', /created must be a string/],
    ['tool fields', '{"protocol":"v1","device":{},"tool":{"name":1,"version":"1"}}', /tool\.name must be a string/],
    ['tool a string', '{"protocol":"v1","device":{},"tool":"x"}', /tool must be an object/],
    ['device field an object', '{"protocol":"v1","device":{"vendor":{"x":1}}}', /device\.vendor must be/],
    ['device field an array', '{"protocol":"v1","device":{"kind":["pci"]}}', /device\.kind must be/],
    ['migration not an object', '{"protocol":"v2","device":{},"migration":"x"}', /migration must be an object/],
    ['long string', `{"protocol":"v1","device":{"driver":"${'a'.repeat(70_000)}"}}`, /device\.driver is a string of/],
    ['many keys', `{"protocol":"v1","device":{${[...Array(1000).keys()].map((i) => `"k${i}":1`).join(',')}}}`, /keys/],
  ];
  for (const [name, json, message] of cases) {
    it(`refuses a header with a ${name} as a StreamError naming the field`, async () => {
      const err = await verifyError(streamWithJson(json));
      assert.ok(err instanceof StreamError, `expected a StreamError, got ${String(err)}`);
      assert.equal(err.code, 'ERR_STREAM_FORMAT');
      assert.match(err.message, /stream header at offset \d+/);
      assert.match(err.message, message);
      assert.ok(err.offset >= 16, String(err.offset));
    });
  }

  it('accepts the header save() writes, with shallow extra fields', async () => {
    const header: StreamHeader = {
      note: 'extra',
      tags: ['a', 'b'],
      protocol: 'v2',
      device: { kind: 'pci', vendor: '0x1af4', device: '0x1041', subsystemVendor: null, driver: 'vfio-pci' },
      migration: { p2p: true, preCopy: false, states: ['RUNNING', 'STOP'] },
      tool: { name: 'vfio-migration', version: '0.1.0' },
      created: '2026-12-01T00:00:00.000Z',
    };
    const parts: Buffer[] = [];
    const enc = new StreamEncoder(async (c) => void parts.push(Buffer.from(c)), header);
    await enc.finish();
    const r = await verifyStream(Readable.from([Buffer.concat(parts)]));
    assert.deepEqual(r.header, header);
  });

  it('the encoder refuses a header the decoder would refuse', () => {
    const sink = async (): Promise<void> => {};
    assert.throws(
      () => new StreamEncoder(sink, { protocol: 'v1', device: {}, created: { toString: 1 } }),
      (e: unknown) => e instanceof TypeError && /created must be a string/.test(e.message),
    );
    assert.throws(
      () => new StreamEncoder(sink, { protocol: 'v1', device: {}, extra: JSON.parse(deep(40)) as unknown }),
      /extra\[0\]\[0\] is nested deeper than 2 levels/,
    );
  });
});

describe('lying lengths', () => {
  /** A 268-byte stream whose second record claims `length` bytes. */
  async function lyingStream(length: bigint): Promise<Buffer> {
    const parts: Buffer[] = [];
    const enc = new StreamEncoder(async (c) => void parts.push(Buffer.from(c)), { protocol: 'v1', device: {} });
    await enc.writeRecord(0, Buffer.alloc(200 - 32 - 36, 7));
    const bytes = Buffer.concat(parts);
    const head = Buffer.alloc(32);
    head[0] = 1;
    head.writeBigUInt64LE(1n, 8);
    head.writeBigUInt64LE(length, 16);
    head.writeUInt32LE(crc32(head.subarray(0, 28)), 28);
    return Buffer.concat([bytes, head, Buffer.alloc(268 - bytes.length - 32, 9)]);
  }

  /** The largest Buffer allocation made while `fn` runs, native-owned I/O buffers (allocIoBuffer) included. */
  async function largestAllocation(fn: () => Promise<void>): Promise<number> {
    const { allocUnsafe, allocUnsafeSlow, alloc } = Buffer;
    const { allocBuffer } = native;
    let largest = 0;
    const spy = (f: (...args: never[]) => Buffer) =>
      function (this: unknown, ...args: never[]): Buffer {
        largest = Math.max(largest, Number(args[0]));
        return f.apply(this, args);
      };
    Object.assign(Buffer, { allocUnsafe: spy(allocUnsafe), allocUnsafeSlow: spy(allocUnsafeSlow), alloc: spy(alloc) });
    native.allocBuffer = spy(allocBuffer);
    try {
      await fn();
    } finally {
      Object.assign(Buffer, { allocUnsafe, allocUnsafeSlow, alloc });
      native.allocBuffer = allocBuffer;
    }
    return largest;
  }

  it('a record claiming 1 GiB in a 268-byte stream is truncated, without a 1 GiB allocation (iterable)', async () => {
    const bytes = await lyingStream(1n << 30n);
    assert.equal(bytes.length, 268);
    let err: unknown;
    // In small chunks, so some bytes are buffered when the payload read starts.
    const largest = await largestAllocation(async () => {
      const decoder = new StreamDecoder(Readable.from([bytes.subarray(0, 100), bytes.subarray(100)]));
      try {
        for await (const r of decoder.records()) void r;
      } catch (e) {
        err = e;
      }
    });
    assert.ok(err instanceof StreamError, String(err));
    assert.equal(err.code, 'ERR_STREAM_TRUNCATED', err.message);
    assert.equal(err.offset, 268);
    assert.ok(largest < 64 << 20, `allocated ${largest} bytes`);
  });

  it('a record claiming 1 GiB in a 268-byte file is truncated, without a 1 GiB allocation (FdSource)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-lie-'));
    try {
      writeFileSync(join(dir, 'lie.vfmig'), await lyingStream(1n << 30n));
      let err: unknown;
      const largest = await largestAllocation(async () => {
        err = await verifyStream(FdSource.open(join(dir, 'lie.vfmig'))).catch((e: unknown) => e);
      });
      assert.ok(err instanceof StreamError && err.code === 'ERR_STREAM_TRUNCATED', String(err));
      assert.ok(largest < 64 << 20, `allocated ${largest} bytes`);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});

describe('terminal escapes from untrusted streams', () => {
  it('printable() escapes C0, DEL, C1, ESC sequences and bidi controls, and keeps the rest', () => {
    assert.equal(printable('plain text, é, 日本, 🙂'), 'plain text, é, 日本, 🙂');
    assert.equal(printable('\x1b[31mred\x1b[0m'), '\\x1b[31mred\\x1b[0m');
    assert.equal(printable('a\nb\tc\rd\0e\x07'), 'a\\nb\\tc\\rd\\x00e\\x07');
    assert.equal(printable('\x7f\x80\x9b2J\x9d'), '\\x7f\\x80\\x9b2J\\x9d');
    assert.equal(printable('\u202egnp.exe\u2066'), '\\u202egnp.exe\\u2066');
    assert.equal(printable('lone \ud800 surrogate'), 'lone \\ud800 surrogate');
    // eslint-disable-next-line no-control-regex
    const unsafe = /[\x00-\x1f\x7f-\x9f]/;
    for (let c = 0; c < 0x100; c++) assert.doesNotMatch(printable(String.fromCharCode(c)), unsafe, `char ${c}`);
  });

  it("a StreamError quoting the stream's bytes carries no control characters", async () => {
    const magic = Buffer.concat([Buffer.from('\x1b]0;x\x07\x9b2J', 'latin1'), Buffer.alloc(16)]);
    const bad = await verifyError(magic);
    assert.ok(bad instanceof StreamError);
    const json = await verifyError(streamWithJson(Buffer.from('{"protocol":"\x1b[2J\x9b1m', 'latin1')));
    assert.ok(json instanceof StreamError);
    const proto = await verifyError(streamWithJson('{"protocol":"\\u001b[2J\\u009b","device":{}}'));
    assert.ok(proto instanceof StreamError);
    for (const err of [bad, json, proto]) {
      // eslint-disable-next-line no-control-regex
      assert.doesNotMatch(err.message, /[\x00-\x1f\x7f-\x9f]/, JSON.stringify(err.message));
    }
  });

  it('vfio-mig verify prints header fields with their control characters escaped', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-esc-'));
    try {
      const parts: Buffer[] = [];
      const enc = new StreamEncoder(async (c) => void parts.push(Buffer.from(c)), {
        protocol: 'v1',
        device: { kind: 'mdev', mdevType: 'x\x1b]0;pwned\x07\x9b' },
        tool: { name: 'evil\x1b[2J', version: '\x7f1' },
        created: '\x1b[1A\x1b[2Kfake line\nOK',
      });
      await enc.finish();
      writeFileSync(join(dir, 'esc.vfmig'), Buffer.concat(parts));
      const r = spawnSync(process.execPath, binArgs('verify', join(dir, 'esc.vfmig')), { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      // eslint-disable-next-line no-control-regex
      assert.doesNotMatch(r.stdout.replace(/\n/g, ' '), /[\x00-\x1f\x7f-\x9f]/, JSON.stringify(r.stdout));
      assert.match(r.stdout, /\\x1b\[1A/);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});

describe('paths', () => {
  it('FdSource.open refuses a path with a NUL byte instead of opening its prefix', () => {
    assert.throws(() => FdSource.open('/etc/hostname\0.vfmig'), TypeError);
  });
});
