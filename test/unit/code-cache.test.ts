// Host-side tests of the bin's start-up path: the V8 code cache the build writes, the user cache for other flags, and the launcher without either.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { USER_CACHES_KEPT, type CacheBuild } from '../../cli/code-cache';
import { BIN_NODE_FLAGS, binPreamble } from '../../cli/node-flags';
import { binEnv } from '../support/cli-child';

const DIST = join(__dirname, '../..');
const BIN_DIR = join(DIST, 'bin');
// Children write their user code caches (cli/code-cache.ts) here, never into the real home.
const XDG = mkdtempSync(join(tmpdir(), 'vfio-mig-xdg-'));
process.on('exit', () => rmSync(XDG, { recursive: true, force: true }));
const node = (args: readonly string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, XDG_CACHE_HOME: XDG, ...env } });

/**
 * The Node that built dist/ (and made its code cache), as the bin knows it (scripts/bundle.js
 * defines it in the launcher). run-suite also runs these tests under other Nodes, where the
 * build's cache is rejected by design and a user cache takes its place.
 */
const BUILD_NODE = /"(v\d+\.\d+\.\d+[^"]*)"/.exec(readFileSync(join(BIN_DIR, 'vfio-mig.js'), 'utf8'))?.[1];
const AS_BUILT = BUILD_NODE === process.version;
const notAsBuilt = AS_BUILT ? false : `the build's code cache is for Node ${BUILD_NODE}, not this ${process.version}`;
/** What the launcher knows of the build's cache: made by BUILD_NODE under the bin's flags. */
const BUILT: CacheBuild | undefined = BUILD_NODE ? { node: BUILD_NODE, flags: BIN_NODE_FLAGS } : undefined;
/** The same as made by this Node. */
const BUILT_HERE: CacheBuild = { node: process.version, flags: BIN_NODE_FLAGS };

