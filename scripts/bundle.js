// Bundles the CLI into one file (dist/bin/vfio-mig.js, the package's bin): a command then reads one
// file instead of resolving, stat-ing and reading ~70 modules, which was most of its start-up
// (bench/RESULTS.md). The library itself (dist/lib) stays unbundled. Run after tsc.
'use strict';
const { buildSync } = require('esbuild');
const { join } = require('node:path');

const root = join(__dirname, '..');
buildSync({
  entryPoints: [join(root, 'dist/cli/vfio-mig.js')],
  outfile: join(root, 'dist/bin/vfio-mig.js'),
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  // the addon is found at run time by bindings, from the package root
  external: ['*.node'],
  // Whitespace and syntax only: a third of the bytes to read and parse, names kept for stack traces.
  minifyWhitespace: true,
  minifySyntax: true,
  keepNames: true,
  sourcemap: 'linked',
  logLevel: 'warning',
});
