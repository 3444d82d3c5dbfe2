"""python -m goliat study CONFIG: see goliat/__init__.py."""
import json
import os
import signal
import subprocess
import sys
import time
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
