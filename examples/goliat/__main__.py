"""python -m goliat study CONFIG: see goliat/__init__.py."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

try:  # GOLIAT posts with requests; so does the stand-in when it can
    import requests
except ImportError:
    requests = None

# GOLIAT's out-of-memory exit code (cli/run_study.py)
OOM_EXIT_CODE = 42


class Target:
    """Where and as whom the study posts. GOLIAT's window posts to its
    built-in dashboard URL under the machine id it finds itself; here
    config "dashboard_url" and "machine_id" stand for those, and
    GOLIAT_MONITORING_URL / GOLIAT_MACHINE_ID are used when they are absent.
    Nothing is posted unless GOLIAT_WEBGUI_ENABLED=true."""

    def __init__(self, config):
        self.base = (config.get("dashboard_url") or
                     os.environ.get("GOLIAT_MONITORING_URL") or "").rstrip("/")
        machine_id = config.get("machine_id")
        self.machine_id = str(machine_id) if machine_id is not None else \
            os.environ.get("GOLIAT_MACHINE_ID", "")
        self.on = bool(self.base) and \
            os.environ.get("GOLIAT_WEBGUI_ENABLED") == "true"

    def send(self, path, payload=None, body=None,
             content_type="application/json", timeout=10):
        """POST once, best effort, no retry: a JSON payload (as GOLIAT's
        http_client.py does, requests' json=) or a ready body. Returns the
        status, or None and why when no answer came."""
        url = self.base + path
        if requests is not None:
            try:
                if payload is not None:
                    r = requests.post(url, json=payload, timeout=timeout)
                else:
                    r = requests.post(url, data=body, timeout=timeout,
                                      headers={"Content-Type": content_type})
                return r.status_code, None
            except (requests.RequestException, OSError, ValueError) as exc:
                return None, exc
        if payload is not None:
            body = json.dumps(payload).encode()
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
                return r.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, exc
        except (OSError, ValueError) as exc:
            return None, exc

    def gui(self, message, timeout=10):
        """POST /api/gui-update: {machineId, message, timestamp}."""
        return self.send("/api/gui-update", {
            "machineId": self.machine_id,
            "message": message,
            "timestamp": time.time(),
        }, timeout=timeout)


def post(target, message):
    """Post one GUI update like GOLIAT's bridge: best effort, no retry."""
    if not target.on:
        return
    status, exc = target.gui(message, timeout=5)
    if status is None or status >= 400:
        print(f"gui update not delivered: {exc or status}", flush=True)


def failure_line(code):
    """The line GOLIAT's study process logs (a `status` message) when it
    ends with a non-zero code (cli/run_study.py)."""
    if code == OOM_EXIT_CODE:
        return "--- Memory/allocation error detected (exit code 42) ---"
    return f"--- Process exited with code {code} ---"


def end_messages(code, drop_queue_end=False):
    """What GOLIAT sends to the dashboard when the study process ends with
    `code`. The study process puts memory_error (42) or fatal_error (any
    other non-zero code) and then {"type": "finished", "exit_code": N} on
    its queue (cli/run_study.py); the window forwards every queue message
    (gui/components/queue_handler.py, process_queue) and, handling the
    finished or fatal_error, sends its own finished
    (progress_gui.py study_finished -> web_bridge_manager.send_finished).
    drop_queue_end: the window handles a message before forwarding it, and
    send_finished stops the bridge, so the queue's fatal_error and finished
    come too late and are dropped (memory_error is not): only memory_error
    and the window's finished then go. Not imitated: the five 100 %
    progress updates the window sends (0.5 s apart) before its finished."""
    out = []
    if code == OOM_EXIT_CODE:
        out.append({"type": "memory_error",
                    "message": "Memory/allocation error detected",
                    "exit_code": OOM_EXIT_CODE})
    elif code != 0 and not drop_queue_end:
        out.append({"type": "fatal_error",
                    "message": f"Process exited with code {code}"})
    if not drop_queue_end:
        out.append({"type": "finished", "exit_code": code})
    out.append({"type": "finished", "message": "Study finished successfully"
                if code == 0 else "Study finished with errors"})
    return out


class Bridge:
    """GOLIAT's web bridge habits, for config "bridge": true: progress at up
    to 50 Hz (the newest value; re-sent every 2 s), log lines batched every
    50 ms or 10 lines as log_batch with an increasing sequence, a heartbeat
    every 30 s, a multipart upload of result files at the end; no retries,
    and what is queued when it stops is dropped. Each message is logged to
    `record_file` (JSON lines: what was sent and the status it got), so a
    test can tell what the dashboard must have received."""

    def __init__(self, target, record_file=None):
        self.target = target
        self.machine_id = target.machine_id
        self.on = target.on
        self.record_file = record_file
        self.lock = threading.Lock()
        self.lines = []
        self.progress = {}
        self.sequence = 0
        self.stopping = False
        self.last_beat = 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)
        if self.on:
            self.thread.start()

    def record(self, kind, status, **what):
        if not self.record_file:
            return
        with open(self.record_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(what, kind=kind, status=status)) + "\n")

    def gui(self, message):
        """One gui-update; its status (None: no answer)."""
        return self.target.gui(message)[0]

    def log(self, text, log_type="info"):
        with self.lock:
            self.lines.append({"message": text, "log_type": log_type,
                               "timestamp": time.time()})

    def set_progress(self, kind, **fields):
        with self.lock:
            self.progress[kind] = dict(fields, type=kind)

    def flush_logs(self):
        with self.lock:
            batch, self.lines = self.lines[:10], self.lines[10:]
        if batch:
            self.sequence += 1
            status = self.gui({"type": "log_batch", "logs": batch,
                               "sequence": self.sequence})
            self.record("log_batch", status, sequence=self.sequence,
                        lines=[b["message"] for b in batch])

    def run(self):
        last_logs, last_progress = 0.0, {}
        while True:
            now = time.monotonic()
            with self.lock:
                pending = len(self.lines)
                progress = dict(self.progress)
                stopping = self.stopping
            if pending >= 10 or (pending and now - last_logs >= 0.05):
                self.flush_logs()
                last_logs = now
            for kind, msg in progress.items():
                sent = last_progress.get(kind)
                if sent is None or sent[1] != msg or now - sent[0] >= 2:
                    status = self.gui(msg)
                    self.record(kind, status, value=msg.get("current"))
                    last_progress[kind] = (now, msg)
            if now - self.last_beat >= 30:
                self.last_beat = now
                self.target.send("/api/heartbeat",
                                 {"machineId": self.machine_id})
            if stopping and not pending:
                return
            time.sleep(0.02)  # 50 Hz

    def upload(self, assignment_id, files):
        """POST /api/assignments/<id>/results, multipart, one part per
        file; returns the status (None: no answer)."""
        boundary = "goliat-%d" % int(time.time() * 1e6)
        parts = []
        for name, data in files:
            parts.append(("--%s\r\nContent-Disposition: form-data; "
                          "name=\"files\"; filename=\"%s\"\r\n"
                          "Content-Type: application/octet-stream\r\n\r\n"
                          % (boundary, name)).encode() + data + b"\r\n")
        body = b"".join(parts) + ("--%s--\r\n" % boundary).encode()
        status, _ = self.target.send(
            "/api/assignments/%s/results" % assignment_id, body=body,
            content_type="multipart/form-data; boundary=" + boundary)
        self.record("results", status, bytes=len(body),
                    sha256=hashlib.sha256(body).hexdigest())
        if self.record_file:
            with open(self.record_file + ".results", "wb") as f:
                f.write(body)
        return status

    def stop(self):
        """Flush what the bridge holds (GOLIAT waits a little), then stop."""
        with self.lock:
            self.stopping = True
        if self.on:
            self.thread.join(10)


