"""GOLIAT gateway hook: a study's dashboard requests go to the agent instead.

What it is: a `sitecustomize` module, which Python's site.py imports at the
start of every process whose sys.path holds this folder. GOLIAT posts to a
dashboard URL written in its own code (with `requests`) and does not read
GOLIAT_MONITORING_URL, so the agent's local gateway would never see those
requests; this module makes `requests` send them to the gateway.

Who installs it: the goliat-host agent (scripts/agent.lua). When it runs a
study through its gateway it prepends this folder (scripts/pyhook) to the
study's PYTHONPATH and sets:
  GOLIAT_GATEWAY_HOOK_TARGET  the gateway URL, no trailing slash, e.g.
                              http://127.0.0.1:5555/gw/<secret>
  GOLIAT_GATEWAY_HOOK_URLS    a JSON array of base URLs to redirect, e.g.
                              ["https://monitor.goliat.waves-ugent.be"]
A `requests` call to BASE + REST, where REST is empty or starts with "/",
"?" or "#", is sent to TARGET + REST. Scheme and host compare without
case, a trailing "/" on a base is ignored, and a default port written out
(https://host:443) equals none.

Turning it off: the agent's setting GOLIAT_GATEWAY_HOOK=off (the agent then
does not install it). With GOLIAT_GATEWAY_HOOK_TARGET empty or unset the
module does nothing but run the next sitecustomize.

It never breaks the program: bad variables print one line to stderr and
leave `requests` alone, and any error inside the hook sends the request as
it was. After setting itself up it runs the next sitecustomize on sys.path
after this folder (a site's or virtualenv's own), as if this one were not
there. `requests` is patched only once the program imports it.

Debugging: sys.modules["goliat_gateway_hook"].redirect_url(url) returns
where a request to url goes (None: not redirected).
"""

import os
import sys

# this module stays reachable under this name once the next sitecustomize
# has taken the name "sitecustomize"; its presence also marks the hook as
# set up in this process
_KEY = "goliat_gateway_hook"
_SESSIONS = "requests.sessions"  # the module that defines requests.Session
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
# proxies that send nothing through a proxy (requests: a None value removes
# the environment's proxy of that kind)
_NO_PROXIES = {"http": None, "https": None, "all": None}

# kept by importlib.reload(), which runs this file again in the same
# namespace (and then does nothing else, see _main)
_active = globals().get("_active")  # the _Redirect in force, or None
_warned = globals().get("_warned", False)


def _warn(message):
    """One line on stderr, once per process: the hook must stay quiet."""
    global _warned
    if _warned:
        return
    _warned = True
    try:
        sys.stderr.write("goliat gateway hook: %s\n" % message)
        sys.stderr.flush()
    except Exception:
        pass  # no stderr (pythonw.exe): nothing to tell


def _split(url):
    """(scheme, netloc, rest) of an http(s) URL, scheme and netloc in
    lower case without a default port; None for anything else."""
    scheme, sep, after = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        return None
    end = len(after)
    for ch in "/?#":
        at = after.find(ch)
        if 0 <= at < end:
            end = at
    netloc, rest = after[:end].lower(), after[end:]
    port = _DEFAULT_PORTS[scheme]
    if netloc.endswith(port):
        netloc = netloc[: -len(port)]
    if not netloc:
        return None
    return scheme, netloc, rest


def _parse_base(text):
    """(scheme, netloc, path) of a base URL, path without a trailing "/";
    None when text is not an http(s) URL without query or fragment."""
    if not isinstance(text, str):
        return None
    parts = _split(text.strip())
    if parts is None or "?" in parts[2] or "#" in parts[2]:
        return None
    return parts[0], parts[1], parts[2].rstrip("/")


def _under(parts, base):
    """What follows base in a URL split by _split, or None when the URL
    is not under base (the next character must be a boundary)."""
    scheme, netloc, rest = parts
    if scheme != base[0] or netloc != base[1] or not rest.startswith(base[2]):
        return None
    tail = rest[len(base[2]):]
    if tail and tail[0] not in "/?#":
        return None  # https://h/api must not take https://h/apiv2
    return tail


class _Redirect:
    """The configuration: where requests to the base URLs go."""

    def __init__(self, target, bases):
        self.target = target
        self.target_base = _parse_base(target)
        self.bases = bases
        host = self.target_base[1].rpartition("@")[2]
        if host.startswith("["):
            host = host[1:].partition("]")[0]
        else:
            host = host.partition(":")[0]
        # the gateway listens on loopback, which no proxy can reach: a proxy
        # set for the dashboard (HTTPS_PROXY, Windows' system proxy) must
        # not be used for it
        self.direct = host in ("localhost", "::1") or host.startswith("127.")

    def url(self, url):
        """The URL to use instead of url, or None to leave it alone. Works
        on url itself (as requests does), so it may raise: callers catch."""
        if isinstance(url, bytes):
            url = url.decode("utf-8")  # requests accepts bytes the same way
        elif not isinstance(url, str):
            return None
        parts = _split(url.lstrip())  # requests strips leading blanks too
        if parts is None:
            return None
        if _under(parts, self.target_base) is not None:
            return None  # already the gateway: never prefix it twice
        for base in self.bases:
            tail = _under(parts, base)
            if tail is not None:
                return self.target + tail
        return None


