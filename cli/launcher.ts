#!/usr/bin/env node
// The vfio-mig command (dist/bin/vfio-mig.js): runs the bundled CLI beside it through V8's code cache.
import { join } from 'node:path';
import { loadWithCodeCache } from './code-cache';

const cli = loadWithCodeCache(join(__dirname, 'cli.js'), join(__dirname, 'cli.js.cache')) as { run(): void };
cli.run();
