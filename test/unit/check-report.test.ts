// Host tests of the conformance checker's pure parts: rule selection, the catalogue, the text report and JUnit XML.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatJunit, formatReport, groupByArea, isSelected, matches, RULES, unknownSelectors } from '../../lib/check';
import type { CheckReport, Verdict } from '../../lib/check';

function report(verdicts: Record<string, [Verdict, string]>, conformant = false): CheckReport {
  const counts: Record<Verdict, number> = { pass: 0, fail: 0, warn: 0, skip: 0 };
  const findings = RULES.map((rule) => {
    const [verdict, detail] = verdicts[rule.id] ?? ['skip', 'the device speaks v1'];
    counts[verdict]++;
    return { id: rule.id, verdict, detail, evidence: { seen: '0x5 <bad> & "q"' }, rule };
  });
  return {
    device: 'dev-0',
    protocol: 'v2',
    checksum: 'none',
    startedAt: new Date(0).toISOString(),
    elapsedMs: 1234,
    findings,
    restore: { ok: true, detail: 'loaded back' },
    conformant,
    counts,
  };
}

describe('check: rule selection (host test)', () => {
  test('host test: an id matches itself and prefixes that end at a dot, not a partial word', () => {
    assert.ok(matches('v1.state', 'v1.state.default'));
    assert.ok(matches('v1.state.', 'v1.state.default'));
    assert.ok(matches('v1.state.default', 'v1.state.default'));
    assert.ok(!matches('v1.sta', 'v1.state.default'));
    assert.ok(!matches('v1.state.default', 'v1.state'));
  });

  test('host test: --only keeps only matches, --skip removes, both together', () => {
    assert.ok(isSelected('v2.arc.reach'));
    assert.ok(isSelected('v2.arc.reach', ['v2']));
    assert.ok(!isSelected('v1.region.type', ['v2']));
    assert.ok(!isSelected('v2.arc.reach', ['v2'], ['v2.arc']));
    assert.ok(isSelected('v2.arc.forbidden', [], ['v2.arc.reach']));
  });

  test('host test: selectors that match no rule are reported (a typo is a usage error)', () => {
    assert.deepEqual(unknownSelectors(['v1', 'v2.arc.reach', 'v3', 'v1.stat']), ['v3', 'v1.stat']);
  });
});

describe('check: the catalogue (host test)', () => {
  test('host test: ids are unique and stable in form; each rule has a level, an area and a test', () => {
    const ids = RULES.map((r) => r.id);
    assert.equal(new Set(ids).size, ids.length);
    for (const r of RULES) {
      assert.match(r.id, /^(v1|v2|both)\.[a-z0-9-]+(\.[a-z0-9-]+)*$/);
      assert.ok(r.id.startsWith(`${r.protocol}.`), r.id);
      assert.ok(r.level === 'MUST' || r.level === 'SHOULD');
      assert.ok(r.area && r.test && r.spec);
    }
  });

  // The spec texts: the v1 diff lives beside the repository, vfio.h in the VM cache (or the system's).
  const norm = (s: string): string => s.replace(/^[-+]?\s*\*\s?/gm, ' ').replace(/\s+/g, ' ');
  const sources: Record<string, string | undefined> = {
    'vfio-migration-v1.diff': [
      '../shared/spec/vfio-migration-v1.diff',
      '../../shared/spec/vfio-migration-v1.diff',
      '/work/shared/spec/vfio-migration-v1.diff',
    ].find(existsSync),
    'linux/vfio.h': [join('.cache/vm/6.12/src/include/uapi/linux/vfio.h'), '/usr/include/linux/vfio.h'].find(
      existsSync,
    ),
  };
  for (const [source, path] of Object.entries(sources)) {
    test(
      `host test: every sentence quoted from ${source} is in it verbatim`,
      { skip: path ? false : `${source} is not on this host` },
      () => {
        const text = norm(readFileSync(path!, 'utf8'));
        for (const r of RULES.filter((x) => x.source === source))
          assert.ok(text.includes(norm(r.spec)), `${r.id}: "${r.spec}" is not in ${path}`);
      },
    );
  }
});

