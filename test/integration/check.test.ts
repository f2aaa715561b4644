// Integration tests (VM guest) of `vfio-mig check`: the clean test driver conforms, each deliberate bug is caught by its rule, mtty's result.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkDevice, formatJunit, formatReport, openDevice, type CheckReport } from '../../lib';
import { restoreState, saveState } from '../../lib/check/runner';
import { probeMigration } from '../../lib/migration/probe';
import { V1Engine } from '../../lib/migration/v1';
import { createMdev, removeMdev } from '../support/mdev';
import { BUGS, needsDriver, removeAll, TestDevice, type Kind } from '../support/test-driver';
import { guestKernel, hasPrecopy, needsMdevParent } from './helpers';
import { binArgs } from '../support/cli-child';

const failed = (r: CheckReport): string[] => r.findings.filter((f) => f.verdict === 'fail').map((f) => f.id);
const verdictOf = (r: CheckReport, id: string): string | undefined => r.findings.find((f) => f.id === id)?.verdict;

/** DMA_LOGGING_REPORT works: 6.1 (iova_bitmap in vfio), later kernels only with CONFIG_IOMMUFD_DRIVER. */
const kernelReports =
  guestKernel === '6.1' ||
  (existsSync(`.cache/vm/${guestKernel}/config`) &&
    /^CONFIG_IOMMUFD_DRIVER=y/m.test(readFileSync(`.cache/vm/${guestKernel}/config`, 'utf8')));

/** A test-driver instance with a full 1 MiB state (not all zero pages), opened and checked. */
async function check(
  kind: Kind,
  options: { bug?: string; only?: string[]; reservedBits?: number; dirtyRate?: number } = {},
) {
  const d = new TestDevice(kind, { stateSize: 1 << 20 });
  try {
    if (options.reservedBits !== undefined) d.set('reserved_bits', options.reservedBits);
    d.set('mutate', 0x5eed);
    if (options.bug) d.set('bug', options.bug);
    if (options.dirtyRate) d.set('dirty_rate', options.dirtyRate);
    const sum = d.checksum();
    let report: CheckReport;
    {
      using dev = d.open();
      report = await checkDevice(dev, { only: options.only });
    }
    return { report, sumBefore: sum, sumAfter: d.checksum() };
  } finally {
    d.remove();
  }
}

