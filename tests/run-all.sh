#!/usr/bin/env bash
# Installs what goliat-host needs (Debian 12, as root), builds it and runs
# the whole suite with ctest: the busted specs (inside goliat-host), the
# C-level tests and luacheck.
#   bash tests/run-all.sh              normal build in build/
#   bash tests/run-all.sh --sanitize   AddressSanitizer + UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config liblua5.4-dev lua5.4 lua-cjson
  lua-busted lua-check libcurl4-openssl-dev libuv1-dev libhttp-parser-dev
  python3 procps)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

build=build
flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [ "${1:-}" = "--sanitize" ]; then
  build=build-asan
  flags=(-DCMAKE_BUILD_TYPE=Debug -DGOLIAT_SANITIZE=ON)
fi
cmake -S . -B "$build" "${flags[@]}"
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure
