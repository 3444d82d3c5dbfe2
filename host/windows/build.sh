#!/usr/bin/env bash
# Cross-builds goliat-host.exe for 64-bit Windows on Debian 12 and packs it
# with scripts/ (CMakeLists.txt's install rules) into dist/goliat-host-windows/
# and, with cpack, dist/goliat-host-<version>-windows-x64.zip (the version of
# project() in CMakeLists.txt).
#
#   bash host/windows/build.sh            (as root the first time: it installs
#                                          the Debian packages it needs)
#
# The dependencies (Lua 5.4, libuv, libcurl with Schannel, http-parser,
# cJSON, lua-cjson, luafilesystem) are built from Debian's own source packages,
# fetched with `apt-get source` through a private apt configuration (a
# deb-src entry derived from /etc/apt/sources.list.d/debian.sources; /etc/apt
# is not touched), into a cache outside the checkout:
#   $GOLIAT_WIN_CACHE/<key>   (default /var/cache/goliat-host-win/<key>)
# where <key> names each source package's version and this script's hash,
# so that a later run only builds goliat-host.exe itself (seconds).
#
# Environment: GOLIAT_WIN_CACHE (cache folder), GOLIAT_WIN_BUILD (CMake
# build folder, default build-windows), GOLIAT_WIN_JOBS (parallel jobs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
cache_root=${GOLIAT_WIN_CACHE:-/var/cache/goliat-host-win}
build_dir=${GOLIAT_WIN_BUILD:-$root/build-windows}
jobs=${GOLIAT_WIN_JOBS:-$(nproc)}
target=x86_64-w64-mingw32
cc=$target-gcc-win32
t_start=$(date +%s)

