// Host tests: misused mappings give a clean error, never a crash; each case runs in a child so a crash fails one test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { mapFd } from '../../lib';
import { native } from '../../lib/native';
import { O_RDWR } from '../../lib/uapi';
import type { CaseOutcome } from './mapping-cases';

const CASES = join(__dirname, 'mapping-cases.js');

/** Runs the named case in a child node; a signal there (SIGSEGV, SIGBUS) is a failed assertion here. */
function thrownBy(name: string): CaseOutcome {
  const r = spawnSync(process.execPath, [CASES, name], { encoding: 'utf8' });
  assert.equal(r.signal, null, `${name}: the process died of ${r.signal}`);
  assert.equal(r.status, 0, `${name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as CaseOutcome;
}

function assertThrows(name: string, type: string, message: RegExp): void {
  const outcome = thrownBy(name);
  assert.equal(outcome.name, type, `${name}: ${outcome.message}`);
  assert.match(outcome.message, message, name);
}

test('host test: write() and writeFrom() on a read-only mapFd mapping throw a TypeError, not SIGSEGV', () => {
  assertThrows('mapFd read-only write', 'TypeError', /read-only/);
  assertThrows('mapFd read-only writeFrom', 'TypeError', /read-only/);
});

test('host test: .buffer of a read-only mapFd mapping is refused (a store through it would crash), pointing to read()/readInto()', () => {
  assertThrows('mapFd read-only buffer store', 'TypeError', /read-only.*read\(\).*readInto\(\)/);
});

test('host test: Region.mmap of a read-only region gives a mapping that refuses write(), writeFrom() and .buffer', () => {
  assertThrows('Region.mmap read-only write', 'TypeError', /read-only/);
  assertThrows('Region.mmap read-only writeFrom', 'TypeError', /read-only/);
  assertThrows('Region.mmap read-only buffer store', 'TypeError', /read-only/);
});

test('host test: the raw addon Mapping (PROT_READ) refuses write, writeFrom and buffer by itself', () => {
  assertThrows('native read-only write', 'TypeError', /read-only/);
  assertThrows('native read-only writeFrom', 'TypeError', /read-only/);
  assertThrows('native read-only buffer store', 'TypeError', /read-only/);
});

test('host test: mapFd past the end of a memfd or regular file is a RangeError, not SIGBUS on access', () => {
  assertThrows('mapFd past the end of a memfd', 'RangeError', /past the end|extends past/);
  assertThrows('mapFd at an offset past the end of a memfd', 'RangeError', /past the end|extends past/);
  assertThrows('mapFd past the end of a regular file', 'RangeError', /past the end|extends past/);
});

test('host test: the raw addon Mapping allows only PROT_READ or PROT_READ|PROT_WRITE (PROT_NONE is a RangeError)', () => {
  assertThrows('native PROT_NONE', 'RangeError', /PROT_READ/);
  assertThrows('native PROT_WRITE alone', 'RangeError', /PROT_READ/);
  assertThrows('native PROT_EXEC', 'RangeError', /PROT_READ/);
});

test('host test: a read-only mapping still reads (read, readInto); a file that covers the range and a non-file fd still map', async () => {
  const fd = native.memfdCreate('vfio-migration-test');
  try {
    ftruncateSync(fd, 8192);
    native.pwriteWidth(fd, 4096, 8, 0x0123456789abcdefn);
    const ro = mapFd(fd, 4096n, 4096, false);
    assert.equal(ro.writable, false);
    assert.equal(ro.read(0, 8), 0x0123456789abcdefn);
    const out = Buffer.alloc(8);
    await ro.readInto(0, out);
    assert.equal(out.readBigUInt64LE(0), 0x0123456789abcdefn);
    ro.unmap();
    const rw = mapFd(fd, 0n, 8192);
    assert.equal(rw.writable, true);
    assert.equal(new Uint8Array(rw.buffer).length, 8192, 'a writable mapping keeps its view');
    rw.unmap();
  } finally {
    native.close(fd);
  }
  // /dev/zero is a character device: st_size (0) says nothing about what it can map.
  const zero = native.open('/dev/zero', O_RDWR);
  try {
    const map = mapFd(zero, 0n, 8192);
    assert.equal(map.read(4096, 4), 0);
    map.unmap();
  } finally {
    native.close(zero);
  }
});