describe('check: report text and JUnit (host test)', () => {
  const r = report({
    'v2.arc.reach': ['pass', 'all arcs reached'],
    'v2.stopcopy.no-enomsg': ['fail', 'read failed with ENOMSG after 4096 bytes'],
    'v2.precopy.enomsg': ['warn', 'read returned 0'],
  });

  test('host test: the text puts the failing area first, a failure with the spec sentence and what was seen', () => {
    const text = formatReport(r);
    assert.match(text, /^vfio-mig check dev-0 \(v2\): NOT CONFORMANT: 1 failed, 1 warnings, 1 passed/);
    const fail = text.indexOf('FAIL v2.stopcopy.no-enomsg [MUST]');
    assert.ok(fail > 0 && fail < text.indexOf('pass v2.arc.reach'), text);
    assert.match(text, /spec \(linux\/vfio\.h\): "ENOMSG may not be returned in STOP_COPY\."/);
    assert.match(text, /seen: seen=0x5 <bad> & "q"/);
    assert.match(text, /WARN v2\.precopy\.enomsg \[SHOULD\]/);
    // rules of the other protocol are not listed unless verbose
    assert.doesNotMatch(text, /v1\.region\.type/);
    assert.match(formatReport(r, { verbose: true }), /skip v1\.region\.type/);
    assert.match(text, /no state checksum on this device/);
  });

  test('host test: areas are grouped, failures first inside an area', () => {
    const groups = groupByArea(r.findings);
    assert.equal(groups[0][0], 'v2 data fd');
    assert.equal(groups[0][1][0].verdict, 'fail');
    assert.equal(groups[0][1][1].verdict, 'warn');
  });

  test('host test: JUnit XML has one testcase per rule, failure/skipped elements, escaped text', () => {
    const xml = formatJunit(r);
    assert.match(xml, /^<\?xml version="1\.0" encoding="UTF-8"\?>\n<testsuites name="vfio-mig check dev-0"/);
    assert.equal((xml.match(/<testcase /g) ?? []).length, RULES.length);
    assert.match(xml, new RegExp(`tests="${RULES.length}" failures="1" skipped="${RULES.length - 3}"`));
    assert.match(
      xml,
      /name="v2\.stopcopy\.no-enomsg"[^>]*>\n\s*<failure message="read failed with ENOMSG after 4096 bytes" type="MUST">/,
    );
    assert.match(xml, /seen=0x5 &lt;bad&gt; &amp; &quot;q&quot;/);
    assert.match(xml, /<skipped message="the device speaks v1"\/>/);
    assert.match(xml, /<system-out>WARNING: read returned 0<\/system-out>/);
    assert.doesNotMatch(xml, /<bad>/);
    // balanced
    assert.equal((xml.match(/<testsuite /g) ?? []).length, (xml.match(/<\/testsuite>/g) ?? []).length);
  });

  test('host test: control characters in details never reach the XML', () => {
    const x = report({ 'v2.arc.reach': ['fail', 'bad \u0001\u001b[31m byte'] });
    const out = formatJunit(x);
    assert.ok(!out.includes('\u0001') && !out.includes('\u001b'));
  });
});

describe('check: verdicts of one run (host test)', () => {
  test('host test: a worse verdict replaces a better one, never the reverse; unselected rules get none', async () => {
    const { CheckContext } = await import('../../lib/check/context');
    const seen: string[] = [];
    const ctx = new CheckContext({ skip: ['v1.header'], onFinding: (f) => seen.push(`${f.id}=${f.verdict}`) });
    ctx.pass('v1.region.type', 'ok');
    ctx.fail('v1.region.type', 'bad');
    ctx.pass('v1.region.type', 'ok again');
    ctx.passIfClean('v1.region.type', 'clean?');
    assert.equal(ctx.findings.get('v1.region.type')!.verdict, 'fail');
    ctx.warn('v2.precopy.enomsg', 'zero read');
    ctx.skip('v2.precopy.enomsg', 'later skip');
    assert.equal(ctx.findings.get('v2.precopy.enomsg')!.verdict, 'warn');
    ctx.fail('v1.header.reserved', 'not selected');
    assert.equal(ctx.findings.has('v1.header.reserved'), false);
    assert.ok(!ctx.wants('v1.header.reserved'));
    assert.throws(() => ctx.pass('v9.nothing', 'x'), /no rule v9\.nothing/);
    assert.deepEqual(seen, ['v1.region.type=pass', 'v1.region.type=fail', 'v2.precopy.enomsg=warn']);
  });

  test('host test: a step that throws fails only its rules still undecided, naming the step', async () => {
    const { CheckContext } = await import('../../lib/check/context');
    const ctx = new CheckContext({});
    const ran = await ctx.step(['v1.pending.reread', 'v1.data.reread'], 'stop-and-copy', async () => {
      ctx.pass('v1.pending.reread', 'stable');
      throw Object.assign(new Error('read data_offset failed with EIO'), { code: 'EIO' });
    });
    assert.equal(ran, false);
    assert.equal(ctx.findings.get('v1.pending.reread')!.verdict, 'pass');
    const f = ctx.findings.get('v1.data.reread')!;
    assert.equal(f.verdict, 'fail');
    assert.match(f.detail, /^stop-and-copy: read data_offset failed with EIO/);
    assert.equal(f.evidence.code, 'EIO');
    // a step none of whose rules is wanted does not run
    let called = false;
    const only = new CheckContext({ only: ['v2'] });
    assert.equal(
      await only.step(['v1.data.reread'], 'x', async () => {
        called = true;
      }),
      false,
    );
    assert.equal(called, false);
  });
});
