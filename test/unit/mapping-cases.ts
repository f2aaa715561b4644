// Misuses of mappings that once killed the process (SIGSEGV, SIGBUS): run one by name in a child (see mapping.test.ts).
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Region, mapFd, type Device, type RegionInfo } from '../../lib';
import { native } from '../../lib/native';
import { PROT_READ, PROT_WRITE } from '../../lib/uapi';

function memfd(size: number): number {
  const fd = native.memfdCreate('vfio-migration-mapping-case');
  ftruncateSync(fd, size);
  return fd;
}

/** A host stand-in for a read-only, mmap-able device region: a memfd behind a fake device. */
function readOnlyRegion(): Region {
  const info: RegionInfo = {
    index: 0,
    flags: 0,
    size: 4096n,
    offset: 0n,
    argsz: 0,
    readable: true,
    writable: false,
    mmapable: true,
    capabilities: [],
    mmapAreas: [{ offset: 0n, size: 4096n }],
  };
  return new Region({ fd: memfd(4096) } as unknown as Device, info);
}

/** Each case does one thing that must throw; the child reports what it threw, or dies if it crashed. */
export const cases: Record<string, () => unknown> = {
  'mapFd read-only write': () => mapFd(memfd(4096), 0n, 4096, false).write(0, 4, 1),
  'mapFd read-only writeFrom': () => mapFd(memfd(4096), 0n, 4096, false).writeFrom(0, Buffer.alloc(4096, 1)),
  'mapFd read-only buffer store': () => {
    new Uint8Array(mapFd(memfd(4096), 0n, 4096, false).buffer)[0] = 1;
  },
  'Region.mmap read-only write': () => readOnlyRegion().mmap(0n, 4096n).write(0, 8, 1n),
  'Region.mmap read-only writeFrom': () => readOnlyRegion().mmap(0n, 4096n).writeFrom(0, Buffer.alloc(64, 1)),
  'Region.mmap read-only buffer store': () => {
    new Uint8Array(readOnlyRegion().mmap(0n, 4096n).buffer)[0] = 1;
  },
  'native read-only write': () => new native.Mapping(memfd(4096), 0, 4096, PROT_READ).write(0, 4, 1),
  'native read-only writeFrom': () =>
    new native.Mapping(memfd(4096), 0, 4096, PROT_READ).writeFrom(0, Buffer.alloc(4096, 1), 0, 4096),
  'native read-only buffer store': () => {
    new Uint8Array(new native.Mapping(memfd(4096), 0, 4096, PROT_READ).buffer)[0] = 1;
  },
  'mapFd past the end of a memfd': () => mapFd(memfd(4096), 0n, 8192).read(4096, 4),
  'mapFd at an offset past the end of a memfd': () => mapFd(memfd(4096), 4096n, 4096).read(0, 4),
  'mapFd past the end of a regular file': () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-'));
    try {
      writeFileSync(join(dir, 'f'), Buffer.alloc(100));
      const fd = openSync(join(dir, 'f'), 'r+');
      try {
        return mapFd(fd, 0n, 8192).read(4096, 4);
      } finally {
        closeSync(fd);
      }
    } finally {
      rmSync(dir, { recursive: true });
    }
  },
  'native PROT_NONE': () => new native.Mapping(memfd(4096), 0, 4096, 0).read(0, 4),
  'native PROT_WRITE alone': () => new native.Mapping(memfd(4096), 0, 4096, PROT_WRITE).read(0, 4),
  'native PROT_EXEC': () => new native.Mapping(memfd(4096), 0, 4096, PROT_READ | 4).read(0, 4),
};

export interface CaseOutcome {
  name: string;
  message: string;
}

async function main(name: string): Promise<void> {
  const run = cases[name];
  if (!run) throw new Error(`no case named ${name}`);
  let outcome: CaseOutcome = { name: 'none', message: 'nothing was thrown' };
  try {
    await run();
  } catch (err) {
    const e = err as Error;
    outcome = { name: e.name, message: e.message };
  }
  process.stdout.write(JSON.stringify(outcome));
}

if (require.main === module) void main(process.argv[2]);
