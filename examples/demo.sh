#!/usr/bin/env bash
# The whole loop on this machine: the development dashboard with queued
# work, the agent, and the GOLIAT stand-in (examples/goliat). Watch
# heartbeat, work handed out, config, study and report happen; it ends by
# itself once every report has arrived.
#
#   bash examples/demo.sh                 the planned API: two assignments,
#                                         the second fails with exit code 3
#   bash examples/demo.sh --super-study   the deployed GOLIAT dashboard: a
#                                         super study of three assignments,
#                                         claimed and completed one by one
set -euo pipefail
cd "$(dirname "$0")/.."
mode=planned
case "${1:-}" in
  "") ;;
  --super-study) mode=super-study ;;
  *) echo "usage: bash examples/demo.sh [--super-study]" >&2; exit 2 ;;
esac
bash tests/setup.sh build
work=$(mktemp -d /tmp/goliat-demo.XXXXXX)
echo "== work directory: $work"

if [ "$mode" = super-study ]; then
  reports=3
  dash_args=(--mode super-study --super-study sweep:$reports)
else
  reports=2
  dash_args=(--demo $reports)
fi
build/goliat-host examples/dashboard.lua --port 0 --port-file "$work/port" \
  "${dash_args[@]}" --exit-after-reports $reports &
dashboard=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")

# GOLIAT_PUBLIC_IP_URL= keeps the demo on this machine (no public IP lookup)
GOLIAT_MONITORING_URL="http://127.0.0.1:$port" GOLIAT_WORK_DIR="$work" \
  GOLIAT_PROJECT_DIR="$work/project" GOLIAT_PUBLIC_IP_URL= \
  GOLIAT_POLL_INTERVAL=2 GOLIAT_CLAIM_SETTLE=1 PYTHONPATH="$PWD/examples" \
  build/goliat-host scripts/agent.lua &
agent=$!
trap 'kill $agent $dashboard 2>/dev/null || true' EXIT

wait $dashboard
kill -TERM $agent
wait $agent || true
trap - EXIT
echo "== done; the agent's files:"
ls -l "$work" "$work/project/configs"
