"""The fleet benchmark (issue 22): N agents (default 4) work through a super
study of M assignments (default 12) on the development dashboard in
super-study mode, with K finished super studies in its history (default 60)
and the faults of a real fleet (--faults on, the default):

  * split 2 fails once (exit code 3), then passes (a failure that passes);
  * split 5 runs out of memory once (exit code 42), then passes (with fewer
    than 6 splits: the last split);
  * agent 2 is killed with SIGKILL during a study, and started again;
  * agent 3 is stopped with SIGTERM during a study (a service restart), and
    started again.

No operator acts. The agents start --warmup seconds before the super study
is made (idle: their lookups back off meanwhile), work until every
assignment is COMPLETED, then are watched for --idle-tail seconds more.
With --idle-after S the agents have GOLIAT_IDLE_AFTER=S and a
GOLIAT_IDLE_COMMAND that notes the time it ran (the VM stopping); the bench
then stops that agent itself (SIGTERM): the VM is gone. It prints a table
and, last, one JSON line with every figure:

  * the makespan (the super study made -> its last assignment COMPLETED)
    against the ideal (M studies of --study-s seconds on N agents), also
    with the reruns the faults make necessary;
  * the pickup latency (the super study made -> the first claim; and each
    agent's first claim), and the gap between one study's end and the next
    study's start on the same agent (the dashboard's COMPLETED by a
    `finished` from that machine -> its next claim), mean and max;
  * requests and bytes (bodies, both ways) per agent-minute, in the
    warm-up, while working and idle after the work ran out, with the
    heartbeats and the lookups (GET /api/super-studies...) apart;
  * the VM-seconds idle (each agent's last study -> its stop) and billed
    after the work ran out (the last COMPLETED -> each agent's stop; an
    agent that never stops counts to the end of the tail: a lower bound);
  * runs per assignment (the stand-in's starts), the duplicate runs (starts
    beyond what the faults explain), the wrong outcomes (an assignment that
    did not end COMPLETED, a report that does not match, a COMPLETED that
    the dashboard showed and took back) and the operator actions (0).

Before / after issue 22, with and without the history (the same command,
--before runs the agents as they behaved before: GOLIAT_IDLE_POLL_MAX equal
to GOLIAT_POLL_INTERVAL, no idle back-off, no GOLIAT_IDLE_AFTER):

    python3 bench/fleet.py --before --history 60 --idle-tail 120
    python3 bench/fleet.py --history 60 --idle-after 60 --idle-tail 120
    python3 bench/fleet.py --before --history 0 --idle-tail 120
    python3 bench/fleet.py --history 0 --idle-after 60 --idle-tail 120
    python3 bench/fleet.py --short          (CI, bash bench/run.sh --short:
                                             about a minute)

Options: --agents N (4) --splits M (12) --history K (60; 0: none)
--faults on|off (on) --study-s S (6) --idle-after S (0: off) --idle-tail S
(90, at most 600; the watch ends sooner once every agent has stopped)
--warmup S (20; kept below --idle-after) --poll S and --heartbeat S (the
agents' GOLIAT_POLL_INTERVAL and GOLIAT_HEARTBEAT_INTERVAL, 1 s: a fast
fleet) --host PATH (build/goliat-host) --keep (keep the temporary folder)
--before --short (3 agents, 4 splits, history 10, study 2 s, idle-after 20,
idle-tail 45, warm-up 3 s).

Exit status: 0, or 1 when something is broken: a wrong outcome, the work
not all COMPLETED in time, a duplicate run, an agent that exited on its own
with a code other than 0, or (with --idle-after) an agent whose idle stop
never came within the tail. It asserts no timings.

Needs build/goliat-host (cmake -S . -B build && cmake --build build).
Everything runs on 127.0.0.1, in a temporary folder; the processes it
starts are stopped at the end by the pids it recorded.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HISTORY_ASSIGNMENTS = 200
SHORT = {"agents": 3, "splits": 4, "history": 10, "study_s": 2.0,
         "idle_after": 20.0, "idle_tail": 45.0, "warmup": 3.0}
# the idle command: notes when it ran (the VM stopping) in the file given
IDLE_NOTE = "import sys, time; open(sys.argv[1], 'a').write('%.3f\\n' " \
    "% time.time())"


# the agent's log lines a study's start and end (for the gap, as the agent
# saw it; the dashboard's view is the primary figure)
LOG_TIME = r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z \w+\s+"
LOG_START = re.compile(LOG_TIME + r"assignment (\S+): starting ")
LOG_END = re.compile(LOG_TIME + r"assignment (\S+) ended")


def log_time(text):
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.datetime.strptime(text, fmt).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def options(argv):
    p = argparse.ArgumentParser(
        description="The fleet benchmark (see the top of bench/fleet.py).")
    p.add_argument("--agents", type=int, default=None)
    p.add_argument("--splits", type=int, default=None)
    p.add_argument("--history", type=int, default=None)
    p.add_argument("--faults", choices=("on", "off"), default="on")
    p.add_argument("--study-s", type=float, default=None)
    p.add_argument("--idle-after", type=float, default=None)
    p.add_argument("--idle-tail", type=float, default=None)
    p.add_argument("--warmup", type=float, default=None)
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--host", default=os.path.join(ROOT, "build",
                                                  "goliat-host"))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--before", action="store_true")
    p.add_argument("--short", action="store_true")
    o = p.parse_args(argv)
    defaults = SHORT if o.short else {
        "agents": 4, "splits": 12, "history": 60, "study_s": 6.0,
        "idle_after": 0.0, "idle_tail": 90.0, "warmup": 20.0}
    for k, v in defaults.items():
        if getattr(o, k) is None:
            setattr(o, k, v)
    if o.before:
        o.idle_after = 0.0  # no GOLIAT_IDLE_AFTER before issue 22
    if o.agents < 1 or o.splits < 1 or o.history < 0 or o.study_s <= 0:
        p.error("--agents and --splits at least 1, --history at least 0, "
                "--study-s positive")
    o.idle_tail = max(0.0, min(o.idle_tail, 600.0))
    o.warmup = max(0.0, o.warmup)
    o.warmup_note = ""
    if o.idle_after > 0 and o.warmup > o.idle_after / 2:
        # the idle stop would come before the work does
        o.warmup_note = " (cut from %g s: below half of --idle-after)" % \
            o.warmup
        o.warmup = o.idle_after / 2
    return o


def now():
    return time.time()  # the dashboard's host.time.now() is this clock too


class Dashboard:
    def __init__(self, host, work):
        port_file = os.path.join(work, "port")
        self.proc = subprocess.Popen(
            [host, os.path.join(ROOT, "examples", "dashboard.lua"), "--port",
             "0", "--port-file", port_file, "--mode", "super-study"],
            stdout=open(os.path.join(work, "dashboard.log"), "w"),
            stderr=subprocess.STDOUT)
        for _ in range(400):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.05)
        self.url = "http://127.0.0.1:%s" % open(port_file).read().strip()

    def call(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers={
            "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.load(r)


def history(dash, n):
    """n finished super studies of 200 assignments each: the development
    dashboard's /dev/history when it has it, else super studies made one
    by one (then not finished: with GOLIAT_SUPER_STUDY set they are only
    in the list the agents read)."""
    if n == 0:
        return "none"
    try:
        dash.call("/dev/history", {"studies": n,
                                   "assignments": HISTORY_ASSIGNMENTS})
        return "finished (POST /dev/history)"
    except urllib.error.HTTPError:
        for i in range(n):
            dash.call("/dev/super-studies", {
                "name": "history-%02d" % i,
                "assignments": [{"n": j} for j in
                                range(HISTORY_ASSIGNMENTS)]})
        return "PENDING (made one by one)"


class Agent:
    def __init__(self, n, dash, work, o):
        self.n, self.dash, self.o = n, dash, o
        self.machine = "10.1.0.%d" % n
        self.dir = os.path.join(work, "agent-%d" % n)
        self.idle_file = os.path.join(work, "idle-%d.txt" % n)
        os.makedirs(os.path.join(self.dir, "project", "configs"),
                    exist_ok=True)
        self.starts = 0
        self.proc = None
        self.up = []          # [start, stop] of each of its processes
        self.stopped = None   # when the VM stopped (the idle command ran)
        self.exits = []       # codes of processes that ended on their own

    def env(self):
        o = self.o
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GOLIAT_")}
        env.update(GOLIAT_MONITORING_URL=self.dash.url,
                   GOLIAT_MACHINE_ID=self.machine,
                   GOLIAT_HOSTNAME="fleet-vm-%d" % self.n,
                   GOLIAT_PUBLIC_IP_URL="", GOLIAT_WORK_DIR=self.dir,
                   GOLIAT_PROJECT_DIR=os.path.join(self.dir, "project"),
                   GOLIAT_SUPER_STUDY="fleet",
                   GOLIAT_POLL_INTERVAL="%g" % o.poll,
                   GOLIAT_HEARTBEAT_INTERVAL="%g" % o.heartbeat,
                   GOLIAT_CLAIM_SETTLE="1",
                   GOLIAT_FAILURE_RETRY_DELAY="2",
                   PYTHONPATH=os.path.join(ROOT, "examples"),
                   no_proxy="127.0.0.1,localhost",
                   NO_PROXY="127.0.0.1,localhost")
        if o.before:
            # as before issue 22: no idle back-off, no idle stop, no disk
            # check
            env.update(GOLIAT_IDLE_POLL_MAX="%g" % o.poll,
                       GOLIAT_MIN_FREE_GB="0")
        else:
            env["GOLIAT_MIN_FREE_GB"] = "0.01"  # a small disk is no matter
            if o.idle_after > 0:
                env["GOLIAT_IDLE_AFTER"] = "%g" % o.idle_after
                env["GOLIAT_IDLE_COMMAND"] = json.dumps(
                    [sys.executable, "-c", IDLE_NOTE, self.idle_file])
        return env

    def start(self):
        self.starts += 1
        self.proc = subprocess.Popen(
            [self.o.host, os.path.join(ROOT, "scripts", "agent.lua")],
            env=self.env(),
            stdout=open(os.path.join(self.dir, "agent-%d.log" % self.starts),
                        "w"), stderr=subprocess.STDOUT)
        self.up.append([now(), None])

    def end(self, sig=signal.SIGTERM, at=None):
        """Stop its process (sig), noting when it stopped."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.up and self.up[-1][1] is None:
            self.up[-1][1] = at if at is not None else now()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def check(self):
        """Once per round: the idle command ran (the VM stops: the agent
        is stopped), or the process ended on its own."""
        if not self.running():
            if self.proc is not None and self.up and self.up[-1][1] is None:
                self.exits.append(self.proc.returncode)
                self.up[-1][1] = now()
                if self.stopped is None:
                    self.stopped = self.up[-1][1]
            return
        try:
            text = open(self.idle_file).read().split()
        except OSError:
            return
        if text:
            self.stopped = float(text[0])
            self.end(signal.SIGTERM, at=self.stopped)

    def running_study(self):
        """The split index of the study this agent runs now, or None."""
        try:
            st = json.load(open(os.path.join(self.dir, "agent_status.json")))
        except (OSError, ValueError):
            return None
        study = st.get("study") or {}
        return study.get("split_index") if study.get("pid") else None

    def log_gaps(self):
        """From each study's end (its "ended" line) to the start of the
        next assignment's study, in this agent's logs."""
        events = []
        for k in range(1, self.starts + 1):
            try:
                lines = open(os.path.join(self.dir, "agent-%d.log" % k),
                             errors="replace").read().splitlines()
            except OSError:
                continue
            for line in lines:
                m = LOG_START.match(line)
                if m:
                    events.append((log_time(m.group(1)), "start",
                                   m.group(2)))
                m = LOG_END.match(line)
                if m:
                    events.append((log_time(m.group(1)), "end", m.group(2)))
        events.sort()
        gaps = []
        for i, (t, what, aid) in enumerate(events):
            if what != "end":
                continue
            for t2, what2, aid2 in events[i + 1:]:
                if what2 == "start" and aid2 != aid:
                    gaps.append(t2 - t)
                    break
        return gaps

    def minutes(self, t0, t1):
        """Agent-minutes this VM ran within [t0, t1]."""
        s = 0.0
        for a, b in self.up:
            b = b if b is not None else t1
            s += max(0.0, min(b, t1) - max(a, t0))
        return s / 60


