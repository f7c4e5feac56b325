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
    sync
    umount "$RUN" 2>/dev/null
    # -no-reboot makes QEMU exit here.
    echo b >/proc/sysrq-trigger
    sleep 10
}

# Leaving PID 1 would panic the kernel, which also ends the VM (panic=-1), but
# with a less clear message; every path ends in halt_now.
trap 'say "stage 2 failed"; halt_now' ERR

RUN=${vm_run:?no vm_run= on the kernel command line}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /run/lock/iscsi
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
modprobe -q configfs || true
mount -t configfs configfs /sys/kernel/config
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmrun "$RUN"
say "stage 2 mounts done"

# shellcheck source=/dev/null
source "$RUN/vm/job.sh"

hostname multicsi-vm
ip link set lo up
ip addr add 127.0.0.2/8 dev lo   # second iSCSI portal
ln -sf /proc/self/mounts /etc/mtab 2>/dev/null || true

modules=(loop dm_mod dm_crypt dm_multipath scsi_dh_alua iscsi_tcp)
[[ -z $VM_DISKS ]] || modules+=(virtio_blk)
modprobe -a "${modules[@]}"
say "modules loaded"

# /etc is writable (tmpfs upper layer): give this node its own iSCSI identity.
mkdir -p /etc/iscsi /etc/multipath /var/lib/iscsi
echo "InitiatorName=$(iscsi-iname -p iqn.2024-01.io.multicsi.vm)" >/etc/iscsi/initiatorname.iscsi
rm -f /etc/multipath/wwids /etc/multipath/bindings
[[ -e /etc/machine-id ]] || cat /proc/sys/kernel/random/uuid | tr -d - >/etc/machine-id

udevd=
for f in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd /sbin/udevd; do
    if [[ -x $f ]]; then udevd=$f; break; fi
done
[[ -n $udevd ]] || { say "systemd-udevd not found"; false; }
"$udevd" --daemon
say "udevd started"
# Only block devices: a full coldplug costs seconds under TCG.
udevadm trigger --type=devices --action=add --subsystem-match=block
udevadm trigger --type=devices --action=add --subsystem-match=misc --sysname-match=device-mapper
udevadm settle --timeout=30 || say "udevadm settle timed out"
say "coldplug done, starting the command"

trap - ERR
stty -F /dev/ttyS1 raw -echo 2>/dev/null || true
: >"$RUN/vm/started"
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
echo "$rc" >"$RUN/vm/exit-code.tmp" && mv "$RUN/vm/exit-code.tmp" "$RUN/vm/exit-code"
halt_now