def bridge_study(config):
    """A study that talks like GOLIAT: log lines and progress through the
    bridge for duration_s, result files at the end, then what GOLIAT sends
    when a study ends."""
    bridge = Bridge(Target(config), config.get("record_file"))
    duration = float(config.get("duration_s", 1.0))
    lines = int(config.get("log_lines", 100))
    steps = max(1, int(config.get("steps", 100)))
    t0 = time.monotonic()
    for i in range(1, steps + 1):
        while time.monotonic() - t0 < duration * i / steps:
            time.sleep(0.005)
        bridge.set_progress("overall_progress", current=i, total=steps)
        bridge.set_progress("stage_progress", name="simulate", current=i,
                            total=steps)
        for j in range(lines * (i - 1) // steps, lines * i // steps):
            bridge.log("line %d" % (j + 1))
    code = exit_code(config)
    record_run(config, code)
    if code != 0:
        bridge.log(failure_line(code), "default")
    bridge.stop()
    if config.get("results_bytes") and bridge.on:
        size = int(config["results_bytes"])
        data = bytes((i * 7 + 3) % 256 for i in range(size))
        bridge.upload(os.environ.get("GOLIAT_ASSIGNMENT_ID", "none"),
                      [("results.bin", data), ("summary.json", b'{"ok":1}')])
    if config.get("post_finished", True) and bridge.on:
        for msg in end_messages(code, config.get("drop_queue_end", False)):
            status = bridge.gui(msg)
            bridge.record(msg["type"], status, **{
                k: msg[k] for k in ("message", "exit_code") if k in msg})
    return code


def write_pid(path, pid):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(pid))
    os.replace(path + ".tmp", path)


