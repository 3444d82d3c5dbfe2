#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz_*.c) with clang in build-fuzz/
# and runs each for SECONDS (default 30) on a copy of its seed corpus
# (tests/fuzz_corpus/<name>/, which stays untouched). Fails on any crash,
# sanitizer report, leak, timeout or checker mismatch; the input that did
# it is kept in build-fuzz/artifacts/ and printed as hex.
#   bash tests/fuzz.sh [SECONDS]
# Installs clang and its runtime (Debian 12, as root) when missing; the
# other build dependencies are those of tests/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
build="build-fuzz"
targets=(fuzz_http_server fuzz_http_client)

bash tests/install-packages.sh clang libclang-rt-14-dev

cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DGOLIAT_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGOLIAT_WERROR=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"

work=$(mktemp -d "${TMPDIR:-/tmp}/goliat-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/artifacts"
failed=0
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  corpus="$work/$name"
  mkdir -p "$corpus"
  cp tests/fuzz_corpus/"$name"/* "$corpus"/
  log="$work/$name.log"
  echo "== $t: ${seconds} s"
  status=0
  # -timeout: one input taking over 10 s is a hang; -error_exitcode makes
  # every failure (crash, sanitizer, leak, abort) exit non-zero
  "$build/$t" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
    -rss_limit_mb=2048 -error_exitcode=77 -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/$name-" "$corpus" >"$log" 2>&1 ||
    status=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log" || true
  grep -E '^(Done [0-9]+ runs|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb))' \
    "$log" || true
  echo "corpus: $(find "$corpus" -type f | wc -l) inputs"
  if [ "$status" -ne 0 ]; then
    failed=1
    echo "FAIL: $t exited with $status"
    tail -n 60 "$log"
    grep -oE "Test unit written to [^ ]+" "$log" | cut -d' ' -f5 |
      while read -r a; do
        echo "---- $a ----"
        od -A d -c "$a" | head -n 40
      done
  fi
done
exit "$failed"
