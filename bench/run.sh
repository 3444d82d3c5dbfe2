#!/usr/bin/env bash
# The benchmark (bench/bench.py): goliat-host with scripts/agent.lua next
# to the floor client (bench/floor.c) and, when ../shared/seed is there,
# the design's sample Python agent; over HTTP and over an HTTPS endpoint
# that closes idle connections after 5 s. Prints a table with ratios to
# the floor, and one JSON line. Then the fleet benchmark (bench/fleet.py,
# issue 22): agents working through a super study with faults, then idle;
# a table and one JSON line. Not part of ctest; neither asserts timings
# (fleet.py exits 1 when something is broken: a wrong outcome, a duplicate
# run, an idle stop that never came; see the top of bench/fleet.py).
#
#   bash bench/run.sh            full windows (about 12 minutes), then the
#                                full fleet run (about 3 minutes)
#   bash bench/run.sh --short    short windows (about 3 minutes), then the
#                                short fleet run (under a minute); CI runs it
set -euo pipefail
cd "$(dirname "$0")/.."
# what the benchmark uses, beyond what goliat-host needs
bash tests/install-packages.sh strace valgrind nodejs openssl python3
# goliat-host as it is shipped: a Release build (tests/setup.sh installs
# what it needs)
bash tests/setup.sh build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cc -O2 -Wall -Wextra -Werror -o build-bench/floor bench/floor.c -lcurl
python3 bench/bench.py --host build-bench/goliat-host \
  --floor build-bench/floor "$@"
fleet=()
for a in "$@"; do
  if [ "$a" = --short ]; then fleet=(--short); fi
done
exec python3 bench/fleet.py --host build-bench/goliat-host \
  ${fleet[@]+"${fleet[@]}"}
