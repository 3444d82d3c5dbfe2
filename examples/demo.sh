#!/usr/bin/env bash
# The whole loop on this machine: the development dashboard with queued
# work, the agent, and the GOLIAT stand-in (examples/goliat). Watch
# heartbeat, work handed out, config, study and report happen; it ends by
# itself once every report has arrived (--super-study: once the dashboard
# shows the expected end, or after a bounded wait).
#
#   bash examples/demo.sh                 the planned API: two assignments,
#                                         the second fails with exit code 3
#                                         (three times: the agent runs a
#                                         failure again, here 2 s later)
#   bash examples/demo.sh --super-study   the deployed GOLIAT dashboard: a
#                                         super study of three assignments,
#                                         claimed one by one; the first two
#                                         complete, the third exits with
#                                         code 3 and must stay failed,
#                                         although the stand-in then says
#                                         `finished` as GOLIAT does: RUNNING
#                                         in storage, shown FAILED, the
#                                         worker ERROR. Prints a summary,
#                                         and exits 1 when it did not end so
#   bash examples/demo.sh --gateway       the planned API with two studies
#                                         that talk like GOLIAT (the second
#                                         says "finished", exits 3) through a
#                                         10 s dashboard outage, which the
#                                         study's gateway (on by default, as
#                                         in every mode) rides out
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
  # the super study is created below (its third split fails); the demo
  # ends when the dashboard shows the end, not on the count of reports
  reports=3
  dash_args=(--mode super-study)
elif [ "$gateway" = on ]; then
  reports=2
  dash_args=(--exit-after-reports $reports)
else
  reports=2
  dash_args=(--demo $reports --exit-after-reports $reports)
fi
build/goliat-host examples/dashboard.lua --port 0 --port-file "$work/port" \
  "${dash_args[@]}" &
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
if [ "$mode" = super-study ]; then
  dev super-studies '{"name": "sweep", "description": "demo super study",
    "assignments": [{"exit_code": 0, "duration_s": 2, "steps": 2},
      {"exit_code": 0, "duration_s": 2, "steps": 2},
      {"exit_code": 3, "duration_s": 2, "steps": 2}]}'
fi
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
  GOLIAT_FAILURE_RETRY_DELAY=2 \
  build/goliat-host scripts/agent.lua &
agent=$!
trap 'kill $agent $dashboard 2>/dev/null || true' EXIT

status=0
if [ "$mode" = super-study ]; then
  # Bounded waits: the agent's three reports (120 s at most), then the end
  # held for 5 s (30 s more at most): splits 0 and 1 COMPLETED; split 2,
  # which exited with code 3, RUNNING in storage, shown FAILED, its worker
  # ERROR. Then a summary of what the dashboard shows.
  python3 - "http://127.0.0.1:$port" $reports <<'PY' || status=1
import json, sys, time, urllib.request as u
base, want = sys.argv[1], int(sys.argv[2])

def get(path):
    with u.urlopen(base + path, timeout=5) as r:
        return json.load(r)

def look():
    """The agent's reports, the super study as shown, and per split:
    (index, id, stored status, shown status, worker id, worker status)."""
    ev = get("/dev/events")
    reports = [g["message"] for g in ev["gui_updates"]
               if g["message"].get("assignment_id") is not None]
    study = next(s for s in ev["super_studies"] if s["name"] == "sweep")
    shown = get("/api/super-studies/" + study["id"])
    derived = {a["id"]: a for a in shown["assignments"]}
    rows = []
    for a in sorted(study["assignments"], key=lambda a: a["index"]):
        d = derived.get(a["id"], {})
        w = d.get("worker") or {}
        rows.append((a["index"], a["id"], a["status"], d.get("status"),
                     w.get("id"), w.get("status")))
    return reports, shown, rows

def as_expected(rows):
    return [r[2:4] for r in rows] == [("COMPLETED", "COMPLETED")] * 2 + \
        [("RUNNING", "FAILED")] and rows[2][5] == "ERROR"

deadline = time.monotonic() + 120
while len(look()[0]) < want and time.monotonic() < deadline:
    time.sleep(1)
held_since, deadline = None, time.monotonic() + 30
while time.monotonic() < deadline:
    if as_expected(look()[2]):
        held_since = held_since or time.monotonic()
        if time.monotonic() - held_since >= 5:
            break
    else:
        held_since = None
    time.sleep(1)
reports, shown, rows = look()
print("== summary: super study %s is %s, %s of %s completed" % (
    shown["name"], shown["status"], shown["completedAssignments"],
    shown["totalAssignments"]))
for index, aid, stored, derived, worker, wstatus in rows:
    print("   split %d (%s): stored %s, shown %s; worker %s %s" % (
        index, aid, stored, derived, worker, wstatus))
for r in reports:
    print("   report: %s for %s (exit code %s): %s" % (
        r["type"], r["assignment_id"], r.get("exit_code"), r.get("message")))
if len(reports) < want:
    print("== NOT AS EXPECTED: %d of %d reports arrived" % (len(reports), want))
    sys.exit(1)
if not as_expected(rows):
    print("== NOT AS EXPECTED: split 2 (exit code 3) should stay RUNNING in "
          "storage, shown FAILED, its worker ERROR; splits 0 and 1 COMPLETED")
    sys.exit(1)
print("== as expected: the failed split stays failed")
PY
  kill -TERM $agent
  wait $agent || true
  kill -TERM $dashboard
  wait $dashboard || true
else
  wait $dashboard
  kill -TERM $agent
  wait $agent || true
fi
trap - EXIT
echo "== done; the agent's files:"
ls -l "$work" "$work/project/configs"
exit $status
