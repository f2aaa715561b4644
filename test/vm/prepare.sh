#!/usr/bin/env bash
# Prepares everything the QEMU test harness needs, per Debian 12 kernel series,
# into <project>/.cache/vm/<series>/. Idempotent and cached: a warm run only
# checks stamps and lets make rebuild the project's out-of-tree modules.
#
#   bash test/vm/prepare.sh [--quiet] [--kernel 6.12|6.1|all] [--modules-only]
#
# Layout (per series, 6.12 and 6.1):
#   kver               kernel release, e.g. 6.12.117+deb12-amd64
#   headers/           make -C headers M=<dir> modules   (headers.ok when complete)
#   pkg/headers/       the unpacked -common headers and linux-kbuild trees headers/ points into
#   vmlinux            uncompressed kernel (PVH entry), from scripts/extract-vmlinux
#   modules/           depmod base dir: modules/lib/modules/<kver>/ (decompressed .ko)
#   src/               files taken from linux-source-<series> (samples/vfio-mdev, extract-vmlinux, uapi vfio.h)
#   mtty.ko            samples/vfio-mdev/mtty.c built against headers/
#   initramfs.cpio     busybox + /init + the modules the guest loads at boot
#   build/<name>/      out-of-tree modules of the project (test/driver/...), rebuilt by make on every run
# Shared: .cache/vm/debs/ (downloaded .debs), .cache/vm/tools/ (busybox).
set -euo pipefail
shopt -s nullglob

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
CACHE="$ROOT/.cache/vm"
DEBS="$CACHE/debs"
QUIET=0
KERNELS="6.12 6.1"
MODULES_ONLY=0
# Bump when the layout or the content of a step changes, so caches rebuild.
STEP_VERSION=3

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
	case "$1" in
	--quiet|-q) QUIET=1 ;;
	--kernel) shift; [ $# -gt 0 ] || { echo "prepare.sh: --kernel needs 6.12, 6.1 or all" >&2; exit 2; }
		case "$1" in 6.12|6.1) KERNELS="$1" ;; all) KERNELS="6.12 6.1" ;;
		*) echo "prepare.sh: unknown kernel series '$1' (6.12, 6.1 or all)" >&2; exit 2 ;; esac ;;
	--kernel=*) set -- "--kernel" "${1#--kernel=}" "${@:2}"; continue ;;
	--modules-only) MODULES_ONLY=1 ;;
	-h|--help) usage; exit 0 ;;
	*) echo "prepare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

