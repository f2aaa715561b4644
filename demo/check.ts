// The check demo (runs inside the VM guest): vfio-mig check on a clean test-driver device, then on one with a deliberate bug.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { binArgs } from '../test/support/cli-child';
import { DRIVER, PARENT_DIR, TestDevice } from '../test/support/test-driver';

const JUNIT = '/tmp/demo-check.xml';

function die(message: string): never {
  console.error(`demo: ${message}`);
  process.exit(1);
}

function check(args: string[], expect: number): void {
  console.log(`\n$ vfio-mig check ${args.join(' ')}`);
  const r = spawnSync(process.execPath, binArgs('check', '--quiet', ...args), { stdio: 'inherit' });
  console.log(`(exit status ${r.status})`);
  if (r.status !== expect) die(`expected exit status ${expect}`);
}

if (!existsSync(PARENT_DIR)) die(`the test driver ${DRIVER} is not loaded (run the demo through npm run demo:check)`);
const device = new TestDevice('v2', { stateSize: 1 << 20 });
try {
  device.set('mutate', '0xc0ffee');
  console.log(`device ${device.uuid} (${DRIVER} v2), checksum ${device.get('checksum')}`);
  check([device.uuid], 0);
  const bug = 'v2.enomsg_stop_copy';
  device.set('bug', bug);
  console.log(`\n# echo ${bug} > .../vfio_mig_test/bug   (STOP_COPY's end of stream becomes ENOMSG)`);
  check([device.uuid, '--junit', JUNIT], 6);
  const xml = readFileSync(JUNIT, 'utf8');
  console.log(`\n${JUNIT}: ${(xml.match(/<testcase /g) ?? []).length} testcases, failing:`);
  for (const m of xml.matchAll(/\sname="([^"]+)"[^>]*>\s*<failure message="([^"]*)"/g))
    console.log(`  ${m[1]}: ${m[2]}`);
  device.set('bug', 'none');
  console.log(`\nchecksum after both checks: ${device.get('checksum')} (the state was saved first and loaded back)`);
} finally {
  rmSync(JUNIT, { force: true });
  device.remove();
}