def fault_plan(o):
    """{split: [exit codes]} and {agent: signal name}."""
    if o.faults == "off":
        return {}, {}
    splits = {}
    fail = 2 if o.splits > 2 else 0
    splits[fail] = [3, 0]
    oom = 5 if o.splits > 5 else o.splits - 1
    if oom != fail:
        splits[oom] = [42, 0]
    agents = {n: s for n, s in ((2, "SIGKILL"), (3, "SIGTERM"))
              if n <= o.agents}
    return splits, agents


def kind_of(r):
    p = r["path"]
    if p == "/api/heartbeat":
        return "heartbeat"
    if r["method"] == "GET" and p.startswith("/api/super-studies"):
        return "lookup"
    return "other"


def rates(requests, agents, t0, t1):
    """Requests and bytes per agent-minute within [t0, t1], all and by
    kind (heartbeat, lookup, other)."""
    mins = sum(a.minutes(t0, t1) for a in agents)
    out = {"seconds": round(max(0.0, t1 - t0), 1),
           "agent_minutes": round(mins, 2)}
    tot = {"all": [0, 0], "heartbeat": [0, 0], "lookup": [0, 0],
           "other": [0, 0]}
    for r in requests:
        if t0 <= r["at"] < t1:
            b = (r.get("bytes") or 0) + (r.get("in_bytes") or 0)
            for k in ("all", kind_of(r)):
                tot[k][0] += 1
                tot[k][1] += b
    for k, (n, b) in tot.items():
        pre = "" if k == "all" else k + "_"
        out[pre + "requests"] = n
        out[pre + "requests_per_agent_min"] = \
            round(n / mins, 2) if mins > 0 else None
        out[pre + "bytes_per_agent_min"] = \
            round(b / mins) if mins > 0 else None
    return out


