// Bundles the CLI into one file and writes its V8 code cache (run after tsc). dist/bin/vfio-mig.js,
// the package's bin, is a small launcher; dist/bin/cli.js is every module a command may need, so a
// command reads one file instead of resolving, stat-ing and reading ~70; dist/bin/cli.js.cache is
// its compiled bytecode, so a command parses and compiles nothing (bench/RESULTS.md has the
// start-up figures). The library itself (dist/lib) stays unbundled.
'use strict';
const { buildSync } = require('esbuild');
const { execFileSync } = require('node:child_process');
const { chmodSync, renameSync, rmSync } = require('node:fs');
const { join } = require('node:path');

const root = join(__dirname, '..');
// The bin's node flags, which its first lines pass to node and the code cache is made under.
const { BIN_NODE_FLAGS, binPreamble } = require(join(root, 'dist/cli/node-flags.js'));
const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  // Whitespace and syntax only: a third of the bytes to read and parse. Identifiers are not
  // minified, so functions keep their names in stack traces without esbuild's keepNames, whose
  // __name() wrapper redefined the name of every closure as it was made, hot paths included (an
  // A/B of cold commands in the guest showed no difference beyond the noise either way).
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
};
buildSync({
  ...common,
  entryPoints: [join(root, 'dist/cli/vfio-mig.js')],
  // the tool version for stream headers and --version, so that a command reads no package.json
  define: { VFIO_MIG_BUNDLED_VERSION: JSON.stringify(require(join(root, 'package.json')).version) },
  outfile: join(root, 'dist/bin/cli.js'),
  // the addon is found at run time by bindings, from the package root
  external: ['*.node'],
  sourcemap: 'linked',
});
const launcher = join(root, 'dist/bin/vfio-mig.js');
buildSync({
  ...common,
  entryPoints: [join(root, 'dist/cli/launcher.js')],
  banner: { js: binPreamble() },
  // the Node that makes the code cache below: under it, with the bin's flags, the launcher takes
  // that cache without looking for a user cache first
  define: { VFIO_MIG_CACHE_NODE: JSON.stringify(process.version) },
  outfile: launcher,
});
// runnable in place, as npm makes it when it installs the package
chmodSync(launcher, 0o755);

// The code cache: made with every function compiled (eagerCodeCache in cli/code-cache.ts), in a
// process of its own under the bin's flags, and a second one checks that a process started as the
// bin starts node accepts it.
const codeCache = join(root, 'dist/cli/code-cache.js');
const cli = join(root, 'dist/bin/cli.js');
const cache = `${cli}.cache`;
const tmp = `${cache}.${process.pid}.tmp`;
const node = (script) => execFileSync(process.execPath, [...BIN_NODE_FLAGS, '-e', script], { encoding: 'utf8' }).trim();
node(`
  const { eagerCodeCache } = require(${JSON.stringify(codeCache)});
  require('node:fs').writeFileSync(${JSON.stringify(tmp)}, eagerCodeCache(${JSON.stringify(cli)}));
`);
const accepted = node(
  `process.stdout.write(String(require(${JSON.stringify(codeCache)}).codeCacheAccepted(${JSON.stringify(cli)}, ${JSON.stringify(tmp)})))`,
);
if (accepted !== 'true') {
  rmSync(tmp, { force: true });
  console.error(`bundle: V8 rejects the code cache it just made for ${cli}`);
  process.exit(1);
}
renameSync(tmp, cache);
