#!/bin/bash
# Self-test of the VM harness, run inside the guest by `scripts/vm-test.sh --self-test`.
# Exercises the kernel features the host lacks: LUKS2 on a loop device, dm-crypt
# resize, an iSCSI target and initiator with two portals, and a two-path multipath map.
# Prints `ok - NAME` / `not ok - NAME` per check and `N passed, M failed` at the end.
set -uo pipefail

if [[ ${MULTICSI_IN_VM:-} != 1 ]]; then
    echo "self-test.sh: run it with scripts/vm-test.sh --self-test" >&2
    exit 2
fi

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/vm/services.sh
source "$HERE/services.sh"

# shellcheck source=scripts/vm/check.sh
source "$HERE/check.sh"
CHECK_SHOWN_LINES=24
W=$(mktemp -d /tmp/selftest.XXXXXX)
LOG=$W/check.log

# Cheap key derivation: tests only, never a production default.
LUKS_OPTS=(--batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000)
KEY=$W/key
head -c 32 /dev/urandom >"$KEY"
IMG=$W/luks.img
MAP=vmtest-crypt
MNT=$W/mnt
mkdir -p "$MNT"
LOOP=

luks_format() {
    truncate -s 64M "$IMG"
    LOOP=$(losetup -f --show "$IMG") || return
    cryptsetup luksFormat "${LUKS_OPTS[@]}" --key-file "$KEY" "$LOOP" &&
        cryptsetup isLuks --type luks2 "$LOOP"
}
luks_open() { cryptsetup open --key-file "$KEY" "$LOOP" "$MAP" && [[ -b /dev/mapper/$MAP ]]; }
mkfs_mount_write() {
    mkfs.ext4 -q "/dev/mapper/$MAP" &&
        mount "/dev/mapper/$MAP" "$MNT" &&
        echo "multicsi $RANDOM" >"$MNT/hello" && cp "$MNT/hello" "$W/hello.expected" &&
        sync
}
luks_close() { umount "$MNT" && cryptsetup close "$MAP" && [[ ! -e /dev/mapper/$MAP ]]; }
luks_reopen_read() {
    cryptsetup open --key-file "$KEY" "$LOOP" "$MAP" &&
        mount "/dev/mapper/$MAP" "$MNT" &&
        cmp "$MNT/hello" "$W/hello.expected"
}
wrong_key_refused() {
    head -c 32 /dev/urandom >"$W/badkey"
    ! cryptsetup open --test-passphrase --key-file "$W/badkey" "$LOOP"
}
size_of() { blockdev --getsize64 "$1"; }
crypt_resize() {
    local before after fs_before fs_after
    before=$(size_of "/dev/mapper/$MAP") && fs_before=$(df -B1 --output=size "$MNT" | tail -n 1) || return
    truncate -s 128M "$IMG" &&
        losetup -c "$LOOP" &&
        cryptsetup resize --key-file "$KEY" "$MAP" &&
        resize2fs "/dev/mapper/$MAP" || return
    after=$(size_of "/dev/mapper/$MAP") && fs_after=$(df -B1 --output=size "$MNT" | tail -n 1) || return
    echo "device $before -> $after, filesystem $fs_before -> $fs_after"
    ((after == before + 64 * 1024 * 1024 && fs_after > fs_before)) &&
        cmp "$MNT/hello" "$W/hello.expected"
}
luks_teardown() { luks_close && losetup -d "$LOOP"; }
xfs_on_loop() {
    # mkfs.xfs wants at least 300 MB; its 64 MB log is cheap on tmpfs, slow over iSCSI.
    local img=$W/xfs.img loop
    truncate -s 320M "$img" && loop=$(losetup -f --show "$img") || return
    mkfs.xfs -q -f -K "$loop" && mount "$loop" "$MNT" &&
        echo xfs >"$MNT/f" && umount "$MNT" &&
        mount -o ro "$loop" "$MNT" && grep -qx xfs "$MNT/f" && umount "$MNT" &&
        losetup -d "$loop" && rm -f "$img"
}

check "luks2 format on a loop device" luks_format
check "luks2 open" luks_open
check "mkfs.ext4, mount, write on dm-crypt" mkfs_mount_write
check "umount and luks close" luks_close
check "luks reopen and read back" luks_reopen_read
check "wrong key refused" wrong_key_refused
check "dm-crypt online resize (losetup -c, cryptsetup resize, resize2fs)" crypt_resize
check "luks teardown" luks_teardown
check "mkfs.xfs, mount, write, read on a loop device" xfs_on_loop

