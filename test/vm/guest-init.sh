#!/bin/sh
# PID 1 of the test guest (busybox sh, inside the initramfs built by prepare.sh).
#
# Talks to the runner (test/vm/vm.ts) over the second serial port, ttyS1, which
# is also the kernel console: lines starting with "@@vm " are for the runner
# ("phase NAME", "info KEY VALUE", "error MESSAGE", "exit STATUS"). The
# command's own terminal is ttyS0. Kernel parameters used:
#   vmrun=DIR   host directory (seen through the read-only root share) holding
#               guest.env and cmd.sh written by the runner
#   vmprobe=1   only prove that the kernel reaches init, then exit (KVM probe)
export PATH=/bin:/sbin
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Our own descriptors on ttyS1, so that closing them at the end waits until
# every byte has left the UART (tty close drains), then QEMU can be stopped.
exec </dev/null >/dev/ttyS1 2>&1

hostname "vm-$(cat /series)"
PHASE=init
say() { echo "@@vm $*"; }
phase() { PHASE=$1; say "phase $1"; }

# Hands STATUS to QEMU through isa-debug-exit (port 0xf4): QEMU exits with
# (STATUS << 1) | 1. The "@@vm exit" line carries the full value.
power_off() {
	status=$1
	say "exit $status"
	sync
	exec >/dev/null 2>&1
	printf "\\$(printf '%03o' $((status & 255)))" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
	# no isa-debug-exit: plain power off (the runner then only knows "no status")
	poweroff -f
	while :; do sleep 1; done
}
fail() { say "error [$PHASE] $*"; power_off 125; }

if [ -n "$vmprobe" ]; then
	say "probe ok"
	power_off 42
fi

# insmod_list FILE: load the initramfs' modules named in FILE, in order.
insmod_list() {
	while read -r m; do
		[ -n "$m" ] || continue
		out=$(insmod "/lib/modules/$m" 2>&1) || fail "insmod $m: $out"
	done <"$1"
}

phase mount-root
insmod_list /lib/modules/root.list
[ -n "$vmrun" ] || fail "no vmrun= on the kernel command line"
NEWROOT=/newroot
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot "$NEWROOT" 2>&1 \
	|| fail "mounting the host's / (9p tag hostroot) failed"
[ -f "$NEWROOT$vmrun/guest.env" ] || fail "$vmrun/guest.env not found through the root share"
# shellcheck source=/dev/null # guest.env is written per run by vm.ts
. "$NEWROOT$vmrun/guest.env"
# the run directory may live under /tmp, which the chroot's tmpfs hides
cp "$NEWROOT$vmrun/cmd.sh" /cmd.sh || fail "cannot read $vmrun/cmd.sh"
say "info series $(cat /series) kver $(uname -r)"

phase mounts
# Paths under /tmp or /run that the command needs (the project, node) stay
# visible through the tmpfs mounted there: held by a bind mount meanwhile.
n=0
for p in $VM_KEEP; do
	n=$((n + 1)); mkdir -p "/keep/$n"
	mount --bind "$NEWROOT$p" "/keep/$n" || fail "bind-mounting $p"
done
for fs in "proc /proc" "sysfs /sys" "devtmpfs /dev" "devpts /dev/pts" "tmpfs /dev/shm" "tmpfs /tmp" "tmpfs /run"; do
	set -- $fs
	mkdir -p "$NEWROOT$2" 2>/dev/null
	case "$1" in
	devpts) mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$NEWROOT$2" ;;
	tmpfs) mount -t tmpfs -o mode=1777 tmpfs "$NEWROOT$2" ;;
	*) mount -t "$1" "$1" "$NEWROOT$2" ;;
	esac || fail "mounting $1 on $2 in the chroot failed"
done
chmod 755 "$NEWROOT/run"
n=0
for p in $VM_KEEP; do
	n=$((n + 1)); mkdir -p "$NEWROOT$p"
	mount --move "/keep/$n" "$NEWROOT$p" || fail "moving $p back into the chroot"
done
mkdir -p "$NEWROOT/run/vm" "$NEWROOT/tmp/home"
cp /cmd.sh "$NEWROOT/run/vm/cmd.sh"
if [ -n "$VM_OUT" ]; then
	mkdir -p "$NEWROOT$VM_OUT" 2>/dev/null
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmout "$NEWROOT$VM_OUT" \
		|| fail "mounting the results share (9p tag vmout) on $VM_OUT failed"
fi

ENV="$NEWROOT/run/vm/env"
{
	echo "export VFIO_MIG_GUEST=1"
	echo "export VFIO_MIG_KERNEL='$(cat /series)'"
	echo "export VFIO_MIG_KVER='$(uname -r)'"
	[ -n "$VM_OUT" ] && echo "export VFIO_MIG_OUT='$VM_OUT'"
} >"$ENV"

