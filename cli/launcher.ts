// The vfio-mig command (dist/bin/vfio-mig.js): runs the bundled CLI beside it through V8's code cache.
import { join } from 'node:path';
import { loadWithCodeCache } from './code-cache';
import { BIN_NODE_FLAGS } from './node-flags';

// The bin's first lines (cli/node-flags.ts binPreamble) are scripts/bundle.js's banner: they run
// this file under node with BIN_NODE_FLAGS.

/** The Node version the build ran under, which made the code cache (scripts/bundle.js defines it). */
declare const VFIO_MIG_CACHE_NODE: string | undefined;

const shippedFor =
  typeof VFIO_MIG_CACHE_NODE === 'string' ? { node: VFIO_MIG_CACHE_NODE, flags: BIN_NODE_FLAGS } : undefined;
const cli = loadWithCodeCache(join(__dirname, 'cli.js'), join(__dirname, 'cli.js.cache'), shippedFor) as {
  run(): void;
};
cli.run();
