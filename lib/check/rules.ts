// The rule catalogue of `vfio-mig check`: one entry per spec sentence the checker enforces.
import type { Rule } from './types';
import { V1_RULES } from './rules-v1';
import { V2_RULES } from './rules-v2';

export { V1_DIAGRAM_ARCS } from './rules-v1';

const H = 'linux/vfio.h' as const;

/** Rules of both protocols. */
const BOTH_RULES: readonly Rule[] = [
  // --- both
  {
    id: 'both.roundtrip.same-state',
    protocol: 'both',
    area: 'round trip',
    level: 'MUST',
    source: H,
    spec: 'The data stream fed into the data_fd should be taken from the data transfer output of a single FD during saving from a compatible device.',
    test: 'save, load that stream back, save again: the device state is the same (the test driver checksum; otherwise not provable)',
    disruptive: 'stops',
  },
  {
    id: 'both.fd-leak',
    protocol: 'both',
    area: 'round trip',
    level: 'MUST',
    source: H,
    spec: 'The user is responsible to close this FD when it is finished.',
    test: 'the process holds as many fds (/proc/self/fd) after the checks as before: every data_fd could be closed',
  },
];

export const RULES: readonly Rule[] = [...V1_RULES, ...V2_RULES, ...BOTH_RULES];

export const RULE_BY_ID: ReadonlyMap<string, Rule> = new Map(RULES.map((r) => [r.id, r]));

/** A selector matches a rule by its id or an id prefix ending at a dot (`v1.state`). */
export function matches(selector: string, id: string): boolean {
  return id === selector || id.startsWith(selector.endsWith('.') ? selector : `${selector}.`);
}

/** Selectors that match no rule: a typo must be a usage error, not a silent no-op. */
export function unknownSelectors(selectors: readonly string[]): string[] {
  return selectors.filter((s) => !RULES.some((r) => matches(s, r.id)));
}

/** Whether a rule runs under --only/--skip: only (if given) must match it, skip must not. */
export function isSelected(id: string, only?: readonly string[], skip?: readonly string[]): boolean {
  if (only && only.length && !only.some((s) => matches(s, id))) return false;
  return !(skip ?? []).some((s) => matches(s, id));
}
