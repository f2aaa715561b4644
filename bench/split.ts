// Where the time of one whole command goes (in the guest): its main thread's CPU profile sorted into start-up, device I/O, checksums, copies, waiting.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { binArgs } from '../test/support/cli-child';
import { TestDevice, type Kind } from '../test/support/test-driver';

const MIB = Number(process.env.BENCH_SPLIT_MIB ?? 64);
const KINDS = (process.env.BENCH_KINDS ?? 'v1,v1-trapped,v2').split(',') as Kind[];
const FILE = '/tmp/bench-split.vfmig';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export type Category =
  'node start' | 'start-up' | 'device I/O' | 'checksums' | 'copies' | 'waiting' | 'stream and protocol' | 'gc';

/**
 * The category of one sample, from its stack (leaf last). Start-up is everything under module
 * loading; device I/O the addon's synchronous calls; waiting the idle loop (the thread pool reading
 * or writing the device, a pipe's other end).
 */
export function categorize(stack: ProfileNode['callFrame'][]): Category {
  const leaf = stack[stack.length - 1]!;
  if (leaf.functionName === '(idle)') return 'waiting';
  if (leaf.functionName === '(garbage collector)') return 'gc';
  const names = stack.map((f) => f.functionName);
  const urls = stack.map((f) => f.url);
  // The launcher calls the CLI's run() from its own top level, inside Module._load: the command
  // itself is not start-up.
  const command = stack.some((f) => f.functionName === 'run' && f.url.endsWith('/bin/cli.js'));
  if (
    (!command && names.some((n) => n === 'Module._load' || n === 'compileForInternalLoader' || n === 'wrapSafe')) ||
    (names.length <= 2 && leaf.functionName === '(program)')
  )
    return 'start-up';
  if (/crc32/i.test(leaf.functionName) || urls[urls.length - 1]!.endsWith('crc.ts')) return 'checksums';
  if (/^(copy|set|subarray|concat|fill|allocUnsafe|from)$/.test(leaf.functionName)) return 'copies';
  if (leaf.url === '' && leaf.functionName !== '(program)') return 'device I/O';
  return 'stream and protocol';
}

function split(profile: Profile): Record<Category, number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const out: Record<string, number> = {};
  const cache = new Map<number, Category>();
  profile.samples.forEach((id, i) => {
    let cat = cache.get(id);
    if (!cat) {
      const stack: ProfileNode['callFrame'][] = [];
      for (let at: number | undefined = id; at !== undefined; at = parent.get(at))
        stack.unshift(byId.get(at)!.callFrame);
      cat = categorize(stack);
      cache.set(id, cat);
    }
    out[cat] = (out[cat] ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000;
  });
  return out as Record<Category, number>;
}

function profiled(args: string[], dir: string): { ms: number; split: Record<Category, number> } {
  rmSync(dir, { recursive: true, force: true });
  const start = process.hrtime.bigint();
  // A 10 ms sampling interval keeps the profiler's own cost small under emulation.
  execFileSync(
    process.execPath,
    ['--cpu-prof', '--cpu-prof-interval', '10000', '--cpu-prof-dir', dir, ...binArgs(...args)],
    {
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'))!;
  const profile = JSON.parse(readFileSync(join(dir, file), 'utf8')) as Profile;
  const parts = split(profile);
  // Before the profile starts: Node's own bootstrap (and the process exit after it ends).
  parts['node start'] = Math.max(0, ms - (profile.endTime - profile.startTime) / 1000);
  return { ms, split: parts };
}

function main(): void {
  const dir = mkdtempSync('/tmp/bench-split-');
  for (const kind of KINDS) {
    const source = new TestDevice(kind, { chunkSize: 1 << 20, stateSize: MIB << 20 });
    const dest = new TestDevice(kind, { chunkSize: 1 << 20, stateSize: MIB << 20 });
    try {
      source.set('mutate', '0x5eed');
      const save = profiled(['save', source.uuid, '-o', FILE, '--quiet'], join(dir, 'save'));
      const load = profiled(['load', dest.uuid, '-i', FILE, '--quiet'], join(dir, 'load'));
      if (source.checksum() !== dest.checksum()) throw new Error(`${kind}: the loaded state differs`);
      for (const [op, r] of [
        ['save', save],
        ['load', load],
      ] as const)
        console.log(`@@split ${JSON.stringify({ kind, mib: MIB, op, ms: r.ms, split: r.split })}`);
    } finally {
      rmSync(FILE, { force: true });
      source.remove();
      dest.remove();
    }
  }
  rmSync(dir, { recursive: true, force: true });
}

main();
