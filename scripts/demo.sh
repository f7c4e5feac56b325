#!/usr/bin/env bash
# Builds multicsi, serves it on the hostpath backend from a temporary state
# directory and socket, and walks one volume through its whole life with
# `multicsi client`, the way Kubernetes would:
#
#   create -> controller publish -> node stage -> node publish -> write a file
#   -> snapshot -> restore into a new volume, stage + publish it, read the file
#   -> expand (controller + node) -> stats -> teardown
#
# Every step prints what the driver answered and its wall time. Whatever
# happens, nothing is left behind: an exit trap unmounts everything under the
# temporary directory, detaches the loop devices of its images and stops the
# driver.
#
#   sudo scripts/demo.sh
#
# Environment:
#   DEMO_FS=xfs|ext4|btrfs   filesystem of the volumes (default xfs)
#   DEMO_FAIL_AT=STEP        make the step named STEP fail (shows the cleanup)
#   DEMO_KEEP_LOG=PATH       copy the driver's log there before cleaning up
#
# Exit status: 0 when every step passed, 1 otherwise.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/common.sh"
REPO=$(repo_root)
FS=${DEMO_FS:-xfs}
FAIL_AT=${DEMO_FAIL_AT:-}
NODE=demo-node

die() {
  echo "demo: $*" >&2
  exit 1
}

require_root "scripts/demo.sh"
case "$FS" in
  xfs | ext4 | btrfs) ;;
  *) die "DEMO_FS=$FS: use xfs, ext4 or btrfs" ;;
esac

# --- prerequisites -----------------------------------------------------------
ensure_job_packages build
ensure_job_packages demo
command -v cargo >/dev/null || die "cargo is missing: install a Rust toolchain (https://rustup.rs)"
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
[ -e /dev/loop-control ] || die "/dev/loop-control is missing: load the loop module (modprobe loop)"

