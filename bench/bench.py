#!/usr/bin/env python3
"""The benchmark: goliat-host's idle cost next to the floor.

Runs side by side, against the development dashboard (one instance per
client, so that each one's requests are counted apart):
  floor        bench/floor.c: libcurl, one reused easy handle (the floor)
  goliat-host  goliat-host scripts/agent.lua
  python       the design's sample agent, extracted from
               ../shared/seed/worker_agent.md when that file is present
over HTTP, and over HTTPS through bench/https_endpoint.js, which closes
connections idle for 5 s as the production dashboard's Node server does.
Every client heartbeats every 5 s and polls every 10 s (the sample
agent's fixed intervals).

Figures, each as a ratio to the floor's in the same run:
  CPU per request       schedstat (ns on CPU, all threads) over a window
  idle CPU              the same over the window's wall time
  syscalls per request  strace -c -f over a window
  instructions/request  callgrind (user space, libraries included), counted
                        over a window after a warm-up
  start to first beat   exec to the dashboard's receipt of the heartbeat,
                        median of a few starts
  RssAnon               /proc/PID/status after the warm-up and the window;
                        and, over HTTP, after a few thousand requests sent
                        every 20-40 ms (the floor and goliat-host only)
It prints a table and one JSON line. It asserts nothing about timings.

  python3 bench/bench.py --host build-bench/goliat-host --floor F [--short]
(bench/run.sh builds both and runs this.)
"""
import argparse
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT_S, POLL_S = 5, 10
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def wait_for_file(path, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return open(path).read().strip()
        time.sleep(0.02)
    raise RuntimeError(f"{path} did not appear")


def stop(proc, seconds=10):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Dashboard:
    """examples/dashboard.lua on a free port of 127.0.0.1."""

    def __init__(self, host, tmp, name):
        port_file = os.path.join(tmp, f"dash-{name}.port")
        self.log = os.path.join(tmp, f"dash-{name}.log")
        self.proc = subprocess.Popen(
            [host, os.path.join(ROOT, "examples", "dashboard.lua"),
             "--port", "0", "--port-file", port_file],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        self.port = int(wait_for_file(port_file))
        self.url = f"http://127.0.0.1:{self.port}"

    def events(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited ({self.proc.returncode}):"
                               f" {open(self.log).read()[-2000:]}")
        with urllib.request.urlopen(self.url + "/dev/events", timeout=10) as r:
            return json.load(r)

    def requests(self):
        return len(self.events()["requests"])

    def first_heartbeat(self, machine_id):
        for hb in self.events()["heartbeats"]:
            if hb.get("machineId") == machine_id:
                return hb["at"]
        return None

    def close(self):
        stop(self.proc)


class Endpoint:
    """bench/https_endpoint.js in front of a dashboard."""

    def __init__(self, tmp, name, upstream_port, key, cert, ca):
        port_file = os.path.join(tmp, f"tls-{name}.port")
        self.proc = subprocess.Popen(
            ["node", os.path.join(ROOT, "bench", "https_endpoint.js"), key,
             cert, str(upstream_port), port_file, "5000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = int(wait_for_file(port_file))
        self.url = f"https://127.0.0.1:{self.port}"
        self.context = ssl.create_default_context(cafile=ca)
        self.queries = 0

    def stats(self):
        """TLS connections made by the client so far (and resumed)."""
        self.queries += 1
        with urllib.request.urlopen(self.url + "/__endpoint/stats",
                                    context=self.context, timeout=10) as r:
            s = json.load(r)
        return s["connections"] - self.queries, s["resumed"]

    def close(self):
        stop(self.proc)


def make_certificates(tmp):
    """A CA and a certificate for 127.0.0.1; returns key, cert, bundle: the
    system's CA bundle with the CA added (as a company CA would be)."""
    def run(*args):
        subprocess.run(args, cwd=tmp, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
        "2", "-subj", "/CN=bench-ca", "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj",
        "/CN=127.0.0.1", "-keyout", "srv.key", "-out", "srv.csr")
    with open(os.path.join(tmp, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem",
        "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile",
        "san.ext", "-out", "srv.pem")
    bundle = os.path.join(tmp, "bundle.pem")
    with open(bundle, "w") as out:
        if os.path.exists(SYSTEM_BUNDLE):
            out.write(open(SYSTEM_BUNDLE).read())
        out.write(open(os.path.join(tmp, "ca.pem")).read())
    return (os.path.join(tmp, "srv.key"), os.path.join(tmp, "srv.pem"),
            bundle)


def extract_python_agent(tmp):
    """The design's sample agent, or None when it cannot run here."""
    seed = os.path.join(ROOT, "..", "shared", "seed", "worker_agent.md")
    if not os.path.exists(seed):
        return None
    text = open(seed, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    code = next((b for b in blocks if "class WorkerAgent" in b), None)
    if code is None:
        return None
    if subprocess.run([sys.executable, "-c", "import requests"],
                      stderr=subprocess.DEVNULL).returncode != 0:
        log("python: the requests module is missing; skipped")
        return None
    path = os.path.join(tmp, "worker_agent.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    return path


class Client:
    def __init__(self, name, argv, env):
        self.name, self.argv, self.env = name, argv, env


def clients_for(args, tmp, url, cafile, tag, every=(HEARTBEAT_S, POLL_S)):
    """The clients to run against url (cafile for HTTPS, or None), beating
    and polling every (heartbeat, poll) seconds."""
    out = []
    base = dict(os.environ)
    fid = f"floor-{tag}"
    out.append(Client("floor", [args.floor, url, fid, str(every[0]),
                                str(every[1])] + ([cafile] if cafile else []),
                      dict(base)))
    work = tempfile.mkdtemp(prefix="agent-", dir=tmp)
    conf = os.path.join(tmp, "empty.conf")
    open(conf, "w").close()
    env = dict(base, GOLIAT_MONITORING_URL=url, GOLIAT_MACHINE_ID=f"agent-{tag}",
               GOLIAT_WORK_DIR=work, GOLIAT_PUBLIC_IP_URL="",
               GOLIAT_PROTOCOL="assignment", GOLIAT_CONFIG=conf,
               GOLIAT_HEARTBEAT_INTERVAL=str(every[0]),
               GOLIAT_POLL_INTERVAL=str(every[1]))
    if cafile:
        env["GOLIAT_CA_BUNDLE"] = cafile
    out.append(Client("goliat-host", [args.host, os.path.join(
        ROOT, "scripts", "agent.lua")], env))
    if args.python_agent:
        env = dict(base, GOLIAT_MONITORING_URL=url,
                   GOLIAT_MACHINE_ID=f"python-{tag}")
        if cafile:
            env["REQUESTS_CA_BUNDLE"] = cafile
        out.append(Client("python", [sys.executable, args.python_agent], env))
    return out


def cpu_ns(pid):
    """ns on CPU of every thread of pid (schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def rss_anon_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return None


def start(client, tmp, prefix=()):
    logf = open(os.path.join(tmp, f"{client.name}-{time.monotonic_ns()}.log"),
                "w")
    return subprocess.Popen(list(prefix) + client.argv, env=client.env,
                            stdout=logf, stderr=subprocess.STDOUT)


def run_side_by_side(args, tmp, transport, certs):
    """CPU, idle CPU, RssAnon and syscalls of every client at once."""
    key, cert, bundle = certs if certs else (None, None, None)
    dashboards, endpoints, procs, clients = {}, {}, {}, []
    names = ["floor", "goliat-host"] + (["python"] if args.python_agent else [])
    try:
        for name in names:
            dashboards[name] = Dashboard(args.host, tmp, f"{transport}-{name}")
            url = dashboards[name].url
            if transport == "https":
                endpoints[name] = Endpoint(tmp, name, dashboards[name].port,
                                           key, cert, bundle)
                url = endpoints[name].url
            c = [c for c in clients_for(args, tmp, url, bundle, transport)
                 if c.name == name][0]
            clients.append(c)
        for c in clients:
            procs[c.name] = start(c, tmp)
        time.sleep(args.warmup)
        t0 = time.monotonic()
        before = {n: (cpu_ns(p.pid), dashboards[n].requests(),
                      endpoints[n].stats() if n in endpoints else None)
                  for n, p in procs.items()}
        time.sleep(args.window)
        wall = time.monotonic() - t0
        out = {}
        for n, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{n} exited early (code {p.returncode})")
            cpu = cpu_ns(p.pid) - before[n][0]
            reqs = dashboards[n].requests() - before[n][1]
            r = {"requests": reqs, "cpu_us_per_request": cpu / 1e3 / reqs,
                 "idle_cpu_percent": cpu / 1e9 / wall * 100,
                 "rss_anon_kb": rss_anon_kb(p.pid)}
            if n in endpoints:
                conns, resumed = endpoints[n].stats()
                r["tls_connections_per_request"] = \
                    (conns - before[n][2][0]) / reqs
                r["tls_resumed"] = resumed - before[n][2][1]
            out[n] = r
        # syscalls, all clients at once
        tracers = {}
        before = {n: dashboards[n].requests() for n in procs}
        for n, p in procs.items():
            f = os.path.join(tmp, f"strace-{transport}-{n}.txt")
            tracers[n] = (subprocess.Popen(
                ["strace", "-c", "-f", "-q", "-o", f, "-p", str(p.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), f)
        time.sleep(args.strace_window)
        for n, (tr, f) in tracers.items():
            tr.send_signal(signal.SIGINT)
            tr.wait(30)
            reqs = dashboards[n].requests() - before[n]
            out[n]["syscalls_per_request"] = strace_total(f) / reqs
        return out
    finally:
        for p in procs.values():
            stop(p)
        for e in endpoints.values():
            e.close()
        for d in dashboards.values():
            d.close()


def run_long(args, tmp):
    """RssAnon after many requests: the floor and goliat-host side by side
    over HTTP, beating every 20 ms and polling every 40 ms until each has
    sent args.long_requests. Months of idle requests in a minute: what the
    heap grows to between garbage collections shows here, not after the
    short warm-up of the other figures."""
    dashboards, procs = {}, {}
    try:
        for name in ("floor", "goliat-host"):
            dashboards[name] = Dashboard(args.host, tmp, f"long-{name}")
            c = [c for c in clients_for(args, tmp, dashboards[name].url, None,
                                        "long", every=(0.02, 0.04))
                 if c.name == name][0]
            procs[name] = start(c, tmp)
        deadline = time.monotonic() + args.long_requests / 20 + 60
        out = {}
        while len(out) < len(procs) and time.monotonic() < deadline:
            time.sleep(1)
            for n, p in procs.items():
                if n in out:
                    continue
                if p.poll() is not None:
                    raise RuntimeError(f"{n} exited early ({p.returncode})")
                if dashboards[n].requests() >= args.long_requests:
                    out[n] = {"rss_anon_kb_long": rss_anon_kb(p.pid)}
        if len(out) < len(procs):
            raise RuntimeError("the fast-paced clients sent too few requests")
        return out
    finally:
        for p in procs.values():
            stop(p)
        for d in dashboards.values():
            d.close()


def strace_total(path):
    # % time, seconds, usecs/call, calls, [errors,] "total"
    for line in open(path):
        if line.strip().endswith("total"):
            return int(line.split()[3])
    raise RuntimeError(f"no total in {path}")


def callgrind_ir(args, tmp, client, dashboard):
    """User-space instructions per request over a window, under callgrind."""
    out = os.path.join(tmp, f"callgrind.{client.name}.out")
    p = start(client, tmp, ["valgrind", "--tool=callgrind",
                            "--instr-atstart=no",
                            f"--callgrind-out-file={out}"])
    try:
        time.sleep(args.warmup * 2)  # valgrind starts slowly
        ctl = ["callgrind_control"]
        subprocess.run(ctl + ["-i", "on", str(p.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = dashboard.requests()
        time.sleep(args.callgrind_window)
        subprocess.run(ctl + ["-i", "off", str(p.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reqs = dashboard.requests() - before
    finally:
        stop(p, 60)
    total = 0
    for name in os.listdir(tmp):
        if name.startswith(os.path.basename(out)):
            for line in open(os.path.join(tmp, name)):
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = max(total, int(line.split()[1]))
    return total / reqs if reqs else None


def first_heartbeat_ms(args, tmp, clients, dashboard, runs):
    """{name: median, over runs, of exec to the dashboard's receipt of the
    first heartbeat (ms)}. The clients take turns, one start each per round,
    so that a slow spell of the machine falls on all of them alike (a
    client's starts all in a row, minutes after another's, made the ratio
    swing by half)."""
    times = {c.name: [] for c in clients}
    for i in range(runs):
        for client in clients:
            mid = f"start-{client.name}-{i}"
            c = Client(client.name, list(client.argv), dict(client.env))
            if client.name == "floor":
                c.argv[2] = mid
            else:
                c.env["GOLIAT_MACHINE_ID"] = mid
            t0 = time.time()
            p = start(c, tmp)
            at = None
            deadline = time.monotonic() + 20
            while at is None and time.monotonic() < deadline:
                time.sleep(0.01)
                at = dashboard.first_heartbeat(mid)
            stop(p)
            if at is not None:
                times[client.name].append((at - t0) * 1e3)
    return {n: statistics.median(t) if t else None for n, t in times.items()}


def run_alone(args, tmp, transport, certs):
    """callgrind and start-up, one client at a time."""
    key, cert, bundle = certs if certs else (None, None, None)
    out = {}
    d = Dashboard(args.host, tmp, f"{transport}-alone")
    e = None
    try:
        url = d.url
        if transport == "https":
            e = Endpoint(tmp, "alone", d.port, key, cert, bundle)
            url = e.url
        clients = clients_for(args, tmp, url, bundle, transport + "-alone")
        for name, ms in first_heartbeat_ms(args, tmp, clients, d,
                                           args.starts).items():
            out.setdefault(name, {})["first_heartbeat_ms"] = ms
        for c in clients:
            r = out.setdefault(c.name, {})
            if c.name != "python" or not args.short:
                r["instructions_per_request"] = callgrind_ir(args, tmp, c, d)
    finally:
        if e:
            e.close()
        d.close()
    return out


ROWS = [
    ("CPU per request (µs)", "cpu_us_per_request", "{:.0f}"),
    ("idle CPU (%)", "idle_cpu_percent", "{:.4f}"),
    ("syscalls per request", "syscalls_per_request", "{:.1f}"),
    ("instructions per request (callgrind, k)", "instructions_per_request",
     "{:.0f}", 1e-3),
    ("start to first heartbeat (ms)", "first_heartbeat_ms", "{:.1f}"),
    ("RssAnon after the window (kB)", "rss_anon_kb", "{:.0f}"),
    ("RssAnon after the fast-paced requests (kB)", "rss_anon_kb_long",
     "{:.0f}"),
    ("new TLS connections per request", "tls_connections_per_request",
     "{:.2f}"),
]


def table(results, names):
    lines = []
    head = "| figure | " + " | ".join(
        n + (" | ratio" if n != "floor" else "") for n in names) + " |"
    lines.append(head)
    lines.append("|" + "---|" * (1 + 2 * len(names) - 1))
    for transport, res in results.items():
        for row in ROWS:
            label, key, fmt = row[0], row[1], row[2]
            scale = row[3] if len(row) > 3 else 1
            if all(res.get(n, {}).get(key) is None for n in names):
                continue
            floor = res.get("floor", {}).get(key)
            cells = []
            for n in names:
                v = res.get(n, {}).get(key)
                cells.append("-" if v is None else fmt.format(v * scale))
                if n != "floor":
                    cells.append("-" if v is None or not floor
                                 else f"{v / floor:.2f}")
            lines.append(f"| {label}, {transport} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", required=True, help="goliat-host binary")
    ap.add_argument("--floor", required=True, help="the floor client binary")
    ap.add_argument("--short", action="store_true",
                    help="short windows (for CI: the figures are rough)")
    ap.add_argument("--no-python", action="store_true",
                    help="leave the design's sample agent out")
    args = ap.parse_args()
    args.host, args.floor = os.path.abspath(args.host), \
        os.path.abspath(args.floor)
    if args.short:
        args.warmup, args.window, args.strace_window = 6, 20, 12
        args.callgrind_window, args.starts = 12, 3
        args.long_requests = 500
    else:
        args.warmup, args.window, args.strace_window = 12, 120, 60
        args.callgrind_window, args.starts = 60, 11
        args.long_requests = 3000
    for tool in ("strace", "valgrind", "callgrind_control", "node",
                 "openssl"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is needed (see bench/run.sh)")
    tmp = tempfile.mkdtemp(prefix="goliat-bench-")
    try:
        args.python_agent = None if args.no_python \
            else extract_python_agent(tmp)
        certs = make_certificates(tmp)
        results = {}
        for transport in ("http", "https"):
            log(f"{transport}: side by side")
            res = run_side_by_side(args, tmp, transport,
                                   certs if transport == "https" else None)
            log(f"{transport}: one at a time (callgrind, start-up)")
            for n, r in run_alone(args, tmp, transport,
                                  certs if transport == "https"
                                  else None).items():
                res.setdefault(n, {}).update(r)
            if transport == "http":
                log(f"http: {args.long_requests} fast-paced requests each")
                for n, r in run_long(args, tmp).items():
                    res.setdefault(n, {}).update(r)
            results[transport] = res
        names = ["goliat-host", "floor"] + (["python"] if args.python_agent
                                            else [])
        print(table(results, names))
        print(json.dumps({"bench": "goliat-host", "short": args.short,
                          "heartbeat_s": HEARTBEAT_S, "poll_s": POLL_S,
                          "results": results}, sort_keys=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
