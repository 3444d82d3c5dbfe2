#!/bin/sh
# Soak test: the real agent against a misbehaving local dashboard, its
# memory sampled after a warm-up and at the end (tests/soak.lua).
#   sh tests/soak.sh [GOLIAT_HOST] [SECONDS]     (from the repo root)
# GOLIAT_HOST defaults to build/goliat-host; SECONDS to $SOAK_SECONDS, else
# 20 (ctest runs it so, as the test "soak"). A long run:
#   sh tests/soak.sh build/goliat-host 600
set -u
bin=build/goliat-host
case "${1:-}" in
'' | *[!0-9.]*) bin=${1:-$bin} ;;
*) set -- "$bin" "$@" ;; # only SECONDS was given
esac
seconds=${2:-${SOAK_SECONDS:-20}}
dir=$(mktemp -d "${TMPDIR:-/tmp}/goliat-soak.XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT
"$bin" tests/soak.lua "$seconds" "$dir"
