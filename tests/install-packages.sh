#!/usr/bin/env bash
# Installs those of the named Debian packages that are missing (as root).
# Used by the build and test scripts; not a test itself.
#   bash tests/install-packages.sh [--no-recommends] PACKAGE...
set -euo pipefail
opts=()
if [ "${1:-}" = "--no-recommends" ]; then
  opts=(--no-install-recommends)
  shift
fi
missing=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}" >&2
if [ "$(id -u)" != 0 ]; then
  echo "run as root (or install these packages first): ${missing[*]}" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${opts[@]}" "${missing[@]}"
