// Loads the bundled CLI through V8's code cache (written at build time by scripts/bundle.js): start-up without parsing or compiling.
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, join } from 'node:path';
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

/** The bundle `file` compiled as a function, with `cachedData` if given (checked by V8), named `filename`. */
export function compile(file: string, cachedData?: Buffer, filename = file): Script {
  return new Script(wrapped(readFileSync(file, 'utf8')), { filename, cachedData });
}

/**
 * A code cache of the bundle `file` with every function compiled, not only those run at load
 * time, for this process's V8 and flags (the build's, and the user caches). Lazy compilation is
 * off while it compiles and back on before the cache is made, so that the cache carries the
 * process's own flags (V8 rejects a cache made under others). `filename` must differ from any
 * name this process compiled the bundle under already, or V8 hands out that script again.
 */
export function eagerCodeCache(file: string, filename = file): Buffer {
  // node:v8 is required here only: a command whose cache is taken does not load it.
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on use, see above
  const { setFlagsFromString } = require('node:v8') as typeof import('node:v8');
  setFlagsFromString('--no-lazy');
  let script: Script;
  try {
    script = compile(file, undefined, filename);
  } finally {
    setFlagsFromString('--lazy');
  }
  return script.createCachedData();
}

/** Where the bundle's code came from: the build's cache, this user's cache for these flags, or source. */
export type CodeSource = 'shipped' | 'user' | 'compiled';

// V8 takes a cache only from a process with the flags it was made under, and the build's is made
// under the bin's (cli/node-flags.ts): `node --max-old-space-size=4096`, or the same in
// NODE_OPTIONS, or `node dist/bin/vfio-mig.js` without the bin's flags, and a command would
// compile everything lazily, as it first runs. In the test guest that made a migration's downtime
// (code that runs there for the first time) 19 -> 33 ms for one device. Such a command still runs
// so once, and at its exit leaves an eager cache for its Node and flags in the user's cache
// directory, which the next command with the same Node and flags takes.

/** 32-bit FNV-1a of `text`, in hex: names the user cache of one Node and set of flags (V8 checks the rest). */
function fnv1a(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(16).padStart(8, '0');
}

/** The user cache file for the bundle `file` in this process (its Node, its flags), or undefined without a home. */
export function userCacheFile(file: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  // Absolute paths only (the XDG rule): a relative one would put the cache in the working directory.
  const xdg = env.XDG_CACHE_HOME;
  const home = env.HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : home && isAbsolute(home) ? join(home, '.cache') : undefined;
  if (!base) return undefined;
  let stamp = '';
  try {
    const st = statSync(file);
    stamp = `${st.size}:${st.mtimeMs}`;
  } catch {
    /* compiled from source anyway */
  }
  // The bundle's size and time too: an upgraded bundle does not try the old one's cache first.
  const key = fnv1a([process.version, file, stamp, process.execArgv.join(' '), env.NODE_OPTIONS ?? ''].join('\0'));
  return join(base, 'vfio-migration', `cli-${key}.cache`);
}

/** The Node version and the node flags a build's code cache was made under. */
export interface CacheBuild {
  node: string;
  flags: readonly string[];
}

/** Whether node ran with exactly `flags`, in that order (V8 takes the cache under no others). */
function sameFlags(execArgv: readonly string[], flags: readonly string[]): boolean {
  return execArgv.length === flags.length && execArgv.every((arg, i) => arg === flags[i]);
}

/**
 * Compiles the bundle `file` with a code cache: this user's for this Node and these flags if one
 * was written, else the build's `cacheFile`. The source is compiled once only (V8 keeps a script
 * it compiled and hands it out again for the same source and name, whatever cache comes with it),
 * so when V8 rejects that cache the bundle runs compiled lazily this time, and at exit the process
 * compiles it eagerly under another name and writes the user cache (atomically; a failure to write
 * costs only speed).
 *
 * `shippedFor` is the Node version and the node flags the build's cache was made under (the
 * bin's, cli/node-flags.ts). A process of that Node with exactly those flags and no NODE_OPTIONS
 * takes the build's cache without looking for a user cache: the lookup (a stat and a failed open)
 * cost a command 6 ms in the test guest, and V8 accepts the build's cache there. Should it reject
 * it all the same (a damaged file), the command runs compiled lazily and writes no user cache,
 * which this lookup order would never read.
 */
