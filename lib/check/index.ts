// The conformance checker of VFIO migration drivers: catalogue, runner, renderings.
export { checkDevice, TEST_DRIVER_VENDOR } from './runner';
export { RULES, RULE_BY_ID, isSelected, matches, unknownSelectors } from './rules';
export { formatReport, formatJunit, groupByArea } from './report';
export type { Rule, Finding, CheckReport, CheckOptions, Verdict, Level, Evidence } from './types';