def redirect_url(url):
    """Where a `requests` call to url is sent: the gateway URL, or None when
    it is not redirected (or the hook is off)."""
    return _active.url(url) if _active is not None else None


def _without_proxies(proxies):
    merged = dict(proxies or {})
    merged.update(_NO_PROXIES)
    return merged


# The wrappers below go through redirect_url(), so that it answers for
# exactly what they do.


def _request_args(args, kwargs):
    """Session.request's arguments with the URL redirected; raises on any
    surprise, and then the caller keeps the original arguments."""
    # Session.request(method, url, params, data, headers, cookies, files,
    #                 auth, timeout, allow_redirects, proxies, ...)
    if len(args) >= 2:
        new = redirect_url(args[1])
    elif "url" in kwargs:
        new = redirect_url(kwargs["url"])
    else:
        return args, kwargs
    if new is None:
        return args, kwargs
    args, kwargs = list(args), dict(kwargs)
    if len(args) >= 2:
        args[1] = new
    else:
        kwargs["url"] = new
    if _active.direct:
        if len(args) >= 11:
            args[10] = _without_proxies(args[10])
        else:
            kwargs["proxies"] = _without_proxies(kwargs.get("proxies"))
    return tuple(args), kwargs


def _send_args(args, kwargs):
    """Session.send's arguments with a prepared request's URL redirected:
    a copy of it, so that the caller's object stays as it was."""
    if args:
        prepared = args[0]
    elif "request" in kwargs:
        prepared = kwargs["request"]
    else:
        return args, kwargs
    new = redirect_url(prepared.url)
    if new is None:
        return args, kwargs
    prepared = prepared.copy()
    prepared.url = new
    args, kwargs = list(args), dict(kwargs)
    if args:
        args[0] = prepared
    else:
        kwargs["request"] = prepared
    if _active.direct:
        # without "proxies" send() takes them from the environment
        kwargs["proxies"] = _without_proxies(kwargs.get("proxies"))
    return tuple(args), kwargs


def _patch(sessions):
    """Wraps requests.Session.request and .send: requests.get/post/...,
    requests.request and Session.get/... all go through Session.request,
    prepared requests through Session.send. The URL is changed in request()
    already, before requests looks up the environment's proxy and CA
    settings for it; send() then finds the gateway's URL and leaves it."""
    import functools

    session = sessions.Session
    original_request, original_send = session.request, session.send
    if getattr(original_request, "_goliat_gateway_hook", False):
        return  # patched already

    @functools.wraps(original_request)
    def request(self, *args, **kwargs):
        try:
            args, kwargs = _request_args(args, kwargs)
        except Exception:
            pass  # the request goes as it was
        return original_request(self, *args, **kwargs)

    @functools.wraps(original_send)
    def send(self, *args, **kwargs):
        try:
            args, kwargs = _send_args(args, kwargs)
        except Exception:
            pass  # the request goes as it was
        return original_send(self, *args, **kwargs)

    request._goliat_gateway_hook = send._goliat_gateway_hook = True
    session.request, session.send = request, send


class _PatchingLoader:
    """Stands in for requests.sessions' loader: runs the module with the
    real loader, then patches Session. Any other attribute is the real
    loader's."""

    def __init__(self, loader, finder):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        try:  # the module's code sees its real loader
            module.__loader__ = self.loader
            module.__spec__.loader = self.loader
        except Exception:
            pass
        self.loader.exec_module(module)  # its errors are the program's
        try:
            sys.meta_path.remove(self.finder)  # its job is done
        except ValueError:
            pass
        try:
            _patch(module)
        except Exception as err:
            _warn("could not patch requests (%s: %s); its requests are not "
                  "redirected" % (err.__class__.__name__, err))

    def __getattr__(self, name):
        if name == "loader":
            raise AttributeError(name)  # not set up yet (copy, pickle)
        return getattr(self.loader, name)


