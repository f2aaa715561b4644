// Help texts of vfio-mig: the tool's page and one page per command, each with an example.
import { RULES } from '../lib/check/rules';

/** The catalogue as help lines: id, level, and the rules that reset or stop the device. */
function ruleLines(): string {
  let area = '';
  const out: string[] = [];
  for (const r of RULES) {
    if (r.area !== area) out.push(`  ${(area = r.area)}:`);
    out.push(
      `    ${r.id.padEnd(32)} ${r.level.padEnd(6)}${r.disruptive === 'reset' ? ' resets the device' : r.disruptive === 'stops' ? ' stops the device' : ''}`.trimEnd(),
    );
  }
  return out.join('\n');
}

export const HELP: Record<string, string> = {
  main: `vfio-mig: save and restore the internal state of VFIO devices (v1 and v2 migration)

Usage: vfio-mig <command> [options]

Commands:
  list                         VFIO devices on this host, with migration protocol and state
  info <device>                regions, capabilities, IRQs and migration details of a device
  save <device> -o FILE|-      save the device state into a stream (FILE is written atomically)
  load <device> -i FILE|-      restore a stream into a device
  verify FILE|-                check a stream offline and print its header and totals
  check <device>               check the device's migration driver against the spec (conformance)
  migrate <sources> <dests>    live-migrate devices as one transaction (local, ssh://, exec:)
  receive <devices>            the destination end of a migrate, on stdin/stdout
  state <device> [STATE]       read or set the migration state (expert use)
  reset <device>               VFIO_DEVICE_RESET

A <device> is a PCI address (0000:3b:00.1), an mdev UUID or a sysfs path.
Global options: --json (machine-readable output), --quiet (no progress), --help, --version.
Exit codes: 0 ok, 1 other failure (I/O, a closed output pipe), 2 usage, 3 device not
found/not bound/permission/busy, 4 device or protocol error, 5 bad or foreign stream,
6 not conformant (check: a MUST rule failed); migrate/receive: 10 the source side failed,
7 the destination failed or refused, 9 the channel broke or timed out (10, 7, 9: before the
commit: sources RUNNING again, destinations reset), 8 a failure after the commit;
130 interrupted (SIGINT, SIGTERM or SIGHUP: the device is recovered first; a third signal
ends the process at once, by that signal: 128 + its number). SIGPIPE is ignored: writing to
a closed pipe fails the command with exit 1.

Across hosts:  vfio-mig save 0000:3b:00.1 -o - | ssh dst vfio-mig load 0000:3b:00.1 -i -`,
  list: `Usage: vfio-mig list [--json] [--no-probe]

Lists PCI devices bound to a VFIO driver and every mdev device, with IOMMU group, driver,
migration protocol (v1, v2 and its flags, none) and current migration state. --no-probe skips
opening each device (protocol and state then show as unknown).

Example:  vfio-mig list --json | jq '.[] | select(.migration == "v2")'`,
  info: `Usage: vfio-mig info <device> [--json]

Shows device flags, every region (size, offset, flags, capabilities: sparse mmap areas, type,
MSI-X mappable), IRQs, and the migration protocol with its details and current state.

Example:  vfio-mig info 0000:3b:00.1`,
  save: `Usage: vfio-mig save <device> -o FILE|- [options]

Saves the device state. With -o FILE the stream is written to a temporary file, fsynced and
renamed to FILE only when complete; with -o - it goes to stdout (progress stays on stderr).
If anything fails or you press Ctrl-C, the source device is returned to RUNNING and no
partial file is left under FILE.

Options:
  -o, --output FILE|-           where the stream goes (required)
  --precopy-iterations N        at most N pre-copy iterations while the device runs (default 0: none)
  --precopy-threshold BYTES     stop pre-copy once pending bytes fall below BYTES
  --precopy-time MS             stop pre-copy after MS milliseconds
  --leave running|stopped       source state after success (default stopped)
  --json, --quiet

Examples:
  vfio-mig save 0000:3b:00.1 -o dev.vfmig --precopy-iterations 4
  vfio-mig save 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 -o - | ssh dst vfio-mig load 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 -i -`,
  load: `Usage: vfio-mig load <device> -i FILE|- [options]

Restores a stream into the device. The header is checked before the device is touched, every
record's checksum before it reaches the device, and the trailer before the device leaves
RESUMING. On any failure the destination is reset.

Options:
  -i, --input FILE|-            the stream (- for stdin; required)
  --force                       load a stream saved from another kind of device
  --leave running|stopped       destination state after success (default running)
  --json, --quiet

Example:  vfio-mig load 0000:3b:00.1 -i dev.vfmig`,
  migrate: `Usage: vfio-mig migrate <sources> <destinations> [options]

Live-migrates one device or several (comma-separated, paired in order) as one transaction:
the destination checks the devices and enters RESUMING before any source stops; the sources
pre-copy while they run (those that can: v2 with PRE_COPY, every v1 device) and wait for the
destination's switchover-ack; all sources go through RUNNING_P2P before any stops; the
stop-and-copy data of all devices moves concurrently; the destination validates everything
and says "loaded"; only then does the source commit, and the destination runs. Before the
commit, any failure (either side, the channel, Ctrl-C, a timeout) returns
every source to RUNNING and resets every destination.

Destinations:
  B  or  B1,B2                  devices of this host
  ssh://[user@]host[:port]/B1[,B2]   runs 'vfio-mig receive B1,B2' there through ssh
  exec:<shell command>          a command whose stdin/stdout reach a vfio-mig receive

Options:
  --precopy-iterations N, --precopy-threshold BYTES, --precopy-time MS   as for save; without
                                them a device that can pre-copy does (up to 8 passes, ending
                                when nothing is pending or it stops shrinking)
  --no-precopy                  no pre-copy: all the state moves while the sources are stopped
  --switchover-ack / --no-switchover-ack   wait for the destination to apply the initial
                                pre-copy data before stopping (default on with pre-copy)
  --timeout SECONDS             longest wait for the other end (default 30; 0 = none)
  --reset-source                reset the sources after the commit (move semantics)
  --remote-command CMD          the program ssh runs instead of vfio-mig (e.g. 'npx vfio-mig')
  --ssh-option KEY=VALUE        passed to ssh as -o KEY=VALUE (repeatable), e.g.
                                IdentityFile=~/.ssh/mig, UserKnownHostsFile=FILE, ConnectTimeout=5
  --force                       destinations may be another kind of device
  --json, --quiet

Exit codes: 0 ok; 10 source failed, 7 destination failed or refused, 9 channel failed or timed
out (all before the commit: sources RUNNING again); 8 failure after the commit; 130 Ctrl-C.

Examples:
  vfio-mig migrate 0000:3b:00.1 0000:5e:00.1
  vfio-mig migrate A1,A2 ssh://root@dst/B1,B2 --precopy-iterations 4
  vfio-mig migrate A exec:'kubectl exec -i pod -- vfio-mig receive B'`,
  receive: `Usage: vfio-mig receive <devices> [--timeout SECONDS] [--force] [--quiet] [--json]

The destination end of 'vfio-mig migrate', speaking the migrate protocol on stdin and stdout
(docs/migrate-protocol.md); progress and the report go to stderr. Until the source commits,
any failure resets the devices.

Example:  socat TCP-LISTEN:7000 EXEC:'vfio-mig receive 0000:5e:00.1'`,
  verify: `Usage: vfio-mig verify FILE|- [--json]

Checks a stream offline: magic, version, every checksum, the record sequence and the trailer.

Example:  vfio-mig verify dev.vfmig`,
  check: `Usage: vfio-mig check <device> [--only IDS] [--skip IDS] [--junit FILE] [--json]

Checks the device's migration driver against the text of its protocol (the v1 migration region
of the deprecated uapi, or VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE of linux/vfio.h). Every rule
quotes the sentence it enforces and gets a verdict (pass, fail, warn, skip with why) with what
was seen. The device state is saved first and loaded back at the end; the report says if that
failed. While the check runs the device is stopped and reset many times: do not check a device
in use. Equal state after a round trip is proven with the project's test driver's checksum only.

Options:
  --only IDS       run only these rules (comma-separated ids or prefixes such as v1.state; repeatable)
  --skip IDS       leave these rules out
  --junit FILE     also write the verdicts as JUnit XML (one testcase per rule)
  --json           the full report as JSON
  --quiet          no progress lines on stderr

Exit status: 0 every MUST rule passed, 6 a MUST rule failed (not conformant) or the device has no
migration protocol, 1-4 the check could not run (see vfio-mig --help).

Rules (level; what the rule does to the device besides stopping it briefly):
${ruleLines()}

Example:  vfio-mig check 0000:3b:00.1 --junit check.xml`,
  state: `Usage: vfio-mig state <device> [STATE] [--json]

Without STATE, prints the migration state. With STATE (RUNNING, STOP, ... as the device's
protocol names them), moves the device there along legal arcs. Expert use: a device left in a
saving or resuming state does nothing useful until moved back.

Example:  vfio-mig state 0000:3b:00.1 RUNNING`,
  reset: `Usage: vfio-mig reset <device> [--json]

Issues VFIO_DEVICE_RESET (this also recovers a device from the migration ERROR state).

Example:  vfio-mig reset 0000:3b:00.1`,
};
