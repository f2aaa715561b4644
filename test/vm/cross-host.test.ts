// The harness tier: one migration across two hosts and two kernels. Two guests boot side by side, 6.1 and
// 6.12, joined by a link of their own (QEMU UDP socket netdevs over the host's loopback, 10.231.0.0/24, no
// route out); the 6.1 guest migrates a test-driver v2 device through ssh:// to a real sshd in the 6.12
// guest, which checks the state arrived (test/vm/cross-host-guest.ts). Run on the host by npm run test:vm.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CACHE_DIR, runInGuest, type GuestResult } from './vm';
import { LINK, type Done, type Found } from './cross-host-guest';

function skipReason(): string | false {
  if (process.env.VFIO_MIG_GUEST === '1') return 'already in the guest';
  if (process.env.VFIO_MIG_SKIP_CROSS_HOST) return 'VFIO_MIG_SKIP_CROSS_HOST is set';
  for (const k of ['6.1', '6.12'])
    if (!existsSync(join(CACHE_DIR, k, 'ready')))
      return `the ${k} guest is not prepared (bash test/vm/prepare.sh --kernel all)`;
  if (!existsSync(join(CACHE_DIR, 'openssh', 'usr', 'sbin', 'sshd')))
    return 'no .cache/vm/openssh/usr/sbin/sshd (bash test/vm/prepare.sh unpacks openssh-server there)';
  return false;
}

/** Two UDP ports free on 127.0.0.1 now (bound together, so they differ, then released for QEMU). */
async function freeUdpPorts(): Promise<[number, number]> {
  const sockets = [createSocket('udp4'), createSocket('udp4')];
  const ports = await Promise.all(
    sockets.map((s) => new Promise<number>((resolve) => s.bind(0, '127.0.0.1', () => resolve(s.address().port)))),
  );
  await Promise.all(sockets.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  return [ports[0]!, ports[1]!];
}

function explain(name: string, r: GuestResult): string {
  return `${name} (${r.kernel}): status ${r.status}${r.error ? `, ${r.error}` : ''}\n${r.output.split('\n').slice(-40).join('\n')}`;
}

describe('across two hosts', () => {
  const title = '6.1 -> 6.12: migrate through ssh over an isolated link; the destination has the source state';
  test(title, { skip: skipReason(), timeout: 6 * 60_000 }, async () => {
    const out = mkdtempSync(join(tmpdir(), 'vfio-mig-cross-'));
    try {
      const [srcPort, dstPort] = await freeUdpPorts();
      const t0 = Date.now();
      const guest = (kernel: '6.1' | '6.12', role: 'source' | 'destination', local: number, peer: number) =>
        runInGuest({
          kernel,
          command: ['node', 'dist/test/vm/cross-host-guest.js', role],
          outDir: out,
          link: { localPort: local, peerPort: peer, mac: LINK[role].mac },
          // only the test driver: one vCPU each, no mtty, no e1000e to bind (two TCG guests share the host)
          cpus: 1,
          memoryMiB: 1024,
          mtty: false,
          pciDevice: false,
          timeoutMs: 270_000,
        });
      const [src, dst] = await Promise.all([
        guest('6.1', 'source', srcPort, dstPort),
        guest('6.12', 'destination', dstPort, srcPort),
      ]);
      const why = `${explain('source', src)}\n${explain('destination', dst)}`;
      assert.equal(src.status, 0, why);
      assert.equal(dst.status, 0, why);
      const done = JSON.parse(readFileSync(join(out, 'done.json'), 'utf8')) as Done;
      const found = JSON.parse(readFileSync(join(out, 'destination.json'), 'utf8')) as Found;
      assert.equal(done.code, 0, done.stderr);
      assert.match(done.checksum, /\S/);
      assert.equal(found.checksum, done.checksum, 'the destination has the source state');
      assert.equal(found.state, 'RUNNING');
      console.log(
        `# 6.1 (${src.kver}) -> 6.12 (${dst.kver}) over ssh: ${Date.now() - t0} ms in all, boots ${src.bootMs} / ${dst.bootMs} ms, ` +
          `migrate ${done.report?.elapsedMs} ms, downtime ${done.report?.downtimeMs} ms, ${done.report?.bytes} bytes`,
      );
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