class _Finder:
    """A post-import hook on sys.meta_path: finds requests.sessions with
    the other finders and hands it a loader that patches it after it has
    run. Nothing else is touched, so nothing is imported that the program
    does not import itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _SESSIONS:
            return None
        try:
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            # a loader without exec_module (a zip's before Python 3.10)
            # cannot be wrapped: such a requests stays as it is
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchingLoader(spec.loader, self)
            return spec
        except Exception:
            return None  # the import system carries on without us


def _configure():
    """The _Redirect the variables ask for, or None."""
    target = os.environ.get("GOLIAT_GATEWAY_HOOK_TARGET", "").strip()
    if not target:
        return None  # off: only the next sitecustomize runs
    target = target.rstrip("/")
    if _parse_base(target) is None:
        _warn("GOLIAT_GATEWAY_HOOK_TARGET is not an http(s) URL; requests "
              "are not redirected")
        return None
    import json  # only when the hook is on

    try:
        urls = json.loads(os.environ.get("GOLIAT_GATEWAY_HOOK_URLS", ""))
    except ValueError:
        urls = None
    if not isinstance(urls, list):
        _warn("GOLIAT_GATEWAY_HOOK_URLS is not a JSON array of URLs; "
              "requests are not redirected")
        return None
    bases = [_parse_base(u) for u in urls]
    bad = [u for u, base in zip(urls, bases) if base is None]
    bases = [base for base in bases if base is not None]
    if bad:
        _warn("GOLIAT_GATEWAY_HOOK_URLS: not http(s) base URLs, ignored: %s"
              % ", ".join(repr(u) for u in bad))
    return _Redirect(target, bases) if bases else None


def _install():
    global _active
    try:
        _active = _configure()
        if _active is None:
            return
        sessions = sys.modules.get(_SESSIONS)
        if sessions is not None and hasattr(sessions, "Session"):
            _patch(sessions)  # imported already (by a .pth file)
        else:
            sys.meta_path.insert(0, _Finder())
    except Exception as err:
        _warn("could not set up (%s: %s); requests are not redirected"
              % (err.__class__.__name__, err))


def _same_folder(a, b):
    try:
        return os.path.normcase(os.path.realpath(a)) == \
            os.path.normcase(os.path.realpath(b))
    except Exception:
        return False


def _next_sitecustomize():
    """The spec of the first sitecustomize on sys.path after this folder,
    never this file itself; None when there is none or this folder is not
    on sys.path (then site.py did not import us: there is no "next")."""
    from importlib.machinery import PathFinder

    here_file = os.path.abspath(__file__)
    here = os.path.dirname(here_file)
    entries = [e for e in sys.path if isinstance(e, str)]
    for i, entry in enumerate(entries):
        if _same_folder(entry, here):
            break
    else:
        return None
    for entry in entries[i + 1:]:
        if _same_folder(entry, here):
            continue
        spec = PathFinder.find_spec("sitecustomize", [entry])
        if spec is None or spec.loader is None:
            continue
        origin = spec.origin
        if origin and os.path.isfile(origin) and \
                os.path.samefile(origin, here_file):
            continue  # this file by another path (a symlinked folder)
        return spec
    return None


def _chain(me):
    """Runs the next sitecustomize as site.py would have without us: under
    the name "sitecustomize", its errors reported the way site.py reports
    them (our patch stays)."""
    if me is None or getattr(me, "__name__", None) != "sitecustomize":
        return  # imported by some other name: site.py ran the real one
    try:
        spec = _next_sitecustomize()
        if spec is None:
            return
        import importlib.util

        module = importlib.util.module_from_spec(spec)
    except Exception as err:
        _warn("could not look for the next sitecustomize (%s: %s)"
              % (err.__class__.__name__, err))
        return
    # our folder stays off sys.path while it runs, so that one that chains
    # in turn (`import sitecustomize`) does not find us again
    here = os.path.dirname(os.path.abspath(__file__))
    hidden = [(i, e) for i, e in enumerate(sys.path)
              if isinstance(e, str) and _same_folder(e, here)]
    for i, _ in reversed(hidden):
        del sys.path[i]
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        # no half-run module left behind, as Python does; but site.py's
        # import of this file needs a "sitecustomize" in sys.modules when
        # we return: this one
        sys.modules["sitecustomize"] = me
        if not isinstance(err, Exception):
            raise  # SystemExit, KeyboardInterrupt: as without us
        # site.py's own wording (Lib/site.py, execsitecustomize); it too
        # takes an ImportError about "sitecustomize" for "there is none"
        if not (isinstance(err, ImportError) and err.name == "sitecustomize"):
            try:
                if sys.flags.verbose:
                    sys.excepthook(*sys.exc_info())
                else:
                    sys.stderr.write(
                        "Error in sitecustomize; set PYTHONVERBOSE for "
                        "traceback:\n%s: %s\n" % (err.__class__.__name__, err))
            except Exception:
                pass
    else:
        sys.modules.setdefault("sitecustomize", module)  # if it left
    finally:
        for i, entry in hidden:
            if entry not in sys.path:
                sys.path.insert(min(i, len(sys.path)), entry)


def _main():
    me = sys.modules.get(__name__)
    first = sys.modules.get(_KEY)
    if first is not None and first is me:
        return  # importlib.reload(): set up and chained already
    if first is None:
        sys.modules[_KEY] = me
        _install()
    # else a second copy of this file further on sys.path: the first one
    # has set up the hook; this one only passes the chain on
    _chain(me)


_main()
