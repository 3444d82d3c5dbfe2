"""A fleet run, measured: 4 agents work through a super study of 12
assignments on the development dashboard, with 60 finished super studies in
its history and the faults of a real fleet:

  * split 2 fails once (exit code 3), then passes (a failure that passes);
  * split 5 runs out of memory once (exit code 42), then passes;
  * agent 2 is killed with SIGKILL during a study, and started again;
  * agent 3 is stopped with SIGTERM during a study (a service restart), and
    started again.

No operator acts. At the end it prints the makespan against the ideal
(12 studies of STUDY_S seconds on 4 agents, without faults), the operator
actions (0: none is possible here), the wrong outcomes (an assignment that
did not end COMPLETED, a report that does not match, a COMPLETED that the
dashboard showed and took back) and the duplicate runs (a split started
more often than its faults explain).

    python3 bench/fleet.py [--study-s 6] [--keep]

Needs build/goliat-host (bash tests/setup.sh build). Everything runs on
127.0.0.1, in a temporary folder; the processes it starts are stopped at
the end by the pids it recorded.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, "build", "goliat-host")
AGENTS, SPLITS = 4, 12


def arg(name, default):
    if name in sys.argv:
        return type(default)(sys.argv[sys.argv.index(name) + 1])
    return default


STUDY_S = arg("--study-s", 6.0)


class Dashboard:
    def __init__(self, work):
        port_file = os.path.join(work, "port")
        self.proc = subprocess.Popen(
            [HOST, os.path.join(ROOT, "examples", "dashboard.lua"), "--port",
             "0", "--port-file", port_file, "--mode", "super-study"],
            stdout=open(os.path.join(work, "dashboard.log"), "w"),
            stderr=subprocess.STDOUT)
        for _ in range(200):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.05)
        self.url = "http://127.0.0.1:%s" % open(port_file).read().strip()

    def call(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers={
            "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)


def history(dash, n):
    """n finished super studies of 200 assignments each: the development
    dashboard's /dev/history when it has it, else super studies made one
    by one (then not finished: with GOLIAT_SUPER_STUDY set they are only
    in the list the agents read)."""
    try:
        dash.call("/dev/history", {"studies": n, "assignments": 200})
        return "finished (POST /dev/history)"
    except urllib.error.HTTPError:
        for i in range(n):
            dash.call("/dev/super-studies", {
                "name": "history-%02d" % i,
                "assignments": [{"n": j} for j in range(200)]})
        return "PENDING (made one by one)"


class Agent:
    def __init__(self, n, dash, work):
        self.n, self.dash = n, dash
        self.dir = os.path.join(work, "agent-%d" % n)
        os.makedirs(os.path.join(self.dir, "project", "configs"),
                    exist_ok=True)
        self.starts = 0
        self.proc = None

    def start(self):
        env = dict(os.environ,
                   GOLIAT_MONITORING_URL=self.dash.url,
                   GOLIAT_MACHINE_ID="10.1.0.%d" % self.n,
                   GOLIAT_HOSTNAME="fleet-vm-%d" % self.n,
                   GOLIAT_PUBLIC_IP_URL="", GOLIAT_WORK_DIR=self.dir,
                   GOLIAT_PROJECT_DIR=os.path.join(self.dir, "project"),
                   GOLIAT_SUPER_STUDY="fleet", GOLIAT_POLL_INTERVAL="1",
                   GOLIAT_HEARTBEAT_INTERVAL="1", GOLIAT_CLAIM_SETTLE="1",
                   GOLIAT_FAILURE_RETRY_DELAY="2",
                   PYTHONPATH=os.path.join(ROOT, "examples"),
                   no_proxy="127.0.0.1,localhost",
                   NO_PROXY="127.0.0.1,localhost")
        self.starts += 1
        self.proc = subprocess.Popen(
            [HOST, os.path.join(ROOT, "scripts", "agent.lua")], env=env,
            stdout=open(os.path.join(self.dir, "agent-%d.log" % self.starts),
                        "w"), stderr=subprocess.STDOUT)

    def running_study(self):
        """The split index of the study this agent runs now, or None."""
        try:
            st = json.load(open(os.path.join(self.dir, "agent_status.json")))
        except (OSError, ValueError):
            return None
        study = st.get("study") or {}
        return study.get("split_index") if study.get("pid") else None


def main():
    if not os.path.exists(HOST):
        sys.exit("build/goliat-host is missing: bash tests/setup.sh build")
    work = tempfile.mkdtemp(prefix="goliat-fleet-")
    starts_file = os.path.join(work, "starts.txt")
    dash = Dashboard(work)
    agents = []
    try:
        kind = history(dash, 60)
        configs = []
        for i in range(SPLITS):
            cfg = {"duration_s": STUDY_S, "steps": 3, "n": i,
                   "status_file": starts_file, "probe_url": dash.url,
                   "runs_file": os.path.join(work, "runs.txt")}
            if i in (2, 5):
                cfg["exit_codes"] = [3 if i == 2 else 42, 0]
                cfg["count_file"] = os.path.join(work, "count-%d" % i)
            configs.append(cfg)
        listed = len(urllib.request.urlopen(
            dash.url + "/api/super-studies", timeout=60).read())
        study = dash.call("/dev/super-studies",
                          {"name": "fleet", "assignments": configs})
        ids = [a["id"] for a in study["assignments"]]
        t0 = time.monotonic()
        agents = [Agent(n, dash, work) for n in range(1, AGENTS + 1)]
        for a in agents:
            a.start()
        faults = {2: "SIGKILL", 3: "SIGTERM"}
        done_faults = set()
        deadline = t0 + 40 * STUDY_S + 120
        completed = []
        while time.monotonic() < deadline:
            for n, sig in faults.items():
                a = agents[n - 1]
                if n not in done_faults and a.running_study() is not None \
                        and time.monotonic() - t0 > STUDY_S / 2:
                    a.proc.send_signal(getattr(signal, sig))
                    a.proc.wait(60)
                    done_faults.add(n)
                    a.start()
            ev = dash.call("/dev/events")
            fleet = [s for s in ev["super_studies"] if s["name"] == "fleet"]
            statuses = [x["status"] for x in fleet[0]["assignments"]]
            completed = [s == "COMPLETED" for s in statuses]
            if all(completed) and len(done_faults) == len(faults):
                break
            time.sleep(0.5)
        makespan = time.monotonic() - t0
        time.sleep(3)  # the last reports and read-backs
        ev = dash.call("/dev/events")
        reports = [u["message"] for u in ev["gui_updates"]
                   if u["message"].get("assignment_id") in ids]
        wrong = []
        fleet = [s for s in ev["super_studies"] if s["name"] == "fleet"][0]
        for x in fleet["assignments"]:
            if x["status"] != "COMPLETED":
                wrong.append("%s ended %s" % (x["id"], x["status"]))
        for r in reports:
            if r["type"] != "finished":
                wrong.append("report %s for %s" % (r["type"],
                                                   r["assignment_id"]))
        per = {}
        for h in ev["history"]:
            if h["assignmentId"] in ids:
                per.setdefault(h["assignmentId"], []).append(h["status"])
        took_back = sum(1 for seq in per.values()
                        for i, s in enumerate(seq[:-1]) if s == "COMPLETED")
        if took_back:
            wrong.append("%d COMPLETED shown, then taken back" % took_back)
        starts = len(open(starts_file).read().split())
        # one start per split, one more for each of splits 2 and 5, one
        # more for the study stopped with SIGTERM (run again at the restart)
        expected = SPLITS + 2 + 1
        ideal = SPLITS * STUDY_S / AGENTS
        print("history: 60 super studies of 200 assignments, %s; the list "
              "is %d bytes" % (kind, listed))
        print("agents: %d, splits: %d of %.0f s each; faults: split 2 "
              "exit 3 then 0, split 5 exit 42 then 0, agent 2 SIGKILL, agent "
              "3 SIGTERM (both started again)" % (AGENTS, SPLITS, STUDY_S))
        print("all COMPLETED: %s; reports: %d (one per split: %s)" % (
            all(completed), len(reports), len(reports) == SPLITS))
        # the runs the faults make necessary (a rerun each), on 4 agents
        ideal_faults = expected * STUDY_S / AGENTS
        print("makespan %.1f s; ideal %.1f s (%.2fx), or %.1f s with the "
              "faults' reruns (%.2fx)" % (makespan, ideal, makespan / ideal,
                                          ideal_faults,
                                          makespan / ideal_faults))
        print("operator actions: 0")
        print("wrong outcomes: %d%s" % (len(wrong), wrong and ": " +
                                        "; ".join(wrong) or ""))
        print("study starts: %d, expected %d: duplicate runs %d" % (
            starts, expected, max(0, starts - expected)))
    finally:
        for a in agents:
            if a.proc and a.proc.poll() is None:
                a.proc.terminate()
                try:
                    a.proc.wait(40)
                except subprocess.TimeoutExpired:
                    a.proc.kill()
        dash.proc.terminate()
        dash.proc.wait(10)
        if "--keep" in sys.argv:
            print("kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
