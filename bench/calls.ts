// Preload (node -r) for a cold `vfio-mig migrate`: how many JS functions run inside its downtime, counted by V8's precise coverage.
//
// The count does not depend on how fast the guest happens to be, so it shows what a change to
// the downtime's code does where the emulated wall clock is too noisy to (bench/RESULTS.md). Every
// entry of a function counts, and so does every resumption of an async function after an await.
// The window is migrate()'s own: it reads the thread CPU clock (lib/native's threadCpuNs) exactly
// at the first source stop and when the destination's RUNNING arrives, and receive() reads it at
// its first sign of the stop and at its last RUNNING, in between; the counts from the first read to
// the last are the downtime's. Written as JSON to the file named by VFIO_MIG_CALLS_OUT at exit.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';

interface Coverage {
  result: { url: string; functions: { functionName: string; ranges: { startOffset: number; count: number }[] }[] }[];
}

const session = new Session();
session.connect();
// The in-process session answers synchronously: the callback has run when post() returns.
function post<T>(method: string, params?: object): T {
  let answer: T | undefined;
  let failure: Error | null = null;
  session.post(method, params, (err, result) => {
    failure = err;
    answer = result as T;
  });
  if (failure) throw failure;
  return answer!;
}

post('Profiler.enable');
post('Profiler.startPreciseCoverage', { callCount: true, detailed: false });
// Each take returns the counts since the one before: the first marks the window's start. The
// clock to wrap is the command's own addon instance: the bundle opens the addon with
// process.dlopen (lib/native.ts), which gives each loader its own exports, so the wrap goes on
// every instance as it is opened.
const takes: Coverage['result'][] = [];
const dlopen = process.dlopen.bind(process);
process.dlopen = (module: { exports: unknown }, file: string, ...flags: number[]) => {
  dlopen(module, file, ...flags);
  const addon = module.exports as { threadCpuNs?: () => bigint };
  if (!file.endsWith('vfio_native.node') || typeof addon.threadCpuNs !== 'function') return;
  const clock = addon.threadCpuNs.bind(addon);
  addon.threadCpuNs = () => {
    takes.push(post<Coverage>('Profiler.takePreciseCoverage').result);
    return clock();
  };
};

process.on('exit', () => {
  let calls = 0;
  for (const take of takes.slice(1))
    for (const script of take) for (const fn of script.functions) calls += fn.ranges[0]?.count ?? 0;
  const out = process.env.VFIO_MIG_CALLS_OUT;
  if (out) writeFileSync(out, JSON.stringify({ calls, marks: takes.length }));
});
