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
#   bash examples/demo.sh --gateway       the planned API with the study's
#                                         gateway on (GOLIAT_GATEWAY=on): two
#                                         studies that talk like GOLIAT (the
#                                         second says "finished", exits 3)
#                                         through a 10 s dashboard outage
set -euo pipefail
cd "$(dirname "$0")/.."
mode=planned
gateway=off
case "${1:-}" in
  "") ;;
  --super-study) mode=super-study ;;
  --gateway) gateway=on ;;
  *) echo "usage: bash examples/demo.sh [--super-study | --gateway]" >&2
     exit 2 ;;
esac
bash tests/setup.sh build
work=$(mktemp -d /tmp/goliat-demo.XXXXXX)
echo "== work directory: $work"

if [ "$mode" = super-study ]; then
  reports=3
  dash_args=(--mode super-study --super-study sweep:$reports)
elif [ "$gateway" = on ]; then
  reports=2
  dash_args=()
else
  reports=2
  dash_args=(--demo $reports)
fi
build/goliat-host examples/dashboard.lua --port 0 --port-file "$work/port" \
  "${dash_args[@]}" --exit-after-reports $reports &
dashboard=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")

# POST a JSON body to the dashboard's development API
dev() {
  python3 -c 'import sys, urllib.request as u
u.urlopen(u.Request(sys.argv[1], data=sys.argv[2].encode(),
  headers={"Content-Type": "application/json"})).read()' \
    "http://127.0.0.1:$port/dev/$1" "$2"
}
if [ "$gateway" = on ]; then
  dev assignments '{"config": {"bridge": true, "duration_s": 15,
    "log_lines": 300, "steps": 150, "results_bytes": 1000000}}'
  dev assignments '{"config": {"bridge": true, "duration_s": 3,
    "log_lines": 20, "exit_code": 3}}'
  # the dashboard stops taking the studies' messages for 10 s, 5 s in
  ( sleep 5
    echo "== dashboard outage: gui updates and uploads refused for 10 s"
    dev fail '[{"mode": "reset", "path": "^/api/gui%-update", "count": -1},
      {"mode": "reset", "path": "/results$", "count": -1}]'
    sleep 10
    echo "== dashboard back"
    dev clear '{}' ) &
fi

# GOLIAT_PUBLIC_IP_URL= keeps the demo on this machine (no public IP lookup)
GOLIAT_MONITORING_URL="http://127.0.0.1:$port" GOLIAT_WORK_DIR="$work" \
  GOLIAT_PROJECT_DIR="$work/project" GOLIAT_PUBLIC_IP_URL= \
  GOLIAT_POLL_INTERVAL=2 GOLIAT_CLAIM_SETTLE=1 PYTHONPATH="$PWD/examples" \
  GOLIAT_GATEWAY=$gateway \
  build/goliat-host scripts/agent.lua &
agent=$!
trap 'kill $agent $dashboard 2>/dev/null || true' EXIT

wait $dashboard
kill -TERM $agent
wait $agent || true
trap - EXIT
echo "== done; the agent's files:"
ls -l "$work" "$work/project/configs"
