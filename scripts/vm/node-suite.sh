#!/bin/bash
# Node suite, run inside the VM (scripts/test.sh does it through
# scripts/vm-test.sh): starts the real multicsi binary on a private socket and
# state directory (hostpath backend: loop devices) and drives it with
# `multicsi client`, the way kubelet does. LUKS2 and LUKS1 volumes, wrong and
# missing keys, stale mappings, online expansion through LUKS, raw block with
# LUKS, ext4 and xfs, restage after the driver is killed, and that the key
# shows up in no log, command line or file.
#
#   VM_PASS_ENV=MULTICSI_BIN MULTICSI_BIN=target/debug/multicsi \
#       scripts/vm-test.sh -- bash scripts/vm/node-suite.sh
#
# Prints `ok - NAME` / `not ok - NAME` per check (failures followed by the
# output as `#` lines) and `N passed, M failed`; exits non-zero on a failure.
# To add a check: write a function that returns non-zero on failure and call
# `check "what it proves" function`.
set -uo pipefail

if [[ ${MULTICSI_IN_VM:-} != 1 ]]; then
    echo "node-suite.sh: run it inside the VM: scripts/vm-test.sh -- bash scripts/vm/node-suite.sh" >&2
    exit 2
fi
BIN=${MULTICSI_BIN:-}
if [[ ! -x $BIN ]]; then
    echo "node-suite.sh: set MULTICSI_BIN to the built multicsi binary (and pass it with VM_PASS_ENV=MULTICSI_BIN)" >&2
    exit 2
fi

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/vm/check.sh
source "$HERE/check.sh"
W=$(mktemp -d /tmp/node-suite.XXXXXX)
OUT=${VM_RUN_DIR:-$W}
LOG=$W/check.log
SOCK=$W/csi.sock
STATE=$W/state
DRIVER_LOG=$OUT/driver.log
NODE=vm-node
DRIVER_PID=

# The volumes' key, handed to the client in a file (never on a command line).
KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
KEYFILE=$W/luks-key
WRONG_KEYFILE=$W/wrong-key
(umask 077 && printf %s "$KEY" >"$KEYFILE" && printf 'not-the-key-%s' "$RANDOM" >"$WRONG_KEYFILE")

# fail MESSAGE: print it and return 1 (for `cond || fail "..."`).
fail() {
    echo "FAIL: $*"
    return 1
}

cli() { "$BIN" client --endpoint "unix://$SOCK" --timeout 120 "$@"; }

# expect_error CODE COMMAND...: the client call must fail with gRPC CODE.
expect_error() {
    local code=$1 out
    shift
    if out=$("$@" 2>&1); then
        echo "$out"
        fail "expected $code, the call succeeded"
        return 1
    fi
    echo "$out"
    grep -q "error: $code:" <<<"$out" || { fail "expected $code"; return 1; }
}

# Cheap key derivation for the suite; the defaults are checked separately.
start_driver() {
    MULTICSI_LUKS_PBKDF_MEMORY_KIB=16384 MULTICSI_LUKS_PBKDF_ITERATIONS=4 \
        "$BIN" serve --endpoint "unix://$SOCK" --node-id "$NODE" --state-dir "$STATE" --kubelet-dir "$W" \
        --log-format json --log-level debug >>"$DRIVER_LOG" 2>&1 &
    DRIVER_PID=$!
    local i
    for i in $(seq 150); do
        cli identity probe >/dev/null 2>&1 && return 0
        kill -0 "$DRIVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 20 "$DRIVER_LOG"
    fail "the driver did not answer on $SOCK"
}

stop_driver() {
    [[ -n $DRIVER_PID ]] || return 0
    kill -TERM "$DRIVER_PID" 2>/dev/null
    wait "$DRIVER_PID" 2>/dev/null
    DRIVER_PID=
}

# --- volumes ----------------------------------------------------------------
# Each volume NAME has its ID in ID_NAME and its access in ACCESS_NAME.

# new_volume NAME SIZE ACCESS [create args...]: CreateVolume and
# ControllerPublishVolume. Thin: the state lives in the VM's memory (tmpfs),
# and a thick volume would take all of its size there.
new_volume() {
    local name=$1 size=$2 access=$3 json id
    shift 3
    json=$(cli --json controller create "$name" --size "$size" $access \
        --param multicsi.io/provisioning=thin "$@") || return
    echo "$json"
    id=$(jq -r .volume_id <<<"$json")
    jq -r '.volume_context | to_entries[] | "--context", "\(.key)=\(.value)"' <<<"$json" >"$W/$name.context"
    printf -v "ID_$name" %s "$id"
    printf -v "ACCESS_$name" %s "$access"
    cli controller publish "$id" --node "$NODE" $access
}

