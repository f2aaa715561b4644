// Host test of the package as a user installs it: npm pack of this checkout, npm install of the tarball into an empty project, then its bin and library.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { binEnv } from '../support/cli-child';

const ROOT = join(__dirname, '../../..');

test(
  'the packed package installs into an empty project: its install script builds the addon; the bin and the library run from there',
  { timeout: 300_000 },
  (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-pkg-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    // --ignore-scripts: dist/ is built already (these tests run from it), and `prepare` would
    // rebuild it while other test files read it.
    const pack = spawnSync('npm', ['pack', '--ignore-scripts', '--silent', '--pack-destination', dir], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    assert.equal(pack.status, 0, pack.stderr);
    const tarball = join(dir, pack.stdout.trim().split('\n').pop()!);
    assert.ok(existsSync(tarball), `npm pack wrote no ${tarball}`);

    const app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    // The addon is built against the headers of the Node running this test (an official build
    // carries them in include/node), as npm does for a user of that Node: Node 24's V8 headers
    // need C++20, which a C++17 build including them failed on.
    const nodeDir = join(dirname(process.execPath), '..');
    const headers = existsSync(join(nodeDir, 'include', 'node', 'node_api.h')) ? { npm_config_nodedir: nodeDir } : {};
    const install = spawnSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], {
      cwd: app,
      encoding: 'utf8',
      env: { ...process.env, ...headers },
    });
    assert.equal(install.status, 0, `npm install failed:\n${install.stdout}\n${install.stderr}`);
    const addon = join(app, 'node_modules', 'vfio-migration', 'build', 'Release', 'vfio_native.node');
    assert.ok(existsSync(addon), 'the install script built no addon');

    // Through npm's link and the bin's own first lines, with this test's node first on PATH.
    const bin = spawnSync(join(app, 'node_modules', '.bin', 'vfio-mig'), ['--version'], {
      encoding: 'utf8',
      env: binEnv(),
    });
    assert.equal(bin.status, 0, bin.stderr);
    assert.match(bin.stdout, /^vfio-mig \d+\.\d+\.\d+/);
    assert.equal(bin.stderr, '');

    // The library, and the addon it maps: the installed package's, not this checkout's.
    const probe = `const lib = require('vfio-migration');
      const maps = require('node:fs').readFileSync('/proc/self/maps', 'utf8').split('\\n');
      const addons = [...new Set(maps.filter((l) => l.endsWith('.node')).map((l) => l.split(/\\s+/).pop()))];
      process.stdout.write(JSON.stringify({ migrate: typeof lib.migrate, openDevice: typeof lib.openDevice, addons }));`;
    const lib = spawnSync(process.execPath, ['-e', probe], { cwd: app, encoding: 'utf8' });
    assert.equal(lib.status, 0, lib.stderr);
    assert.deepEqual(JSON.parse(lib.stdout), {
      migrate: 'function',
      openDevice: 'function',
      addons: [realpathSync(addon)],
    });
  },
);
