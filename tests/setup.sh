#!/usr/bin/env bash
# Installs what goliat-host needs on Debian 12 (as root, only what is
# missing) and builds it, with warnings as errors (GOLIAT_WERROR=ON; a
# CMAKE_ARG -DGOLIAT_WERROR=OFF turns that off).
#   bash tests/setup.sh [BUILD_DIR [CMAKE_ARGS...]]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config liblua5.4-dev lua5.4 lua-cjson
  lua-busted lua-check libcurl4-openssl-dev libuv1-dev libhttp-parser-dev libcjson-dev
  python3 procps openssl gcc-mingw-w64-x86-64)
bash tests/install-packages.sh "${packages[@]}"

build=${1:-build}
shift || true
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGOLIAT_WERROR=ON \
  "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
