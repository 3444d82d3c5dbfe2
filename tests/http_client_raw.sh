#!/bin/sh
# host.http.request against a raw loopback server (tests/http_client_raw.py)
# for bodies host.http.serve never sends: chunked and close-delimited ones
# over max_size, an endless one, repeated headers, a dropped connection;
# and, when openssl is installed, TLS verification against a throwaway
# self-signed certificate for 127.0.0.1.
#   sh tests/http_client_raw.sh path/to/goliat-host     (from the repo root)
set -u
bin=${1:?usage: sh tests/http_client_raw.sh path/to/goliat-host}
dir=$(mktemp -d "${TMPDIR:-/tmp}/http-client-raw.XXXXXX") || exit 1
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

tls=
if command -v openssl >/dev/null 2>&1 &&
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=goliat-test \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" \
    -out "$dir/cert.pem" >"$dir/openssl.log" 2>&1; then
  tls="$dir/cert.pem $dir/key.pem"
else
  echo "note: no openssl, TLS checks skipped"
fi

# shellcheck disable=SC2086 # $tls is two paths without spaces, or nothing
python3 tests/http_client_raw.py "$dir/port" $tls 2>"$dir/log" &
pid=$!
i=0
while [ ! -s "$dir/port" ]; do
  i=$((i + 1))
  if [ "$i" -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "FAIL: the raw server did not start"
    cat "$dir/log"
    exit 1
  fi
  sleep 0.1
done

# shellcheck disable=SC2046 # the port file holds one or two ports
"$bin" tests/http_client_raw.lua $(cat "$dir/port") ${tls:+"$dir/cert.pem"}
status=$?
if [ "$status" -ne 0 ]; then
  echo "FAIL: goliat-host exited with $status"
  echo "---- raw server log ----"
  cat "$dir/log"
fi
exit "$status"