vol_id() { local v="ID_$1"; echo "${!v}"; }
vol_access() { local v="ACCESS_$1"; echo "${!v}"; }
staging() { echo "$W/$1.staging"; }
target() { echo "$W/$1.target"; }
image() { echo "$STATE/volumes/$(vol_id "$1").img"; }
mapping() { echo "/dev/mapper/luks-$(vol_id "$1")"; }

# The volume context CreateVolume returned, as client arguments.
context_args() { cat "$W/$1.context"; }

# stage NAME [KEYFILE]: NodeStageVolume with the volume's context and, when
# given, the key file as the node-stage secret's luksKey.
stage() {
    local name=$1 keyfile=${2:-} ctx secret=()
    mapfile -t ctx < <(context_args "$name")
    [[ -n $keyfile ]] && secret=(--secret-file "luksKey=$keyfile")
    mkdir -p "$(staging "$name")"
    # shellcheck disable=SC2046 # the access is two words: --fs ext4
    cli node stage "$(vol_id "$name")" --staging "$(staging "$name")" $(vol_access "$name") \
        "${ctx[@]}" "${secret[@]}"
}
unstage() { cli node unstage "$(vol_id "$1")" --staging "$(staging "$1")"; }
publish() {
    local name=$1 ctx
    mapfile -t ctx < <(context_args "$name")
    # shellcheck disable=SC2046 # the access is two words: --fs ext4
    cli node publish "$(vol_id "$name")" --staging "$(staging "$name")" --target "$(target "$name")" \
        $(vol_access "$name") "${ctx[@]}"
}
unpublish() { cli node unpublish "$(vol_id "$1")" --target "$(target "$1")"; }
remove_volume() {
    local id
    id=$(vol_id "$1")
    cli controller unpublish "$id" --node "$NODE" && cli controller delete "$id"
}

