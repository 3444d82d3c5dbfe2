#!/usr/bin/env bash
# Runs the spec suite against goliat-host.exe under wine, in a fresh wine
# prefix in a temporary folder (removed afterwards). Build the exe first:
#   bash host/windows/build.sh && bash tests/windows/wine.sh [SPEC...]
# Without SPEC arguments it runs every spec that can run on Windows and
# names the ones it skips and why. Each spec runs as
#   wine goliat-host.exe spec/run.lua SPEC
# inside goliat-host.exe, with the pure-Lua busted stack of the Debian
# packages (busted, luassert, say, penlight, mediator, cliargs, dkjson,
# lua-term and lua-system's Lua parts) copied next to a copy of the exe
# (lua\ is on Lua's default module path on Windows): test-only, not in dist/.
# Environment: GOLIAT_WIN_EXE (default goliat-host.exe in GOLIAT_WIN_BUILD or
# build-windows),
# GOLIAT_WINE_TIMEOUT (seconds per spec file, default 300), GOLIAT_WINE_KEEP=1
# (keep the temporary folder: prefix, exe and each spec's full log).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
exe=${GOLIAT_WIN_EXE:-${GOLIAT_WIN_BUILD:-$root/build-windows}/goliat-host.exe}
per_spec_timeout=${GOLIAT_WINE_TIMEOUT:-300}

# Specs that cannot run under wine, and why. Everything they cover that
# matters on Windows is in spec/windows_spec.lua.
declare -A skip=(
  [proc_spec]="POSIX tools (sh, kill, sleep) as children and process groups; spec/windows_spec.lua covers processes and trees with goliat-host.exe as child and grandchild"
  [agent_integration_spec]="the GOLIAT stand-in is started with python, which the wine prefix has not"
  [agent_restart_spec]="the GOLIAT stand-in is started with python, which the wine prefix has not"
  [agent_script_faults_spec]="copies scripts/ with cp -r and signals the agent with POSIX signals"
  [faults_spec]="the agent's studies are the python GOLIAT stand-in, which the wine prefix has not"
  [agent_super_study_integration_spec]="the GOLIAT stand-in is started with python, which the wine prefix has not"
  [agent_check_status_spec]="the GOLIAT stand-in is started with python, which the wine prefix has not"
  [agent_gateway_integration_spec]="the GOLIAT stand-in is started with python, which the wine prefix has not; spec/agent_gateway_spec.lua runs the gateway's policy"
  [agent_outcomes_integration_spec]="the GOLIAT stand-in is started with python, which the wine prefix has not; spec/agent_super_study_spec.lua runs the reconciliation's policy"
  [agent_hostile2_integration_spec]="a FIFO and symbolic links are POSIX cases, and the GOLIAT stand-in is started with python, which the wine prefix has not; spec/fs_spec.lua checks exclusive temporary files under wine"
  [agent_idle_integration_spec]="the GOLIAT stand-in is started with python, which the wine prefix has not; spec/agent_idle_spec.lua runs the idle and disk policies, spec/windows_spec.lua the service's exit after an idle stop"
  [agent_fleet_integration_spec]="the GOLIAT stand-in is started with python, which the wine prefix has not; spec/agent_super_study_spec.lua runs the fleet policies (stops, ownership, retries, vanished VMs, long histories)"
  [agent_tls_spec]="openssl and python make and serve the private CA's HTTPS dashboard; the wine prefix has neither"
)

if [ ! -f "$exe" ]; then
  echo "wine.sh: $exe not found: run bash host/windows/build.sh first" >&2
  exit 1
fi
bash tests/install-packages.sh --no-recommends wine64 lua-busted
wine=$(command -v wine64 || command -v wine || echo /usr/lib/wine/wine64)
wineserver=$(command -v wineserver || echo "${wine%/*}/wineserver")