# --- temporary directory and the cleanup trap ----------------------------------
WORK=$(mktemp -d /tmp/multicsi-demo.XXXXXX)
STATE=$WORK/state
ENDPOINT=unix://$WORK/csi.sock
LOG=$WORK/driver.log
SERVER_PID=
CURRENT=setup

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ "$rc" -ne 0 ]; then
    echo
    echo "demo: FAILED at step '$CURRENT' (exit $rc); cleaning up"
    if [ -s "$LOG" ]; then
      echo "--- last lines of the driver's log ---"
      tail -n 15 "$LOG"
      echo "---"
    fi
  fi
  # The driver first (it finishes calls in flight), so that nothing new is
  # attached or mounted while the rest is undone.
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null
  fi
  [ -n "${DEMO_KEEP_LOG:-}" ] && [ -f "$LOG" ] && cp "$LOG" "$DEMO_KEEP_LOG"
  # Mounts under the temporary directory, deepest first.
  findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | while read -r target; do
    echo "cleanup: unmounting $target"
    umount "$target" 2>/dev/null || umount -l "$target"
  done
  # Loop devices backed by this run's images.
  losetup -n -O NAME,BACK-FILE 2>/dev/null | while read -r device file; do
    case "$file" in
      "$STATE"/*)
        echo "cleanup: detaching $device ($file)"
        losetup -d "$device"
        ;;
    esac
  done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- steps -------------------------------------------------------------------
STEP_NO=0
TIMES=()
OUT=

# step NAME DESCRIPTION COMMAND [ARGS...]: runs the command in this shell (so
# it may set variables), prints its output and wall time; its stdout stays in
# $OUT. A failing step ends the demo. Commands run where `set -e` does not
# apply: the functions below check each command themselves.
step() {
  local name=$1 description=$2
  shift 2
  STEP_NO=$((STEP_NO + 1))
  CURRENT=$name
  printf '\n[%2d] %s: %s\n' "$STEP_NO" "$name" "$description"
  local start rc=0
  start=$(date +%s%N)
  if [ "$FAIL_AT" = "$name" ]; then
    echo "error: injected failure (DEMO_FAIL_AT=$name)" >"$WORK/step.err"
    OUT=
    rc=1
  else
    "$@" >"$WORK/step.out" 2>"$WORK/step.err" || rc=$?
    OUT=$(cat "$WORK/step.out")
  fi
  local ms=$((($(date +%s%N) - start) / 1000000))
  if [ -n "$OUT" ]; then
    printf '%s\n' "$OUT" | sed 's/^/     /'
  fi
  if [ "$rc" -ne 0 ]; then
    sed 's/^/     /' "$WORK/step.err"
    printf '     FAILED after %d ms\n' "$ms"
    exit 1
  fi
  printf '     ok  %d ms\n' "$ms"
  TIMES+=("$(printf '%-28s %6d ms' "$name" "$ms")")
}

client() {
  "$BIN" client --endpoint "$ENDPOINT" "$@"
}

build() {
  (cd "$REPO" && env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR cargo build --release --locked) || return 1
  stat -c '%n %s bytes' "$BIN"
}

serve() {
  "$BIN" serve --endpoint "$ENDPOINT" --node-id "$NODE" --state-dir "$STATE" \
    --log-format json >"$LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    if client identity probe >/dev/null 2>&1; then
      client identity info || return 1
      client identity probe
      return
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the driver exited" >&2; return 1; }
    sleep 0.1
  done
  echo "the driver did not answer within 10 s" >&2
  return 1
}

# context_flags FLAG MAP_KEY: --FLAG=KEY=VALUE for each entry of the JSON map in $OUT.
context_flags() {
  jq -r --arg flag "$1" --arg key "$2" '.[$key] // {} | to_entries[] | "--\($flag)=\(.key)=\(.value)"' <<<"$OUT"
}

write_file() {
  printf 'written by the multicsi demo at %s\n' "$(date -Is)" >"$MOUNT1/hello.txt" || return 1
  # Flush it to the volume's image: the snapshot copies the image.
  sync -f "$MOUNT1/hello.txt" || return 1
  cat "$MOUNT1/hello.txt"
}

read_back() {
  cat "$MOUNT2/hello.txt" || return 1
  cmp "$MOUNT1/hello.txt" "$MOUNT2/hello.txt" || return 1
  echo "the restored volume holds the same file"
}

filesystem_bytes() {
  local json
  json=$(client --json node stats "$VOL1" --path "$MOUNT1") || return 1
  jq -er '.usage[] | select(.unit == "BYTES") | .total' <<<"$json"
}

stats_before() {
  client node stats "$VOL1" --path "$MOUNT1" || return 1
  SIZE_BEFORE=$(filesystem_bytes)
}

stats_after() {
  client node stats "$VOL1" --path "$MOUNT1" || return 1
  local after
  after=$(filesystem_bytes) || return 1
  echo "filesystem size: $SIZE_BEFORE -> $after bytes"
  [ "$after" -gt "$SIZE_BEFORE" ] || { echo "the filesystem did not grow" >&2; return 1; }
}

check_clean() {
  local left volumes snapshots
  left=$(findmnt -rn -o TARGET | grep -F "$WORK/")
  [ -z "$left" ] || { echo "still mounted: $left" >&2; return 1; }
  left=$(losetup -n -O NAME,BACK-FILE | grep -F "$STATE/")
  [ -z "$left" ] || { echo "still attached: $left" >&2; return 1; }
  echo "no mounts under $WORK, no loop devices on $STATE"
  volumes=$(client controller list) || return 1
  snapshots=$(client controller snapshot list) || return 1
  [ -z "$volumes$snapshots" ] || { echo "left: $volumes $snapshots" >&2; return 1; }
  echo "the driver has no volumes and no snapshots"
}

BIN=$REPO/target/release/multicsi
STAGE1=$WORK/staging/volume
MOUNT1=$WORK/pods/demo/volume
STAGE2=$WORK/staging/restored
MOUNT2=$WORK/pods/demo/restored
mkdir -p "$WORK/staging" "$WORK/pods/demo"

echo "multicsi demo: filesystem $FS, temporary directory $WORK"
TOTAL_START=$(date +%s%N)

step build "cargo build --release" build
step serve "start the driver on $ENDPOINT" serve

step create "create a 512 MiB volume" \
  client --json controller create demo-volume --size 512Mi --fs "$FS"
VOL1=$(jq -r .volume_id <<<"$OUT")
mapfile -t CONTEXT1 < <(context_flags context volume_context)

step controller-publish "attach it to $NODE" \
  client --json controller publish "$VOL1" --node "$NODE" --fs "$FS"
mapfile -t PUBLISH1 < <(context_flags publish-context publish_context)

step node-stage "format and mount it at the staging path" \
  client node stage "$VOL1" --staging "$STAGE1" --fs "$FS" "${CONTEXT1[@]}" "${PUBLISH1[@]}"
step node-publish "bind-mount it where the pod sees it" \
  client node publish "$VOL1" --staging "$STAGE1" --target "$MOUNT1" --fs "$FS" \
  "${CONTEXT1[@]}" "${PUBLISH1[@]}"
step write "write a file into the volume" write_file

step snapshot "snapshot the volume" \
  client --json controller snapshot create demo-snapshot --volume "$VOL1"
SNAP=$(jq -r .snapshot_id <<<"$OUT")

step restore "restore the snapshot into a new volume" \
  client --json controller create demo-restored --from-snapshot "$SNAP" --size 512Mi --fs "$FS"
VOL2=$(jq -r .volume_id <<<"$OUT")
mapfile -t CONTEXT2 < <(context_flags context volume_context)
step restore-controller-publish "attach the restored volume" \
  client --json controller publish "$VOL2" --node "$NODE" --fs "$FS"
mapfile -t PUBLISH2 < <(context_flags publish-context publish_context)
step restore-node-stage "mount the restored volume at its staging path" \
  client node stage "$VOL2" --staging "$STAGE2" --fs "$FS" "${CONTEXT2[@]}" "${PUBLISH2[@]}"
step restore-node-publish "bind-mount the restored volume" \
  client node publish "$VOL2" --staging "$STAGE2" --target "$MOUNT2" --fs "$FS" \
  "${CONTEXT2[@]}" "${PUBLISH2[@]}"
step read-back "read the file back from the restored volume" read_back

step stats-before "usage before expansion" stats_before
step controller-expand "grow the volume to 1 GiB" \
  client controller expand "$VOL1" --size 1Gi
step node-expand "grow the mounted filesystem" \
  client node expand "$VOL1" --path "$MOUNT1" --staging "$STAGE1" --size 1Gi
step stats "usage after expansion" stats_after

step restore-node-unpublish "unmount the restored volume from the pod path" \
  client node unpublish "$VOL2" --target "$MOUNT2"
step restore-node-unstage "unmount and detach the restored volume" \
  client node unstage "$VOL2" --staging "$STAGE2"
step restore-controller-unpublish "release the restored volume" \
  client controller unpublish "$VOL2" --node "$NODE"
step node-unpublish "unmount the volume from the pod path" \
  client node unpublish "$VOL1" --target "$MOUNT1"
step node-unstage "unmount and detach the volume" \
  client node unstage "$VOL1" --staging "$STAGE1"
step controller-unpublish "release the volume" \
  client controller unpublish "$VOL1" --node "$NODE"
step snapshot-delete "delete the snapshot" client controller snapshot delete "$SNAP"
step delete-restored "delete the restored volume" client controller delete "$VOL2"
step delete "delete the volume" client controller delete "$VOL1"
step check-clean "nothing left behind" check_clean

CURRENT=finished
TOTAL_MS=$((($(date +%s%N) - TOTAL_START) / 1000000))
echo
echo "step times:"
printf '  %s\n' "${TIMES[@]}"
printf '  %-28s %6d ms\n' total "$TOTAL_MS"
echo "demo passed"
