// Host-side unit tests of the CLI's option parser: it must agree with util.parseArgs (strict) on every argument vector.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseArgs } from 'node:util';
import { ArgsError, parseCommandLine, type OptionSpec } from '../../cli/args';
import { COMMANDS } from '../../cli/commands';
import { GLOBAL_OPTIONS } from '../../cli/vfio-mig';

// The option kinds the CLI uses: booleans with and without a short name, strings with and
// without one, a multiple string.
const OPTIONS: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean', short: 'q' },
  output: { type: 'string', short: 'o' },
  leave: { type: 'string' },
  only: { type: 'string', multiple: true },
  'no-precopy': { type: 'boolean' },
};

type Outcome = { ok: { values: unknown; positionals: string[] } } | { error: { code: unknown; message: string } };

function outcome(parse: () => { values: object; positionals: string[] }): Outcome {
  try {
    const { values, positionals } = parse();
    return { ok: { values: { ...values }, positionals } };
  } catch (err) {
    const e = err as { code?: unknown; message: string };
    return { error: { code: e.code, message: e.message } };
  }
}

function both(
  args: string[],
  allowPositionals: boolean,
  options: Record<string, OptionSpec> = OPTIONS,
): { ours: Outcome; node: Outcome } {
  return {
    ours: outcome(() => parseCommandLine(args, options, allowPositionals)),
    node: outcome(() => parseArgs({ args, options, strict: true, allowPositionals })),
  };
}

/** xorshift32 from a fixed seed, so that a failure repeats. */
function random(seed: number): () => number {
  return () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 0x100000000;
  };
}

test('cli args (unit, no kernel): the cases the CLI meets agree with util.parseArgs', () => {
  const cases: string[][] = [
    [],
    ['dev'],
    ['dev', '-o', 'file'],
    ['dev', '-ofile'],
    ['dev', '--output', 'file', '--output=other'],
    ['dev', '-o', '-'],
    ['dev', '-o', '--json'],
    ['dev', '--output=--json'],
    ['dev', '-o'],
    ['dev', '--output'],
    ['dev', '--json=1'],
    ['dev', '--frobnicate'],
    ['dev', '-x'],
    ['-hq', 'dev'],
    ['-qo', 'file'],
    ['-qofile'],
    ['-hx'],
    ['--only', 'a', '--only=b', 'dev'],
    ['dev', '--', '--json', '-o'],
    ['-', '--no-precopy'],
    ['--=x'],
    ['---'],
    ['--__proto__'],
    ['--constructor'],
    ['-1'],
  ];
  for (const args of cases) {
    for (const allow of [true, false]) {
      const { ours, node } = both(args, allow);
      assert.deepEqual(ours, node, `${JSON.stringify(args)} (positionals ${allow ? 'allowed' : 'refused'})`);
    }
  }
});

test('cli args (unit, no kernel): 5000 random argument vectors give what util.parseArgs gives, errors included', () => {
  const next = random(0x2545f491);
  const words = [
    'dev',
    '-',
    '--',
    '-o',
    '-h',
    '-q',
    '-x',
    '-hq',
    '-qh',
    '-qo',
    '-oq',
    '-ofile',
    '-qofile',
    '--json',
    '--json=',
    '--json=1',
    '--quiet',
    '--output',
    '--output=',
    '--output=f',
    '--output=-f',
    '--leave',
    '--leave=running',
    '--only',
    '--only=a',
    '--no-precopy',
    '--frob',
    '--frob=1',
    '-1',
    '-abc',
    'file',
    '-f',
    '--=x',
    '--o=1',
    '-=',
  ];
  for (let n = 0; n < 5000; n++) {
    const args = Array.from({ length: Math.floor(next() * 6) }, () => words[Math.floor(next() * words.length)]!);
    const allow = next() < 0.8;
    const { ours, node } = both(args, allow);
    assert.deepEqual(ours, node, `${JSON.stringify(args)} (positionals ${allow ? 'allowed' : 'refused'})`);
  }
});

test('cli args (unit, no kernel): errors are ArgsErrors with parseArgs codes, so the CLI maps them to its usage exit', () => {
  assert.throws(
    () => parseCommandLine(['--frob'], OPTIONS, true),
    (err: unknown) => err instanceof ArgsError && err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION',
  );
  const parsed = parseCommandLine(['dev', '--only', 'a', '-qo', 'f', '--only', 'b'], OPTIONS, true);
  assert.deepEqual({ ...parsed.values }, { only: ['a', 'b'], quiet: true, output: 'f' });
  assert.deepEqual(parsed.positionals, ['dev']);
});

// The tables the CLI really parses with: a new option kind or field in one of them (parseArgs's
// `default`, say) that cli/args.ts does not handle shows up here, not in a user's command line.
test('cli args (unit, no kernel): the real option table of every command parses as util.parseArgs parses it', () => {
  const known = new Set(['type', 'short', 'multiple']);
  const next = random(0x9e3779b9);
  const tables: [string, Record<string, OptionSpec>, boolean][] = [['(global options)', { ...GLOBAL_OPTIONS }, false]];
  for (const [name, command] of Object.entries(COMMANDS))
    tables.push([name, { ...GLOBAL_OPTIONS, ...command.options }, true]);
  for (const [name, options] of tables) {
    const words = ['dev', 'a,b', '-', '--', '--frob', '--frob=1', '-Z', '-1', '--=x'];
    for (const [long, spec] of Object.entries(options)) {
      for (const field of Object.keys(spec))
        assert.ok(known.has(field), `${name}: --${long} has '${field}', which cli/args.ts does not implement`);
      assert.ok(
        spec.type === 'boolean' || spec.type === 'string',
        `${name}: --${long} is of type ${String(spec.type)}`,
      );
      words.push(`--${long}`, `--${long}=`, `--${long}=v`, `--${long}=-v`);
      if (spec.short) words.push(`-${spec.short}`, `-${spec.short}v`, `-h${spec.short}`, `-${spec.short}q`);
    }
    for (let n = 0; n < 1500; n++) {
      const args = Array.from({ length: Math.floor(next() * 6) }, () => words[Math.floor(next() * words.length)]!);
      const allow = name === '(global options)' ? false : next() < 0.8;
      const { ours, node } = both(args, allow, options);
      assert.deepEqual(ours, node, `${name}: ${JSON.stringify(args)} (positionals ${allow ? 'allowed' : 'refused'})`);
    }
  }
});
