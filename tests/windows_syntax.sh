#!/bin/sh
# Compiles every shared host/ source for Windows (mingw-w64, syntax only,
# with Windows' own headers and libuv's Windows side), so that code written
# on Linux stays portable until the full Windows build exists.
# Usage: sh tests/windows_syntax.sh [goliat-host]  (the argument is unused)
set -eu
cc=x86_64-w64-mingw32-gcc
if ! command -v $cc >/dev/null 2>&1; then
  echo "windows_syntax: $cc not installed (tests/setup.sh installs it)" >&2
  exit 1
fi
inc=$(mktemp -d)
trap 'rm -rf "$inc"' EXIT
cp -r /usr/include/uv.h /usr/include/uv /usr/include/http_parser.h \
  /usr/include/cjson "$inc/"
curl_inc=$(pkg-config --variable=includedir libcurl)
if [ -d "$curl_inc/curl" ]; then
  cp -r "$curl_inc/curl" "$inc/"
else
  cp -r /usr/include/x86_64-linux-gnu/curl "$inc/"
fi
# HOST_VERSION comes from project() in CMakeLists.txt
version=$(sed -n 's/^project(goliat-host VERSION \([^ )]*\).*/\1/p' CMakeLists.txt)
status=0
for f in host/*.c; do
  case $f in *_posix.c) continue ;; esac
  if ! $cc -std=c11 -D__USE_MINGW_ANSI_STDIO=1 -fsyntax-only -Wall -Wextra \
      -Wshadow -Werror "-DHOST_VERSION=\"$version\"" -Ihost -I"$inc" \
      -I/usr/include/lua5.4 "$f"; then
    status=1
  fi
done
[ $status = 0 ] && echo "windows_syntax: all host sources compile for Windows"
exit $status