def sleeper(ignore_sigterm, **popen_args):
    """A python that sleeps for 10 minutes (ignoring SIGTERM if asked)."""
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" \
        if ignore_sigterm else ""
    return subprocess.Popen([sys.executable, "-c", "import signal, time\n" +
                             ignore + "time.sleep(600)"], **popen_args)


def exit_code(config):
    """exit_code, or the next of exit_codes (one per run, counted in
    count_file): [42, 42, 0] runs out of memory twice, then succeeds."""
    codes = config.get("exit_codes")
    if not codes:
        return int(config.get("exit_code", 0))
    count_file = config["count_file"]
    try:
        with open(count_file, encoding="utf-8") as f:
            runs = int(f.read() or 0)
    except FileNotFoundError:
        runs = 0
    write_pid(count_file, runs + 1)
    return int(codes[min(runs, len(codes) - 1)])


def record_run(config, code):
    """runs_file: "<assignment id> <machine id> <exit code>", the machine id
    being the GOLIAT_MACHINE_ID the study was given."""
    if config.get("runs_file"):
        with open(config["runs_file"], "a", encoding="utf-8") as f:
            f.write(f"{os.environ.get('GOLIAT_ASSIGNMENT_ID')} "
                    f"{os.environ.get('GOLIAT_MACHINE_ID')} {code}\n")


def record_start(config):
    """starts_file: "<assignment id> <machine id> <pid>", at the start of
    the run (a run stopped before its end leaves no runs_file line)."""
    if config.get("starts_file"):
        with open(config["starts_file"], "a", encoding="utf-8") as f:
            f.write(f"{os.environ.get('GOLIAT_ASSIGNMENT_ID')} "
                    f"{os.environ.get('GOLIAT_MACHINE_ID')} {os.getpid()}\n")


def record_status(config):
    """Append the stored status of this run's assignment, as the
    development dashboard at probe_url shows it now, to status_file (a
    test's view of what the dashboard showed when each run started). Asked
    with urllib, never through the agent's hook."""
    me = os.environ.get("GOLIAT_ASSIGNMENT_ID")
    status = "unknown"
    try:
        with urllib.request.urlopen(config["probe_url"].rstrip("/") +
                                    "/dev/events", timeout=10) as r:
            events = json.load(r)
        for study in events.get("super_studies", []):
            for a in study.get("assignments", []):
                if a.get("id") == me:
                    status = a.get("status")
    except (OSError, ValueError, KeyError) as exc:
        status = "unknown (%s)" % exc
    with open(config["status_file"], "a", encoding="utf-8") as f:
        f.write("%s\n" % status)


def main(argv):
    if len(argv) != 3 or argv[1] != "study":
        print("usage: python -m goliat study CONFIG", file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        config = json.load(f)
    print(f"goliat stand-in: study {argv[2]} "
          f"(assignment {os.environ.get('GOLIAT_ASSIGNMENT_ID')})", flush=True)
    if config.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if config.get("pid_file"):
        write_pid(config["pid_file"], os.getpid())
    record_start(config)
    if config.get("child_pid_file"):
        child = sleeper(config.get("child_ignores_sigterm"))
        write_pid(config["child_pid_file"], child.pid)
    if config.get("detached_pid_file"):
        # leaves the process group and the session, as a daemon would
        child = sleeper(config.get("detached_ignores_sigterm"),
                        start_new_session=True, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        write_pid(config["detached_pid_file"], child.pid)
    if config.get("status_file"):
        record_status(config)
    if config.get("bridge"):
        return bridge_study(config)
    target = Target(config)
    line = "x" * 99 + "\n"
    for _ in range(int(config.get("log_bytes", 0)) // len(line)):
        sys.stdout.write(line)
    sys.stdout.flush()
    steps = max(1, int(config.get("steps", 3)))
    duration = float(config.get("duration_s", 1.0))
    post(target, {"type": "status", "message": "study started",
                  "log_type": "info"})
    for i in range(1, steps + 1):
        time.sleep(duration / steps)
        post(target, {"type": "overall_progress", "current": i,
                      "total": steps})
        print(f"step {i}/{steps}", flush=True)
    code = exit_code(config)
    record_run(config, code)
    if code != 0:
        post(target, {"type": "status", "message": failure_line(code),
                      "log_type": "default"})
    if config.get("post_finished", True):
        for msg in end_messages(code, config.get("drop_queue_end", False)):
            post(target, msg)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