tmp=$(mktemp -d /tmp/goliat-wine.XXXXXX)
export WINEPREFIX=$tmp/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY
cleanup() {
  "$wineserver" -k 2>/dev/null || true
  if [ -n "${GOLIAT_WINE_KEEP:-}" ]; then
    echo "wine.sh: kept $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT

t0=$(date +%s)
"$wine" wineboot -i >"$tmp/wineboot.log" 2>&1 || {
  cat "$tmp/wineboot.log" >&2
  exit 1
}
# let the boot session end (services.exe included) before the specs start
# a new one: a service started while it winds down never comes up
"$wineserver" -w
echo "wine.sh: fresh wine prefix in $(($(date +%s) - t0)) s"

# goliat-host.exe with the busted stack in lua\ beside it
bin=$tmp/bin
mkdir -p "$bin/lua"
cp "$exe" "$bin/goliat-host.exe"
for m in busted busted.lua luassert say pl cliargs cliargs.lua mediator.lua \
  dkjson.lua system term; do
  cp -rL "/usr/share/lua/5.4/$m" "$bin/lua/"
done
cp -r "$root/host/windows/lua/." "$bin/lua/"

winpath() { "$wine" winepath -w "$1" 2>/dev/null | tr -d '\r'; }
GOLIAT_HOST=$(winpath "$bin/goliat-host.exe")
GOLIAT_SOURCE_DIR=$(winpath "$root")
export GOLIAT_HOST GOLIAT_SOURCE_DIR
export no_proxy=127.0.0.1,localhost,::1 NO_PROXY=127.0.0.1,localhost,::1
# spec/windows_spec.lua: pending where wine lacks a Windows feature, and
# allowed to install a service in this throw-away prefix
export GOLIAT_WINE=1 GOLIAT_TEST_SERVICE=1

if [ $# -gt 0 ]; then
  specs=("$@")
else
  specs=()
  for f in spec/*_spec.lua; do specs+=("$f"); done
fi

failed=()
passed=()
skipped=()
for spec in "${specs[@]}"; do
  name=$(basename "$spec" .lua)
  if [ $# -eq 0 ] && [ -n "${skip[$name]:-}" ]; then
    skipped+=("$name")
    continue
  fi
  log=$tmp/$name.log
  t1=$(date +%s)
  set +e
  timeout -k 10 "$per_spec_timeout" "$wine" "$bin/goliat-host.exe" \
    spec/run.lua -o gtest "$spec" >"$log" 2>&1
  rc=$?
  set -e
  summary=$(grep -aE '^\[ *(PASSED|FAILED|ERROR|SKIPPED) *\] [0-9]' "$log" |
    tr -d '\r' | sed 's/, listed below://' | tr '\n' ' ' || true)
  if [ $rc = 0 ]; then
    passed+=("$name")
    echo "wine.sh: PASS $name ($(($(date +%s) - t1)) s) $summary"
    # tests pending on Windows (their reason is in the spec)
    grep -aE '^\[ *SKIPPED *\] spec/' "$log" | tr -d '\r' |
      sed 's/^\[ *SKIPPED *\] /    pending: /; s/ ([0-9.]* ms)$//' | sort -u ||
      true
  else
    failed+=("$name")
    [ $rc = 124 ] && summary="timed out after $per_spec_timeout s; $summary"
    echo "wine.sh: FAIL $name (exit $rc) $summary"
    # each failed test with its message, and where a hang was
    awk '/^\[ RUN/ { buf = ""; run = 1 }
      run { buf = buf $0 "\n" }
      /^\[ +OK +\]|^\[ +SKIPPED +\]/ { run = 0 }
      /^\[ +(FAILED|ERROR) +\] spec/ && run { printf "%s", buf; run = 0 }
      END { if (run) printf "%s(still running)\n", buf }' "$log" |
      tr -d '\r' | head -n 120 | sed 's/^/    /' || true
    if ! grep -aq '^\[ RUN' "$log"; then # it did not get as far as a test
      tail -n 20 "$log" | tr -d '\r' | sed 's/^/    | /'
    fi
  fi
done

# the operator's command on a VM: the shipped policy specs, run from the
# unzipped Windows folder (its own busted in lua\), against its agent.lua;
# with no SPEC arguments, and when host/windows/build.sh made the zip
zip=$(ls "$root"/dist/goliat-host-*-windows-x64.zip 2>/dev/null | head -n1 || true)
if [ $# -eq 0 ] && [ -n "$zip" ]; then
  unzipped=$tmp/unzipped
  mkdir -p "$unzipped"
  (cd "$unzipped" && cmake -E tar xf "$zip")
  t1=$(date +%s)
  set +e
  # from another folder than the zip's: what --test finds must not depend
  # on the current folder
  (cd "$tmp" && timeout -k 10 "$per_spec_timeout" "$wine" \
    "$unzipped/goliat-host-windows/goliat-host.exe" \
    "$(winpath "$unzipped/goliat-host-windows/scripts/agent.lua")" --test) \
    >"$tmp/zip-test.log" 2>&1
  rc=$?
  set -e
  summary=$(grep -aE 'successes|policy specs: PASS' "$tmp/zip-test.log" |
    tr -d '\r' | tr '\n' ' ' || true)
  if [ $rc = 0 ] && grep -aq '^policy specs: PASS' "$tmp/zip-test.log"; then
    passed+=("zip:--test")
    echo "wine.sh: PASS the unzipped folder's agent.lua --test ($(($(date +%s) - t1)) s) $summary"
  else
    failed+=("zip:--test")
    echo "wine.sh: FAIL the unzipped folder's agent.lua --test (exit $rc)"
    tail -n 40 "$tmp/zip-test.log" | tr -d '\r' | sed 's/^/    | /'
  fi
fi

echo
echo "wine.sh: passed: ${passed[*]:-none}"
for name in "${skipped[@]}"; do
  echo "wine.sh: skipped $name: ${skip[$name]}"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "wine.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "wine.sh: all run specs passed in $(($(date +%s) - t0)) s"
