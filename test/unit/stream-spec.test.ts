// An independent .vfmig reader written from docs/stream-format.md alone, checked against streams the encoder writes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import { StreamEncoder } from '../../lib/migration/stream';

/** CRC-32/ISO-HDLC bit by bit, as the document defines it (not zlib's, to be independent of the code). */
function crc(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

interface Read {
  header: Record<string, unknown>;
  records: { phase: number; payload: Buffer }[];
}

/** Reads a whole stream following "What a reader must enforce"; throws a plain Error naming the rule. */
function readSpec(s: Buffer): Read {
  const need = (end: number, what: string): void => {
    if (s.length < end) throw new Error(`truncated in ${what}`);
  };
  need(16, 'fixed header');
  if (!s.subarray(0, 8).equals(Buffer.from('VFIOMIG\0', 'latin1'))) throw new Error('magic');
  if (s.readUInt16LE(8) !== 1) throw new Error('version');
  if (s.readUInt16LE(10) !== 0) throw new Error('flags');
  const n = s.readUInt32LE(12);
  if (n < 1 || n > 1 << 20) throw new Error('JSON length');
  need(20 + n, 'header');
  if (crc(s.subarray(0, 16 + n)) !== s.readUInt32LE(16 + n)) throw new Error('header CRC');
  const header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(s.subarray(16, 16 + n))) as Record<
    string,
    unknown
  >;
  if (header.protocol !== 'v1' && header.protocol !== 'v2') throw new Error('protocol');
  let at = 20 + n;
  const records: Read['records'] = [];
  let total = 0n;
  for (;;) {
    if (s.length === at) throw new Error('no trailer');
    need(at + 32, 'record header');
    const h = s.subarray(at, at + 32);
    if (crc(h.subarray(0, 28)) !== h.readUInt32LE(28)) throw new Error('record header CRC');
    const kind = h[0];
    if (h[1] !== 0 || h.readUInt16LE(2) !== 0) throw new Error('reserved');
    const phase = h.readUInt32LE(4);
    const sequence = h.readBigUInt64LE(8);
    const length = h.readBigUInt64LE(16);
    if (kind === 0x01) {
      if (sequence !== BigInt(records.length)) throw new Error('sequence');
      if (length > BigInt(s.length)) throw new Error('truncated payload');
      const end = at + 32 + Number(length);
      need(end, 'payload');
      const payload = s.subarray(at + 32, end);
      if (crc(payload) !== h.readUInt32LE(24)) throw new Error('payload CRC');
      records.push({ phase, payload });
      total += length;
      at = end;
    } else if (kind === 0xff) {
      if (sequence !== BigInt(records.length) || phase !== 0 || length !== 20n) throw new Error('trailer header');
      need(at + 52, 'trailer');
      const t = s.subarray(at + 32, at + 52);
      if (crc(t) !== h.readUInt32LE(24)) throw new Error('trailer CRC');
      if (t.readBigUInt64LE(0) !== BigInt(records.length) || t.readBigUInt64LE(8) !== total) throw new Error('totals');
      if (t.readUInt32LE(16) !== crc(s.subarray(0, at))) throw new Error('stream CRC');
      if (s.length !== at + 52) throw new Error('trailing data');
      return { header, records };
    } else {
      throw new Error('kind');
    }
  }
}

test('the reader written from docs/stream-format.md reads what the encoder writes', async () => {
  assert.equal(crc(Buffer.from('123456789')), 0xcbf43926, 'the check value the document gives');
  assert.equal(crc(Buffer.from('vfio')), crc32(Buffer.from('vfio')), "the document's CRC is zlib's");
  const header = {
    protocol: 'v1' as const,
    device: { kind: 'pci', vendor: '0x1af4', device: '0x1041' },
    tool: { name: 'vfio-migration', version: 'spec' },
    created: '2026-12-01T00:00:00.000Z',
  };
  const written = [
    { phase: 0, payload: Buffer.from('pre-copy') },
    { phase: 0, payload: Buffer.alloc(0) },
    { phase: 1, payload: Buffer.alloc(10_000, 0xa5) },
    { phase: 0xffffffff, payload: Buffer.from('stop-and-copy') },
  ];
  const parts: Buffer[] = [];
  const encoder = new StreamEncoder(async (c) => void parts.push(Buffer.from(c)), header);
  for (const r of written) await encoder.writeRecord(r.phase, r.payload);
  await encoder.finish();
  const bytes = Buffer.concat(parts);
  const got = readSpec(bytes);
  assert.deepEqual(got.header, header);
  assert.deepEqual(
    got.records.map((r) => ({ phase: r.phase, payload: Buffer.from(r.payload) })),
    written,
  );
  // And it refuses what the document says to refuse.
  assert.throws(() => readSpec(bytes.subarray(0, bytes.length - 1)), /truncated/);
  const flipped = Buffer.from(bytes);
  flipped[flipped.length - 60]! ^= 1;
  assert.throws(() => readSpec(flipped), /CRC/);
  assert.throws(() => readSpec(Buffer.concat([bytes, Buffer.from([0])])), /trailing data/);
});
