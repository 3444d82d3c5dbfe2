#!/usr/bin/env bash
# Installs what goliat-host needs (Debian 12, as root), builds it and runs
# the whole suite with ctest: the busted specs (inside goliat-host), the
# C-level tests and luacheck.
#   bash tests/run-all.sh              normal build in build/
#   bash tests/run-all.sh --sanitize   AddressSanitizer + UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--sanitize" ]; then
  bash tests/setup.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DGOLIAT_SANITIZE=ON
  cd build-asan
else
  bash tests/setup.sh build
  cd build
fi
ctest --output-on-failure