def mean_max(xs):
    if not xs:
        return None, None
    return round(sum(xs) / len(xs), 2), round(max(xs), 2)


def fmt(v, spec="%.2f"):
    return "-" if v is None else spec % v


def main(argv):
    o = options(argv)
    if not os.path.exists(o.host):
        sys.exit("%s is missing: cmake -S . -B build && cmake --build build"
                 % o.host)
    wall0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="goliat-fleet-")
    starts_file = os.path.join(work, "starts.txt")
    runs_file = os.path.join(work, "runs.txt")
    dash = Dashboard(o.host, work)
    agents = []
    problems = []
    try:
        kind = history(dash, o.history)
        listed = len(urllib.request.urlopen(
            dash.url + "/api/super-studies", timeout=120).read())
        fault_splits, fault_agents = fault_plan(o)
        configs = []
        for i in range(o.splits):
            cfg = {"duration_s": o.study_s, "steps": 3, "n": i,
                   "starts_file": starts_file, "runs_file": runs_file}
            if i in fault_splits:
                cfg["exit_codes"] = fault_splits[i]
                cfg["count_file"] = os.path.join(work, "count-%d" % i)
            configs.append(cfg)
        agents = [Agent(n, dash, work, o) for n in range(1, o.agents + 1)]

        def round_():
            for a in agents:
                a.check()

        t_first = None
        if o.warmup > 0:
            for a in agents:
                a.start()
            t_first = now()
            end = time.monotonic() + o.warmup
            while time.monotonic() < end:
                round_()
                time.sleep(0.25)
        study = dash.call("/dev/super-studies",
                          {"name": "fleet", "assignments": configs})
        t_made = now()
        ids = [a["id"] for a in study["assignments"]]
        if o.warmup <= 0:
            for a in agents:
                a.start()
            t_first = now()
        t0 = time.monotonic()
        done_faults = {}
        deadline = t0 + 40 * o.study_s + 120
        all_done = False
        ev = None
        next_look = 0
        while time.monotonic() < deadline:
            round_()
            for n, sig in fault_agents.items():
                a = agents[n - 1]
                if n not in done_faults and a.running() and \
                        a.running_study() is not None and \
                        time.monotonic() - t0 > o.study_s / 2:
                    a.end(getattr(signal, sig))
                    done_faults[n] = sig
                    a.start()
            # the stand-in notes each run's end: once every split has had
            # one that passed, the dashboard is asked (a large reply)
            try:
                ran = [ln.split() for ln in open(runs_file)]
            except OSError:
                ran = []
            passed = {x[0] for x in ran if len(x) == 3 and x[2] == "0"}
            if len(passed) >= len(ids) and time.monotonic() >= next_look:
                next_look = time.monotonic() + 2
                ev = dash.call("/dev/events")
                fleet = [s for s in ev["super_studies"]
                         if s["name"] == "fleet"][0]
                if all(x["status"] == "COMPLETED"
                       for x in fleet["assignments"]):
                    all_done = True
                    break
            time.sleep(0.5)
        if not all_done:
            problems.append("the work was not all COMPLETED within %.0f s"
                            % (deadline - t0))
        # when the work ran out: the last assignment's last COMPLETED
        ev = ev or dash.call("/dev/events")
        done_at = [h["at"] for h in ev["history"]
                   if h["assignmentId"] in ids and
                   h["status"] == "COMPLETED"]
        t_done = max(done_at) if all_done and done_at else now()
        # the idle tail: until every agent has stopped, or at most idle_tail
        tail_end = t_done + o.idle_tail
        while now() < tail_end:
            round_()
            if not any(a.running() for a in agents):
                break
            time.sleep(0.5)
        t_end = min(now(), tail_end)
        for a in agents:
            a.check()
        for a in agents:  # still running: billed to the end of the tail
            a.end(signal.SIGTERM, at=t_end)
        time.sleep(0.5)
        ev = dash.call("/dev/events")
        wall = time.monotonic() - wall0
        if o.keep:
            with open(os.path.join(work, "events.json"), "w") as f:
                json.dump({"made": t_made, "done": t_done, "end": t_end,
                           "events": ev}, f)

        # ---- outcomes ------------------------------------------------------
        wrong = []
        fleet = [s for s in ev["super_studies"] if s["name"] == "fleet"][0]
        for x in fleet["assignments"]:
            if x["status"] != "COMPLETED":
                wrong.append("%s ended %s" % (x["id"], x["status"]))
        reports = [u["message"] for u in ev["gui_updates"]
                   if u["message"].get("assignment_id") in ids]
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
        if wrong:
            problems.append("wrong outcomes: " + "; ".join(wrong))
        try:
            starts = [ln.split() for ln in open(starts_file) if ln.strip()]
        except OSError:
            starts = []
        runs = {i: 0 for i in ids}
        for s in starts:
            runs[s[0]] = runs.get(s[0], 0) + 1
        # one start per split, one more for each failing split, one more
        # for the study stopped with SIGTERM (run again at the restart)
        expected = o.splits + len(fault_splits) + \
            sum(1 for s in done_faults.values() if s == "SIGTERM")
        duplicates = max(0, len(starts) - expected)
        if duplicates:
            problems.append("%d duplicate run(s): starts per assignment %s"
                            % (duplicates, {k: v for k, v in runs.items()
                                            if v > 1}))
        for a in agents:
            bad = [c for c in a.exits if c != 0]
            if bad:
                problems.append("agent %d exited on its own with code(s) %s"
                                % (a.n, bad))
        if o.idle_after > 0 and all_done:
            never = [a.n for a in agents if a.stopped is None]
            if never:
                problems.append(
                    "agent(s) %s: no idle stop within the %g s tail "
                    "(GOLIAT_IDLE_AFTER=%g)" % (never, o.idle_tail,
                                                o.idle_after))

        # ---- timings --------------------------------------------------------
        makespan = t_done - t_made
        ideal = o.splits * o.study_s / o.agents
        ideal_faults = expected * o.study_s / o.agents
        claims = sorted((c for c in ev["claims"] if c["assignmentId"] in ids),
                        key=lambda c: c["at"])
        pickup = claims[0]["at"] - t_made if claims else None
        firsts = {}
        for c in claims:
            firsts.setdefault(c["machineId"], c["at"] - t_made)
        first_mean, first_max = mean_max(list(firsts.values()))
        gaps = []
        for a in agents:
            ends = sorted(h["at"] for h in ev["history"]
                          if h["assignmentId"] in ids and
                          h["status"] == "COMPLETED" and
                          h.get("by") == "finished from " + a.machine)
            mine = [c["at"] for c in claims if c["machineId"] == a.machine]
            for e in ends:
                nxt = [c for c in mine if c > e]
                if nxt:
                    gaps.append(min(nxt) - e)
        gap_mean, gap_max = mean_max(gaps)
        log_gaps = [g for a in agents for g in a.log_gaps()]
        log_gap_mean, log_gap_max = mean_max(log_gaps)

        # ---- requests and bytes ------------------------------------------
        reqs = ev["requests"]
        phases = []
        if o.warmup > 0:
            phases.append(("warm-up", rates(reqs, agents, t_first, t_made)))
        phases.append(("working", rates(reqs, agents, t_made, t_done)))
        phases.append(("idle", rates(reqs, agents, t_done, t_end)))
        # idle lookups by thirds of the watch after the work (the back-off)
        thirds = []
        if t_end > t_done:
            step = (t_end - t_done) / 3
            for k in range(3):
                r = rates(reqs, agents, t_done + k * step,
                          t_done + (k + 1) * step)
                thirds.append(r["lookup_requests_per_agent_min"])

        # ---- VM-seconds ----------------------------------------------------
        billed, idle_vm, after_own = [], [], []
        for a in agents:
            stop = a.stopped if a.stopped is not None else t_end
            billed.append(max(0.0, stop - t_done))
            ends = [h["at"] for h in ev["history"]
                    if h["assignmentId"] in ids and
                    h["status"] == "COMPLETED" and
                    h.get("by") == "finished from " + a.machine]
            last = max(ends) if ends else a.up[0][0]
            idle_vm.append(max(0.0, stop - last))
            if a.stopped is not None:
                after_own.append(a.stopped - last)
        stop_mean, stop_max = mean_max(after_own)
        runs_mean = sum(runs.values()) / len(runs) if runs else None

        # ---- the table ------------------------------------------------------
        mode = "before (GOLIAT_IDLE_POLL_MAX=%g = the poll interval, no " \
            "GOLIAT_IDLE_AFTER, no disk check)" % o.poll if o.before else \
            "after (GOLIAT_IDLE_POLL_MAX 60 s default, GOLIAT_IDLE_AFTER " \
            "%s, GOLIAT_MIN_FREE_GB 0.01)" % (
                "%g s" % o.idle_after if o.idle_after > 0 else "off")
        print("fleet benchmark: %s" % mode)
        print("history: %d super studies of %d assignments, %s; GET "
              "/api/super-studies is %d bytes" % (
                  o.history, HISTORY_ASSIGNMENTS if o.history else 0, kind,
                  listed))
        print("agents: %d, splits: %d of %g s each; poll %g s, heartbeat "
              "%g s, warm-up %g s%s, idle tail %g s" % (
                  o.agents, o.splits, o.study_s, o.poll, o.heartbeat,
                  o.warmup, o.warmup_note, o.idle_tail))
        fs = ["split %d exit %s" % (k, " then ".join(map(str, v)))
              for k, v in sorted(fault_splits.items())]
        fs += ["agent %d %s%s" % (n, s, "" if n in done_faults
                                  else " (not applied: no study seen)")
               for n, s in sorted(fault_agents.items())]
        print("faults: %s" % ("; ".join(fs) or "none"))
        print("all COMPLETED: %s; reports: %d (one per split: %s)" % (
            all_done, len(reports), len(reports) == o.splits))
        print("makespan %.1f s; ideal %.1f s (%.2fx), or %.1f s with the "
              "faults' reruns (%.2fx)" % (makespan, ideal, makespan / ideal,
                                          ideal_faults,
                                          makespan / ideal_faults))
        print("pickup: first claim %s s after the super study was made; "
              "each agent's first claim: mean %s s, max %s s" % (
                  fmt(pickup), fmt(first_mean), fmt(first_max)))
        print("gap between a study's COMPLETED and the agent's next claim: "
              "mean %s s, max %s s (%d gaps)" % (fmt(gap_mean), fmt(gap_max),
                                                 len(gaps)))
        print("gap between a study's end and the agent's next study's start "
              "(agent logs): mean %s s, max %s s (%d gaps)" % (
                  fmt(log_gap_mean), fmt(log_gap_max), len(log_gaps)))
        print("")
        print("%-8s %7s %7s %9s %10s %8s %9s %8s %9s %8s" % (
            "phase", "seconds", "agt-min", "req/a-min", "bytes/a-min",
            "hb/a-min", "hb-B/a-min", "lk/a-min", "lk-B/a-min",
            "oth/a-min"))
        for name, r in phases:
            print("%-8s %7.1f %7.2f %9s %10s %8s %9s %8s %9s %8s" % (
                name, r["seconds"], r["agent_minutes"],
                fmt(r["requests_per_agent_min"], "%.1f"),
                fmt(r["bytes_per_agent_min"], "%.0f"),
                fmt(r["heartbeat_requests_per_agent_min"], "%.1f"),
                fmt(r["heartbeat_bytes_per_agent_min"], "%.0f"),
                fmt(r["lookup_requests_per_agent_min"], "%.1f"),
                fmt(r["lookup_bytes_per_agent_min"], "%.0f"),
                fmt(r["other_requests_per_agent_min"], "%.1f")))
        print("(hb: POST /api/heartbeat; lk: GET /api/super-studies...; "
              "oth: claims, GUI updates, /api/workers...; bytes: bodies, "
              "both ways)")
        print("idle lookups/agent-min by thirds of the idle watch: %s" %
              ", ".join(fmt(x, "%.1f") for x in thirds))
        print("")
        print("VM-seconds billed after the work ran out: %.0f (per agent: "
              "%s)%s" % (sum(billed), ", ".join("%.0f" % b for b in billed),
                         "" if all(a.stopped is not None for a in agents)
                         else "; agents that never stopped counted to the "
                         "end of the tail: a lower bound"))
        print("VM-seconds idle, each agent's last study -> its stop: %.0f; "
              "stops: %d of %d, %s s after the agent's last study (mean; "
              "max %s s)" % (sum(idle_vm), len(after_own), len(agents),
                             fmt(stop_mean), fmt(stop_max)))
        print("runs per assignment: mean %s, max %d; study starts: %d, "
              "expected %d: duplicate runs %d" % (
                  fmt(runs_mean), max(runs.values()) if runs else 0,
                  len(starts), expected, duplicates))
        print("operator actions: 0")
        print("wrong outcomes: %d%s" % (len(wrong), wrong and ": " +
                                        "; ".join(wrong) or ""))
        print("problems: %s" % ("; ".join(problems) or "none"))
        print("wall time: %.0f s" % wall)
        result = {
            "mode": "before" if o.before else "after",
            "agents": o.agents, "splits": o.splits, "study_s": o.study_s,
            "history": o.history, "history_list_bytes": listed,
            "faults": o.faults, "idle_after_s": o.idle_after,
            "idle_poll_max_s": o.poll if o.before else 60,
            "poll_s": o.poll, "heartbeat_s": o.heartbeat,
            "warmup_s": o.warmup, "idle_tail_s": o.idle_tail,
            "all_completed": all_done,
            "makespan_s": round(makespan, 2), "ideal_s": round(ideal, 2),
            "ideal_with_reruns_s": round(ideal_faults, 2),
            "makespan_over_ideal": round(makespan / ideal, 3),
            "makespan_over_ideal_with_reruns": round(
                makespan / ideal_faults, 3),
            "pickup_latency_s": pickup and round(pickup, 2),
            "first_pickup_mean_s": first_mean,
            "first_pickup_max_s": first_max,
            "gap_mean_s": gap_mean, "gap_max_s": gap_max, "gaps": len(gaps),
            "log_gap_mean_s": log_gap_mean, "log_gap_max_s": log_gap_max,
            "log_gaps": len(log_gaps),
            "phases": {name: r for name, r in phases},
            "idle_lookups_per_agent_min_by_third": thirds,
            "vm_s_billed_after_work": round(sum(billed), 1),
            "vm_s_billed_after_work_per_agent": [round(b, 1)
                                                 for b in billed],
            "vm_s_idle": round(sum(idle_vm), 1),
            "agents_stopped": len(after_own),
            "stop_after_own_last_study_mean_s": stop_mean,
            "stop_after_own_last_study_max_s": stop_max,
            "runs_per_assignment_mean": runs_mean and round(runs_mean, 3),
            "runs_per_assignment_max": max(runs.values()) if runs else 0,
            "study_starts": len(starts), "expected_starts": expected,
            "duplicate_runs": duplicates, "reports": len(reports),
            "wrong_outcomes": len(wrong), "operator_actions": 0,
            "problems": problems, "wall_s": round(wall, 1),
        }
        print(json.dumps(result, sort_keys=True))
        return 1 if problems else 0
    finally:
        for a in agents:
            a.end(signal.SIGTERM)
        dash.proc.terminate()
        try:
            dash.proc.wait(10)
        except subprocess.TimeoutExpired:
            dash.proc.kill()
        if o.keep:
            print("kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