describe('vfio-mig check on the test driver', { skip: needsDriver }, () => {
  after(removeAll);

  for (const kind of ['v1', 'v1-trapped', 'v2'] as const) {
    test(`${kind} (${guestKernel}): the clean driver passes every rule, and its state is restored`, async (t) => {
      const { report, sumBefore, sumAfter } = await check(kind, { reservedBits: kind === 'v2' ? undefined : 0x100 });
      t.diagnostic(formatReport(report));
      assert.deepEqual(failed(report), [], formatReport(report));
      assert.equal(report.conformant, true);
      assert.equal(report.checksum, 'test-driver');
      assert.equal(verdictOf(report, 'both.roundtrip.same-state'), 'pass');
      assert.equal(verdictOf(report, 'both.fd-leak'), 'pass');
      assert.ok(report.restore.ok, report.restore.detail);
      assert.equal(sumAfter, sumBefore);
      const junit = formatJunit(report);
      assert.match(junit, /<testsuites /);
      assert.doesNotMatch(junit, /<failure/);
      // the rules of the other protocol are skipped with the reason
      const other = report.findings.find((f) => f.rule.protocol === (kind === 'v2' ? 'v1' : 'v2'))!;
      assert.equal(other.verdict, 'skip');
      assert.match(other.detail, /speaks/);
    });
  }

  test(`v2 (${guestKernel}): the DMA logging rules pass on the clean driver; without report support they skip, never fail`, async (t) => {
    const { report } = await check('v2', { only: ['v2.dmalog'] });
    t.diagnostic(formatReport(report));
    assert.deepEqual(failed(report), [], formatReport(report));
    assert.equal(report.conformant, true);
    const dmalog = report.findings.filter((f) => f.id.startsWith('v2.dmalog.'));
    assert.equal(dmalog.length, 7);
    // the report rules need the kernel's iova_bitmap (CONFIG_IOMMUFD_DRIVER, absent from Debian's 6.12)
    const reportRules = ['v2.dmalog.roundtrip', 'v2.dmalog.report-outside', 'v2.dmalog.report-stopped'];
    for (const f of dmalog) {
      if (!kernelReports && reportRules.includes(f.id)) {
        assert.equal(f.verdict, 'skip', `${f.id}: ${f.detail}`);
        assert.match(f.detail, /kernel lacks report/);
      } else assert.equal(f.verdict, 'pass', `${f.id}: ${f.detail}`);
    }
  });

  test(
    `v2 (${guestKernel}): a device that dirties itself wakes a waiting poll() (v2.precopy.poll-wakes passes); an idle one gives no verdict`,
    { skip: hasPrecopy ? false : 'needs PRE_COPY (6.2+)' },
    async () => {
      const dirtying = await check('v2', { only: ['v2.precopy.poll-wakes'], dirtyRate: 1 << 20 });
      const wakes = dirtying.report.findings.find((f) => f.id === 'v2.precopy.poll-wakes')!;
      assert.equal(wakes.verdict, 'pass', `${wakes.detail}\n${formatReport(dirtying.report)}`);
      assert.match(wakes.detail, /waiting poll\(\) calls woke/);
      // the state saved before the checks is the stopped device's, and is compared stopped again
      assert.ok(dirtying.report.restore.ok, dirtying.report.restore.detail);
      const idle = await check('v2', { only: ['v2.precopy.poll-wakes'] });
      const none = idle.report.findings.find((f) => f.id === 'v2.precopy.poll-wakes')!;
      assert.equal(none.verdict, 'skip', none.detail);
      assert.match(none.detail, /did not dirty itself/);
    },
  );

  for (const kind of ['v1', 'v1-trapped'] as const) {
    test(`${kind} (${guestKernel}): the loaded state of a device that dirties itself is compared before it runs, not reported NOT RESTORED`, async () => {
      // v1 leaves _RESUMING only for _RUNNING, where this device changes its state within 20 ms.
      // The checksum read here takes 60 ms, so a read after that arc sees another state.
      const d = new TestDevice(kind, { stateSize: 1 << 20 });
      try {
        d.set('mutate', 0x5eed);
        d.set('dirty_rate', 16 << 20);
        using dev = d.open();
        const found = probeMigration(dev);
        assert.equal(found?.protocol, 'v1');
        const engine = new V1Engine(dev, found.region);
        const slowChecksum = (): bigint => {
          const until = Date.now() + 60;
          while (Date.now() < until);
          return d.checksum();
        };
        const saved = await saveState(engine, slowChecksum);
        const loaded = await restoreState(engine, dev, saved.records, slowChecksum);
        engine.release();
        assert.equal(loaded, saved.sum, "the checksum read after the load is the saved state's");
        assert.equal(await engine.stateName(), 'RUNNING');
        // and the whole check says so
        const { report } = await check(kind, { only: ['v1.state.default'], dirtyRate: 16 << 20 });
        assert.ok(report.restore.ok, report.restore.detail);
        assert.match(report.restore.detail, /checksum 0x[0-9a-f]+ again/);
      } finally {
        d.remove();
      }
    });
  }

  for (const bug of BUGS) {
    const kind: Kind = bug.protocol === 'v1' ? 'v1' : 'v2';
    test(
      `bug ${bug.name} (${kind}, ${guestKernel}): rule ${bug.rule} fails and the report names it`,
      { skip: bug.precopy && !hasPrecopy ? 'needs PRE_COPY (6.2+)' : false },
      async () => {
        const { report } = await check(kind, {
          bug: bug.name,
          only: [bug.rule],
          reservedBits: kind === 'v1' ? 0x100 : undefined,
          dirtyRate: bug.dirtyRate,
        });
        const finding = report.findings.find((f) => f.id === bug.rule)!;
        assert.equal(finding.verdict, 'fail', `${formatReport(report)}seen: ${JSON.stringify(finding.evidence)}`);
        const text = formatReport(report);
        assert.match(text, new RegExp(`FAIL ${bug.rule.replace(/\./g, '\\.')} `));
        assert.match(formatJunit(report), new RegExp(`name="${bug.rule.replace(/\./g, '\\.')}"[^>]*>\\s*<failure`));
        if (finding.rule.level === 'MUST') assert.equal(report.conformant, false);
      },
    );
  }
});

