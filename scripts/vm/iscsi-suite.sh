#!/bin/bash
# The node's iSCSI + multipath code against a real target, inside the VM of
# scripts/vm-test.sh: a tgt target with one LUN behind two portals (127.0.0.1
# and 127.0.0.2), driven through `multicsi iscsi attach|detach` (the code the
# Packet node backend calls). Needs MULTICSI_BIN (the multicsi binary built on
# the host), passed in with VM_PASS_ENV=MULTICSI_BIN.
#
#   MULTICSI_BIN=target/debug/multicsi VM_PASS_ENV=MULTICSI_BIN \
#       scripts/vm-test.sh -- bash scripts/vm/iscsi-suite.sh
#
# Prints `ok - NAME` / `not ok - NAME` per check and `N passed, M failed`.
set -uo pipefail

if [[ ${MULTICSI_IN_VM:-} != 1 ]]; then
    echo "iscsi-suite.sh: needs the VM; run it with scripts/vm-test.sh -- bash scripts/vm/iscsi-suite.sh" >&2
    exit 2
fi
BIN=${MULTICSI_BIN:?set MULTICSI_BIN to the multicsi binary and pass it with VM_PASS_ENV=MULTICSI_BIN}
[[ -x $BIN ]] || { echo "iscsi-suite.sh: $BIN is not executable" >&2; exit 2; }

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/vm/services.sh
source "$HERE/services.sh"

# shellcheck source=scripts/vm/check.sh
source "$HERE/check.sh"
W=$(mktemp -d /tmp/iscsi-suite.XXXXXX)
LOG=$W/check.log

IQN=iqn.2024-01.io.multicsi:suite
NODE_IQN=iqn.2024-01.io.multicsi:node-1
ALIAS=volume-b7f8e13c
LUN=1
VOLUME=(--target-iqn "$IQN" --portal 127.0.0.1:3260 --portal 127.0.0.2:3260
        --lun "$LUN" --alias "$ALIAS" --initiator-iqn "$NODE_IQN" --timeout 60)

attach() { "$BIN" iscsi attach "${VOLUME[@]}" "$@"; }
detach() { "$BIN" iscsi detach "${VOLUME[@]}" "$@"; }