/** Where a fresh process with these node flags gets the bundle's code from (compileBundle, given `shippedFor`), its user caches under `xdg`. */
function codeSource(
  flags: readonly string[],
  xdg: string,
  shippedFor?: CacheBuild,
  cacheFile = join(BIN_DIR, 'cli.js.cache'),
): string {
  const file = join(BIN_DIR, 'cli.js');
  const probe = `process.stdout.write(require(${JSON.stringify(join(DIST, 'cli/code-cache.js'))}).compileBundle(${JSON.stringify(file)}, ${JSON.stringify(cacheFile)}, ${JSON.stringify(shippedFor)}).source)`;
  const r = node([...flags, script(probe)], { XDG_CACHE_HOME: xdg });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/** A directory of its own for test `t`, removed after it. */
function tempDir(t: TestContext, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

let scripts = 0;
/** `text` as a script file: `node FILE` has no `-e` in its execArgv, which names the user cache. */
function script(text: string): string {
  const file = join(XDG, `probe-${scripts++}.js`);
  writeFileSync(file, text);
  return file;
}

test('the code cache the build wrote is accepted by this Node in a fresh process', { skip: notAsBuilt }, () => {
  const file = join(BIN_DIR, 'cli.js');
  const probe = `process.stdout.write(String(require(${JSON.stringify(join(DIST, 'cli/code-cache.js'))}).codeCacheAccepted(${JSON.stringify(file)}, ${JSON.stringify(`${file}.cache`)})))`;
  const r = node([...BIN_NODE_FLAGS, '-e', probe]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'true', 'V8 rejected dist/bin/cli.js.cache: commands would compile from source');
});

test('a missing, corrupt or stale code cache costs speed only: the command runs the same', (t) => {
  const expected = node([join(BIN_DIR, 'vfio-mig.js'), '--help']);
  assert.equal(expected.status, 0, expected.stderr);
  // A copy of the package's files a command reads: the launcher, the bundle, package.json, the addon.
  const root = tempDir(t, 'vfio-mig-cache-');
  const bin = join(root, 'dist/bin');
  mkdirSync(bin, { recursive: true });
  for (const f of ['vfio-mig.js', 'cli.js']) copyFileSync(join(BIN_DIR, f), join(bin, f));
  copyFileSync(join(DIST, '../package.json'), join(root, 'package.json'));
  mkdirSync(join(root, 'build/Release'), { recursive: true });
  const addon = 'build/Release/vfio_native.node';
  copyFileSync(join(DIST, '..', addon), join(root, addon));
  const cases: [string, (() => void) | null][] = [
    ['missing', null],
    ['corrupt', () => writeFileSync(join(bin, 'cli.js.cache'), Buffer.alloc(4096, 0xa5))],
    ['empty', () => writeFileSync(join(bin, 'cli.js.cache'), '')],
    // another bundle's cache: V8 checks the source, not just the format
    [
      'stale',
      () => {
        copyFileSync(join(BIN_DIR, 'cli.js.cache'), join(bin, 'cli.js.cache'));
        writeFileSync(join(bin, 'cli.js'), '/* changed */\n', { flag: 'a' });
      },
    ],
  ];
  for (const [name, prepare] of cases) {
    prepare?.();
    const r = node([join(bin, 'vfio-mig.js'), '--help']);
    assert.equal(r.status, 0, `${name} cache: ${r.stderr}`);
    assert.equal(r.stdout, expected.stdout, `${name} cache: the output differs`);
    assert.equal(r.stderr, '', `${name} cache: the launcher wrote to stderr`);
  }
});

test(
  'under other V8 flags the build cache is rejected; the first command leaves an eager user cache that the next one takes',
  { skip: notAsBuilt },
  (t) => {
    const xdg = tempDir(t, 'vfio-mig-xdg-');
    const run = (flags: readonly string[]) => codeSource(flags, xdg);
    const dir = join(xdg, 'vfio-migration');
    const files = () => (existsSync(dir) ? readdirSync(dir) : []);
    assert.equal(run(BIN_NODE_FLAGS), 'shipped', "the build cache, under the bin's flags");
    assert.deepEqual(files(), [], 'no user cache where the build cache is taken');
    assert.equal(run([]), 'compiled', "V8 rejects the build cache without the bin's flags");
    assert.deepEqual(files().length, 1, 'which leaves a user cache');
    const flags = ['--max-old-space-size=4096'];
    assert.equal(run(flags), 'compiled', 'V8 rejects the build cache under another flag');
    const written = files();
    assert.equal(written.length, 2, `one more user cache written at exit: ${written.join(', ')}`);
    // Eager like the build's: every function, not just the top level (a lazy one is some 25 KB).
    const size = Math.min(...written.map((name) => statSync(join(dir, name)).size));
    assert.ok(size > statSync(join(BIN_DIR, 'cli.js.cache')).size / 2, `user cache of ${size} bytes`);
    assert.equal(run(flags), 'user', 'the next command with the same flags takes it');
    assert.equal(run(['--max-old-space-size=2048']), 'compiled', 'other flags, another cache');
    assert.equal(files().length, 3);
  },
);

test('where no user cache can be written, the command runs all the same and writes nothing', (t) => {
  const root = tempDir(t, 'vfio-mig-ro-');
  // A file where the cache directory would be: mkdir fails as on a read-only home.
  writeFileSync(join(root, 'vfio-migration'), '');
  const r = node(['--max-old-space-size=4096', join(BIN_DIR, 'vfio-mig.js'), '--version'], { XDG_CACHE_HOME: root });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^vfio-mig /);
  assert.equal(r.stderr, '');
  assert.deepEqual(readdirSync(root), ['vfio-migration']);
});

test('a user cache someone else could have written is not read: group- or world-writable, a symlink, another owner', (t) => {
  const xdg = tempDir(t, 'vfio-mig-xdg-');
  const flags = ['--max-old-space-size=4096'];
  const run = () => codeSource(flags, xdg);
  assert.equal(run(), 'compiled');
  const dir = join(xdg, 'vfio-migration');
  const [name] = readdirSync(dir);
  const cache = join(dir, name!);
  assert.equal(statSync(dir).mode & 0o777, 0o700, 'the directory is private');
  assert.equal(statSync(cache).mode & 0o777, 0o600, 'the cache is private');
  assert.equal(run(), 'user');
  chmodSync(cache, 0o620);
  assert.equal(run(), 'compiled', 'group-writable: not read');
  assert.equal(statSync(cache).mode & 0o777, 0o600, 'and written again, private');
  assert.equal(run(), 'user');
  const real = `${cache}.real`;
  renameSync(cache, real);
  symlinkSync(real, cache);
  assert.equal(run(), 'compiled', 'a symlink: not followed');
  if (process.geteuid?.() !== 0) {
    t.diagnostic('another owner not tried: chown needs root');
    return;
  }
  rmSync(cache, { force: true });
  renameSync(real, cache);
  assert.equal(run(), 'user');
  chownSync(cache, 65534, 65534);
  assert.equal(run(), 'compiled', "another user's file: not read");
});

test('a relative XDG_CACHE_HOME or HOME is ignored (the XDG rule): no cache lands in the working directory', (t) => {
  const cwd = tempDir(t, 'vfio-mig-cwd-');
  const r = spawnSync(process.execPath, ['--max-old-space-size=4096', join(BIN_DIR, 'vfio-mig.js'), '--version'], {
    encoding: 'utf8',
    cwd,
    env: { ...process.env, XDG_CACHE_HOME: 'cache', HOME: 'home' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(readdirSync(cwd), []);
});

test('user caches are pruned to the newest USER_CACHES_KEPT when one is written: others, and anything not ours, stay', (t) => {
  const xdg = tempDir(t, 'vfio-mig-xdg-');
  const dir = join(xdg, 'vfio-migration');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Old caches of earlier bundles or flags, oldest first, and files that are not caches of ours.
  const old = Array.from(
    { length: USER_CACHES_KEPT + 2 },
    (_v, i) => `cli-${(0x10 + i).toString(16).padStart(8, '0')}.cache`,
  );
  old.forEach((name, i) => {
    writeFileSync(join(dir, name), 'old', { mode: 0o600 });
    utimesSync(join(dir, name), 1e6 + i, 1e6 + i);
  });
  writeFileSync(join(dir, 'notes.txt'), 'mine');
  mkdirSync(join(dir, 'cli-00000000.cache'));
  assert.equal(codeSource(['--max-old-space-size=1024'], xdg), 'compiled');
  const left = readdirSync(dir).sort();
  const written = left.filter(
    (n) => /^cli-[0-9a-f]{8}\.cache$/.test(n) && !old.includes(n) && n !== 'cli-00000000.cache',
  );
  assert.equal(written.length, 1, `the new cache: ${left.join(', ')}`);
  // The new one and the newest USER_CACHES_KEPT - 1 old ones; the directory and the other file stay.
  assert.deepEqual(
    left.filter((n) => old.includes(n)),
    old.slice(old.length - (USER_CACHES_KEPT - 1)),
  );
  assert.ok(left.includes('notes.txt') && left.includes('cli-00000000.cache'));
});

/** Writes, as a process with these flags and XDG_CACHE_HOME `xdg` would find it, the user cache `contents` (an eager cache when undefined). */
function plantUserCache(flags: readonly string[], xdg: string, contents?: string): string {
  const file = join(BIN_DIR, 'cli.js');
  const plant = `const cc = require(${JSON.stringify(join(DIST, 'cli/code-cache.js'))});
    const fs = require('node:fs'), path = require('node:path');
    const f = cc.userCacheFile(${JSON.stringify(file)});
    fs.mkdirSync(path.dirname(f), { recursive: true, mode: 0o700 });
    fs.writeFileSync(f, ${contents === undefined ? `cc.eagerCodeCache(${JSON.stringify(file)}, 'planted')` : JSON.stringify(contents)}, { mode: 0o600 });
    process.stdout.write(f);`;
  const r = node([...flags, script(plant)], { XDG_CACHE_HOME: xdg });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

test(
  'under the Node and the flags the build cache was made for, the build cache is taken without a user cache lookup',
  { skip: notAsBuilt },
  (t) => {
    const xdg = tempDir(t, 'vfio-mig-xdg-');
    // A good user cache for this Node and the bin's flags: only a lookup finds it.
    plantUserCache(BIN_NODE_FLAGS, xdg);
    assert.equal(
      codeSource(BIN_NODE_FLAGS, xdg),
      'user',
      'not told what the build cache was made for: the user cache first',
    );
    assert.equal(codeSource(BIN_NODE_FLAGS, xdg, BUILT_HERE), 'shipped', 'made for this Node and flags: no lookup');
    assert.equal(
      codeSource(BIN_NODE_FLAGS, xdg, { ...BUILT_HERE, node: 'v1.0.0' }),
      'user',
      'made for another Node: the user cache first',
    );
    for (const flags of [[...BIN_NODE_FLAGS, '--max-old-space-size=4096'], []]) {
      plantUserCache(flags, xdg);
      assert.equal(codeSource(flags, xdg, BUILT_HERE), 'user', `under [${flags.join(' ')}]: the user cache first`);
    }

    // The build cache rejected all the same (damaged): compiled lazily, no user cache written.
    const empty = tempDir(t, 'vfio-mig-xdg-');
    const damaged = join(empty, 'damaged.cache');
    writeFileSync(damaged, Buffer.alloc(4096, 0xa5));
    assert.equal(codeSource(BIN_NODE_FLAGS, empty, BUILT_HERE, damaged), 'compiled');
    assert.deepEqual(readdirSync(empty), ['damaged.cache'], 'no user cache that this lookup order would never read');
  },
);

/**
 * Runs the bin `args` with a user cache of garbage planted for this Node and the bin's flags and
 * says whether the command looked it up: one that did rejects it and writes an eager one over it
 * at exit. The key of a user cache includes node's arguments, so a lookup also shows what they were.
 */
function looksUpUserCache(t: TestContext, run: (env: NodeJS.ProcessEnv) => ReturnType<typeof spawnSync>): boolean {
  const xdg = tempDir(t, 'vfio-mig-xdg-');
  const planted = plantUserCache(BIN_NODE_FLAGS, xdg, 'not a code cache');
  const r = run({ XDG_CACHE_HOME: xdg });
  assert.equal(r.status, 0, String(r.stderr));
  assert.match(String(r.stdout), /^vfio-mig /);
  const lookedUp = readFileSync(planted, 'utf8') !== 'not a code cache';
  if (lookedUp) assert.equal(codeSource(BIN_NODE_FLAGS, xdg, BUILT), 'user', 'the next command takes what it wrote');
  return lookedUp;
}

test('the bin knows the Node and flags its build cache was made under: under them no user cache is read; under another Node one is written and taken', (t) => {
  assert.ok(BUILD_NODE, 'the launcher names no Node version');
  const lookedUp = looksUpUserCache(t, (env) =>
    node([...BIN_NODE_FLAGS, join(BIN_DIR, 'vfio-mig.js'), '--version'], env),
  );
  assert.equal(
    lookedUp,
    !AS_BUILT,
    AS_BUILT ? 'the bin looked up the user cache' : 'under another Node the bin wrote no user cache',
  );
});

test("the bin's first lines start the node first on PATH with the bin's flags: the exit status and the build's cache as under node itself", (t) => {
  const bin = join(BIN_DIR, 'vfio-mig.js');
  assert.equal(
    readFileSync(bin, 'utf8').split('\n').slice(0, 2).join('\n'),
    binPreamble(),
    'the bin begins with its preamble',
  );
  assert.ok(statSync(bin).mode & 0o111, 'the bin is executable');
  const direct = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    spawnSync(bin, args, { encoding: 'utf8', env: { ...binEnv(), XDG_CACHE_HOME: XDG, ...env } });
  // This node and the bin's flags exactly: the user cache's key holds node's arguments, and only a
  // process as built skips the lookup.
  assert.equal(
    looksUpUserCache(t, (env) => direct(['--version'], env)),
    !AS_BUILT,
  );
  // exec: the command's own exit status, not the shell's
  const usage = direct(['no-such-command']);
  assert.equal(usage.status, node([...BIN_NODE_FLAGS, bin, 'no-such-command']).status);
  assert.notEqual(usage.status, 0);
  assert.match(usage.stderr, /no-such-command/);
});

test(
  "under a Node other than the build's, the first command compiles and leaves a user cache; the next takes it",
  { skip: AS_BUILT ? "this is the build's Node (run-suite runs these tests under others too)" : false },
  (t) => {
    const xdg = tempDir(t, 'vfio-mig-xdg-');
    assert.equal(codeSource(BIN_NODE_FLAGS, xdg, BUILT), 'compiled', 'V8 takes the build cache of another Node');
    assert.equal(readdirSync(join(xdg, 'vfio-migration')).length, 1, 'one user cache written at exit');
    assert.equal(codeSource(BIN_NODE_FLAGS, xdg, BUILT), 'user');
  },
);
