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

# ensure_packages PKG... : installs the Debian packages that are missing.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || apt-get update
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The node tools every test and demo needs.
NODE_PACKAGES=(e2fsprogs xfsprogs btrfs-progs util-linux mount)
# LUKS: libcryptsetup12 (loaded at run time) and cryptsetup to inspect headers.
LUKS_PACKAGES=(libcryptsetup12 cryptsetup-bin)