sessions() { # how many sessions to the target
    local out
    out=$(iscsiadm -m session 2>/dev/null) || { echo 0; return; }
    grep -cF " $IQN " <<<"$out"
}
active_paths() { # active paths of the map, as multipath -ll reports them
    multipath -ll "$ALIAS" 2>/dev/null | grep -c "active ready running"
}
two_active_paths() { [[ $(active_paths) == 2 ]]; }
map_wwid_matches_disks() { # the map's dm uuid is mpath-<ID_SERIAL of each path>
    local dm uuid slave serial n=0
    dm=$(basename "$(readlink -f "/dev/mapper/$ALIAS")")
    uuid=$(<"/sys/block/$dm/dm/uuid")
    for slave in /sys/block/"$dm"/slaves/*; do
        serial=$(udevadm info --query=property --name="/dev/$(basename "$slave")" | sed -n 's/^ID_SERIAL=//p')
        echo "$dm $uuid <- $(basename "$slave") $serial"
        [[ $uuid == "mpath-$serial" ]] || return 1
        n=$((n + 1))
    done
    ((n == 2))
}

target_setup() {
    start_iscsi_target || return
    truncate -s 64M "$W/lun.img"
    tgtadm --lld iscsi --op new --mode target --tid 1 -T "$IQN" &&
        tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun "$LUN" -b "$W/lun.img" &&
        tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL &&
        start_multipathd
}

without_iscsid_fails_clearly() {
    local out rc=0
    out=$(attach 2>&1) || rc=$?
    echo "exit $rc: $out"
    ((rc != 0)) && [[ $out == *iscsid* ]] &&
        grep -qx "InitiatorName=$NODE_IQN" /etc/iscsi/initiatorname.iscsi &&
        [[ $(sessions) == 0 && ! -e /dev/mapper/$ALIAS ]]
}

first_attach() {
    start_iscsid || return
    local device
    device=$(attach) || return
    echo "device: $device"
    multipath -ll "$ALIAS"
    [[ $device == "/dev/mapper/$ALIAS" && -b $device ]] &&
        [[ $(sessions) == 2 ]] &&
        _svc_wait 20 two_active_paths &&
        map_wwid_matches_disks
}

initiator_name_used() {
    tgtadm --lld iscsi --op show --mode target | grep -F "Initiator:" | tee "$W/initiators"
    [[ $(grep -cF "Initiator: $NODE_IQN " "$W/initiators") == 2 ]]
}

data_through_the_map() {
    head -c 1M /dev/urandom >"$W/data"
    dd if="$W/data" of="/dev/mapper/$ALIAS" bs=1M oflag=direct status=none &&
        cmp -n 1048576 "$W/data" "/dev/mapper/$ALIAS"
}

attach_again_is_idempotent() {
    local device maps
    device=$(attach) || return
    maps=$(dmsetup ls --target multipath | grep -c .)
    echo "device: $device, multipath maps: $maps, sessions: $(sessions)"
    [[ $device == "/dev/mapper/$ALIAS" && $(sessions) == 2 && $maps == 1 ]] &&
        cmp -n 1048576 "$W/data" "/dev/mapper/$ALIAS"
}

restart_finds_the_map() {
    # iscsid and multipathd restart, as after a node-plugin upgrade: the
    # sessions and the map stay, and attach finds them.
    pkill -x multipathd; pkill -x iscsid
    _svc_wait 10 bash -c '! pgrep -x multipathd && ! pgrep -x iscsid'
    start_iscsid && start_multipathd || return
    attach_again_is_idempotent
}

foreign_map_is_refused() {
    # Another volume's device under the alias: never used.
    local out rc=0 other=volume-0badc0de
    dmsetup create "$other" --table "0 8192 zero" || return
    out=$("$BIN" iscsi attach --target-iqn "$IQN" --portal 127.0.0.1:3260 --portal 127.0.0.2:3260 \
        --lun "$LUN" --alias "$other" --initiator-iqn "$NODE_IQN" --timeout 20 2>&1) || rc=$?
    echo "exit $rc: $out"
    dmsetup remove "$other" || return
    ((rc != 0)) && [[ $out == *"is not the multipath map of WWID"* ]]
}

detach_leaves_nothing() {
    detach || return
    local rc=0
    iscsiadm -m session >/dev/null 2>&1 || rc=$?
    echo "iscsiadm -m session: $rc, maps: $(dmsetup ls --target multipath)"
    ((rc == 21)) && [[ ! -e /dev/mapper/$ALIAS ]] &&
        [[ -z $(dmsetup ls --target multipath | grep -v 'No devices found') ]] &&
        [[ ! -e /etc/multipath/conf.d/multicsi-$ALIAS.conf ]]
}

detach_again_is_ok() { detach && [[ $(sessions) == 0 ]]; }

doctor_says_ready() {
    # A Packet node as doctor sees it: iscsid and multipathd up, dm-crypt
    # there, a shared kubelet directory, a metadata service that answers.
    local rc=0 http
    mkdir -p "$W/kubelet" "$W/plugin" &&
        mount --bind "$W/kubelet" "$W/kubelet" && mount --make-shared "$W/kubelet" || return
    python3 -m http.server --bind 127.0.0.1 8775 --directory "$W/plugin" >/dev/null 2>&1 &
    http=$!
    _svc_wait 20 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8775'
    PACKET_METADATA_URL=http://127.0.0.1:8775 "$BIN" doctor --backend packet \
        --endpoint "unix://$W/plugin/csi.sock" --kubelet-dir "$W/kubelet" || rc=$?
    kill "$http"
    umount "$W/kubelet"
    ((rc == 0))
}

reattach_after_detach() {
    local device
    device=$(attach) && [[ $device == "/dev/mapper/$ALIAS" ]] &&
        cmp -n 1048576 "$W/data" "/dev/mapper/$ALIAS" && detach &&
        [[ $(sessions) == 0 && ! -e /dev/mapper/$ALIAS ]]
}

check "tgt target with one LUN on 127.0.0.1 and 127.0.0.2, multipathd" target_setup
check "attach without iscsid fails naming iscsid, initiator name written" without_iscsid_fails_clearly
check "attach: login on both portals, map $ALIAS with two active paths, WWID checked" first_attach
check "the target sees the initiator name from the volume" initiator_name_used
check "multicsi doctor --backend packet: ready" doctor_says_ready
check "data written through the map reads back" data_through_the_map
check "attach again: same map, two sessions, one map" attach_again_is_idempotent
check "iscsid and multipathd restarted: attach finds the existing map" restart_finds_the_map
check "a device-mapper device of something else under the alias is refused" foreign_map_is_refused
check "detach: multipath -f and logout leave no session, map or config" detach_leaves_nothing
check "detach again is OK" detach_again_is_ok
check "attach after detach finds the data, detach again" reattach_after_detach

stop_all
check_summary
