# Shared set-up of scripts/demo and scripts/test: install missing Debian packages, then configure
# with the CMake preset. Sourced, not run.
set -euo pipefail

LORALAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LORALAB_PRESET="${LORALAB_PRESET:-default}"
LORALAB_BUILD_DIR="$LORALAB_ROOT/build/$LORALAB_PRESET"

# Everything the build and the suite need, from Debian only (the machine is offline otherwise).
LORALAB_PACKAGES=(cmake ninja-build g++ libeigen3-dev doctest-dev nlohmann-json3-dev
                  libbenchmark-dev libopenblas-dev doxygen fortunes)

log() { printf '[loralab] %s\n' "$*" >&2; }

ensure_packages() {
  local missing=()
  for p in "${LORALAB_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root or: sudo apt-get install ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

configure() {
  log "configuring preset '$LORALAB_PRESET' in $LORALAB_BUILD_DIR"
  cmake --preset "$LORALAB_PRESET" -S "$LORALAB_ROOT" >"$LORALAB_BUILD_DIR.configure.log" 2>&1 || {
    cat "$LORALAB_BUILD_DIR.configure.log" >&2
    exit 1
  }
  grep "^-- loralab" "$LORALAB_BUILD_DIR.configure.log" >&2 || true
}
