#!/usr/bin/env bash
# Installs what goliat-host needs on Debian 12 (as root, only what is
# missing) and builds it.
#   bash tests/setup.sh [BUILD_DIR [CMAKE_ARGS...]]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config liblua5.4-dev lua5.4 lua-cjson
  lua-busted lua-check libcurl4-openssl-dev libuv1-dev libhttp-parser-dev
  python3 procps openssl gcc-mingw-w64-x86-64)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "run as root (or install these packages first)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

build=${1:-build}
shift || true
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
