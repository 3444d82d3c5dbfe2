#!/bin/sh
# Raw-protocol tests of host.http.serve (pipelining, malformed requests,
# limits, clients that go away): starts tests/http_server_fixture.lua, runs
# the socket-level client tests/http_server_raw.py against it, and checks
# that the server then exits cleanly (code 0, so no sanitizer report). A
# second round makes the server os.exit() with requests in flight.
#   sh tests/http_server_raw.sh path/to/goliat-host     (from the repo root)
set -u
bin=${1:?usage: sh tests/http_server_raw.sh path/to/goliat-host}
dir=$(mktemp -d "${TMPDIR:-/tmp}/http-server-raw.XXXXXX") || exit 1
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

# round NAME [CLIENT-ARGS]: one server, one client run; 0 when both passed.
round() {
  name=$1
  shift
  rm -f "$dir/port"
  "$bin" tests/http_server_fixture.lua "$dir/port" 2>"$dir/log" &
  pid=$!
  i=0
  while [ ! -s "$dir/port" ]; do
    i=$((i + 1))
    if [ "$i" -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "FAIL ($name): the fixture server did not start"
      cat "$dir/log"
      return 1
    fi
    sleep 0.1
  done

  status=0
  python3 tests/http_server_raw.py "$(cat "$dir/port")" "$@" || status=1

  # The client's last request stops the server: the host must exit.
  i=0
  while kill -0 "$pid" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
      echo "FAIL ($name): the server did not exit"
      kill "$pid"
      status=1
      break
    fi
    sleep 0.1
  done
  wait "$pid"
  rc=$?
  pid=
  if [ "$rc" -ne 0 ]; then
    echo "FAIL ($name): the server exited with $rc"
    status=1
  fi
  if [ "$status" -ne 0 ]; then
    echo "---- server log ($name) ----"
    cat "$dir/log"
  fi
  return "$status"
}

result=0
round protocol || result=1
round exit exit || result=1
exit "$result"