export function compileBundle(
  file: string,
  cacheFile: string,
  shippedFor?: CacheBuild,
): { script: Script; source: CodeSource } {
  const asBuilt =
    shippedFor !== undefined &&
    shippedFor.node === process.version &&
    sameFlags(process.execArgv, shippedFor.flags) &&
    !process.env.NODE_OPTIONS;
  const userFile = asBuilt ? undefined : userCacheFile(file);
  const userCache = userFile === undefined ? undefined : readOwnFile(userFile);
  const useUser = userCache !== undefined;
  let cachedData = userCache;
  if (!useUser) {
    try {
      cachedData = readFileSync(cacheFile);
    } catch {
      /* no cache: compiled from source */
    }
  }
  const script = compile(file, cachedData);
  if (cachedData && !script.cachedDataRejected) return { script, source: useUser ? 'user' : 'shipped' };
  if (userFile) process.once('exit', () => writeUserCache(file, userFile));
  return { script, source: 'compiled' };
}

/**
 * The contents of `path` if it is a regular file of this process's user that no one else may
 * write, else undefined. A code cache is code V8 runs (it checks only that the cache fits the
 * source and flags), and vfio-mig runs as root: a cache anyone else could have written, under a
 * home that sudo kept or a shared XDG_CACHE_HOME, is not read. Checked on the open file itself.
 */
function readOwnFile(path: string): Buffer | undefined {
  let fd: number;
  try {
    // (libuv opens every file O_CLOEXEC)
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== process.geteuid?.() || (st.mode & 0o022) !== 0) return undefined;
    return readFileSync(fd);
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** Compiles `file` with every function compiled, as the build does, and writes its cache to `userFile`. */
function writeUserCache(file: string, userFile: string): void {
  const tmp = `${userFile}.${process.pid}.tmp`;
  let fd: number;
  try {
    // Opened before compiling: where nothing can be written (a read-only home), nothing is compiled.
    mkdirSync(dirname(userFile), { recursive: true, mode: 0o700 });
    fd = openSync(tmp, 'wx', 0o600);
  } catch {
    return;
  }
  try {
    // Another name than the running script's, or V8 would hand out that lazily compiled one.
    writeFileSync(fd, eagerCodeCache(file, `${file} (code cache)`));
    closeSync(fd);
    renameSync(tmp, userFile);
    pruneUserCaches(dirname(userFile));
  } catch {
    // Nothing may escape an exit handler: the command's own exit status stands.
    try {
      closeSync(fd);
    } catch {
      /* closed already */
    }
    try {
      rmSync(tmp, { force: true });
    } catch {
      /* the next writer's 'wx' open fails on it; a later one uses another pid */
    }
  }
}

/** How many user caches are kept: each Node and set of flags run writes one of about 650 KB. */
export const USER_CACHES_KEPT = 8;

/**
 * Removes all but the `keep` newest user caches in `dir`. A cache is never wrong, only useless
 * once its bundle was upgraded or its flags are no longer used, and nothing else would ever
 * delete it. Only this process's own regular files named as ours are touched.
 */
export function pruneUserCaches(dir: string, keep = USER_CACHES_KEPT): void {
  const caches: { path: string; mtimeMs: number }[] = [];
  for (const name of readdirSync(dir)) {
    if (!/^cli-[0-9a-f]{8}\.cache$/.test(name)) continue;
    const path = join(dir, name);
    const st = lstatSync(path);
    if (st.isFile() && st.uid === process.geteuid?.()) caches.push({ path, mtimeMs: st.mtimeMs });
  }
  caches.sort((a, b) => b.mtimeMs - a.mtimeMs);
  for (const old of caches.slice(keep)) rmSync(old.path, { force: true });
}

/** Runs the CommonJS bundle `file` (code from compileBundle) and returns its exports. */
export function loadWithCodeCache(file: string, cacheFile: string, shippedFor?: CacheBuild): Record<string, unknown> {
  const init = compileBundle(file, cacheFile, shippedFor).script.runInThisContext() as (...args: unknown[]) => void;
  const module = { exports: {} as Record<string, unknown>, filename: file, id: file, loaded: false };
  init.call(module.exports, module.exports, createRequire(file), module, file, dirname(file));
  module.loaded = true;
  return module.exports;
}

/** Whether this process's V8 accepts `cacheFile` for the bundle `file` (ask a fresh process: see scripts/bundle.js). */
export function codeCacheAccepted(file: string, cacheFile: string): boolean {
  return !compile(file, readFileSync(cacheFile)).cachedDataRejected;
}
