#!/usr/bin/env bash
# Runs spec files inside goliat-host under valgrind (memcheck): fails on
# any invalid read or write, use of uninitialised memory, or "definitely
# lost" leak that tests/valgrind.supp does not suppress.
#   bash tests/valgrind.sh [GOLIAT_HOST [SPEC_FILE | TEST.sh ...]]
# GOLIAT_HOST defaults to build/goliat-host, built (when out of date) with
# tests/setup.sh; it must not be an AddressSanitizer build. By default:
# the integration spec files, and the raw-protocol tests (tests/*_raw.sh,
# whose goliat-host runs under valgrind).
#
# The goliat-host processes the specs start (GOLIAT_HOST: agents, fixture
# scripts) run natively, unless VALGRIND_CHILDREN=1: then they run under
# valgrind too (much slower; each writes its own log). Logs stay in
# $VALGRIND_LOGS (default valgrind-logs/ next to GOLIAT_HOST). A spec file may
# take $VALGRIND_TIMEOUT seconds (default 900). Installs valgrind (Debian
# 12, as root) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "valgrind is not installed (apt-get install valgrind, as root)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind
fi

bin=${1:-}
if [ -z "$bin" ]; then
  bash tests/setup.sh build >/dev/null
  bin=build/goliat-host
fi
shift || true
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
if nm -D "$bin" 2>/dev/null | grep -q __asan_init; then
  echo "$bin is an AddressSanitizer build: valgrind needs a plain one" >&2
  exit 2
fi
specs=("$@")
if [ ${#specs[@]} -eq 0 ]; then
  specs=(spec/http_server_spec.lua spec/http_client_spec.lua
    spec/proc_spec.lua spec/agent_integration_spec.lua
    tests/http_server_raw.sh tests/http_client_raw.sh)
fi
logs=${VALGRIND_LOGS:-$(dirname "$bin")/valgrind-logs}
limit=${VALGRIND_TIMEOUT:-900}
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)

# --child-silent-after-fork: libuv forks before exec'ing a child; the
# forked copy's exit is not ours to check. --gen-suppressions: each report
# comes with the suppression entry that would hide it.
vg=(valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite
  --errors-for-leak-kinds=definite --error-exitcode=99 --track-fds=no
  --child-silent-after-fork=yes --num-callers=40
  --suppressions="$PWD/tests/valgrind.supp" --gen-suppressions=all)

export GOLIAT_SOURCE_DIR="$PWD"
export no_proxy=127.0.0.1,localhost,::1 NO_PROXY=127.0.0.1,localhost,::1
# valgrind slows the host 10-50 times. spec/run.lua sets the watchdog to
# 120 s itself; a spec that fails here but passes natively is a timing
# casualty, not a memory error (the output says which test failed).
wrapper_dir=$(mktemp -d "${TMPDIR:-/tmp}/goliat-valgrind.XXXXXX")
trap 'rm -rf "$wrapper_dir"' EXIT

# Print the reports of a valgrind log (without the suppression entries).
reports() {
  grep -vE '^(\{|\}|   )' "$1" |
    sed -n '/== \(Invalid\|Conditional\|Use of uninit\|Syscall param\|Mismatched\|[0-9,]* bytes in [0-9,]* blocks are definitely\)/,/^==[0-9]*== *$/p' |
    head -n 150
}

# A goliat-host that runs under valgrind, logging to $logs/<name>.<pid>.log
make_wrapper() {
  local w="$wrapper_dir/$1/goliat-host"
  mkdir -p "$wrapper_dir/$1"
  {
    echo '#!/bin/sh'
    printf 'exec'
    printf ' %q' "${vg[@]}" "--log-file=$logs/$1.%p.log" "$bin"
    echo ' "$@"'
  } >"$w"
  chmod +x "$w"
  echo "$w"
}

failed=0
for item in "${specs[@]}"; do
  name=$(basename "$item")
  name=${name%.*}
  out="$logs/$name.out"
  rm -f "$logs/$name".*.log
  export GOLIAT_HOST="$bin"
  if [ "${VALGRIND_CHILDREN:-0}" = 1 ]; then
    GOLIAT_HOST=$(make_wrapper "$name")
  fi
  start=$(date +%s)
  status=0
  case "$item" in
  *.sh) # a test script taking the goliat-host to run: all of them under valgrind
    timeout -k 10 "$limit" sh "$item" "$(make_wrapper "$name")" >"$out" 2>&1 ||
      status=$? ;;
  *)
    timeout -k 10 "$limit" "${vg[@]}" --log-file="$logs/$name.main.log" \
      "$bin" spec/run.lua "$item" >"$out" 2>&1 || status=$? ;;
  esac
  secs=$(($(date +%s) - start))
  summary=$(grep -E "^[0-9]+ success|^[0-9]+ passed" "$out" | tail -n 1 || true)
  echo "$name: exit $status in ${secs} s; ${summary:-$(tail -n 1 "$out")}"
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    failed=1
    echo "FAIL: $item still running after $limit s (output: $out)"
    tail -n 20 "$out"
  elif [ "$status" -ne 0 ]; then
    failed=1
    echo "FAIL: $item failed under valgrind, exit $status (output: $out)"
    tail -n 40 "$out"
  fi
  n=0 clean=0 freed=0
  for log in "$logs/$name".*.log; do
    [ -e "$log" ] || continue
    n=$((n + 1))
    if grep -qE "ERROR SUMMARY: [1-9]" "$log"; then
      failed=1
      echo "FAIL: valgrind errors ($log)"
      grep -m1 "Command:" "$log" || true
      reports "$log"
    elif grep -qE "ERROR SUMMARY: 0 errors" "$log"; then
      clean=$((clean + 1))
    fi
    if grep -q "All heap blocks were freed" "$log"; then
      freed=$((freed + 1))
    fi
  done
  note=""
  if [ "$n" -gt "$clean" ]; then
    note=", $((n - clean)) ended without a summary (killed)"
  fi
  echo "  goliat-host under valgrind: $n process(es), $clean with 0 errors," \
    "$freed with all heap blocks freed$note"
done
exit "$failed"
