#!/bin/sh
# scripts/pyhook/sitecustomize.py, the hook that sends a study's dashboard
# requests (Python `requests`) to the agent's gateway: tests/pyhook_test.py
# runs Python children against loopback servers. Skips when python3 cannot
# import requests.
#   sh tests/pyhook.sh [path/to/goliat-host]   (the host is not used)
set -u
cd "$(dirname "$0")/.." || exit 1
if ! command -v python3 >/dev/null 2>&1; then
  echo "SKIP: tests/pyhook.sh: no python3, so no requests to patch"
  exit 0
fi
exec python3 tests/pyhook_test.py