# The loop device of a volume's image.
loop_of() { losetup -j "$(image "$1")" -O NAME -n | head -n 1; }
# major:minor of the device under a device-mapper device.
backing_of() { cat /sys/dev/block/"$(stat -Lc '%t:%T' "$1" | numbers)"/slaves/*/dev; }
numbers() { IFS=: read -r ma mi && echo "$((16#$ma)):$((16#$mi))"; }
dev_numbers() { stat -Lc '%t:%T' "$1" | numbers; }
mounted_source() { findmnt -rn -o MAJ:MIN --mountpoint "$1"; }

# --- checks -----------------------------------------------------------------

driver_starts() {
    start_driver && cli node info
}

luks2_format_open_mount() {
    new_volume enc 256Mi "--fs ext4" --param multicsi.io/luks-encrypted=true || return
    stage enc "$KEYFILE" || return
    local loop map
    loop=$(loop_of enc) && map=$(mapping enc)
    [[ -b $map ]] || { fail "no mapping $map"; return 1; }
    cryptsetup isLuks --type luks2 "$loop" || { fail "$loop holds no LUKS2 header"; return 1; }
    [[ $(backing_of "$map") == $(dev_numbers "$loop") ]] || { fail "$map is not over $loop"; return 1; }
    [[ $(mounted_source "$(staging enc)") == $(dev_numbers "$map") ]] ||
        { fail "the staging path does not mount the mapping"; return 1; }
    publish enc && echo "secret data $RANDOM" >"$(target enc)/data" && sync &&
        cp "$(target enc)/data" "$W/enc.expected"
}

luks2_header_settings() {
    local dump
    dump=$(cryptsetup luksDump "$(loop_of enc)") || return
    echo "$dump"
    grep -q "cipher: aes-xts-plain64" <<<"$dump" || { fail "cipher"; return 1; }
    grep -Eq "Cipher key:[[:space:]]+512 bits" <<<"$dump" || { fail "key size"; return 1; }
    grep -Eq "PBKDF:[[:space:]]+argon2id" <<<"$dump" || { fail "pbkdf"; return 1; }
    grep -Eq "Memory:[[:space:]]+16384" <<<"$dump" || { fail "memory cost not the configured 16384 KiB"; return 1; }
    grep -Eq "Time cost:[[:space:]]+4" <<<"$dump" || { fail "time cost not the configured 4"; return 1; }
}

plaintext_not_on_disk() {
    # The data written through the mapping must not be readable on the image.
    ! grep -aq "secret data" "$(image enc)" || { fail "plaintext found on the backing image"; return 1; }
}

luks2_close_and_reopen() {
    unpublish enc && unstage enc || return
    [[ ! -e $(mapping enc) ]] || { fail "the mapping is still open after NodeUnstage"; return 1; }
    unstage enc || { fail "a repeated NodeUnstage failed"; return 1; }
    stage enc "$KEYFILE" && stage enc "$KEYFILE" || return
    publish enc && cmp "$(target enc)/data" "$W/enc.expected"
}

wrong_key_is_refused() {
    unpublish enc && unstage enc || return
    local uuid
    uuid=$(cryptsetup luksUUID "$(image enc)") || return
    expect_error InvalidArgument stage enc "$WRONG_KEYFILE" || return
    [[ ! -e $(mapping enc) ]] || { fail "a mapping was opened with the wrong key"; return 1; }
    [[ $(cryptsetup luksUUID "$(image enc)") == "$uuid" ]] || { fail "the header changed"; return 1; }
    stage enc "$KEYFILE" && publish enc && cmp "$(target enc)/data" "$W/enc.expected"
}

missing_key_is_refused() {
    unpublish enc && unstage enc || return
    expect_error InvalidArgument stage enc || return
    grep -q luksKey "$LOG" || { fail "the error does not name luksKey"; return 1; }
    [[ -z $(loop_of enc) ]] || { fail "a loop device was attached for a request without key"; return 1; }
    stage enc "$KEYFILE" && publish enc
}

luks_online_expansion() {
    local map before fs_before after fs_after
    map=$(mapping enc)
    before=$(blockdev --getsize64 "$map") && fs_before=$(df -B1 --output=size "$(target enc)" | tail -n 1) || return
    cli controller expand "$(vol_id enc)" --size 512Mi --fs ext4 &&
        cli node expand "$(vol_id enc)" --path "$(target enc)" --staging "$(staging enc)" --size 512Mi --fs ext4 || return
    after=$(blockdev --getsize64 "$map") && fs_after=$(df -B1 --output=size "$(target enc)" | tail -n 1) || return
    echo "mapping $before -> $after, filesystem $fs_before -> $fs_after"
    ((after >= before + 200 * 1024 * 1024)) || { fail "the mapping did not grow"; return 1; }
    ((fs_after >= fs_before + 200 * 1024 * 1024)) || { fail "the filesystem did not grow"; return 1; }
    cmp "$(target enc)/data" "$W/enc.expected"
}

stats_on_the_mapping() {
    local json
    json=$(cli --json node stats "$(vol_id enc)" --path "$(target enc)") || return
    echo "$json"
    [[ $(jq -r .volume_condition.abnormal <<<"$json") == false ]] || { fail "reported abnormal"; return 1; }
    (($(jq '.usage[0].total' <<<"$json") > 400 * 1024 * 1024)) ||
        { fail "the size is not the grown filesystem's"; return 1; }
}

restage_after_kill() {
    local map_before
    map_before=$(dev_numbers "$(mapping enc)") || return
    kill -KILL "$DRIVER_PID" && wait "$DRIVER_PID" 2>/dev/null
    DRIVER_PID=
    start_driver || return
    stage enc "$KEYFILE" && publish enc || return
    [[ $(dev_numbers "$(mapping enc)") == "$map_before" ]] || { fail "the mapping was replaced"; return 1; }
    (($(findmnt -n --mountpoint "$(staging enc)" | wc -l) == 1)) || { fail "mounts stacked"; return 1; }
    cmp "$(target enc)/data" "$W/enc.expected" &&
        unpublish enc && unstage enc && [[ ! -e $(mapping enc) ]] && remove_volume enc
}

luks1_volume_opens() {
    new_volume old 128Mi "--fs ext4" --param csi.cloudscale.ch/luks-encrypted=true || return
    # Made the way csi-cloudscale makes them: cryptsetup, LUKS1.
    cryptsetup luksFormat --batch-mode --type luks1 --pbkdf-force-iterations 1000 \
        --key-file "$KEYFILE" "$(image old)" || return
    stage old "$KEYFILE" && publish old || return
    cryptsetup isLuks --type luks1 "$(loop_of old)" || { fail "the LUKS1 header was replaced"; return 1; }
    echo luks1 >"$(target old)/data" && unpublish old && unstage old || return
    stage old "$KEYFILE" && publish old && grep -qx luks1 "$(target old)/data" &&
        unpublish old && unstage old && remove_volume old
}

raw_block_luks() {
    new_volume raw 64Mi --block --param multicsi.io/luks-encrypted=true || return
    stage raw "$KEYFILE" && publish raw || return
    local dev
    dev=$(target raw)
    [[ -b $dev ]] || { fail "the target is not a block device"; return 1; }
    [[ $(dev_numbers "$dev") == $(dev_numbers "$(mapping raw)") ]] || { fail "published the raw device, not the mapping"; return 1; }
    printf 'raw block through luks %05d' "$RANDOM" >"$W/raw.expected"
    dd if="$W/raw.expected" of="$dev" bs=4096 conv=sync,fsync status=none || return
    ! grep -aq "raw block through luks" "$(image raw)" || { fail "plaintext on the image"; return 1; }
    unpublish raw && unstage raw && [[ ! -e $(mapping raw) ]] || return
    stage raw "$KEYFILE" && publish raw || return
    cmp -n 28 "$(target raw)" "$W/raw.expected" || return
    # Expansion of a raw block volume grows the mapping the pod sees.
    local before after
    before=$(blockdev --getsize64 "$(mapping raw)") &&
        cli controller expand "$(vol_id raw)" --size 128Mi --block &&
        cli node expand "$(vol_id raw)" --path "$(target raw)" --size 128Mi --block &&
        after=$(blockdev --getsize64 "$(mapping raw)") || return
    echo "mapping $before -> $after"
    ((after == before + 64 * 1024 * 1024)) || { fail "the mapping did not grow by 64 MiB"; return 1; }
    cmp -n 28 "$(target raw)" "$W/raw.expected" && unpublish raw && unstage raw && remove_volume raw
}

xfs_luks_cycle() {
    new_volume encxfs 400Mi "--fs xfs" --param multicsi.io/luks-encrypted=true \
        --param multicsi.io/luks-key-size=256 || return
    stage encxfs "$KEYFILE" && publish encxfs || return
    [[ $(findmnt -rn -o FSTYPE --mountpoint "$(staging encxfs)") == xfs ]] || { fail "not xfs"; return 1; }
    cryptsetup luksDump "$(loop_of encxfs)" | grep -Eq "Cipher key:[[:space:]]+256 bits" || { fail "key size 256 not used"; return 1; }
    echo xfs >"$(target encxfs)/data" && sync || return
    cli controller expand "$(vol_id encxfs)" --size 600Mi --fs xfs &&
        cli node expand "$(vol_id encxfs)" --path "$(target encxfs)" --size 600Mi --fs xfs || return
    (($(df -B1 --output=size "$(target encxfs)" | tail -n 1) > 500 * 1024 * 1024)) || { fail "xfs did not grow"; return 1; }
    unpublish encxfs && unstage encxfs && remove_volume encxfs
}

plain_ext4_and_xfs() {
    local fs
    for fs in ext4 xfs; do
        new_volume "plain$fs" 320Mi "--fs $fs" --param multicsi.io/mkfs-block-size=4096 || return
        stage "plain$fs" && publish "plain$fs" || return
        [[ $(findmnt -rn -o FSTYPE --mountpoint "$(staging "plain$fs")") == "$fs" ]] || { fail "not $fs"; return 1; }
        [[ $(mounted_source "$(staging "plain$fs")") == $(dev_numbers "$(loop_of "plain$fs")") ]] ||
            { fail "$fs: not mounted from the loop device"; return 1; }
        echo "$fs" >"$(target "plain$fs")/data" && sync || return
        local before
        before=$(df -B1 --output=size "$(target "plain$fs")" | tail -n 1)
        cli controller expand "$(vol_id "plain$fs")" --size 400Mi --fs "$fs" &&
            cli node expand "$(vol_id "plain$fs")" --path "$(target "plain$fs")" --size 400Mi --fs "$fs" || return
        (($(df -B1 --output=size "$(target "plain$fs")" | tail -n 1) >= before + 60 * 1024 * 1024)) ||
            { fail "$fs did not grow by the 80 MiB added"; return 1; }
        unpublish "plain$fs" && unstage "plain$fs" && stage "plain$fs" && publish "plain$fs" &&
            grep -qx "$fs" "$(target "plain$fs")/data" &&
            unpublish "plain$fs" && unstage "plain$fs" && remove_volume "plain$fs" || return
    done
}

cut_off_format_is_redone() {
    # A LUKS header with the driver's format marker still present was cut
    # off while being written: formatted again, then opened with the key.
    new_volume cut 64Mi "--fs ext4" --param multicsi.io/luks-encrypted=true || return
    cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file "$WRONG_KEYFILE" "$(image cut)" || return
    local uuid
    uuid=$(cryptsetup luksUUID "$(image cut)") || return
    mkdir -p "$STATE/node" && touch "$STATE/node/$(vol_id cut).luks-format" || return
    stage cut "$KEYFILE" || return
    [[ $(cryptsetup luksUUID "$(image cut)") != "$uuid" ]] || { fail "the cut-off header was kept"; return 1; }
    [[ ! -e $STATE/node/$(vol_id cut).luks-format ]] || { fail "the marker is still there"; return 1; }
    unstage cut && remove_volume cut
}

no_luks_over_a_filesystem() {
    # A volume that already holds a filesystem is not encrypted over it.
    new_volume used 64Mi "--fs ext4" --param multicsi.io/luks-encrypted=true || return
    mkfs.ext4 -q -F "$(image used)" || return
    expect_error FailedPrecondition stage used "$KEYFILE" || return
    grep -q "ext4 filesystem" "$LOG" || { fail "the error does not say what the device holds"; return 1; }
    [[ $(blkid -p -o value -s TYPE "$(image used)") == ext4 ]] || { fail "the filesystem was overwritten"; return 1; }
    unstage used && remove_volume used
}

no_filesystem_over_a_partition_table_or_luks() {
    # A plain volume whose device holds a partition table or a LUKS header
    # is neither formatted nor mounted.
    new_volume sig 64Mi "--fs ext4" || return
    echo 'label: gpt' | sfdisk -q "$(image sig)" || return
    expect_error FailedPrecondition stage sig || return
    [[ $(blkid -p -o value -s PTTYPE "$(image sig)") == gpt ]] || { fail "the partition table was overwritten"; return 1; }
    unstage sig && wipefs -q -a "$(image sig)" || return
    cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file "$KEYFILE" "$(image sig)" || return
    expect_error FailedPrecondition stage sig || return
    cryptsetup isLuks "$(image sig)" || { fail "the LUKS header was overwritten"; return 1; }
    unstage sig && remove_volume sig
}

failed_encrypted_stage_leaves_nothing() {
    # A stage that fails after the LUKS format and open (a mount option ext4
    # refuses) closes the mapping and detaches the loop device it made.
    new_volume undo 64Mi "--fs ext4" --param multicsi.io/luks-encrypted=true || return
    local ctx
    mapfile -t ctx < <(context_args undo)
    mkdir -p "$(staging undo)"
    expect_error InvalidArgument cli node stage "$(vol_id undo)" --staging "$(staging undo)" \
        --fs ext4 --mount-flag no_such_ext4_option "${ctx[@]}" --secret-file "luksKey=$KEYFILE" || return
    [[ ! -e $(mapping undo) ]] || { fail "the mapping of the failed stage is still open"; return 1; }
    [[ -z $(loop_of undo) ]] || { fail "the loop device of the failed stage is still attached"; return 1; }
    cryptsetup isLuks "$(image undo)" || { fail "no LUKS header was written"; return 1; }
    remove_volume undo
}

encrypted_block_data_is_never_formatted() {
    # An encrypted volume written as raw block reads as noise through its
    # mapping either way: its ciphertext below tells data from blank, and
    # a filesystem stage is refused, the data kept.
    new_volume rawdata 64Mi --block --param multicsi.io/luks-encrypted=true || return
    stage rawdata "$KEYFILE" && publish rawdata || return
    printf 'raw data to keep %05d' "$RANDOM" >"$W/rawdata.expected"
    dd if="$W/rawdata.expected" of="$(target rawdata)" bs=4096 conv=sync,fsync status=none || return
    unpublish rawdata && unstage rawdata || return
    local ctx
    mapfile -t ctx < <(context_args rawdata)
    mkdir -p "$(staging rawdata)"
    expect_error FailedPrecondition cli node stage "$(vol_id rawdata)" --staging "$(staging rawdata)" \
        --fs ext4 "${ctx[@]}" --secret-file "luksKey=$KEYFILE" || return
    [[ ! -e $(mapping rawdata) && -z $(loop_of rawdata) ]] || { fail "the refused stage left a mapping or loop device"; return 1; }
    stage rawdata "$KEYFILE" && publish rawdata && cmp -n 22 "$(target rawdata)" "$W/rawdata.expected" &&
        unpublish rawdata && unstage rawdata && remove_volume rawdata
}

stale_mapping_is_replaced_or_refused() {
    new_volume stale 64Mi "--fs ext4" --param multicsi.io/luks-encrypted=true || return
    # Another device opened under the volume's mapping name.
    local other=$W/other.img loop map
    truncate -s 32M "$other" && loop=$(losetup -f --show "$other") || return
    cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file "$KEYFILE" "$loop" || return
    map=$(mapping stale)
    cryptsetup open --key-file "$KEYFILE" "$loop" "${map#/dev/mapper/}" || return
    mkfs.ext4 -q "$map" && mkdir -p "$W/busy" && mount "$map" "$W/busy" || return
    # In use: refused, left alone.
    expect_error FailedPrecondition stage stale "$KEYFILE" || return
    [[ $(backing_of "$map") == $(dev_numbers "$loop") ]] || { fail "the busy mapping was touched"; return 1; }
    # Unused: replaced by the volume's own.
    umount "$W/busy" && stage stale "$KEYFILE" || return
    [[ $(backing_of "$map") == $(dev_numbers "$(loop_of stale)") ]] || { fail "the stale mapping was reused"; return 1; }
    unstage stale && remove_volume stale && losetup -d "$loop"
}

# --- LUKS key lifecycle: per-volume keys, rotation, adoption ---------------

# A master secret, and a second one to rotate to.
MASTER=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
MASTER2=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
MASTERFILE=$W/luks-master
MASTER2FILE=$W/luks-master-2
(umask 077 && printf %s "$MASTER" >"$MASTERFILE" && printf %s "$MASTER2" >"$MASTER2FILE")

# derived_keyfile MASTERFILE NAME: writes the passphrase the driver derives
# for volume NAME (HKDF-SHA256, salt multicsi.io/luks-volume-passphrase/v1,
# info the volume ID, 32 bytes as hex), computed here independently, to a
# file and prints its path.
derived_keyfile() {
    local file=$W/derived-$2
    (umask 077 && python3 -c '
import hashlib, hmac, sys
master = open(sys.argv[1], "rb").read()
prk = hmac.new(b"multicsi.io/luks-volume-passphrase/v1", master, hashlib.sha256).digest()
okm = hmac.new(prk, sys.argv[2].encode() + b"\x01", hashlib.sha256).digest()
sys.stdout.write(okm.hex())
' "$1" "$(vol_id "$2")" >"$file") && echo "$file"
}

# opens_with DEVICE KEYFILE: the key opens a key slot of the header.
opens_with() { cryptsetup open --test-passphrase --key-file "$2" "$1" 2>/dev/null; }
# keyslots DEVICE: how many key slots are in use.
keyslots() { cryptsetup luksDump "$1" | grep -cE '^(  [0-9]+: luks2|Key Slot [0-9]+: ENABLED)'; }

# stage_with NAME SECRET-ARGS...: NodeStageVolume with the given secret files.
stage_with() {
    local name=$1 ctx
    shift
    mapfile -t ctx < <(context_args "$name")
    mkdir -p "$(staging "$name")"
    # shellcheck disable=SC2046 # the access is two words: --fs ext4
    cli node stage "$(vol_id "$name")" --staging "$(staging "$name")" $(vol_access "$name") \
        "${ctx[@]}" "$@"
}

master_key_gives_each_volume_its_own_passphrase() {
    local v k1 k2
    for v in mk1 mk2; do
        new_volume "$v" 64Mi --block --param multicsi.io/luks-encrypted=true &&
            stage_with "$v" --secret-file "luksMasterKey=$MASTERFILE" || return
    done
    k1=$(derived_keyfile "$MASTERFILE" mk1) && k2=$(derived_keyfile "$MASTERFILE" mk2) || return
    opens_with "$(image mk1)" "$k1" || { fail "the derived passphrase does not open mk1"; return 1; }
    opens_with "$(image mk2)" "$k2" || { fail "the derived passphrase does not open mk2"; return 1; }
    ! opens_with "$(image mk2)" "$k1" || { fail "mk1's passphrase opens mk2"; return 1; }
    ! opens_with "$(image mk1)" "$MASTERFILE" || { fail "the master itself opens a volume"; return 1; }
    for v in mk1 mk2; do
        unstage "$v" && stage_with "$v" --secret-file "luksMasterKey=$MASTERFILE" &&
            unstage "$v" && remove_volume "$v" || return
    done
}

# rotate_through CRASH_POINT: a volume with the plain key is rotated onto a
# per-volume key; the LUKS work (the multicsi-luks process) dies at
# CRASH_POINT (between two steps) the first time, and the stage fails; at
# every moment one of the two keys opens it; the next stage finishes the
# rotation and the data is kept.
rotate_through() {
    local crash=$1 derived
    new_volume "rot$2" 64Mi "--fs ext4" --param multicsi.io/luks-encrypted=true || return
    local v=rot$2
    stage "$v" "$KEYFILE" && publish "$v" && echo "rotate $crash" >"$(target "$v")/data" && sync &&
        unpublish "$v" && unstage "$v" || return
    derived=$(derived_keyfile "$MASTERFILE" "$v") || return
    stop_driver
    MULTICSI_CRASH_AT=$crash start_driver || return
    stage_with "$v" --secret-file "luksMasterKey=$MASTERFILE" --secret-file "luksPreviousKey=$KEYFILE" &&
        { fail "the LUKS work did not die at $crash"; return 1; }
    grep -q "crash point $crash reached" "$DRIVER_LOG" || { fail "not cut off at $crash"; return 1; }
    opens_with "$(image "$v")" "$KEYFILE" || opens_with "$(image "$v")" "$derived" ||
        { fail "cut off at $crash, neither key opens the volume"; return 1; }
    stop_driver
    start_driver || return
    stage_with "$v" --secret-file "luksMasterKey=$MASTERFILE" --secret-file "luksPreviousKey=$KEYFILE" &&
        publish "$v" || return
    grep -qx "rotate $crash" "$(target "$v")/data" || { fail "data lost"; return 1; }
    opens_with "$(image "$v")" "$derived" || { fail "the new key does not open it"; return 1; }
    ! opens_with "$(image "$v")" "$KEYFILE" || { fail "the previous key still opens it"; return 1; }
    (($(keyslots "$(image "$v")") == 1)) || { fail "more than one key slot left"; return 1; }
    unpublish "$v" && unstage "$v" && remove_volume "$v"
}
rotation_cut_off_after_the_new_slot() { rotate_through luks-rotate-added 1; }
rotation_cut_off_after_the_check() { rotate_through luks-rotate-checked 2; }

plain_key_rotates_to_a_new_plain_key() {
    new_volume rk 64Mi --block --param multicsi.io/luks-encrypted=true &&
        stage rk "$KEYFILE" && unstage rk || return
    local newkey=$W/new-plain-key
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$newkey")
    stage_with rk --secret-file "luksKey=$newkey" --secret-file "luksPreviousKey=$KEYFILE" || return
    opens_with "$(image rk)" "$newkey" && ! opens_with "$(image rk)" "$KEYFILE" ||
        { fail "not rotated to the new plain key"; return 1; }
    # The rotation is done: the same secret again changes nothing.
    unstage rk && stage_with rk --secret-file "luksKey=$newkey" --secret-file "luksPreviousKey=$KEYFILE" &&
        unstage rk && remove_volume rk
}

luks1_volume_is_adopted_onto_a_per_volume_key() {
    new_volume adopt 128Mi "--fs ext4" --param csi.cloudscale.ch/luks-encrypted=true || return
    cryptsetup luksFormat --batch-mode --type luks1 --pbkdf-force-iterations 1000 \
        --key-file "$KEYFILE" "$(image adopt)" || return
    stage adopt "$KEYFILE" && publish adopt && echo adopted >"$(target adopt)/data" && sync &&
        unpublish adopt && unstage adopt || return
    local derived
    derived=$(derived_keyfile "$MASTER2FILE" adopt) || return
    stage_with adopt --secret-file "luksMasterKey=$MASTER2FILE" --secret-file "luksPreviousKey=$KEYFILE" &&
        publish adopt || return
    cryptsetup isLuks --type luks1 "$(image adopt)" || { fail "the LUKS1 header was replaced"; return 1; }
    opens_with "$(image adopt)" "$derived" && ! opens_with "$(image adopt)" "$KEYFILE" ||
        { fail "not rotated onto the per-volume key"; return 1; }
    grep -qx adopted "$(target adopt)/data" && unpublish adopt && unstage adopt && remove_volume adopt
}

wrong_keys_of_a_rotation_change_nothing() {
    new_volume wk 64Mi --block --param multicsi.io/luks-encrypted=true &&
        stage wk "$KEYFILE" && unstage wk || return
    local before out
    before=$(cryptsetup luksDump "$(image wk)" | sha256sum)
    out=$(expect_error InvalidArgument stage_with wk --secret-file "luksMasterKey=$MASTER2FILE" \
        --secret-file "luksPreviousKey=$WRONG_KEYFILE") || { echo "$out"; return 1; }
    echo "$out"
    grep -q "neither the current key nor the previous key" <<<"$out" ||
        { fail "not refused as neither key opening it"; return 1; }
    [[ $(cryptsetup luksDump "$(image wk)" | sha256sum) == "$before" ]] || { fail "the header changed"; return 1; }
    ! grep -qF "$MASTER2" <<<"$out" && ! grep -qF "$MASTER2" "$DRIVER_LOG" ||
        { fail "a key in the error or the log"; return 1; }
    unstage wk && remove_volume wk
}

key_never_leaks() {
    local found=0
    grep -Fq "$KEY" "$DRIVER_LOG" && { echo "the key is in the driver log"; found=1; }
    tr '\0' ' ' <"/proc/$DRIVER_PID/cmdline" | grep -Fq "$KEY" && { echo "the key is in the driver's argv"; found=1; }
    tr '\0' '\n' <"/proc/$DRIVER_PID/environ" | grep -Fq "$KEY" && { echo "the key is in the driver's environment"; found=1; }
    grep -rlF "$KEY" "$STATE" && { echo "the key is in a state file"; found=1; }
    local secret
    for secret in "$MASTER" "$MASTER2"; do
        grep -Fq "$secret" "$DRIVER_LOG" && { echo "a master key is in the driver log"; found=1; }
        grep -rlF "$secret" "$STATE" && { echo "a master key is in a state file"; found=1; }
    done
    # The log has the LUKS work in it, so the absence of the key means something.
    grep -q "LUKS2 header written" "$DRIVER_LOG" || { echo "no LUKS work in the log"; found=1; }
    ((found == 0))
}

default_pbkdf_fits_a_small_memory_limit() {
    # The default cost, as a DaemonSet gets it: argon2id, 64 MiB, 4 iterations.
    local sock=$W/default.sock state=$W/default-state log=$OUT/driver-default.log pid json id
    "$BIN" serve --endpoint "unix://$sock" --node-id "$NODE" --state-dir "$state" --kubelet-dir "$W" --log-format json >"$log" 2>&1 &
    pid=$!
    local c=("$BIN" client --endpoint "unix://$sock" --timeout 120)
    mkdir -p "$W/dflt"
    for _ in $(seq 150); do "${c[@]}" identity probe >/dev/null 2>&1 && break; sleep 0.2; done
    json=$("${c[@]}" --json controller create dflt --size 64Mi --block --param multicsi.io/luks-encrypted=true --param multicsi.io/provisioning=thin) &&
        id=$(jq -r .volume_id <<<"$json") &&
        "${c[@]}" controller publish "$id" --node "$NODE" --block &&
        "${c[@]}" node stage "$id" --staging "$W/dflt" --block --context multicsi.io/luks-encrypted=true \
            --context multicsi.io/luks-cipher=aes-xts-plain64 --context multicsi.io/luks-key-size=512 \
            --secret-file "luksKey=$KEYFILE" || { kill "$pid"; return 1; }
    local dump
    dump=$(cryptsetup luksDump "$(losetup -j "$state/volumes/$id.img" -O NAME -n)")
    echo "$dump" | grep -E "PBKDF|Memory|Time cost|Threads"
    local vmhwm
    vmhwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    echo "driver peak RSS: ${vmhwm} KiB"
    "${c[@]}" node unstage "$id" --staging "$W/dflt" && "${c[@]}" controller unpublish "$id" --node "$NODE" &&
        "${c[@]}" controller delete "$id" || { kill "$pid"; return 1; }
    kill -TERM "$pid"
    wait "$pid"
    grep -Eq "Memory:[[:space:]]+65536" <<<"$dump" && grep -Eq "Time cost:[[:space:]]+4" <<<"$dump" &&
        ((vmhwm < 256 * 1024)) || { fail "default key derivation not bounded (or the driver took over 256 MiB)"; return 1; }
}

nothing_left() {
    local left
    left=$(findmnt -rn -o TARGET | grep -F "$W/" || true)
    [[ -z $left ]] || { fail "mounts left: $left"; return 1; }
    left=$(losetup -a | grep -F "$STATE" || true)
    [[ -z $left ]] || { fail "loop devices left: $left"; return 1; }
    left=$(compgen -G '/dev/mapper/luks-*' || true)
    [[ -z $left ]] || { fail "mappings left: $left"; return 1; }
}

echo "# multicsi $("$BIN" --version 2>/dev/null || true), key derivation for the suite: argon2id 16 MiB, 4 iterations"
check "driver starts and answers on its socket" driver_starts
check "LUKS2: format a blank volume, open, mount the mapping, write" luks2_format_open_mount
check "LUKS2 header has the StorageClass cipher, key size and bounded argon2id" luks2_header_settings
check "LUKS2: written data is not plaintext on the backing image" plaintext_not_on_disk
check "LUKS2: unstage closes the mapping, restage reopens it, data kept" luks2_close_and_reopen
check "LUKS2: a wrong key is InvalidArgument, header and data untouched" wrong_key_is_refused
check "LUKS2: no luksKey is InvalidArgument before any device is attached" missing_key_is_refused
check "LUKS2: online expansion grows the mapping, then ext4" luks_online_expansion
check "LUKS2: NodeGetVolumeStats reads the filesystem on the mapping" stats_on_the_mapping
check "LUKS2: restage after kill -9 of the driver finds the mapping and mount" restage_after_kill
check "LUKS1 volume made by cryptsetup luksFormat --type luks1 opens (cloudscale keys)" luks1_volume_opens
check "raw block + LUKS: the mapping is published, data round-trips, ciphertext on disk, grows" raw_block_luks
check "xfs on LUKS2 with a 256-bit key, online expansion" xfs_luks_cycle
check "ext4 and xfs without LUKS: stage, publish, grow, restage" plain_ext4_and_xfs
check "a LUKS format cut off half way (marker left) is done again" cut_off_format_is_redone
check "an encrypted volume is never formatted over an existing filesystem" no_luks_over_a_filesystem
check "a plain volume over a partition table or a LUKS header is refused, kept" no_filesystem_over_a_partition_table_or_luks
check "a failed encrypted stage closes its mapping and detaches its loop device" failed_encrypted_stage_leaves_nothing
check "an encrypted volume written as raw block is not formatted as a filesystem" encrypted_block_data_is_never_formatted
check "a stale mapping of the same name is refused in use, replaced when unused" stale_mapping_is_replaced_or_refused
check "LUKS master key: each volume opens with its own derived passphrase, not another's" master_key_gives_each_volume_its_own_passphrase
check "LUKS rotation killed after adding the new slot: one key always opens, restage finishes" rotation_cut_off_after_the_new_slot
check "LUKS rotation killed after checking the new key: one key always opens, restage finishes" rotation_cut_off_after_the_check
check "LUKS rotation from one plain key to another, then idempotent" plain_key_rotates_to_a_new_plain_key
check "LUKS1 volume (cloudscale keys) adopted onto a per-volume key, data kept" luks1_volume_is_adopted_onto_a_per_volume_key
check "LUKS rotation whose keys both fail: InvalidArgument, header untouched, no key shown" wrong_keys_of_a_rotation_change_nothing
check "the key is in no log, argv, environment or state file" key_never_leaks
check "default key derivation (argon2id 64 MiB, 4 iterations) and driver memory" default_pbkdf_fits_a_small_memory_limit
stop_driver
check "no mounts, loop devices or mappings left" nothing_left

check_summary
