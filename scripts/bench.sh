#!/usr/bin/env bash
# Lifecycle benchmark of the multicsi server (hostpath backend): builds the
# release binary and runs benches/lifecycle.rs, which starts it on a private
# socket with its state under $BENCH_DIR (default /var/tmp, local disk) and
# prints a table of throughput, latency and memory against the targets.
#
#   scripts/bench.sh [--volumes N] [--cycles N] [--skip-node] [--thin]
#                    [--groups 2,8,32] [--only-groups]
#   scripts/bench.sh metadata [--blocks N] [--many N]
#       SnapshotMetadata: delta and allocated of a 1 GiB thin volume, ranges
#       per second and the server's peak memory (benches/snapshot_metadata.rs;
#       the reflinked case on xfs needs root).
#
# Node measurements (NodePublish/NodeUnpublish on a loop device, group
# snapshots of mounted volumes: freeze window and total time) need root.
set -euo pipefail
cd "$(dirname "$0")/.."
# The bench profile is the release profile: this builds the optimised server
# (CARGO_BIN_EXE_multicsi) and the bench program, then runs it.
if [ "${1:-}" = metadata ]; then
  shift
  exec cargo bench --bench snapshot_metadata -- "$@"
fi
exec cargo bench --bench lifecycle -- "$@"