IQN=iqn.2024-01.io.multicsi:selftest
LUN_IMG=$W/lun.img
MPATH=

target_setup() {
    start_iscsi_target || return
    truncate -s 512M "$LUN_IMG"  # mkfs.xfs wants at least 300 MB
    tgtadm --lld iscsi --op new --mode target --tid 1 -T "$IQN" &&
        tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$LUN_IMG" &&
        tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL
}
discover_login() {
    local p
    start_iscsid || return
    for p in 127.0.0.1 127.0.0.2; do
        iscsiadm -m discovery -t sendtargets -p "$p:3260" | grep -qF "$IQN" || return
        iscsiadm -m node -T "$IQN" -p "$p:3260" --login || return
    done
    udevadm settle
    [[ $(iscsiadm -m session | grep -cF "$IQN") == 2 ]]
}
scsi_disks() {
    ls /dev/disk/by-path/ | grep -E "ip-127\.0\.0\.[12]:3260-iscsi-$IQN-lun-1\$" | wc -l
}
two_disks() { _svc_wait 10 test "$(scsi_disks)" = 2; ls -l /dev/disk/by-path/ | grep -F "$IQN"; }
# The multipath map (dm device named mpath*) over exactly COUNT paths, from sysfs.
map_with_paths() {
    local count=$1 dm name slaves
    for dm in /sys/block/dm-*; do
        [[ -r $dm/dm/uuid && $(<"$dm/dm/uuid") == mpath-* ]] || continue
        name=$(<"$dm/dm/name")
        slaves=("$dm"/slaves/*)
        [[ -e ${slaves[0]} ]] || slaves=()
        if ((${#slaves[@]} == count)); then
            MPATH=$name
            return 0
        fi
    done
    return 1
}
active_paths() { # prints how many paths multipathd reports active
    local out n=0 line
    out=$(multipath -ll "$MPATH" 2>/dev/null)
    while IFS= read -r line; do
        [[ $line == *"active ready running"* ]] && n=$((n + 1))
    done <<<"$out"
    echo "$n"
}
two_active_paths() { [[ $(active_paths) == 2 ]]; }
multipath_map() {
    start_multipathd || return
    # multipathd builds the map itself (find_multipaths no).
    _svc_wait 20 map_with_paths 2 || { multipath -ll; return 1; }
    _svc_wait 20 two_active_paths || { multipath -ll; return 1; }
    multipath -ll "$MPATH"
    [[ -b /dev/mapper/$MPATH ]]
}
ext4_on_map() {
    mkfs.ext4 -q -E nodiscard "/dev/mapper/$MPATH" &&
        mount "/dev/mapper/$MPATH" "$MNT" &&
        echo "over two paths" >"$MNT/mp" && sync &&
        umount "$MNT" && mount "/dev/mapper/$MPATH" "$MNT" &&
        grep -qx "over two paths" "$MNT/mp" && umount "$MNT"
}
path_failover() {
    # Take one path away: I/O on the map must go on over the other.
    iscsiadm -m node -T "$IQN" -p 127.0.0.2:3260 --logout &&
        dd if="/dev/mapper/$MPATH" of=/dev/null bs=1M count=4 iflag=direct &&
        iscsiadm -m node -T "$IQN" -p 127.0.0.2:3260 --login &&
        _svc_wait 20 map_with_paths 2 &&
        _svc_wait 20 two_active_paths
}
flush_logout() {
    # udev may still hold the map open for a moment (blkid after a path change).
    udevadm settle
    _svc_wait 10 multipath -f "$MPATH" && [[ ! -e /dev/mapper/$MPATH ]] &&
        iscsiadm -m node -T "$IQN" --logout || return
    local rc=0
    iscsiadm -m session >/dev/null 2>&1 || rc=$?
    ((rc == 21))  # no active sessions
}

check "tgt target with one LUN on loopback" target_setup
check "iscsi discovery and login on 127.0.0.1 and 127.0.0.2" discover_login
check "two scsi disks for the LUN" two_disks
check "multipath map with two active paths" multipath_map
check "mkfs.ext4, mount, write, read on the multipath map" ext4_on_map
check "multipath survives losing one path" path_failover
check "multipath -f and iscsi logout" flush_logout

stop_all
check_summary