describe('vfio-mig check, the command', { skip: needsDriver }, () => {
  const run = (...args: string[]) => spawnSync(process.execPath, binArgs(...args), { encoding: 'utf8' });

  test(`exit 0 on the clean driver, 6 with a MUST bug; --junit, --json, --only (${guestKernel})`, () => {
    const d = new TestDevice('v2', { stateSize: 1 << 20 });
    const dir = mkdtempSync(join(tmpdir(), 'check-'));
    try {
      d.set('mutate', 7);
      const clean = run('check', d.uuid, '--quiet', '--junit', join(dir, 'clean.xml'));
      assert.equal(clean.status, 0, clean.stdout + clean.stderr);
      assert.match(clean.stdout, /\(v2\): conformant: 0 failed/);
      assert.doesNotMatch(readFileSync(join(dir, 'clean.xml'), 'utf8'), /<failure/);
      d.set('bug', 'v2.truncated_stream_accepted');
      const buggy = run('check', d.uuid, '--json', '--only', 'v2.resuming', '--junit', join(dir, 'bug.xml'));
      assert.equal(buggy.status, 6, buggy.stderr);
      const report = JSON.parse(buggy.stdout) as CheckReport;
      assert.equal(report.conformant, false);
      assert.equal(verdictOf(report, 'v2.resuming.truncated'), 'fail');
      assert.equal(verdictOf(report, 'v2.resuming.segmentation'), 'pass');
      assert.match(
        verdictOf(report, 'v2.arc.reach') === 'skip'
          ? report.findings.find((f) => f.id === 'v2.arc.reach')!.detail
          : '',
        /not selected/,
      );
      assert.match(
        readFileSync(join(dir, 'bug.xml'), 'utf8'),
        /name="v2\.resuming\.truncated"[^>]*>\s*<failure message="RESUMING -&gt; STOP accepted/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
      d.remove();
    }
  });
});

describe('vfio-mig check on mtty', { skip: needsMdevParent('mtty') }, () => {
  const uuids: string[] = [];
  after(() => uuids.forEach(removeMdev));

  test(
    '6.12: mtty is checked; the recorded result (README, "mtty") holds',
    { skip: guestKernel === '6.1' ? 'mtty has no migration on 6.1' : false },
    async (t) => {
      const uuid = createMdev('mtty', 'mtty-1');
      uuids.push(uuid);
      using dev = openDevice(uuid);
      const report = await checkDevice(dev);
      t.diagnostic(formatReport(report, { verbose: true }));
      assert.equal(report.protocol, 'v2');
      assert.equal(report.checksum, 'none');
      assert.equal(verdictOf(report, 'both.roundtrip.same-state'), 'skip');
      // the findings: mtty's DMA logging ops are stubs that return 0, so a second START is
      // accepted; its data fd cannot be waited on with poll()
      assert.deepEqual(failed(report), MTTY_FAILURES);
      assert.equal(report.conformant, false);
      // the finding: at PRE_COPY's temporary end of stream mtty's read() returns 0, not ENOMSG ("should")
      assert.deepEqual(
        report.findings.filter((f) => f.verdict === 'warn').map((f) => f.id),
        MTTY_WARNINGS,
      );
      assert.ok(report.restore.ok, report.restore.detail);
    },
  );
});

/** What mtty (Linux 6.12 samples/vfio-mdev/mtty.c) deviates in; see the README's "mtty" paragraph. */
const MTTY_WARNINGS = ['v2.precopy.enomsg'];
// v2.precopy.poll: mtty's data fd has no poll op, so the kernel's default says readable at
// PRE_COPY's temporary end of stream too, where read() gives 0: a client cannot wait in poll().
const MTTY_FAILURES = ['v2.precopy.poll', 'v2.dmalog.start-twice'];
