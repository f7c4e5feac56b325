#!/usr/bin/env bash
# The project's test command: installs what it needs, then format check,
# lint, and every test (root tests included).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$(repo_root)"
require_root "scripts/test.sh"
ensure_job_packages build
ensure_job_packages test

section() { printf '\n==> %s\n' "$*"; }

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

section "cargo test"
cargo test --locked

section "VM suites: node (LUKS, filesystems, restage) and iSCSI + multipath"
cargo build --locked --bin multicsi --bin multicsi-luks
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
export MULTICSI_BIN="$target_dir/debug/multicsi" VM_PASS_ENV=MULTICSI_BIN
bash scripts/vm-test.sh --timeout 580 -- bash scripts/vm/node-suite.sh
bash scripts/vm-test.sh --timeout 300 -- bash scripts/vm/iscsi-suite.sh

section "metrics scraped by Prometheus"
bash scripts/prometheus-test.sh

if [ -f scripts/chart-test.sh ]; then
  section "chart tests"
  bash scripts/chart-test.sh
fi

section "all tests passed"
