#!/usr/bin/env bash
# npm run lint: Prettier and typescript-eslint for TypeScript, clang-format for native/, shellcheck for the scripts,
# the kernel's checkpatch.pl for the test drivers (test/driver/*.c *.h and test/driver/edu/, kernel modules).
set -euo pipefail
cd "$(dirname "$0")/.."

# clang-format and shellcheck come from Debian; install them once (as the VM harness does its packages).
missing=()
command -v clang-format >/dev/null || missing+=(clang-format)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
		echo "lint: needs ${missing[*]} (Debian: apt-get install ${missing[*]}); run as root to install them" >&2
		exit 1
	fi
	echo "lint: installing ${missing[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
		|| { echo "lint: could not install ${missing[*]}" >&2; exit 1; }
fi

status=0
run() {
	if ! "$@"; then
		echo "lint: failed: $*" >&2
		status=1
	fi
}
run npx --no-install prettier --check --log-level warn .
run npx --no-install eslint --max-warnings 0 .
run clang-format --dry-run --Werror native/*.cc native/*.h
run shellcheck -S warning test/vm/*.sh scripts/*.sh .ci/run

# checkpatch.pl comes from the linux-source tarball the VM harness unpacks (test/vm/prepare.sh puts it
# in .cache/vm/<series>/src/scripts/). On a fresh clone, prepare's --source-only step fetches just
# that (one .deb from apt, streamed; no QEMU, no kernel build); if it cannot, lint says so and why.
find_checkpatch() {
	local series
	for series in 6.12 6.1; do
		if [ -f ".cache/vm/$series/src/scripts/checkpatch.pl" ]; then
			echo ".cache/vm/$series/src/scripts/checkpatch.pl"
			return 0
		fi
	done
	return 1
}
checkpatch=$(find_checkpatch || true)
if [ -z "$checkpatch" ]; then
	echo "lint: fetching checkpatch.pl (bash test/vm/prepare.sh --source-only)" >&2
	bash test/vm/prepare.sh --quiet --source-only --kernel 6.12 || bash test/vm/prepare.sh --quiet --source-only --kernel 6.1 || true
	checkpatch=$(find_checkpatch || true)
fi
if [ -z "$checkpatch" ]; then
	echo "lint: SKIPPED checkpatch.pl on test/driver: test/vm/prepare.sh --source-only could not fetch it (see above)" >&2
elif ! command -v perl >/dev/null; then
	echo "lint: SKIPPED checkpatch.pl on test/driver: no perl on this machine" >&2
else
	# Options for an out-of-tree module (--no-tree: no kernel tree around it; -f: files, not patches).
	# Ignored, each because the report is wrong for this module:
	#   LINUX_VERSION_CODE, CONSTANT_COMPARISON: the module builds against 6.1 and 6.12 and must test
	#     the version (`LINUX_VERSION_CODE >= KERNEL_VERSION(...)` is what the second one reports);
	#   COMPLEX_MACRO, MACRO_ARG_REUSE, MACRO_ARG_UNUSED: the X-macro tables of counters and fault
	#     points (a list macro applied to a per-use macro, which uses only some of the columns);
	#   UNNECESSARY_PARENTHESES: reports parentheses that are needed, around a comparison used as
	#     0 or 1 inside a sum (vmt_state.c).
	run perl "$checkpatch" --no-tree --strict -f --quiet --no-summary --show-types --terse \
		--ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON,COMPLEX_MACRO,MACRO_ARG_REUSE,MACRO_ARG_UNUSED,UNNECESSARY_PARENTHESES \
		test/driver/*.c test/driver/*.h test/driver/edu/*.c test/driver/edu/*.h
fi

if ((status == 0)); then echo "lint: clean"; fi
exit "$status"
