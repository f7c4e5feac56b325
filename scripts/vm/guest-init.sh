#!/bin/bash
# Second stage of the test VM: PID 1 on the overlay root (host / read-only + tmpfs).
# Prepares a node-like system (udev, dm, iSCSI, multipath prerequisites), runs the
# job written by scripts/vm-test.sh into the shared run folder ($vm_run/vm/job.sh)
# with its output on the second serial port, stores its exit code and powers off.
# The kernel console (ttyS0, a log file on the host) gets this script's messages.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TMPDIR=/tmp
umask 022

say() { local up; read -r up _ </proc/uptime 2>/dev/null; echo "[${up:-?}] vm: $*"; }

halt_now() {
    # The run folder is 9p without caching (written through) and the disks use
    # cache=unsafe on purpose: nothing else needs flushing.
    sync
    # -no-reboot makes QEMU exit here.
    echo b >/proc/sysrq-trigger
    sleep 10
}

# Leaving PID 1 would panic the kernel, which also ends the VM (panic=-1), but
# with a less clear message; every path ends in halt_now.
trap 'say "stage 2 failed"; halt_now' ERR

RUN=${vm_run:?no vm_run= on the kernel command line}

say "stage 2 started"

# shellcheck source=/dev/null
source "$RUN/vm/job.sh"

[[ -L /etc/mtab ]] || ln -sf ../proc/self/mounts /etc/mtab

# /etc is writable (tmpfs upper layer): give this node its own iSCSI identity.
mkdir -p /etc/iscsi /etc/multipath /var/lib/iscsi
echo "InitiatorName=$(iscsi-iname -p iqn.2024-01.io.multicsi.vm)" >/etc/iscsi/initiatorname.iscsi
for f in /etc/multipath/wwids /etc/multipath/bindings; do
    if [[ -e $f ]]; then rm -f "$f"; fi
done
if [[ ! -s /etc/machine-id ]]; then
    read -r id </proc/sys/kernel/random/uuid
    echo "${id//-/}" >/etc/machine-id
fi

udevd=
for f in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd /sbin/udevd; do
    if [[ -x $f ]]; then udevd=$f; break; fi
done
[[ -n $udevd ]] || { say "systemd-udevd not found"; false; }
"$udevd" --daemon
say "udevd started"
# The first stage loaded the storage modules (loop, dm_mod, dm_crypt,
# dm_multipath, scsi_dh_alua, iscsi_tcp, virtio_blk): coldplug the block
# devices and device-mapper only (a full coldplug costs seconds under TCG).
udevadm trigger --type=devices --action=add --subsystem-match=block
udevadm trigger --type=devices --action=add --subsystem-match=misc --sysname-match=device-mapper
udevadm settle --timeout=30 || say "udevadm settle timed out"
say "udev settled, starting the command"

trap - ERR
stty -F /dev/ttyS1 raw -echo 2>/dev/null || true
echo "$EPOCHREALTIME" >"$RUN/vm/started"   # its mtime is the host clock
rc=0
if cd -- "$VM_CWD"; then
    env -i PATH="$PATH" HOME=/root LANG=C.UTF-8 TERM=dumb TMPDIR=/tmp USER=root \
        MULTICSI_IN_VM=1 VM_RUN_DIR="$RUN" VM_DISKS="$VM_DISKS" \
        "${VM_ENV[@]}" "${VM_CMD[@]}" </dev/null >/dev/ttyS1 2>&1 || rc=$?
else
    echo "vm: cannot enter $VM_CWD" >/dev/ttyS1
    rc=125
fi
say "command exited with $rc"
echo "$rc" >"$RUN/vm/exit-code"   # read by the host once QEMU has exited
halt_now
