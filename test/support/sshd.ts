// A real sshd for the ssh tests, run inside the VM guest: Debian's openssh-server as test/vm/prepare.sh
// unpacked it (.cache/vm/openssh/, never installed on the host), with throwaway host and user keys.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { CACHE_DIR } from '../vm/config';

export const OPENSSH_DIR = join(CACHE_DIR, 'openssh');
const SSHD = join(OPENSSH_DIR, 'usr', 'sbin', 'sshd');
/** libwrap0 comes unpacked beside sshd: the host need not have it. */
const LIB_DIRS = ['usr/lib/x86_64-linux-gnu', 'lib/x86_64-linux-gnu'].map((d) => join(OPENSSH_DIR, d));
/** sshd's privilege separation directory (compiled in by Debian). */
const PRIVSEP_DIR = '/run/sshd';

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** node:test `skip` value for the ssh tests: false in a guest with the unpacked sshd and an ssh client, else why not. */
export const needsSshd: string | false =
  process.env.VFIO_MIG_GUEST !== '1'
    ? 'needs the VM guest (npm run test:vm): the sshd runs there, as root in its own mounts'
    : !existsSync(SSHD)
      ? `no ${SSHD}: bash test/vm/prepare.sh unpacks Debian's openssh-server there (it could not, or was not run)`
      : !which('ssh') || !which('ssh-keygen')
        ? 'no ssh or ssh-keygen on PATH (the host lacks openssh-client)'
        : false;

export interface Sshd {
  /** Address and port it listens on. */
  address: string;
  port: number;
  /** The temporary directory with its config, keys and log. */
  dir: string;
  /** For vfio-mig migrate --ssh-option: the user key, no host key checks, no chatter. */
  clientOptions: string[];
  /** The listener's process id. */
  pid: number;
  /** The sshd processes serving connections now (the listener's descendants named sshd). */
  connectionPids(): number[];
  /** What sshd logged so far. */
  log(): string;
  stop(): Promise<void>;
}

/**
 * sshd refuses to start without its privilege separation user and an empty root-owned /run/sshd. The
 * guest sees the host's /etc read-only: a copy of /etc/passwd with the user added is bind-mounted over
 * it, in the guest's own mount namespace (nothing of the host changes; it lasts as long as the guest).
 */
function privsepReady(dir: string): void {
  const passwd = readFileSync('/etc/passwd', 'utf8');
  if (!/^sshd:/m.test(passwd)) {
    const copy = join(dir, 'passwd');
    writeFileSync(copy, passwd);
    appendFileSync(copy, `${passwd.endsWith('\n') ? '' : '\n'}sshd:x:64999:65534::${PRIVSEP_DIR}:/usr/sbin/nologin\n`);
    // the bind mount must outlive the temporary directory: keep the copy outside it
    const kept = '/run/vfio-mig-passwd';
    writeFileSync(kept, readFileSync(copy));
    const r = spawnSync('mount', ['--bind', kept, '/etc/passwd'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mount --bind ${kept} /etc/passwd: ${r.stderr || r.error}`);
  }
  mkdirSync(PRIVSEP_DIR, { recursive: true, mode: 0o755 });
}

function keygen(file: string): void {
  const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'vfio-mig-test', '-f', file], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`ssh-keygen -f ${file}: ${r.stderr || r.error}`);
}

function waitForPort(address: string, port: number, child: ChildProcess, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      if (child.exitCode !== null || child.signalCode !== null) {
        reject(new Error(`sshd exited (${child.exitCode ?? child.signalCode}) before it listened`));
        return;
      }
      const s = connect({ host: address, port });
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`sshd does not listen on ${address}:${port} after ${ms} ms`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

function parentOf(pid: number): number | undefined {
  try {
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, the last ')' ends it
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

function descendants(root: number): number[] {
  const all = readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number);
  const out: number[] = [];
  const parents = new Set([root]);
  // a few passes reach the grandchildren whatever the order /proc lists them in
  for (let pass = 0; pass < 4; pass++) {
    for (const pid of all) {
      if (parents.has(pid)) continue;
      const ppid = parentOf(pid);
      if (ppid !== undefined && parents.has(ppid)) {
        parents.add(pid);
        out.push(pid);
      }
    }
  }
  return out;
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** ssh -o options (for vfio-mig migrate --ssh-option) that log in with this key and trust any host key. */
export function sshClientOptions(identityFile: string): string[] {
  return [
    `IdentityFile=${identityFile}`,
    'IdentitiesOnly=yes',
    'StrictHostKeyChecking=no',
    'UserKnownHostsFile=/dev/null',
    'GlobalKnownHostsFile=/dev/null',
    'LogLevel=ERROR',
    'ConnectTimeout=20',
  ];
}

/** Starts sshd on address:port (root may log in with the throwaway key only). */
export async function startSshd(opts: { address?: string; port?: number } = {}): Promise<Sshd> {
  const address = opts.address ?? '127.0.0.1';
  const port = opts.port ?? 2222;
  if (address === '127.0.0.1') {
    // the guest's loopback starts down
    const r = spawnSync('ip', ['link', 'set', 'lo', 'up'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ip link set lo up: ${r.stderr || r.error}`);
  }
  const dir = mkdtempSync('/tmp/sshd-');
  privsepReady(dir);
  keygen(join(dir, 'host_key'));
  keygen(join(dir, 'id'));
  writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'id.pub')));
  const config = join(dir, 'sshd_config');
  writeFileSync(
    config,
    [
      `Port ${port}`,
      `ListenAddress ${address}`,
      `HostKey ${join(dir, 'host_key')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      'PermitRootLogin prohibit-password',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      // the keys live in /tmp (mode 1777), which StrictModes would refuse
      'StrictModes no',
      'UsePAM no',
      'UseDNS no',
      'LogLevel VERBOSE',
      '',
    ].join('\n'),
  );
  const logFile = join(dir, 'sshd.log');
  // -D: stays our child; -e: logs to stderr (into the log file), not syslog
  const child = spawn(SSHD, ['-D', '-e', '-f', config], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, LD_LIBRARY_PATH: LIB_DIRS.join(':') },
  });
  child.stderr!.on('data', (c: Buffer) => appendFileSync(logFile, c));
  const log = (): string => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
  try {
    await waitForPort(address, port, child, 15_000);
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`${(err as Error).message}; sshd said:\n${log()}`);
  }
  const pid = child.pid!;
  return {
    address,
    port,
    dir,
    pid,
    clientOptions: sshClientOptions(join(dir, 'id')),
    connectionPids: () => descendants(pid).filter((p) => comm(p) === 'sshd'),
    log,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