log() { printf '%s build.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- Debian packages needed for the build ----
packages=(gcc-mingw-w64-x86-64 binutils-mingw-w64-x86-64 mingw-w64-x86-64-dev
  libz-mingw-w64-dev cmake make dpkg-dev xz-utils wine64 lua-busted)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "run as root (or install these packages first)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# ---- a private apt configuration for the source packages ----
# Its package lists and downloads live under the cache folder; the sources
# are those of the system (same mirror, suites, components and keys) with
# Types: deb-src.
mkdir -p "$cache_root"
apt_dir=$cache_root/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" \
  "$apt_dir/sources.list.d"
system_sources=/etc/apt/sources.list.d/debian.sources
if [ ! -f "$system_sources" ]; then
  echo "build.sh: $system_sources not found: cannot derive a deb-src entry" >&2
  exit 1
fi
sed -e 's/^Types:.*/Types: deb-src/' "$system_sources" \
  >"$apt_dir/sources.list.d/debian-src.sources"
cat >"$apt_dir/apt.conf" <<EOF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$apt_dir/sources.list.d";
Dir::State::Lists "$apt_dir/lists";
Dir::Cache "$apt_dir/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "root";
EOF
export APT_CONFIG=$apt_dir/apt.conf
# refresh the source lists once a day; an offline run uses the last ones
stamp=$apt_dir/lists/.updated
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440)" ]; then
  log "apt-get update (deb-src lists in $apt_dir)"
  if apt-get update -qq >/dev/null 2>"$apt_dir/update.err"; then
    touch "$stamp"
  elif ! ls "$apt_dir"/lists/*Sources* >/dev/null 2>&1; then
    cat "$apt_dir/update.err" >&2
    exit 1
  else
    log "apt-get update failed; using the source lists of an earlier run"
  fi
fi

# ---- the cache key: each source package's version and this build's files ----
sources=(lua5.4 libuv1 curl http-parser cjson lua-cjson lua-filesystem)
declare -A version
key=""
for s in "${sources[@]}"; do
  dsc=$(apt-get source --print-uris -qq "$s" 2>/dev/null |
    sed -n "s/^'[^']*' \\(${s}_[^ ]*\\.dsc\\) .*/\\1/p" | head -n1)
  if [ -z "$dsc" ]; then
    echo "build.sh: source package $s not found in the deb-src lists" >&2
    exit 1
  fi
  v=${dsc#"${s}_"}
  version[$s]=${v%.dsc}
  key+="${s}_${version[$s]}+"
done
# the files that shape the cached build (not the host sources)
script_hash=$(cat "$here/build.sh" "$here/mingw-w64.cmake" "$here/lua_utf8.h" \
  "$here/lua_utf8.c" | sha256sum | cut -c1-12)
key+="${cc#"$target"-}-$($cc -dumpversion)+build-$script_hash"
deps=$cache_root/$key

work=""
cleanup() { if [ -n "$work" ]; then rm -rf "$work"; fi; }
trap cleanup EXIT

# Run a build step with its output in a log, shown only when it fails.
step() {
  local name=$1
  shift
  if ! "$@" >>"$work/$name.log" 2>&1; then
    tail -n 40 "$work/$name.log" >&2
    echo "build.sh: building $name failed (command: $*)" >&2
    exit 1
  fi
}

build_deps() {
  local out=$1
  work=$(mktemp -d "$cache_root/work.XXXXXX")
  mkdir -p "$out/include" "$out/lib"
  # the same lists as for the key above, so the same versions
  log "apt-get source ${sources[*]}"
  (cd "$work" && apt-get source -qq "${sources[@]}" >/dev/null \
    2>apt-source.err) || { cat "$work/apt-source.err" >&2; exit 1; }
  local src_lua src_uv src_curl src_hp src_cj src_cjson src_lfs
  src_lua=$(echo "$work"/lua5.4-*/)
  src_uv=$(echo "$work"/libuv1-*/)
  src_curl=$(echo "$work"/curl-*/)
  src_hp=$(echo "$work"/http-parser-*/)
  src_cj=$(echo "$work"/cjson-*/)
  src_cjson=$(echo "$work"/lua-cjson-*/)
  src_lfs=$(echo "$work"/lua-filesystem-*/)
  local cflags=(-O2 -g0)

  # Lua 5.4 as Debian builds it (LUA_COMPAT_5_3), static, with UTF-8 file
  # names and environment (lua_utf8.h)
  log "Lua ${version[lua5.4]}"
  mkdir -p "$work/o/lua"
  local f lua_files=()
  for f in "$src_lua"src/*.c; do
    case ${f##*/} in lua.c | luac.c) ;; *) lua_files+=("$f") ;; esac
  done
  printf '%s\n' "${lua_files[@]}" |
    step lua xargs -P "$jobs" -I{} "$cc" "${cflags[@]}" -DLUA_COMPAT_5_3 \
      -include "$here/lua_utf8.h" -c {} -o {}.o
  for f in "${lua_files[@]}"; do mv "$f.o" "$work/o/lua/"; done
  # (itself without lua_utf8.h: it calls the ANSI functions as a fallback)
  step lua "$cc" "${cflags[@]}" -Wall -Wextra -Werror -c "$here/lua_utf8.c" \
    -o "$work/o/lua/lua_utf8.o"
  $target-ar rcs "$out/lib/liblua.a" "$work"/o/lua/*.o
  cp "$src_lua"src/{lua.h,luaconf.h,lualib.h,lauxlib.h,lua.hpp} "$out/include/"

  # lua-cjson and luafilesystem: compiled in, preloaded by goliat-host
  log "lua-cjson ${version[lua-cjson]}, luafilesystem ${version[lua-filesystem]}"
  mkdir -p "$work/o/mod"
  for f in "$src_cjson"{lua_cjson.c,strbuf.c,fpconv.c} "$src_lfs"src/lfs.c; do
    step modules "$cc" "${cflags[@]}" -I"$out/include" -I"$src_cjson" -c "$f" \
      -o "$work/o/mod/$(basename "$f" .c).o"
  done
  $target-ar rcs "$out/lib/libluamodules.a" "$work"/o/mod/*.o

  # http-parser: one C file
  log "http-parser ${version[http-parser]}"
  step http-parser "$cc" "${cflags[@]}" -c "$src_hp/http_parser.c" \
    -o "$work/o/http_parser.o"
  $target-ar rcs "$out/lib/libhttp_parser.a" "$work/o/http_parser.o"
  cp "$src_hp/http_parser.h" "$out/include/"

  # cJSON (host.json): one C file
  log "cJSON ${version[cjson]}"
  step cjson "$cc" "${cflags[@]}" -c "$src_cj/cJSON.c" -o "$work/o/cJSON.o"
  $target-ar rcs "$out/lib/libcjson.a" "$work/o/cJSON.o"
  mkdir -p "$out/include/cjson"
  cp "$src_cj/cJSON.h" "$out/include/cjson/"

  # libuv with its own CMake build, static
  log "libuv ${version[libuv1]}"
  step libuv cmake -S "$src_uv" -B "$work/b-uv" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_TOOLCHAIN_FILE="$here/mingw-w64.cmake" \
    -DLIBUV_BUILD_TESTS=OFF -DLIBUV_BUILD_BENCH=OFF
  step libuv cmake --build "$work/b-uv" --target uv_a -j "$jobs"
  cp "$work/b-uv/libuv_a.a" "$out/lib/libuv.a"
  cp -r "$src_uv"include/uv.h "$src_uv"include/uv "$out/include/"

  # libcurl: static, Schannel (Windows' certificate store), HTTP and HTTPS,
  # zlib (Debian's static build for mingw: compressed replies of the
  # dashboard's work lookups are decoded), no other optional library
  # (brotli, zstd, nghttp2, ssh, ldap, idn, psl).
  # FILE stays compiled in (never allowed: the host restricts requests and
  # redirects to http and https) so that a redirect to file:// fails as
  # "unsupported protocol", as with Debian's libcurl, rather than as a
  # malformed URL (HTTP_ONLY).
  log "curl ${version[curl]} (Schannel)"
  local p off=()
  for p in DICT FTP GOPHER IMAP LDAP LDAPS MQTT POP3 RTSP SMB SMTP TELNET TFTP; do
    off+=("-DCURL_DISABLE_$p=ON")
  done
  step curl cmake -S "$src_curl" -B "$work/b-curl" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_TOOLCHAIN_FILE="$here/mingw-w64.cmake" \
    -DBUILD_SHARED_LIBS=OFF -DBUILD_CURL_EXE=OFF -DBUILD_TESTING=OFF \
    -DENABLE_MANUAL=OFF -DCURL_ENABLE_EXPORT_TARGET=OFF -DPICKY_COMPILER=OFF \
    "${off[@]}" -DCURL_USE_SCHANNEL=ON -DCURL_USE_OPENSSL=OFF \
    -DCURL_WINDOWS_SSPI=ON -DCURL_ZLIB=ON \
    -DZLIB_INCLUDE_DIR="/usr/$target/include" \
    -DZLIB_LIBRARY="/usr/$target/lib/libz.a" -DCURL_BROTLI=OFF -DCURL_ZSTD=OFF \
    -DUSE_NGHTTP2=OFF -DUSE_LIBIDN2=OFF -DUSE_WIN32_IDN=OFF \
    -DCURL_USE_LIBPSL=OFF -DCURL_USE_LIBSSH2=OFF -DCURL_USE_LIBSSH=OFF \
    -DCURL_USE_GSSAPI=OFF -DENABLE_UNIX_SOCKETS=OFF -DCURL_CA_BUNDLE=none -DCURL_CA_PATH=none
  step curl cmake --build "$work/b-curl" --target libcurl -j "$jobs"
  cp "$(find "$work/b-curl/lib" -name 'libcurl*.a' | head -n1)" \
    "$out/lib/libcurl.a"
  cp "/usr/$target/lib/libz.a" "$out/lib/libz.a"
  cp -r "$src_curl"include/curl "$out/include/"

  for s in "${sources[@]}"; do echo "$s ${version[$s]}"; done \
    >"$out/VERSIONS"
}

# one build of the dependencies at a time (concurrent runs wait here)
exec 9>"$cache_root/.lock"
flock 9
if [ -f "$deps/.complete" ]; then
  log "dependencies: cached in $deps"
else
  log "dependencies: building into $deps"
  t0=$(date +%s)
  rm -rf "$deps.tmp"
  build_deps "$deps.tmp"
  touch "$deps.tmp/.complete"
  rm -rf "$deps"
  mv "$deps.tmp" "$deps"
  log "dependencies built in $(($(date +%s) - t0)) s"
fi
touch "$deps"
# builds of other versions not used for 30 days go
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -name '*+build-*' \
  -mtime +30 -exec rm -rf {} +
flock -u 9

# ---- goliat-host.exe: the same CMakeLists.txt, if(WIN32) branches ----
log "goliat-host.exe in $build_dir"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$here/mingw-w64.cmake" -DGOLIAT_WERROR=ON \
  -DGOLIAT_WIN_DEPS="$deps" >/dev/null
cmake --build "$build_dir" --target goliat-host -j "$jobs" >/dev/null
exe=$build_dir/goliat-host.exe
# the version of project() in CMakeLists.txt, for the zip's name
host_version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' \
  "$build_dir/CMakeCache.txt")
if [ -z "$host_version" ]; then
  echo "build.sh: no CMAKE_PROJECT_VERSION in $build_dir/CMakeCache.txt" >&2
  exit 1
fi

# DLLs it needs beyond Windows' own (none expected: everything is static)
system_dlls='^(kernel32|user32|advapi32|shell32|ole32|ws2_32|iphlpapi|userenv|psapi|dbghelp|crypt32|bcrypt|secur32|normaliz|msvcrt|api-ms-win-.*)\.dll$'
extra_dlls=$($target-objdump -p "$exe" | sed -n 's/^\s*DLL Name: //p' |
  tr '[:upper:]' '[:lower:]' | grep -Ev "$system_dlls" || true)

# (copied to $build_dir/dlls/, which the install rules ship next to the exe)
rm -rf "$build_dir/dlls"
mkdir -p "$build_dir/dlls"
for dll in $extra_dlls; do
  found=$(find /usr/lib/gcc/$target /usr/$target -iname "$dll" | head -n1)
  if [ -z "$found" ]; then
    echo "build.sh: goliat-host.exe needs $dll, which was not found" >&2
    exit 1
  fi
  cp "$found" "$build_dir/dlls/"
done

# busted's Lua parts, for `goliat-host.exe scripts\agent.lua --test` on the
# VM: Debian's pure-Lua busted stack (lua-system's and lua-term's Lua
# parts included), and stand-ins for their two small C modules
# (host/windows/lua/, copied over them); copied to $build_dir/lua/, which the
# install rules ship as lua\ next to the exe (on Lua's module path there)
rm -rf "$build_dir/lua"
mkdir -p "$build_dir/lua"
for m in busted busted.lua luassert say pl cliargs cliargs.lua mediator.lua \
  dkjson.lua system term; do
  if [ ! -e "/usr/share/lua/5.4/$m" ]; then
    echo "build.sh: /usr/share/lua/5.4/$m is missing (apt-get install lua-busted)" >&2
    exit 1
  fi
  cp -rL "/usr/share/lua/5.4/$m" "$build_dir/lua/"
done
cp -r "$root/host/windows/lua/." "$build_dir/lua/"

# ---- the folder an operator copies to a VM, and its zip ----
# both from the install rules: goliat-host.exe (stripped), scripts/ with
# goliat-agent.conf.example, README-windows.txt
dist=$root/dist/goliat-host-windows
zip_name=goliat-host-$host_version-windows-x64.zip
rm -rf "$dist" "$root"/dist/goliat-host-*windows*.zip
cmake --install "$build_dir" --prefix "$dist" --strip >/dev/null
rm -f "$build_dir"/goliat-host-*windows*.zip
(cd "$build_dir" && cpack -G ZIP >/dev/null)
mv "$build_dir/$zip_name" "$root/dist/"
# what an operator unzips: one folder, the exe and the agent in it
listing=$(cd "$root/dist" && cmake -E tar tf "$zip_name")
for f in goliat-host.exe scripts/agent.lua scripts/study_wrapper.lua \
  scripts/pyhook/sitecustomize.py scripts/goliat-agent.conf.example \
  README-windows.txt spec/policy.list spec/support/fake_host.lua \
  lua/busted/runner.lua lua/system/core.lua; do
  if ! grep -qx "goliat-host-windows/$f" <<<"$listing"; then
    echo "build.sh: $zip_name lacks goliat-host-windows/$f" >&2
    exit 1
  fi
done

log "done in $(($(date +%s) - t_start)) s: $dist and dist/$zip_name" \
  "($(stat -c %s "$root/dist/$zip_name") bytes; DLLs: ${extra_dlls:-none})"