phase load-vfio
insmod_list /lib/modules/vfio.list
[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio missing after loading the vfio modules"

if [ -n "$VM_MTTY" ]; then
	phase load-mtty
	out=$(insmod "$NEWROOT$VM_MTTY" 2>&1) || fail "insmod $VM_MTTY: $out"
	echo "export VFIO_MIG_MTTY=1" >>"$ENV"
fi

if [ -n "$VM_MODULES" ]; then
	phase load-project-modules
	for ko in $VM_MODULES; do
		out=$(insmod "$NEWROOT$ko" 2>&1) || fail "insmod $ko: $out"
		name=${ko##*/}; name=${name%.ko}
		say "info loaded $name"
		[ "$name" = vfio_mig_test ] && echo "export VFIO_MIG_TEST_DRIVER=1" >>"$ENV"
	done
fi

if [ -n "$VM_PCI_ID" ]; then
	phase bind-vfio-pci
	pci=
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor"):$(cat "$d/device")" = "$VM_PCI_ID" ] || continue
		pci=${d##*/}
		if [ -e "$d/driver" ]; then echo "$pci" >"$d/driver/unbind" || fail "unbinding $pci"; fi
		echo vfio-pci >"$d/driver_override" || fail "driver_override of $pci"
		echo "$pci" >/sys/bus/pci/drivers_probe
		case "$(readlink "$d/driver")" in */vfio-pci) ;; *) fail "$pci ($VM_PCI_ID) did not bind to vfio-pci" ;; esac
		[ -e "$d/iommu_group" ] || fail "$pci has no iommu_group (is intel-iommu on?)"
		break
	done
	[ -n "$pci" ] || fail "no PCI device $VM_PCI_ID in the guest"
	echo "export VFIO_MIG_PCI='$pci'" >>"$ENV"
	say "info pci $pci"
fi

# QEMU's edu devices go to the project's variant driver, when it is loaded
if [ -n "$VM_EDU_ID" ] && [ -d /sys/bus/pci/drivers/vfio_mig_edu ]; then
	phase bind-edu
	edu=
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor"):$(cat "$d/device")" = "$VM_EDU_ID" ] || continue
		a=${d##*/}
		if [ -e "$d/driver" ]; then echo "$a" >"$d/driver/unbind" || fail "unbinding $a"; fi
		echo vfio_mig_edu >"$d/driver_override" || fail "driver_override of $a"
		echo "$a" >/sys/bus/pci/drivers_probe
		case "$(readlink "$d/driver")" in */vfio_mig_edu) ;; *) fail "$a ($VM_EDU_ID) did not bind to vfio_mig_edu" ;; esac
		edu="${edu:+$edu }$a"
	done
	if [ -n "$edu" ]; then
		echo "export VFIO_MIG_EDU='$edu'" >>"$ENV"
		say "info edu $edu"
	fi
fi

# Shortly before the runner's timeout, report what every process is doing
# (state, wchan, kernel stacks of each thread, sysrq-w): a hang then says where.
hang_report() {
	{
		echo "@@vm hang-report begin (uptime $(cut -d' ' -f1 /proc/uptime) s)"
		for p in /proc/[0-9]*; do
			cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null | cut -c1-240)
			[ -n "$cmd" ] || continue # kernel thread
			echo "pid ${p#/proc/} [$(sed -n 's/^State:[[:space:]]*//p' "$p/status")] wchan=$(cat "$p/wchan" 2>/dev/null): $cmd"
		done
		for p in /proc/[0-9]*; do
			[ -n "$(tr -d '\0' <"$p/cmdline" 2>/dev/null | head -c 1)" ] || continue
			case "$(cat "$p/comm")" in init|sh|dash|bash|sleep|busybox|chroot|setsid) continue ;; esac
			for t in "$p"/task/*; do
				echo "-- pid ${p#/proc/} task ${t##*/} ($(cat "$t/comm")) [$(sed -n 's/^State:[[:space:]]*//p' "$t/status")]"
				sed 's/^/     /' "$t/stack" 2>/dev/null
			done
		done
		echo w >/proc/sysrq-trigger
		sleep 1
		echo "@@vm hang-report end"
	} >/dev/ttyS1 2>&1
}
WATCHDOG=
if [ "${VM_DUMP_AT:-0}" -gt 0 ]; then
	(
		up=$(cut -d. -f1 /proc/uptime)
		[ "$VM_DUMP_AT" -gt "$up" ] && sleep $((VM_DUMP_AT - up))
		hang_report
	) </dev/null >/dev/null 2>&1 &
	WATCHDOG=$!
fi

phase command
cd "$NEWROOT" || fail "no chroot"
if [ "$VM_INTERACTIVE" = 1 ]; then
	# a session with ttyS0 as controlling terminal: job control, ^C
	env -i /bin/setsid -c /bin/chroot "$NEWROOT" /bin/sh /run/vm/cmd.sh <>/dev/ttyS0 >&0 2>&0
else
	env -i /bin/chroot "$NEWROOT" /bin/sh /run/vm/cmd.sh </dev/null >/dev/ttyS0 2>&1
fi
status=$?
PHASE=shutdown
[ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
# wait until the command's output has left ttyS0 (a last close drains)
: >/dev/ttyS0
[ -n "$VM_OUT" ] && umount "$NEWROOT$VM_OUT" 2>/dev/null
power_off "$status"
