#!/usr/bin/env bash
# Builds the Release Debian package (cpack -G DEB in build-rel/), installs it
# with apt-get, checks what it installed, and removes it again (purge). Debian
# 12, as root; installs what the build needs. Not run by ctest (it installs
# into the system): .ci/run runs it.
#   bash tests/package.sh
# A goliat-host package already installed is purged first. Environment:
# GOLIAT_PKG_BUILD (CMake build folder, default build-rel), GOLIAT_PKG_KEEP=1
# (leave the package installed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${GOLIAT_PKG_BUILD:-build-rel}
unit=/lib/systemd/system/goliat-agent.service
conf=/etc/goliat-host/goliat-agent.conf
scripts=/usr/share/goliat-host/scripts

log() { printf '%s package.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() {
  echo "package.sh: FAILED: $*" >&2
  exit 1
}
installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' goliat-host 2>/dev/null)" = \
    installed ]
}
purge() {
  if dpkg-query -W goliat-host >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq goliat-host >/dev/null
  fi
}

if [ "$(id -u)" != 0 ]; then
  echo "package.sh: run as root (it installs and removes the package)" >&2
  exit 1
fi
# to build (dpkg-shlibdeps is in dpkg-dev; cpack needs file for it)
bash tests/install-packages.sh build-essential cmake pkg-config \
  liblua5.4-dev libcurl4-openssl-dev libuv1-dev libhttp-parser-dev \
  libcjson-dev dpkg-dev file

# ---- a package left from before goes first ----
if dpkg-query -W goliat-host >/dev/null 2>&1; then
  log "purging the goliat-host package installed before"
  purge
fi

# ---- build ----
t0=$(date +%s)
log "Release build and cpack -G DEB in $build"
rm -f "$build"/goliat-host_*.deb
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DGOLIAT_WERROR=ON >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
(cd "$build" && cpack -G DEB >/dev/null)
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
[ -n "$version" ] || fail "no CMAKE_PROJECT_VERSION in $build/CMakeCache.txt"
deb=$build/goliat-host_${version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || fail "$deb was not made"
log "$deb: $(stat -c %s "$deb") bytes, built in $(($(date +%s) - t0)) s"

cleanup() {
  if [ -z "${GOLIAT_PKG_KEEP:-}" ] && installed; then
    log "purging the package (a check failed)"
    purge || true
  fi
}
trap cleanup EXIT

# ---- install (apt-get: the dependencies come with it) ----
log "apt-get install ./$deb"
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$root/$deb" \
  >"$build/apt-install.log" 2>&1; then
  # package lists that are missing or out of date
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$root/$deb" \
    >"$build/apt-install.log" 2>&1 || {
    cat "$build/apt-install.log" >&2
    fail "apt-get install $deb"
  }
fi
installed || fail "dpkg does not list goliat-host as installed"

# ---- what it installed ----
on_path=$(command -v goliat-host || echo nothing)
[ "$on_path" = /usr/bin/goliat-host ] ||
  fail "goliat-host on PATH is $on_path, not /usr/bin/goliat-host"
out=$(goliat-host --version)
case $out in
  "goliat-host $version ("*) ;;
  *) fail "goliat-host --version printed '$out', not version $version" ;;
esac
for f in /usr/bin/goliat-host "$scripts/agent.lua" \
  "$scripts/study_wrapper.lua" "$scripts/lib/settings.lua" \
  "$scripts/protocol/super_study.lua" "$scripts/pyhook/sitecustomize.py" \
  "$unit" "$conf"; do
  [ -f "$f" ] || fail "$f is not installed"
done
conffiles=$(dpkg-query -W -f='${Conffiles}\n' goliat-host)
grep -q "^ $conf " <<<"$conffiles" || fail "$conf is not a conffile: $conffiles"
[ "$(stat -c %a "$conf")" = 600 ] || fail "$conf is not owner-only"
grep -qx "ExecStart=/usr/bin/goliat-host $scripts/agent.lua" "$unit" ||
  fail "$unit does not start /usr/bin/goliat-host $scripts/agent.lua"
grep -qx "Environment=GOLIAT_CONFIG=$conf" "$unit" ||
  fail "$unit does not set GOLIAT_CONFIG=$conf"
