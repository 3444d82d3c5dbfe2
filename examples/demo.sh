#!/usr/bin/env bash
# The whole loop on this machine: the development dashboard with two queued
# assignments, the agent, and the GOLIAT stand-in (examples/goliat). Watch
# heartbeat, assignment, download, study and report happen; it ends by
# itself once both reports have arrived.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh build
work=$(mktemp -d /tmp/goliat-demo.XXXXXX)
echo "== work directory: $work"

build/goliat-host examples/dashboard.lua --port 0 --port-file "$work/port" \
  --demo 2 --exit-after-reports 2 &
dashboard=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")

GOLIAT_MONITORING_URL="http://127.0.0.1:$port" GOLIAT_WORK_DIR="$work" \
  GOLIAT_POLL_INTERVAL=2 PYTHONPATH="$PWD/examples" \
  build/goliat-host scripts/agent.lua &
agent=$!
trap 'kill $agent $dashboard 2>/dev/null || true' EXIT

wait $dashboard
kill -TERM $agent
wait $agent || true
trap - EXIT
echo "== done; the agent's files:"
ls -l "$work"
