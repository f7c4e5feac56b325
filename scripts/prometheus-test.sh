#!/usr/bin/env bash
# The driver's metrics as a real Prometheus sees them.
#
# Starts `multicsi serve` (hostpath) with its metrics listener on loopback and
# Debian's prometheus scraping it every second, drives a known set of RPCs
# with `multicsi client` (volumes created, refused and deleted, one volume
# staged, published and torn down on the node), then asks Prometheus through
# its HTTP API for the series and compares them with the RPCs made. Also:
# `promtool check metrics` on a scrape reports nothing, /healthz and /readyz
# answer, and the Probe RPC agrees with /readyz.
#
#   sudo bash scripts/prometheus-test.sh
#
# Uses the binary of $CARGO_TARGET_DIR (default target/), built here if
# needed. An exit trap stops both processes, unmounts and detaches whatever
# the run left, and removes its directory. Prints "N passed, M failed" last.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$(repo_root)"
require_root "scripts/prometheus-test.sh"
ensure_job_packages build
ensure_job_packages test

cargo build --locked --quiet --bin multicsi
BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/debug/multicsi"
[ -x "$BIN" ] || { echo "prometheus-test: no binary at $BIN" >&2; exit 1; }
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true

WORK=$(mktemp -d /tmp/multicsi-prom.XXXXXX)
STATE=$WORK/state
ENDPOINT=unix://$WORK/csi.sock
DRIVER_PID=
PROM_PID=
PASSED=0
FAILED=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in "$PROM_PID" "$DRIVER_PID"; do
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ "$rc" -ne 0 ] && [ -s "$WORK/driver.log" ]; then
    echo "--- last lines of the driver's log ---"
    tail -n 20 "$WORK/driver.log"
    echo "--- last lines of prometheus' log ---"
    tail -n 20 "$WORK/prometheus.log"
  fi
  findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target"
  done
  losetup -n -O NAME,BACK-FILE 2>/dev/null | while read -r device file; do
    case "$file" in "$STATE"/*) losetup -d "$device" ;; esac
  done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pass() { PASSED=$((PASSED + 1)); echo "ok   $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION SECONDS COMMAND...: retries the command every 0.2 s.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "prometheus-test: $what did not happen within $seconds s" >&2
      exit 1
    fi
    sleep 0.2
  done
}

client() { "$BIN" client --endpoint "$ENDPOINT" --timeout 30 "$@"; }

# --- the driver ----------------------------------------------------------------
METRICS_PORT=$(free_port)
METRICS=http://127.0.0.1:$METRICS_PORT
"$BIN" serve --endpoint "$ENDPOINT" --node-id prom-node --state-dir "$STATE" \
  --metrics-address "127.0.0.1:$METRICS_PORT" --log-format json --log-level info \
  >"$WORK/driver.log" 2>&1 &
DRIVER_PID=$!
wait_for "the driver's /readyz" 20 curl -sf "$METRICS/readyz"

# --- prometheus ------------------------------------------------------------------
PROM_PORT=$(free_port)
PROM=http://127.0.0.1:$PROM_PORT
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: multicsi
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn \
  >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
wait_for "prometheus' readiness" 60 curl -sf "$PROM/-/ready"

# query EXPR: prints the value of the single sample the instant query returns,
# "none" when it returns nothing; fails on anything else.
query() {
  curl -sf --get "$PROM/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
answer = json.load(sys.stdin)
assert answer["status"] == "success", answer
result = answer["data"]["result"]
if not result:
    print("none")
elif len(result) == 1:
    print(float(result[0]["value"][1]).__format__("g"))
else:
    sys.exit("more than one series: %s" % result)
'
}

# expect DESCRIPTION EXPR VALUE: the query's value must be VALUE.
expect() {
  local got
  got=$(query "$2") || { fail "$1: query $2 failed"; return; }
  if [ "$got" = "$3" ]; then
    pass "$1 ($2 = $got)"
  else
    fail "$1: $2 = $got, expected $3"
  fi
}

query_is() { [ "$(query "$1")" = "$2" ]; }
wait_for "the first scrape" 30 query_is 'up{job="multicsi"}' 1

# --- the RPCs ----------------------------------------------------------------------
CREATED=3
ids=()
for i in $(seq "$CREATED"); do
  ids+=("$(client --json controller create "prom-vol-$i" --size 64Mi | python3 -c 'import json,sys; print(json.load(sys.stdin)["volume_id"])')")
done
client controller create prom-vol-1 --size 64Mi >/dev/null # idempotent repeat: OK
for _ in 1 2; do # a different size for an existing name
  if client controller create prom-vol-2 --size 128Mi --limit 128Mi >/dev/null 2>&1; then
    echo "prometheus-test: an incompatible CreateVolume succeeded" >&2
    exit 1
  fi
done
for _ in 1 2 3; do # an unknown StorageClass parameter
  if client controller create prom-bad --size 8Mi --param bogus=1 >/dev/null 2>&1; then
    echo "prometheus-test: CreateVolume with an unknown parameter succeeded" >&2
    exit 1
  fi
done
for _ in 1 2 3 4; do
  [ "$(client identity probe)" = "ready" ]
done

vol=${ids[0]}
mkdir -p "$WORK/staging" "$WORK/target"
client node stage "$vol" --staging "$WORK/staging" --fs ext4 >/dev/null
client node publish "$vol" --staging "$WORK/staging" --target "$WORK/target/mnt" --fs ext4 >/dev/null
echo data >"$WORK/target/mnt/file"
client node unpublish "$vol" --target "$WORK/target/mnt" >/dev/null
client node unstage "$vol" --staging "$WORK/staging" >/dev/null
for id in "${ids[@]}"; do
  client controller delete "$id" >/dev/null
done

# Every RPC above is answered; wait until Prometheus scraped after the last one.
wait_for "a scrape after the last DeleteVolume" 30 \
  query_is 'sum(multicsi_csi_requests_total{method="DeleteVolume"})' "$CREATED"

# --- what Prometheus stored ------------------------------------------------------------
expect "CreateVolume OK" 'multicsi_csi_requests_total{method="CreateVolume",code="OK"}' $((CREATED + 1))
expect "CreateVolume AlreadyExists" 'multicsi_csi_requests_total{method="CreateVolume",code="AlreadyExists"}' 2
expect "CreateVolume InvalidArgument" 'multicsi_csi_requests_total{method="CreateVolume",code="InvalidArgument"}' 3
expect "CreateVolume, no other code" 'sum(multicsi_csi_requests_total{method="CreateVolume"})' $((CREATED + 6))
expect "CreateVolume latency histogram count" \
  'sum(multicsi_csi_request_duration_seconds_count{method="CreateVolume"})' $((CREATED + 6))
expect "CreateVolume latency +Inf bucket" \
  'sum(multicsi_csi_request_duration_seconds_bucket{method="CreateVolume",le="+Inf"})' $((CREATED + 6))
expect "DeleteVolume OK" 'multicsi_csi_requests_total{method="DeleteVolume",code="OK"}' "$CREATED"
expect "Probe OK" 'multicsi_csi_requests_total{method="Probe",code="OK"}' 4
for method in NodeStageVolume NodePublishVolume NodeUnpublishVolume NodeUnstageVolume; do
  expect "$method OK" "multicsi_csi_requests_total{method=\"$method\",code=\"OK\"}" 1
done
expect "no ABORTED answers" 'sum(multicsi_csi_aborted_total)' none
expect "nothing in flight" 'sum(multicsi_csi_requests_in_flight)' 0
expect "one mkfs" 'multicsi_node_operations_total{operation="mkfs",result="success"}' 1
expect "one filesystem mount" 'multicsi_node_operations_total{operation="mount",result="success"}' 1
expect "one loop attach" 'multicsi_node_operations_total{operation="attach",result="success"}' 1
expect "mkfs duration recorded" 'multicsi_node_operation_duration_seconds_count{operation="mkfs",result="success"}' 1
expect "no failed node operation" 'sum(multicsi_node_operations_total{result="error"})' none
expect "no cloud calls on hostpath" 'sum(multicsi_cloud_requests_total)' none
expect "build info" 'multicsi_build_info{backend="hostpath"}' 1
expect "process memory reported" 'count(process_resident_memory_bytes > 0)' 1
expect "open fds reported" 'count(process_open_fds > 0)' 1
expect "CPU time reported" 'count(process_cpu_seconds_total)' 1

# --- the exposition itself -------------------------------------------------------------
curl -sf "$METRICS/metrics" >"$WORK/scrape.txt"
lint=$(promtool check metrics <"$WORK/scrape.txt" 2>&1) || true
if [ -z "$lint" ]; then
  pass "promtool check metrics reports nothing ($(grep -vc '^#' "$WORK/scrape.txt") samples)"
else
  fail "promtool check metrics: $lint"
fi
[ "$(curl -sf "$METRICS/healthz")" = "ok" ] && pass "/healthz answers ok" || fail "/healthz"
ready_status=$(curl -s -o /dev/null -w '%{http_code}' "$METRICS/readyz")
[ "$ready_status" = 200 ] && [ "$(client identity probe)" = "ready" ] \
  && pass "/readyz 200 and Probe ready agree" || fail "/readyz $ready_status"
# Not ready: the state directory cannot be written (a read-only mount over
# it, since root writes through file modes). /readyz and Probe both say so.
mount -t tmpfs -o ro,size=1m multicsi-prom-test "$STATE"
ready_status=$(curl -s -o /dev/null -w '%{http_code}' "$METRICS/readyz")
probe=$(client identity probe || true)
umount "$STATE"
if [ "$ready_status" = 503 ] && [ "$probe" != "ready" ]; then
  pass "/readyz 503 and Probe not ready agree"
else
  fail "readiness disagrees or did not change: /readyz $ready_status, Probe: $probe"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
