#!/usr/bin/env bash
# npm run lint: Prettier and typescript-eslint for TypeScript, clang-format for native/, shellcheck for the scripts.
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
if ((status == 0)); then echo "lint: clean"; fi
exit "$status"
