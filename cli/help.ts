// Help texts of vfio-mig: the tool's page and one page per command, each with an example.

export const HELP: Record<string, string> = {
  main: `vfio-mig: save and restore the internal state of VFIO devices (v1 and v2 migration)

Usage: vfio-mig <command> [options]

Commands:
  list                         VFIO devices on this host, with migration protocol and state
  info <device>                regions, capabilities, IRQs and migration details of a device
  save <device> -o FILE|-      save the device state into a stream (FILE is written atomically)
  load <device> -i FILE|-      restore a stream into a device
  verify FILE|-                check a stream offline and print its header and totals
  state <device> [STATE]       read or set the migration state (expert use)
  reset <device>               VFIO_DEVICE_RESET

A <device> is a PCI address (0000:3b:00.1), an mdev UUID or a sysfs path.
Global options: --json (machine-readable output), --quiet (no progress), --help.
Exit codes: 0 ok, 1 other failure (I/O, a closed output pipe), 2 usage, 3 device not
found/not bound/permission/busy, 4 device or protocol error, 5 bad or foreign stream,
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
  verify: `Usage: vfio-mig verify FILE|- [--json]

Checks a stream offline: magic, version, every checksum, the record sequence and the trailer.

Example:  vfio-mig verify dev.vfmig`,
  state: `Usage: vfio-mig state <device> [STATE] [--json]

Without STATE, prints the migration state. With STATE (RUNNING, STOP, ... as the device's
protocol names them), moves the device there along legal arcs. Expert use: a device left in a
saving or resuming state does nothing useful until moved back.

Example:  vfio-mig state 0000:3b:00.1 RUNNING`,
  reset: `Usage: vfio-mig reset <device> [--json]

Issues VFIO_DEVICE_RESET (this also recovers a device from the migration ERROR state).

Example:  vfio-mig reset 0000:3b:00.1`,
};
