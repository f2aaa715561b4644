// Spawns the CLI with a preload that reports which of Node's builtin modules it loaded after Node's own start-up.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { binArgs } from './cli-child';

const PROBE = `const base = new Set(process.moduleLoadList);
process.on('exit', () => require('fs').writeSync(2, '\\nLOADED ' + process.moduleLoadList.filter((m) => !base.has(m)).join(' ') + '\\n'));`;

/**
 * Runs `vfio-mig ...args` with the probe preloaded (`node -r <probe>`, then the bin's flags) and returns its result with `loaded(name)`: whether the
 * builtin `name` ("net", "vm", ...) was loaded after start-up. The list is on stderr's last line.
 */
export function spawnWithBuiltins(args: string[]): SpawnSyncReturns<string> & { loaded(name: string): boolean } {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-probe-'));
  try {
    const probe = join(dir, 'probe.js');
    writeFileSync(probe, PROBE);
    const r = spawnSync(process.execPath, ['-r', probe, ...binArgs(...args)], { encoding: 'utf8' });
    // "NativeModule net NativeModule vm Internal Binding os ...": names are bounded by spaces.
    const list = ` ${/LOADED (.*)/.exec(r.stderr)?.[1] ?? ''} `;
    return Object.assign(r, { loaded: (name: string) => list.includes(` NativeModule ${name} `) });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
