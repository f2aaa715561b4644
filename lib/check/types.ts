// The shapes of a conformance check: rules of the catalogue, verdicts with evidence, the report.

export type Level = 'MUST' | 'SHOULD';
export type Verdict = 'pass' | 'fail' | 'warn' | 'skip';
export type RuleProtocol = 'v1' | 'v2' | 'both';

/** One rule of the catalogue: a sentence of a spec and what the checker does to test it. */
export interface Rule {
  /** Stable id, e.g. `v1.pending.reread`; --only/--skip and JUnit test names use it. */
  id: string;
  protocol: RuleProtocol;
  /** Group in the human report (discovery, header, state, saving, resuming, data fd, ...). */
  area: string;
  level: Level;
  /** Where the sentence comes from: the v1 uapi diff or linux/vfio.h. */
  source: 'vfio-migration-v1.diff' | 'linux/vfio.h';
  /** The spec's sentence, verbatim. */
  spec: string;
  /** What the checker does, in a few words. */
  test: string;
  /** The rule resets the device or leaves it stopped on the way (named in --help). */
  disruptive?: 'reset' | 'stops';
}

/** What was observed: values, errno, the step. Plain JSON (bigints as strings). */
export type Evidence = Record<string, string | number | boolean | null | string[]>;

export interface Finding {
  id: string;
  verdict: Verdict;
  /** One line saying what was seen (or, for skip, why). */
  detail: string;
  evidence: Evidence;
  /** Milliseconds the rule took. */
  ms?: number;
}

export interface CheckReport {
  device: string;
  protocol: 'v1' | 'v2' | null;
  /** Test driver (vendor 0x5654) or not: whether state equality could be proven by checksum. */
  checksum: 'test-driver' | 'none';
  startedAt: string;
  elapsedMs: number;
  findings: (Finding & { rule: Rule })[];
  /** The device's state was saved before the checks and loaded back after them. */
  restore: { ok: boolean; detail: string };
  /** No MUST rule failed (and restore is not part of conformance). */
  conformant: boolean;
  counts: Record<Verdict, number>;
}

export interface CheckOptions {
  /** Rule ids or prefixes (`v1.state`) to run; the rest are skipped with "not selected". */
  only?: readonly string[];
  /** Rule ids or prefixes to leave out. */
  skip?: readonly string[];
  /** Called as each rule gets its verdict (progress). */
  onFinding?: (finding: Finding) => void;
}
