// The demo (runs inside the VM guest): two test-driver devices, vfio-mig save with pre-copy, vfio-mig load, checksums compared.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import { binArgs } from '../test/support/cli-child';
import { DRIVER, PARENT_DIR, TestDevice } from '../test/support/test-driver';

const STATE_SIZE = Number(process.env.DEMO_STATE_SIZE ?? 64 << 20);
const FILE = '/tmp/demo-device.vfmig';

function die(message: string): never {
  console.error(`demo: ${message}`);
  process.exit(1);
}

function create(): TestDevice {
  if (!existsSync(PARENT_DIR)) die(`the test driver ${DRIVER} is not loaded (run the demo through npm run demo)`);
  return new TestDevice('v1', { stateSize: STATE_SIZE });
}

function vfioMig(args: string[], label: string): { stdout: string; ms: number } {
  console.log(`\n$ vfio-mig ${args.join(' ')}`);
  const start = Date.now();
  const r = spawnSync(process.execPath, binArgs(...args), { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  const ms = Date.now() - start;
  if (r.status !== 0) die(`${label} failed with exit code ${r.status}`);
  return { stdout: r.stdout, ms };
}

const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;

const source = create();
const dest = create();
const [src, dst] = [source.uuid, dest.uuid];
try {
  source.set('dirty_rate', 256 << 10);
  source.set('mutate', '0xc0ffee');
  console.log(`source      ${src}  (${DRIVER} v1, ${mib(STATE_SIZE)} of state, dirtying itself while running)`);
  console.log(`destination ${dst}`);
  console.log(`checksums before: source ${source.get('checksum')}, destination ${dest.get('checksum')}`);

  const save = vfioMig(['save', src, '-o', FILE, '--precopy-iterations', '4', '--json'], 'save');
  const saved = JSON.parse(save.stdout);
  const sourceSum = source.get('checksum');
  vfioMig(['verify', FILE], 'verify');
  const load = vfioMig(['load', dst, '-i', FILE, '--json'], 'load');
  const loaded = JSON.parse(load.stdout);
  const destSum = dest.get('checksum');

  console.log('\nsummary');
  console.log(
    `  state           ${mib(STATE_SIZE)}, stream ${mib(statSync(FILE).size)} in ${saved.records} records (${saved.precopyIterations} pre-copy iterations, ${mib(saved.precopyBytes)} while running)`,
  );
  console.log(
    `  save            ${(saved.elapsedMs / 1000).toFixed(2)} s, ${mib((saved.bytes / saved.elapsedMs) * 1000)}/s`,
  );
  console.log(`  downtime        ${saved.stopCopyMs} ms (stop-and-copy)`);
  console.log(
    `  load            ${(loaded.elapsedMs / 1000).toFixed(2)} s, ${mib((loaded.bytes / Math.max(1, loaded.elapsedMs)) * 1000)}/s`,
  );
  console.log(
    `  checksums       source ${sourceSum}, destination ${destSum}: ${sourceSum === destSum ? 'MATCH' : 'DIFFER'}`,
  );
  if (sourceSum !== destSum) die('the restored device differs from the saved one');
} finally {
  rmSync(FILE, { force: true });
  for (const d of [source, dest]) {
    try {
      d.remove();
    } catch {
      /* already gone */
    }
  }
}
