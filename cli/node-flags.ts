// The node arguments the vfio-mig bin runs under: its first lines start node with them, and the build's code cache is made under them.

/**
 * V8's baseline compiler (Sparkplug) compiles on the JS thread, and in a migration's downtime,
 * where code runs for the first time, that cost is the downtime's own: in the test guest, Node
 * 26's downtime of one device 14-16 -> 8-9 ms and of four 32-37 -> 18-19 ms without it, and
 * nothing slower (docs/performance.md, "Under other Nodes"). Node 26's V8 ignores the flag set at
 * run time, so it is a node argument, and V8 takes a code cache only under the flags it was made
 * under: scripts/bundle.js writes both the bin's first lines and its cache from this list.
 */
export const BIN_NODE_FLAGS: readonly string[] = ['--no-sparkplug'];

/**
 * The bin's first lines: `#!/bin/sh` and a line that is a shell command to sh and a comment to
 * JavaScript, which runs the file again under node with BIN_NODE_FLAGS (`exec`: the same pid, so
 * signals reach node). Not `#!/usr/bin/env -S node ...`: BusyBox's env has no -S.
 */
export function binPreamble(flags: readonly string[] = BIN_NODE_FLAGS): string {
  return `#!/bin/sh\n':' //; exec node ${flags.join(' ')} "$0" "$@"`;
}