grep -qx "KillMode=process" "$unit" || fail "$unit lacks KillMode=process"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
fi
# the installed host: its version, the cjson module (the lua-cjson
# dependency) and every installed script loads
probe=$(mktemp -d /tmp/goliat-package.XXXXXX)
trap 'rm -rf "$probe"; cleanup' EXIT
cat >"$probe/probe.lua" <<EOF
local host = require "host"
assert(host.version == "$version", "host.version is " .. host.version)
local cjson = require "cjson"
assert(cjson.encode({ 1, "a" }) == '[1,"a"]', "cjson")
for _, f in ipairs(arg) do assert(loadfile(f)) end
print("ok")
EOF
mapfile -t lua_files < <(find "$scripts" -name '*.lua' | sort)
out=$(goliat-host "$probe/probe.lua" "${lua_files[@]}" 2>&1) ||
  fail "the installed goliat-host: $out"
[ "$out" = ok ] || fail "the installed goliat-host printed: $out"
# an edited settings file survives a reinstall (it is a conffile)
echo "# edited by tests/package.sh" >>"$conf"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall \
  "$root/$deb" >"$build/apt-install.log" 2>&1 ||
  { cat "$build/apt-install.log" >&2; fail "apt-get install --reinstall"; }
grep -qx "# edited by tests/package.sh" "$conf" ||
  fail "reinstalling the package replaced the edited $conf"

# ---- the installed agent's --check against the development dashboard ----
mkdir -p "$probe/work" "$probe/project/configs" "$probe/project/data"
goliat-host examples/dashboard.lua --port 0 --port-file "$probe/port" \
  >"$probe/dashboard.log" 2>&1 &
dash_pid=$!
for _ in $(seq 100); do [ -s "$probe/port" ] && break; sleep 0.1; done
[ -s "$probe/port" ] || { kill "$dash_pid"; fail "the development dashboard did not start"; }
cat >"$probe/agent.conf" <<EOF
GOLIAT_MONITORING_URL=http://127.0.0.1:$(cat "$probe/port")
GOLIAT_PUBLIC_IP_URL=
GOLIAT_WORK_DIR=$probe/work
GOLIAT_PROJECT_DIR=$probe/project
GOLIAT_STUDY_COMMAND=["python3","-m","goliat","study"]
GOLIAT_MIN_FREE_GB=0.01
EOF
log "goliat-host $scripts/agent.lua --check"
set +e
GOLIAT_CONFIG=$probe/agent.conf PYTHONPATH=$root/examples \
  goliat-host "$scripts/agent.lua" --check | tee "$probe/check.txt"
check_rc=${PIPESTATUS[0]}
set -e
kill "$dash_pid" 2>/dev/null || true
wait "$dash_pid" 2>/dev/null || true
[ "$check_rc" = 0 ] || fail "the installed agent's --check exited $check_rc"
grep -q "^OK   heartbeat" "$probe/check.txt" || fail "--check made no heartbeat"
grep -q "^OK   gateway hook: $scripts/pyhook/sitecustomize.py" "$probe/check.txt" ||
  fail "--check did not find the installed gateway hook"
# ---- the shipped policy specs, run on the "VM" against the installed
# agent.lua (lua-busted comes with the package's dependencies) ----
log "goliat-host $scripts/agent.lua --test"
set +e
(cd / && goliat-host "$scripts/agent.lua" --test) >"$probe/test.txt" 2>&1
test_rc=$?
set -e
tail -n 3 "$probe/test.txt"
[ "$test_rc" = 0 ] || { cat "$probe/test.txt" >&2; fail "the installed agent's --test exited $test_rc"; }
grep -q "^policy specs: PASS$" "$probe/test.txt" || fail "--test did not say PASS"
[ -f "$(dirname "$scripts")/spec/policy.list" ] || fail "the policy specs are not installed"

# a study's python, run as root, caches the hook's byte code beside it: the
# removal must not leave that behind
python3 -c "import py_compile; py_compile.compile('$scripts/pyhook/sitecustomize.py')"
[ -d "$scripts/pyhook/__pycache__" ] || fail "no __pycache__ made for the test"

if [ -n "${GOLIAT_PKG_KEEP:-}" ]; then
  log "installed and checked; kept (GOLIAT_PKG_KEEP)"
  exit 0
fi

# ---- remove, then purge ----
log "apt-get remove goliat-host"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq goliat-host >/dev/null
[ ! -e /usr/bin/goliat-host ] || fail "/usr/bin/goliat-host is still there"
[ ! -e "$unit" ] || fail "$unit is still there"
[ ! -e "$scripts" ] || fail "$scripts is still there"
[ -f "$conf" ] || fail "apt-get remove removed the settings file $conf"
log "apt-get purge goliat-host"
purge
[ ! -e "$conf" ] || fail "$conf is still there after purge"
! dpkg-query -W goliat-host >/dev/null 2>&1 ||
  fail "dpkg still lists goliat-host"
log "ok: goliat-host $version packaged, installed, checked, removed" \
  "($(($(date +%s) - t0)) s)"
