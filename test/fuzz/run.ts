// npm run fuzz: longer seeded fuzz campaigns than the unit suite's (--target stream|region|all, --seed, --cases, --seconds).
import { parseArgs } from 'node:util';
import { campaign } from './targets';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      target: { type: 'string', default: 'all' },
      seed: { type: 'string', default: String(Date.now() % 2 ** 31) },
      cases: { type: 'string', default: String(Number.MAX_SAFE_INTEGER) },
      seconds: { type: 'string', default: '60' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log('Usage: npm run fuzz -- [--target stream|region|all] [--seed N] [--cases N] [--seconds S]');
    return 0;
  }
  const seed = Number(values.seed);
  const cases = Number(values.cases);
  const seconds = Number(values.seconds);
  const targets: string[] = values.target === 'all' ? ['stream', 'region'] : [values.target ?? ''];
  if (
    !Number.isSafeInteger(seed) ||
    !(cases > 0) ||
    !(seconds > 0) ||
    !targets.every((t) => t === 'stream' || t === 'region')
  ) {
    console.error('fuzz: --seed must be an integer, --cases and --seconds positive, --target stream, region or all');
    return 2;
  }
  for (const target of targets as ('stream' | 'region')[]) {
    const started = Date.now();
    const deadline = started + (seconds * 1000) / targets.length;
    const r = await campaign(target, seed, cases, deadline);
    const kinds = Object.entries(r.kinds)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ');
    console.log(
      `fuzz ${target}: ${r.cases} cases from seed ${seed} in ${((Date.now() - started) / 1000).toFixed(1)} s, no failure (${kinds})`,
    );
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);
