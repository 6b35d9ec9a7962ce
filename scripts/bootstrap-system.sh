#!/usr/bin/env bash
# Install the Debian packages that building qkdd and running its tests need, where missing.
# Used by `make` (README) and by .ci/run. Runs apt-get as root, or through sudo.
# With --runtime (make demo): only what building and running qkdd needs, not the test and packaging tools.
set -euo pipefail
RUNTIME_ONLY=false
[[ ${1:-} == --runtime ]] && RUNTIME_ONLY=true

# build: compiler, headers, venv. tests: promtool (metrics format), openssl (PKI checks),
# iproute2 + wireguard (tunnel tests), systemd (unit verification), packaging tools.
PACKAGES=(
    build-essential python3-dev python3-venv libffi-dev pkg-config
    prometheus openssl iproute2 procps
)
EXTRA_FILE="$(dirname "$0")/system-packages.txt"
if $RUNTIME_ONLY; then
    PACKAGES=(build-essential python3-dev python3-venv libffi-dev pkg-config openssl)
elif [[ -f "$EXTRA_FILE" ]]; then
    while read -r pkg _; do
        [[ -n "$pkg" && "$pkg" != \#* ]] && PACKAGES+=("$pkg")
    done <"$EXTRA_FILE"
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
echo "  apt-get update ..."
$SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
echo "  apt-get install (${#missing[@]} packages) ..."
$SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "  system packages installed"
