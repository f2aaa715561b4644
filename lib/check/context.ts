// The state of one check run: which rules run, the verdicts so far (the worst one wins), evidence helpers.
import { readdirSync } from 'node:fs';
import { isSyscallError } from '../errors';
import { monotonicMs, msSince } from '../clock';
import { isSelected, RULE_BY_ID } from './rules';
import type { CheckOptions, Evidence, Finding, Verdict } from './types';

const RANK: Record<Verdict, number> = { skip: 0, pass: 1, warn: 2, fail: 3 };

export class CheckContext {
  readonly findings = new Map<string, Finding>();
  readonly #options: CheckOptions;
  readonly #started = new Map<string, number>();

  constructor(options: CheckOptions) {
    this.#options = options;
  }

  /** Whether a rule is selected (--only/--skip) and still undecided: a check step runs only then. */
  wants(...ids: string[]): boolean {
    return ids.some((id) => this.selected(id) && this.findings.get(id)?.verdict !== 'fail');
  }

  selected(id: string): boolean {
    if (!RULE_BY_ID.has(id)) throw new Error(`check: no rule ${id} in the catalogue`);
    return isSelected(id, this.#options.only, this.#options.skip);
  }

  /** Gives a rule a verdict; a worse verdict replaces a better one, never the reverse. */
  verdict(id: string, verdict: Verdict, detail: string, evidence: Evidence = {}): void {
    if (!this.selected(id)) return;
    const prev = this.findings.get(id);
    if (prev && RANK[prev.verdict] >= RANK[verdict] && !(prev.verdict === 'skip' && verdict === 'skip')) return;
    const started = this.#started.get(id);
    const finding: Finding = { id, verdict, detail, evidence };
    if (started !== undefined) finding.ms = msSince(started);
    this.findings.set(id, finding);
    this.#options.onFinding?.(finding);
  }

  pass(id: string, detail: string, evidence: Evidence = {}): void {
    this.verdict(id, 'pass', detail, evidence);
  }
  fail(id: string, detail: string, evidence: Evidence = {}): void {
    this.verdict(id, 'fail', detail, evidence);
  }
  warn(id: string, detail: string, evidence: Evidence = {}): void {
    this.verdict(id, 'warn', detail, evidence);
  }
  skip(id: string, why: string, evidence: Evidence = {}): void {
    if (!this.findings.has(id)) this.verdict(id, 'skip', why, evidence);
  }

  /** Passes a rule unless it already failed (for rules checked at many points). */
  passIfClean(id: string, detail: string, evidence: Evidence = {}): void {
    if (!this.findings.has(id) || this.findings.get(id)!.verdict === 'skip') this.pass(id, detail, evidence);
  }

  start(id: string): void {
    if (!this.#started.has(id)) this.#started.set(id, monotonicMs());
  }

  /**
   * Runs one step of a check; an unexpected exception fails every rule in `ids` that is still
   * undecided (with the step and the error), so a broken step never reads as a pass.
   */
  async step(ids: string[], what: string, body: () => Promise<void>): Promise<boolean> {
    if (!this.wants(...ids)) return false;
    for (const id of ids) this.start(id);
    try {
      await body();
      return true;
    } catch (err) {
      const e = err as Error & { code?: string };
      for (const id of ids) {
        const f = this.findings.get(id);
        // a rule that already passed in this step keeps its verdict: what failed came after it
        if (!f || f.verdict === 'skip')
          this.fail(id, `${what}: ${e.message}`, { step: what, error: e.message, code: e.code ?? null });
      }
      return false;
    }
  }
}

/** The errno code of a failed syscall ('EINVAL'), or a short description of another error. */
export function errnoName(err: unknown): string {
  if (isSyscallError(err)) return err.code;
  const cause = (err as { cause?: unknown })?.cause;
  if (isSyscallError(cause)) return cause.code;
  return (err as Error)?.message ?? String(err);
}

/** Runs a call that is expected to fail: the errno code, or null when it succeeded. */
export async function refusal(call: () => Promise<unknown> | unknown): Promise<string | null> {
  try {
    await call();
    return null;
  } catch (err) {
    return errnoName(err);
  }
}

/** Open fds of this process, for the leak rule. */
export function openFdCount(): number {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return -1;
  }
}

export const hex = (v: number | bigint): string => `0x${v.toString(16)}`;