T0=$(date +%s.%N)
log() { [ "$QUIET" = 1 ] || echo "prepare: $*" >&2; }
warn() { echo "prepare: warning: $*" >&2; }
die() { echo "prepare: error: $*" >&2; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
# Run a command; on failure show its output (kept quiet otherwise).
run_logged() {
	local logf; logf=$(mktemp)
	if "$@" >"$logf" 2>&1; then
		[ "$QUIET" = 1 ] || [ -z "${VERBOSE:-}" ] || cat "$logf" >&2
		rm -f "$logf"; return 0
	fi
	local rc=$?
	echo "prepare: command failed ($rc): $*" >&2
	tail -n 60 "$logf" | sed 's/^/  | /' >&2
	rm -f "$logf"; return $rc
}

# ---------------------------------------------------------------- host tools
APT_UPDATED=0
apt_update_once() {
	[ "$APT_UPDATED" = 1 ] && return 0
	[ "$(id -u)" = 0 ] || die "apt lists need updating but this is not root (run: sudo apt-get update)"
	log "apt-get update"
	run_logged apt-get update || die "apt-get update failed"
	APT_UPDATED=1
}

# ensure_tools "cmd:package" ... : installs the packages whose command is missing.
ensure_tools() {
	local missing=() spec cmd pkg
	for spec in "$@"; do
		cmd=${spec%%:*}; pkg=${spec#*:}
		if [ "${cmd#/}" != "$cmd" ]; then [ -e "$cmd" ] && continue
		else command -v "$cmd" >/dev/null 2>&1 && continue; fi
		missing+=("$pkg")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	# shellcheck disable=SC2207
	missing=($(printf '%s\n' "${missing[@]}" | sort -u))
	if [ "$(id -u)" != 0 ]; then
		die "missing host packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
	fi
	apt_update_once
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive run_logged apt-get install -y --no-install-recommends "${missing[@]}" \
		|| die "could not install ${missing[*]}"
}

ensure_host_tools() {
	ensure_tools apt-get:apt dpkg-deb:dpkg \
		qemu-system-x86_64:qemu-system-x86 /bin/busybox:busybox-static cpio:cpio \
		pahole:dwarves xz:xz-utils zstd:zstd make:make x86_64-linux-gnu-gcc-12:gcc-12
}

# Libraries the kbuild tools (modpost, objtool, ...) link against: the kbuild
# package's Depends (apt-get install of that list never pulls a kernel).
ensure_kbuild_libs() {
	local pkg=$1 deps=() d missing=()
	mapfile -t deps < <(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Depends: //p' \
		| tr ',' '\n' | sed 's/(.*)//; s/|.*//; s/[[:space:]]//g' | grep -v '^$' || true)
	for d in "${deps[@]}"; do
		dpkg-query -W -f='${db:Status-Abbrev}' "$d" 2>/dev/null | grep -q '^ii' || missing+=("$d")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing host packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
	apt_update_once
	log "installing ${missing[*]} (needed by $pkg's build tools)"
	DEBIAN_FRONTEND=noninteractive run_logged apt-get install -y --no-install-recommends "${missing[@]}" \
		|| die "could not install ${missing[*]}"
}

# ---------------------------------------------------------------- apt queries
pkg_version() { apt-cache show --no-all-versions "$1" 2>/dev/null | awk '/^Version:/{print $2; exit}'; }

# Newest kernel release of a series, from apt's lists (never hard-coded).
resolve_kver_once() {
	local series=$1 name
	case "$series" in
	6.12)
		name=$(apt-cache pkgnames linux-image-6.12. 2>/dev/null \
			| grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' | sort -V \
			| while read -r p; do [ -n "$(pkg_version "$p")" ] && echo "$p"; done | tail -n 1 || true)
		;;
	6.1)
		name=$(apt-cache depends linux-image-amd64 2>/dev/null \
			| awk '$1=="Depends:" && $2 ~ /^linux-image-6\.1\.0-[0-9]+-amd64$/ {print $2; exit}' || true)
		;;
	esac
	[ -n "$name" ] && echo "${name#linux-image-}"
}

resolve_kver() {
	local series=$1 kver
	kver=$(resolve_kver_once "$series" || true)
	if [ -z "$kver" ] && [ "$(id -u)" = 0 ]; then
		apt_update_once
		kver=$(resolve_kver_once "$series" || true)
	fi
	if [ -z "$kver" ]; then
		if [ -s "$CACHE/$series/kver" ] && [ -e "$CACHE/$series/ready" ]; then
			kver=$(cat "$CACHE/$series/kver")
			warn "apt knows no $series kernel now; using the cached $kver"
		elif [ "$series" = 6.12 ]; then
			die "apt knows no linux-image-6.12.*+deb12-amd64. It comes from bookworm-security: add
  'deb http://deb.debian.org/debian-security bookworm-security main' (or a deb822 entry with
  Suites: bookworm-security) to /etc/apt/sources.list.d/ and run apt-get update.
  apt-cache policy shows: $(apt-cache policy 2>/dev/null | grep -o 'n=[a-z-]*' | sort -u | tr '\n' ' ')"
		else
			die "apt-cache depends linux-image-amd64 names no linux-image-6.1.0-*-amd64 (is bookworm configured? apt-get update?)"
		fi
	fi
	echo "$kver"
}

# download PKG[=VERSION] ... into $DEBS (cached by file name), prints the .deb paths
download() {
	local spec name ver f out=()
	mkdir -p "$DEBS"
	for spec in "$@"; do
		name=${spec%%=*}
		if [ "$name" != "$spec" ]; then ver=${spec#*=}; else ver=$(pkg_version "$name"); fi
		[ -n "$ver" ] || die "apt has no package $name"
		# .deb file names encode the epoch-less version with ':' as %3a
		f=$(ls "$DEBS/${name}_${ver/:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
		if [ -z "$f" ]; then
			log "downloading $name $ver"
			( cd "$DEBS" && run_logged apt-get download -o APT::Sandbox::User=root "$name=$ver" ) \
				|| { apt_update_once; ( cd "$DEBS" && run_logged apt-get download -o APT::Sandbox::User=root "$name=$ver" ); } \
				|| die "apt-get download $name=$ver failed"
			f=$(ls "$DEBS/${name}_${ver/:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
			[ -n "$f" ] || die "apt-get download $name=$ver produced no .deb in $DEBS"
		fi
		out+=("$f")
	done
	printf '%s\n' "${out[@]}"
}

# stamp helpers: a step is done when its stamp holds "<kver> <STEP_VERSION>"
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$KVER $STEP_VERSION" ]; }
stamp_set() { echo "$KVER $STEP_VERSION" >"$1"; }

# ---------------------------------------------------------------- steps
# Headers: linux-headers-<kver> + its -common part + linux-kbuild, unpacked
# with dpkg-deb -x (apt-get install would pull the image, udev, initramfs-tools).
step_headers() {
	stamp_ok "$S/headers.ok" && [ -f "$S/headers/Makefile" ] && return 0
	local hpkg="linux-headers-$KVER" hver deps common kbuild debs tmp
	hver=$(pkg_version "$hpkg")
	[ -n "$hver" ] || die "apt has no $hpkg"
	deps=$(apt-cache show --no-all-versions "$hpkg" | sed -n 's/^Depends: //p' | tr ',' '\n' | sed 's/^ *//; s/ .*//')
	common=$(echo "$deps" | grep -E '^linux-headers-.*-common$' | head -n 1 || true)
	kbuild=$(echo "$deps" | grep -E '^linux-kbuild-' | head -n 1 || true)
	[ -n "$common" ] && [ -n "$kbuild" ] || die "cannot find the -common and kbuild packages in $hpkg's Depends: $deps"
	ensure_kbuild_libs "$kbuild"
	local kbver; kbver=$(apt-cache madison "$kbuild" | awk -v v="$hver" '$3==v{print $3; exit}')
	[ -n "$kbver" ] || kbver=$(pkg_version "$kbuild")
	mapfile -t debs < <(download "$hpkg=$hver" "$common=$hver" "$kbuild=$kbver")
	log "$SERIES: unpacking headers ($hpkg, $common, $kbuild)"
	rm -f "$S/headers.ok"
	tmp="$S/.headers.tmp"
	rm -rf "$tmp" "$S/headers" "$S/pkg/headers"
	mkdir -p "$tmp/pkg" "$S/pkg"
	for d in "${debs[@]}"; do dpkg-deb -x "$d" "$tmp/pkg"; done
	local src="$tmp/pkg/usr/src/linux-headers-$KVER"
	[ -f "$src/Makefile" ] || die "$hpkg has no usr/src/linux-headers-$KVER/Makefile"
	local commondir kbdir
	commondir=$(sed -n 's|^include /usr/src/\(linux-headers-[^/]*\)/Makefile$|\1|p' "$src/Makefile")
	[ -n "$commondir" ] && [ -f "$tmp/pkg/usr/src/$commondir/Makefile" ] \
		|| die "unexpected $hpkg Makefile: $(cat "$src/Makefile")"
	kbdir=$(readlink "$src/scripts"); kbdir=${kbdir#../../lib/}; kbdir=${kbdir%/scripts}
	[ -d "$tmp/pkg/usr/lib/$kbdir/scripts" ] || die "kbuild tree $kbdir missing after unpacking $kbuild"
	mv "$src" "$tmp/headers"
	# Relocatable: the Makefile finds the -common tree next to itself, the
	# scripts/tools links are relative.
	printf '%s\n' \
		"# Rewritten by test/vm/prepare.sh: Debian's file includes /usr/src/$commondir/Makefile" \
		"include \$(realpath \$(dir \$(lastword \$(MAKEFILE_LIST))))/../pkg/headers/usr/src/$commondir/Makefile" \
		>"$tmp/headers/Makefile"
	rm -f "$tmp/headers/scripts" "$tmp/headers/tools"
	ln -s "../pkg/headers/usr/lib/$kbdir/scripts" "$tmp/headers/scripts"
	ln -s "../pkg/headers/usr/lib/$kbdir/tools" "$tmp/headers/tools"
	mv "$tmp/pkg" "$S/pkg/headers"
	mv "$tmp/headers" "$S/headers"
	rmdir "$tmp"
	# Prove it builds a module before declaring it complete.
	local t="$S/.hello"
	rm -rf "$t"; mkdir -p "$t"
	printf '%s\n' '#include <linux/module.h>' 'static int __init h_init(void) { return 0; }' \
		'static void __exit h_exit(void) { }' 'module_init(h_init);' 'module_exit(h_exit);' \
		'MODULE_LICENSE("GPL");' >"$t/hello.c"
	echo 'obj-m := hello.o' >"$t/Kbuild"
	run_logged make -C "$S/headers" M="$t" modules || die "$SERIES: test module does not build against $S/headers"
	[ -f "$t/hello.ko" ] || die "$SERIES: test build produced no hello.ko"
	rm -rf "$t"
	stamp_set "$S/headers.ok"
	log "$SERIES: headers ready: make -C $S/headers M=<dir> modules"
}

# ---------------------------------------------------------------- main
mkdir -p "$CACHE"
ensure_host_tools
for SERIES in $KERNELS; do
	S="$CACHE/$SERIES"
	mkdir -p "$S"
	KVER=$(resolve_kver "$SERIES")
	if [ -s "$S/kver" ] && [ "$(cat "$S/kver")" != "$KVER" ]; then
		log "$SERIES: kernel changed from $(cat "$S/kver") to $KVER, rebuilding its cache"
		rm -rf "$S"; mkdir -p "$S"
	fi
	echo "$KVER" >"$S/kver"
	step_headers
done
log "done in $(elapsed) s"
