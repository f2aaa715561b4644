// CRC-32 (IEEE: reflected polynomial 0xedb88320, init and xorout 0xffffffff, as zlib) for the stream checksums.
// The addon's zlib CRC rather than node:zlib's: loading node:zlib costs every command ~25 ms of
// start-up in the guest, for a function the addon already links.
import { native } from '../../native';

/** The CRC-32 of `data`, continued from `running` (0 to start); empty data leaves it unchanged. */
export function crc32(data: Uint8Array, running = 0): number {
  return native.crc32(data, running);
}

// CRC-32 combination (zlib's crc32_combine, in its x^(2^n) mod p form). crc32(A ‖ B) follows from
// crc32(A), crc32(B) and |B| in ~1000 integer operations, so the running stream checksum does not
// need a second pass over every payload whose own CRC was just computed: it halves the CRC work,
// which is the bulk of the codec's CPU time on large streams.

const CRC_POLY = 0xedb88320;

/** a(x) * b(x) mod p(x), in the reflected bit order of CRC-32. */
function multModP(a: number, b: number): number {
  if (a === 0) return 0;
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ CRC_POLY : b >>> 1;
  }
  return p >>> 0;
}

const X2N_TABLE = new Uint32Array(32);
{
  let p = 1 << 30; // x^1
  X2N_TABLE[0] = p;
  for (let n = 1; n < 32; n++) X2N_TABLE[n] = p = multModP(p, p);
}

/** x^(n * 2^k) mod p(x). */
function x2nModP(n: number, k: number): number {
  let p = 0x80000000; // x^0
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N_TABLE[k & 31]!, p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

// v1 streams repeat one transaction size, so the operator for the last length is kept.
let combineLength = -1;
let combineOperator = 0;

/** crc32(A ‖ B) from crc32(A), crc32(B) and the length of B. */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB !== combineLength) {
    combineOperator = x2nModP(lengthB, 3);
    combineLength = lengthB;
  }
  return (multModP(combineOperator, crcA) ^ crcB) >>> 0;
}

// Below this size a second CRC pass costs less than a combination.
const COMBINE_MIN = 4096;

/** Extends the running CRC `running` over `payload`, whose own CRC is `payloadCrc`. */
export function extendCrc(running: number, payload: Uint8Array, payloadCrc: number): number {
  return payload.byteLength < COMBINE_MIN
    ? crc32(payload, running)
    : crc32Combine(running, payloadCrc, payload.byteLength);
}
