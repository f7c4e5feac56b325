# Shared shell helpers for the project's scripts. Source it; do not run it.

# The repository root.
repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd; }

# Fails unless running as root (loop devices, mkfs and mount need it).
require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: $1 needs root (loop devices, mkfs and mount); run it with sudo" >&2
    exit 1
  fi
}

# The one list of the Debian packages the project needs (see its header).
PACKAGE_LIST="$(repo_root)/scripts/lib/packages.tsv"

# packages_for JOB : the packages the list installs for JOB (node, test, demo, vm).
packages_for() {
  awk -v job="$1" '{ sub(/#.*/, "") } NF >= 3 { for (i = 3; i <= NF; i++) if ($i == job) { print $2; break } }' \
    "$PACKAGE_LIST" | sort -u
}

# How long package installs wait for another apt or dpkg run to finish.
APT_LOCK_WAIT=${APT_LOCK_WAIT:-900}

# apt_get ARGS... : apt-get that waits for a busy package manager (a machine
# that has just booted often runs its own apt) instead of failing at once,
# and says that it waits.
apt_get() {
  local deadline=$((SECONDS + APT_LOCK_WAIT)) out rc said=0
  while :; do
    rc=0
    out=$(DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=30 "$@" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ]; then
      return 0
    fi
    if grep -qE 'Could not get lock|Unable to acquire|Unable to lock' <<<"$out" && [ "$SECONDS" -lt "$deadline" ]; then
      if [ "$said" -eq 0 ]; then
        echo "waiting for the package manager: another apt or dpkg run holds its lock ($(grep -m1 -E 'lock' <<<"$out" | sed 's/^E: //')); waiting up to ${APT_LOCK_WAIT}s" >&2
        said=1
      fi
      sleep 5
      continue
    fi
    printf '%s\n' "$out" | tail -n 30 >&2
    return "$rc"
  done
}

# ensure_packages PKG... : installs the Debian packages that are missing.
# Package scripts start no daemon meanwhile (policy-rc.d), so installing
# open-iscsi, tgt or multipath-tools leaves the host as it was; concurrent
# callers take turns.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  (
    exec 9>/run/lock/multicsi-packages.lock 2>/dev/null || exec 9>/tmp/multicsi-packages.lock
    flock 9
    local policy=/usr/sbin/policy-rc.d mark='# multicsi: no daemon starts during package installation'
    restore() {
      if [ -f "$policy" ] && grep -qxF "$mark" "$policy"; then rm -f "$policy"; fi
      if [ -e "$policy.multicsi-saved" ] && [ ! -e "$policy" ]; then mv -f "$policy.multicsi-saved" "$policy"; fi
    }
    restore # what an interrupted run left
    trap restore EXIT
    [ ! -e "$policy" ] || mv -f "$policy" "$policy.multicsi-saved"
    printf '#!/bin/sh\n%s\nexit 101\n' "$mark" >"$policy"
    chmod 755 "$policy"
    apt_get update
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
  ) || { echo "error: could not install ${missing[*]}" >&2; return 1; }
}

# ensure_job_packages JOB : installs what the package list names for JOB.
ensure_job_packages() {
  local packages=()
  mapfile -t packages < <(packages_for "$1")
  ensure_packages "${packages[@]}"
}
