"""Tests of scripts/pyhook/sitecustomize.py, the gateway hook the agent puts
on a study's PYTHONPATH:  python3 tests/pyhook_test.py  (from anywhere)

Real processes and real HTTP: each test starts a child `python3 -c ...`
(this interpreter) with PYTHONPATH holding scripts/pyhook, and loopback
servers on ports the OS picks stand for the dashboard, the agent's gateway,
an unrelated server and a proxy. A request answered by a server has been
recorded by it, so no test waits for anything but its child (bounded).
Skips (exit 0) when `requests` cannot be imported by this python3.
"""

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOK_DIR = os.path.join(ROOT, "scripts", "pyhook")
CHILD_TIMEOUT = 60  # seconds for one child process, start to exit
SECRET_PATH = "/gw/0123abcd"

# the child's programs; sys.argv[1:] are their arguments
POST = """
import sys, requests
r = requests.post(sys.argv[1], json={"n": 1}, timeout=30)
print(r.status_code, r.text)
"""

SESSION = """
import sys, requests
with requests.Session() as s:
    for url in sys.argv[1:]:
        print(s.get(url, timeout=30).text)
        print(s.request("PUT", url, data=b"x", timeout=30).text)
"""

PREPARED = """
import sys, requests
prep = requests.Request("POST", sys.argv[1], data=b"payload").prepare()
with requests.Session() as s:
    print(s.send(prep, timeout=30).text)
print("caller's url:", prep.url)
"""


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request (method, path as sent, body) on its server and
    answers with the server's name."""

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append((self.command, self.path, body))
        reply = json.dumps({"server": self.server.name,
                            "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = answer


def start_server(name):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    server.name = name
    server.lock = threading.Lock()
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = "http://127.0.0.1:%d" % server.server_address[1]
    return server


def requests_importable():
    try:
        return subprocess.run(
            [sys.executable, "-c", "import requests"], env=base_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=CHILD_TIMEOUT).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def base_env():
    """This environment without anything that would steer the child: no
    hook variables, no PYTHONPATH of ours, loopback past any proxy."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GOLIAT_GATEWAY_HOOK")
           and k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONVERBOSE",
                         "PYTHONWARNINGS", "PYTHONINSPECT")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in scripts/pyhook
    return env


class HookTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gateway = start_server("gateway")
        cls.dashboard = start_server("dashboard")
        cls.other = start_server("other")
        cls.proxy = start_server("proxy")
        cls.servers = (cls.gateway, cls.dashboard, cls.other, cls.proxy)
        cls.target = cls.gateway.url + SECRET_PATH

    @classmethod
    def tearDownClass(cls):
        for server in cls.servers:
            server.shutdown()
            server.server_close()

    def setUp(self):
        for server in self.servers:
            with server.lock:
                server.seen.clear()
        self.tmp = tempfile.mkdtemp(prefix="pyhook-test.")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    # ---- helpers ----

    def run_child(self, code, *args, bases=None, target=None, env=None,
                  path=None, flags=()):
        """Runs `python3 [flags] -c code args` with the hook on PYTHONPATH
        (then the folders in path); bases: GOLIAT_GATEWAY_HOOK_URLS (a list
        is JSON-encoded, a str is used as is); target: the gateway URL,
        this test's gateway by default when bases is given."""
        child_env = base_env()
        child_env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR] + list(path or ()))
        if bases is not None:
            child_env["GOLIAT_GATEWAY_HOOK_URLS"] = (
                bases if isinstance(bases, str) else json.dumps(bases))
            child_env["GOLIAT_GATEWAY_HOOK_TARGET"] = (
                self.target if target is None else target)
        elif target is not None:
            child_env["GOLIAT_GATEWAY_HOOK_TARGET"] = target
        child_env.update(env or {})
        return subprocess.run(
            [sys.executable] + list(flags) + ["-c", code] + list(args),
            env=child_env, cwd=self.tmp, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True,
            timeout=CHILD_TIMEOUT)

    def assertChildOk(self, proc, quiet=True):
        self.assertEqual(proc.returncode, 0,
                         "child failed:\n%s%s" % (proc.stdout, proc.stderr))
        if quiet:
            self.assertEqual(proc.stderr, "", "child wrote to stderr")

    def seen(self, server):
        with server.lock:
            return list(server.seen)

    def paths(self, server):
        return [path for _, path, _ in self.seen(server)]

    def assertOnlyOn(self, server, paths):
        """Exactly these request paths reached server, none any other."""
        self.assertEqual(self.paths(server), paths)
        for other in self.servers:
            if other is not server:
                self.assertEqual(self.paths(other), [],
                                 "requests reached the %s" % other.name)

    def sitecustomize_dir(self, name, body):
        folder = os.path.join(self.tmp, name)
        os.mkdir(folder)
        with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
            f.write(body)
        return folder

    def marker_sitecustomize(self, name="site-b"):
        """A folder with a sitecustomize.py that adds a line to a marker
        file each time it runs; returns (folder, marker path)."""
        marker = os.path.join(self.tmp, name + ".marker")
        folder = self.sitecustomize_dir(name, (
            "with open(%r, 'a') as f:\n"
            "    f.write('ran\\n')\n" % marker))
        return folder, marker

    def hook_runs(self, proc):
        """How many times the child (run with -v) compiled and so ran the
        hook's file, by whatever path: Python's -v notes each source file
        it compiles ("# code object from PATH"); there is no bytecode
        cache (PYTHONDONTWRITEBYTECODE) to take instead."""
        hook = os.path.realpath(os.path.join(HOOK_DIR, "sitecustomize.py"))
        runs = 0
        for line in proc.stderr.splitlines():
            if line.startswith("# code object from "):
                path = line[len("# code object from "):].strip("'")
                runs += os.path.realpath(path) == hook
        return runs

    def hook_lines(self, proc):
        return [line for line in proc.stderr.splitlines()
                if line.startswith("goliat gateway hook:")]

    def marker_lines(self, marker):
        if not os.path.exists(marker):
            return 0
        with open(marker) as f:
            return len(f.read().splitlines())

    # ---- redirection ----

    def test_requests_post_to_dashboard_lands_on_gateway_under_target_path(self):
        proc = self.run_child(POST, self.dashboard.url + "/api/runs/7/progress",
                              bases=[self.dashboard.url])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/runs/7/progress"])
        method, _, body = self.seen(self.gateway)[0]
        self.assertEqual((method, json.loads(body.decode())), ("POST", {"n": 1}))
        self.assertIn('"server": "gateway"', proc.stdout)

    def test_session_get_and_session_request_are_redirected(self):
        proc = self.run_child(SESSION, self.dashboard.url + "/api/a",
                              bases=[self.dashboard.url])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/a"] * 2)
        self.assertEqual([m for m, _, _ in self.seen(self.gateway)],
                         ["GET", "PUT"])

    def test_prepared_request_sent_with_session_send_is_redirected_caller_object_kept(self):
        url = self.dashboard.url + "/api/upload?id=3"
        proc = self.run_child(PREPARED, url, bases=[self.dashboard.url])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/upload?id=3"])
        self.assertEqual(self.seen(self.gateway)[0][2], b"payload")
        self.assertIn("caller's url: " + url, proc.stdout)

    def test_query_string_is_kept_after_target_path(self):
        proc = self.run_child(
            SESSION, self.dashboard.url + "/api/x?a=1&b=two%20words",
            self.dashboard.url + "?only=query", bases=[self.dashboard.url])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.gateway, [
            SECRET_PATH + "/api/x?a=1&b=two%20words"] * 2 + [
            SECRET_PATH + "?only=query"] * 2)

    def test_base_with_uppercase_scheme_and_trailing_slash_still_matches(self):
        base = self.dashboard.url.replace("http://", "HTTP://") + "/"
        proc = self.run_child(POST, self.dashboard.url + "/api/a", bases=[base])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/a"])

    def test_second_base_url_in_list_is_redirected_too(self):
        proc = self.run_child(POST, self.other.url + "/api/b",
                              bases=[self.dashboard.url, self.other.url])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/b"])

    def test_url_not_under_any_base_goes_to_its_own_server_unchanged(self):
        proc = self.run_child(POST, self.other.url + "/api/c?q=1",
                              bases=[self.dashboard.url])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.other, ["/api/c?q=1"])

    def test_base_that_is_a_prefix_without_boundary_does_not_match(self):
        # base http://127.0.0.1:4567 against http://127.0.0.1:45678/...: the
        # text matches, the host does not (like a.example vs a.example.org)
        port = self.dashboard.server_address[1]
        self.assertGreaterEqual(port, 10)
        proc = self.run_child(POST, self.dashboard.url + "/api/d",
                              bases=["http://127.0.0.1:%d" % (port // 10)])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.dashboard, ["/api/d"])

    def test_base_path_matches_at_a_path_boundary_only(self):
        proc = self.run_child(
            SESSION, self.dashboard.url + "/apiv2/e", self.dashboard.url + "/api/e",
            bases=[self.dashboard.url + "/api"])
        self.assertChildOk(proc)
        self.assertEqual(self.paths(self.dashboard), ["/apiv2/e"] * 2)
        self.assertEqual(self.paths(self.gateway), [SECRET_PATH + "/e"] * 2)

    def test_redirect_url_table_of_matching_rules(self):
        target = "http://127.0.0.1:9/gw/t"
        bases = ["https://Monitor.Example/", "http://10.0.0.5:3000",
                 "https://x.example:443/base/"]
        cases = [
            ("https://monitor.example/api/x", target + "/api/x"),
            ("HTTPS://MONITOR.EXAMPLE/api/x", target + "/api/x"),
            ("https://monitor.example", target),
            ("https://monitor.example/", target + "/"),
            ("https://monitor.example?x=1", target + "?x=1"),
            ("https://monitor.example#frag", target + "#frag"),
            ("https://monitor.example:443/api", target + "/api"),
            ("  https://monitor.example/a", target + "/a"),
            ("https://monitor.example.org/api", None),
            ("https://monitor.examplex/api", None),
            ("http://monitor.example/api", None),
            ("https://monitor.example:8443/api", None),
            ("https://user@monitor.example/api", None),
            ("http://10.0.0.5:3000/a?b", target + "/a?b"),
            ("http://10.0.0.5:30001/a", None),
            ("http://10.0.0.5/a", None),
            ("https://x.example/base/y", target + "/y"),
            ("https://x.example/base", target),
            ("https://x.example/basement", None),
            ("https://x.example/Base/y", None),
            (target + "/api/x", None),
            ("ftp://monitor.example/a", None),
            ("not a url", None),
        ]
        code = (
            "import json, sys\n"
            "hook = sys.modules['goliat_gateway_hook']\n"
            "urls = json.loads(sys.argv[1])\n"
            "got = [hook.redirect_url(u) for u in urls]\n"
            "got.append(hook.redirect_url(b'https://monitor.example/b'))\n"
            "got.append(hook.redirect_url(None))\n"
            "print(json.dumps(got))\n")
        proc = self.run_child(code, json.dumps([u for u, _ in cases]),
                              bases=bases, target=target + "/")
        self.assertChildOk(proc)
        got = json.loads(proc.stdout)
        want = [w for _, w in cases] + [target + "/b", None]
        for (url, _), g, w in zip(cases, got, want):
            self.assertEqual(g, w, "redirect_url(%r)" % url)
        self.assertEqual(got[-2:], want[-2:])

    def test_redirect_to_loopback_gateway_bypasses_environment_proxy(self):
        # the one child without NO_PROXY: every proxy variable points at a
        # recording server; the gateway must be reached directly
        proxy = {k: self.proxy.url for k in (
            "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
            "ALL_PROXY", "all_proxy")}
        proxy.update(NO_PROXY="", no_proxy="")
        proc = self.run_child(SESSION, self.dashboard.url + "/api/p",
                              bases=[self.dashboard.url], env=proxy)
        self.assertChildOk(proc)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/p"] * 2)
        proc = self.run_child(PREPARED, self.dashboard.url + "/api/q",
                              bases=[self.dashboard.url], env=proxy)
        self.assertChildOk(proc)
        self.assertEqual(self.paths(self.gateway)[-1], SECRET_PATH + "/api/q")
        self.assertEqual(self.paths(self.proxy), [])

    def test_hook_works_under_python_W_error(self):
        proc = self.run_child(POST, self.dashboard.url + "/api/w",
                              bases=[self.dashboard.url], flags=("-W", "error"))
        self.assertChildOk(proc)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/w"])

    # ---- the hook never breaks the program ----

    def test_urls_variable_not_json_leaves_requests_untouched_one_line(self):
        code = POST + "print(requests.get(sys.argv[1], timeout=30).text)\n"
        proc = self.run_child(code, self.dashboard.url + "/api/f",
                              bases="not json [")
        self.assertChildOk(proc, quiet=False)
        self.assertOnlyOn(self.dashboard, ["/api/f", "/api/f"])
        lines = proc.stderr.splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn("GOLIAT_GATEWAY_HOOK_URLS", lines[0])

    def test_target_not_a_url_leaves_requests_untouched_one_line(self):
        proc = self.run_child(POST, self.dashboard.url + "/api/g",
                              bases=[self.dashboard.url], target="ftp://x/y")
        self.assertChildOk(proc, quiet=False)
        self.assertOnlyOn(self.dashboard, ["/api/g"])
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)

    def test_target_set_without_urls_variable_leaves_requests_untouched(self):
        proc = self.run_child(POST, self.dashboard.url + "/api/h",
                              target=self.target)
        self.assertChildOk(proc, quiet=False)
        self.assertOnlyOn(self.dashboard, ["/api/h"])
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)

    def test_empty_target_means_off_and_silent(self):
        proc = self.run_child(POST, self.dashboard.url + "/api/i",
                              bases=[self.dashboard.url], target="")
        self.assertChildOk(proc)
        self.assertOnlyOn(self.dashboard, ["/api/i"])

    def test_exception_inside_url_rewrite_leaves_request_as_it_was(self):
        # the hook's rewrite (redirect_url, which its wrappers call) made to
        # raise in the child: requests.post, Session.request and a prepared
        # request through Session.send all go where they were sent
        code = (
            "import sys\n"
            "hook = sys.modules['goliat_gateway_hook']\n"
            "def boom(url):\n"
            "    raise RuntimeError('rewrite failed')\n"
            "hook.redirect_url = boom\n"
            "import requests\n"
            "print(requests.post(sys.argv[1], data=b'z', timeout=30).text)\n"
            "with requests.Session() as s:\n"
            "    print(s.request('GET', sys.argv[1], timeout=30).text)\n"
            "    prep = requests.Request('PUT', sys.argv[1]).prepare()\n"
            "    print(s.send(prep, timeout=30).text)\n")
        proc = self.run_child(code, self.dashboard.url + "/api/j?k=1",
                              bases=[self.dashboard.url])
        self.assertChildOk(proc)
        self.assertOnlyOn(self.dashboard, ["/api/j?k=1"] * 3)
        self.assertEqual([m for m, _, _ in self.seen(self.dashboard)],
                         ["POST", "GET", "PUT"])

    def test_failure_while_patching_requests_leaves_it_working_one_line(self):
        # the patch step made to raise before the program imports requests
        code = (
            "import sys\n"
            "hook = sys.modules['goliat_gateway_hook']\n"
            "def boom(module):\n"
            "    raise RuntimeError('patch failed')\n"
            "hook._patch = boom\n"
            "import requests\n"
            "print(requests.post(sys.argv[1], timeout=30).text)\n"
            "print(requests.get(sys.argv[1], timeout=30).text)\n")
        proc = self.run_child(code, self.dashboard.url + "/api/k",
                              bases=[self.dashboard.url])
        self.assertChildOk(proc, quiet=False)
        self.assertOnlyOn(self.dashboard, ["/api/k"] * 2)
        lines = proc.stderr.splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn("could not patch requests", lines[0])

    # ---- laziness and silence ----

    def test_program_without_requests_does_not_get_requests_imported(self):
        code = ("import sys\n"
                "print(sorted(m for m in sys.modules\n"
                "             if m.split('.')[0] in ('requests', 'urllib3')))\n")
        proc = self.run_child(code, bases=[self.dashboard.url])
        self.assertChildOk(proc)
        self.assertEqual(proc.stdout.strip(), "[]")

    def test_no_variables_hook_on_path_prints_nothing(self):
        for flags in ((), ("-W", "error")):
            proc = self.run_child("import sys", flags=flags)
            self.assertChildOk(proc)
            self.assertEqual(proc.stdout, "")

    # ---- chaining to the next sitecustomize ----

    def test_next_sitecustomize_on_path_still_runs_exactly_once(self):
        folder, marker = self.marker_sitecustomize()
        code = POST + ("import sitecustomize\n"
                       "print('sitecustomize:', sitecustomize.__file__)\n")
        proc = self.run_child(code, self.dashboard.url + "/api/l",
                              bases=[self.dashboard.url], path=[folder])
        self.assertChildOk(proc)
        self.assertEqual(self.marker_lines(marker), 1)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/l"])
        # the program sees the other sitecustomize, as if ours were not there
        self.assertIn("sitecustomize: " + os.path.join(folder, "sitecustomize.py"),
                      proc.stdout)

    def test_next_sitecustomize_runs_when_hook_is_off(self):
        folder, marker = self.marker_sitecustomize()
        proc = self.run_child("import sys", path=[folder])
        self.assertChildOk(proc)
        self.assertEqual(self.marker_lines(marker), 1)

    def test_hook_folder_twice_and_symlinked_runs_hook_and_next_once(self):
        folder, marker = self.marker_sitecustomize()
        link = os.path.join(self.tmp, "pyhook-link")
        file_link = os.path.join(self.tmp, "file-link")
        os.mkdir(file_link)
        try:
            os.symlink(HOOK_DIR, link)
            os.symlink(os.path.join(HOOK_DIR, "sitecustomize.py"),
                       os.path.join(file_link, "sitecustomize.py"))
        except (OSError, NotImplementedError):
            self.skipTest("no symlinks here")
        # the bad variable makes each setup of the hook print its line
        proc = self.run_child("import sys", bases="[not json", flags=("-v",),
                              path=[link, HOOK_DIR, file_link, folder])
        self.assertChildOk(proc, quiet=False)
        self.assertEqual(self.hook_runs(proc), 1, proc.stderr)
        self.assertEqual(len(self.hook_lines(proc)), 1, proc.stderr)
        self.assertEqual(self.marker_lines(marker), 1)

    def test_copy_of_hook_later_on_path_neither_patches_twice_nor_stops_chain(self):
        copy = os.path.join(self.tmp, "old-pyhook")
        os.mkdir(copy)
        shutil.copy(os.path.join(HOOK_DIR, "sitecustomize.py"), copy)
        folder, marker = self.marker_sitecustomize()
        proc = self.run_child(POST, self.dashboard.url + "/api/m",
                              bases=[self.dashboard.url], path=[copy, folder])
        self.assertChildOk(proc)
        self.assertEqual(self.marker_lines(marker), 1)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/m"])

    def test_next_sitecustomize_that_chains_itself_does_not_rerun_hook(self):
        # one that chains the way tracing tools do: drop its own folder
        # from sys.path, forget itself, import sitecustomize again
        inner, marker = self.marker_sitecustomize("site-c")
        folder = self.sitecustomize_dir("site-b", (
            "import os, sys\n"
            "here = os.path.dirname(os.path.abspath(__file__))\n"
            "sys.path[:] = [p for p in sys.path if os.path.abspath(p) != here]\n"
            "del sys.modules['sitecustomize']\n"
            "import sitecustomize\n"))
        proc = self.run_child("import sys", bases="[not json", flags=("-v",),
                              path=[folder, inner])
        self.assertChildOk(proc, quiet=False)
        self.assertEqual(self.hook_runs(proc), 1, proc.stderr)
        self.assertEqual(len(self.hook_lines(proc)), 1, proc.stderr)
        self.assertEqual(self.marker_lines(marker), 1)

    def test_error_in_next_sitecustomize_reported_as_python_does_patch_kept(self):
        folder = self.sitecustomize_dir(
            "site-b", "raise RuntimeError('broken site setup')\n")
        code = POST + (
            "print('still here')\n"
            "print('left behind:', sys.modules['sitecustomize'].__file__)\n")
        proc = self.run_child(code, self.dashboard.url + "/api/n",
                              bases=[self.dashboard.url], path=[folder])
        self.assertChildOk(proc, quiet=False)
        self.assertOnlyOn(self.gateway, [SECRET_PATH + "/api/n"])
        self.assertIn("still here", proc.stdout)
        # not the half-run module (Python drops a failed one)
        self.assertNotIn("left behind: " + folder, proc.stdout)
        # the same warning Python prints for that sitecustomize without ours
        env = base_env()
        env["PYTHONPATH"] = folder
        plain = subprocess.run([sys.executable, "-c", "import sys"], env=env,
                               cwd=self.tmp, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True,
                               timeout=CHILD_TIMEOUT)
        self.assertIn("RuntimeError: broken site setup", plain.stderr)
        self.assertEqual(proc.stderr, plain.stderr)


if __name__ == "__main__":
    if not requests_importable():
        print("SKIP: tests/pyhook_test.py: the python3 here (%s) cannot "
              "import requests, which the hook patches" % sys.executable)
        sys.exit(0)
    unittest.main(verbosity=2)
