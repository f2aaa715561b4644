// Loads the bundled CLI through V8's code cache (written at build time by scripts/bundle.js): start-up without parsing or compiling.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { Script } from 'node:vm';

// Under emulation, parsing and compiling the 280 KB bundle was a third of a command's module
// loading (bench/RESULTS.md). The cache holds the bytecode of every function, so a command
// compiles nothing. V8 checks the cache against its version, flags and the source, and
// compiles from source when it does not match (another Node, a rebuilt bundle): a stale cache
// costs a check, never a wrong result.

/**
 * The CommonJS wrapper, on the bundle's first line so that its line numbers stay true. The cache
 * is made for exactly this text, so the build uses this function too.
 */
export function wrapped(source: string): string {
  return `(function (exports, require, module, __filename, __dirname) {${source}\n})`;
}

/** The bundle `file` compiled as a function, with `cachedData` if given (checked by V8). */
export function compile(file: string, cachedData?: Buffer): Script {
  return new Script(wrapped(readFileSync(file, 'utf8')), { filename: file, cachedData });
}

/** Runs the CommonJS bundle `file` with the code cache `cacheFile` (if any) and returns its exports. */
export function loadWithCodeCache(file: string, cacheFile: string): Record<string, unknown> {
  let cachedData: Buffer | undefined;
  try {
    cachedData = readFileSync(cacheFile);
  } catch {
    /* no cache: compiled from source */
  }
  const init = compile(file, cachedData).runInThisContext() as (...args: unknown[]) => void;
  const module = { exports: {} as Record<string, unknown>, filename: file, id: file, loaded: false };
  init.call(module.exports, module.exports, createRequire(file), module, file, dirname(file));
  module.loaded = true;
  return module.exports;
}

/** Whether this process's V8 accepts `cacheFile` for the bundle `file` (ask a fresh process: see scripts/bundle.js). */
export function codeCacheAccepted(file: string, cacheFile: string): boolean {
  return !compile(file, readFileSync(cacheFile)).cachedDataRejected;
}
