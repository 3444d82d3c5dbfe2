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


def post(message):
    """Post one GUI update like GOLIAT's bridge: best effort, no retry."""
    base = os.environ.get("GOLIAT_MONITORING_URL")
    if not base or os.environ.get("GOLIAT_WEBGUI_ENABLED") != "true":
        return
    body = json.dumps({
        "machineId": os.environ.get("GOLIAT_MACHINE_ID", ""),
        "message": message,
        "timestamp": time.time(),
    }).encode()
    req = urllib.request.Request(base.rstrip("/") + "/api/gui-update",
                                 data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except OSError as exc:
        print(f"gui update not delivered: {exc}", flush=True)


class Bridge:
    """GOLIAT's web bridge habits, for config "bridge": true: progress at up
    to 50 Hz (the newest value; re-sent every 2 s), log lines batched every
    50 ms or 10 lines as log_batch with an increasing sequence, a heartbeat
    every 30 s, a multipart upload of result files at the end; no retries,
    and what is queued when it stops is dropped. Each message is logged to
    `record_file` (JSON lines: what was sent and the status it got), so a
    test can tell what the dashboard must have received."""

    def __init__(self, record_file=None):
        self.base = os.environ.get("GOLIAT_MONITORING_URL", "").rstrip("/")
        self.machine_id = os.environ.get("GOLIAT_MACHINE_ID", "")
        self.on = bool(self.base) and \
            os.environ.get("GOLIAT_WEBGUI_ENABLED") == "true"
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

    def send(self, path, body, content_type="application/json"):
        req = urllib.request.Request(self.base + path, data=body,
                                     method="POST",
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def gui(self, message):
        body = json.dumps({"machineId": self.machine_id, "message": message,
                           "timestamp": time.time()}).encode()
        return self.send("/api/gui-update", body)

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
                self.send("/api/heartbeat", json.dumps(
                    {"machineId": self.machine_id}).encode())
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
        status = self.send("/api/assignments/%s/results" % assignment_id,
                           body, "multipart/form-data; boundary=" + boundary)
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
    bridge for duration_s, result files at the end, then `finished`."""
    bridge = Bridge(config.get("record_file"))
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
    bridge.stop()
    code = exit_code(config)
    if config.get("results_bytes") and bridge.on:
        size = int(config["results_bytes"])
        data = bytes((i * 7 + 3) % 256 for i in range(size))
        bridge.upload(os.environ.get("GOLIAT_ASSIGNMENT_ID", "none"),
                      [("results.bin", data), ("summary.json", b'{"ok":1}')])
    if config.get("post_finished", True) and bridge.on:
        status = bridge.gui({"type": "finished", "message": "study done"})
        bridge.record("finished", status)
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
    if config.get("child_pid_file"):
        child = sleeper(config.get("child_ignores_sigterm"))
        write_pid(config["child_pid_file"], child.pid)
    if config.get("detached_pid_file"):
        # leaves the process group and the session, as a daemon would
        child = sleeper(config.get("detached_ignores_sigterm"),
                        start_new_session=True, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        write_pid(config["detached_pid_file"], child.pid)
    if config.get("bridge"):
        return bridge_study(config)
    line = "x" * 99 + "\n"
    for _ in range(int(config.get("log_bytes", 0)) // len(line)):
        sys.stdout.write(line)
    sys.stdout.flush()
    steps = max(1, int(config.get("steps", 3)))
    duration = float(config.get("duration_s", 1.0))
    post({"type": "status", "message": "study started", "log_type": "info"})
    for i in range(1, steps + 1):
        time.sleep(duration / steps)
        post({"type": "overall_progress", "current": i, "total": steps})
        print(f"step {i}/{steps}", flush=True)
    code = exit_code(config)
    if config.get("runs_file"):
        with open(config["runs_file"], "a", encoding="utf-8") as f:
            f.write(f"{os.environ.get('GOLIAT_ASSIGNMENT_ID')} "
                    f"{os.environ.get('GOLIAT_MACHINE_ID')} {code}\n")
    if code != 0:
        post({"type": "status", "message": f"study failed ({code})",
              "log_type": "error"})
    if config.get("post_finished", True):
        post({"type": "finished", "message": "study done"})
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
