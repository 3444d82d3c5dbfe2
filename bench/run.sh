#!/usr/bin/env bash
# The benchmark (bench/bench.py): goliat-host with scripts/agent.lua next
# to the floor client (bench/floor.c) and, when ../shared/seed is there,
# the design's sample Python agent; over HTTP and over an HTTPS endpoint
# that closes idle connections after 5 s. Prints a table with ratios to
# the floor, and one JSON line. Not part of ctest; it asserts no timings.
#
#   bash bench/run.sh            full windows (about 12 minutes)
#   bash bench/run.sh --short    short windows (about 3 minutes; CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
# what the benchmark uses, beyond what goliat-host needs
bash tests/install-packages.sh strace valgrind nodejs openssl python3
# goliat-host as it is shipped: a Release build (tests/setup.sh installs
# what it needs)
bash tests/setup.sh build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cc -O2 -Wall -Wextra -Werror -o build-bench/floor bench/floor.c -lcurl
exec python3 bench/bench.py --host build-bench/goliat-host \
  --floor build-bench/floor "$@"
