# cpkgs usage hook: the `sitecustomize` of a shared environment built by cpkgs (see the site's README, "Usage
# records"). Rendered by `cpkgs new-env` for ONE env and byte-compiled there; the env holds it as
# lib/pythonX.Y/sitecustomize.pyc and this readable source as conda-meta/cpkgs/usage-hook.py.
#
# What it does, in order, at interpreter start:
#  1. Decides whether this process sends a usage record: only when CPKGS_USAGE_SEND is set (the site's profiles,
#     modulefiles and kernels set it while cpkgs.yaml says `usage: enabled: true`) and the user has not opted out
#     with CPKGS_USAGE=0. The switch is the environment: no file is read, so turning records on or off needs no
#     rebuild and costs no access to the shared drive. Then, with `sample` < 1, a coin decides.
#  2. Runs any other `sitecustomize` further down sys.path (a package's own, a layer's, the user site's), exactly
#     once and under that name, as Python would have without this file.
# At interpreter exit (atexit) it sends one syslog datagram: env, user, host, start and duration, the script's
# name and the top-level modules imported from the env's own site-packages (and from other site-packages dirs:
# a personal layer, the user site). UDP or the local syslog socket, non-blocking, numeric address only (no name
# lookup), at most _MAX_PAYLOAD bytes, every error swallowed: the program's output, behaviour and exit status stay
# exactly what they were. Nothing is ever written to a file.
#
# Kept to Python 3.7 syntax and to modules that are already loaded or built in (os, sys, atexit; _socket and the
# sha2 module only at exit): importing `socket`, `json` or `random` would cost about a millisecond each per start.

import os
import sys

_ENV = @ENV@
_PLATFORM = @PLATFORM@
# True when the build found another sitecustomize in this env's own lib-dynload or site-packages: only then are
# those searched again for one (they are sealed, so the build's answer stays true).
_CHAIN_OWN = @CHAIN_OWN@
_TAG = "cpkgs-usage"
_MAX_PAYLOAD = 4000
_OFF = ("0", "off", "no", "false")


def _settings():
    """(destination, sample, user mode, salt) from the environment, or None when this process sends nothing."""
    value = os.environ.get("CPKGS_USAGE_SEND")
    if not value or os.environ.get("CPKGS_USAGE", "").strip().lower() in _OFF:
        return None
    words = dict(w.partition("=")[::2] for w in value.split())
    to = words.get("to", "")
    if to == "syslog":
        dest = "syslog"
    elif to.startswith("udp://"):
        host, _, port = to[6:].rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        # A numeric address only: a name would need a resolver, which can block for seconds.
        digits = "0123456789abcdefABCDEF.:" if ":" in host else "0123456789."
        if not host or host.strip(digits) or not port.isdigit() or not 0 < int(port) < 65536:
            return None
        dest = (host, int(port))
    else:
        return None
    sample = float(words.get("sample", "1"))
    users = words.get("users", "plain")
    if users not in ("plain", "hashed"):
        return None
    return dest, sample, users, words.get("salt", "")


def _sampled(sample):
    if sample >= 1:
        return True
    if sample <= 0:
        return False
    return int.from_bytes(os.urandom(4), "big") / 4294967296.0 < sample


def _start():
    settings = _settings()
    if settings is None or not _sampled(settings[1]):
        return None
    import atexit
    import time

    here = os.path.dirname(__file__)
    state = {
        "settings": settings,
        "pid": os.getpid(),
        "start": time.time(),
        "mono": time.monotonic(),
        "site_packages": os.path.join(here, "site-packages") + os.sep,
        "before": (),
    }
    # Registered before the chained sitecustomize runs: atexit calls handlers last-in first-out, so this one runs
    # after any handler registered later and sees every module the program imported.
    atexit.register(_at_exit, state)
    return state


def _chain():
    """Run the next `sitecustomize` on sys.path, if any, as the module `sitecustomize`."""
    here = os.path.dirname(__file__)
    skip = {here}
    if not _CHAIN_OWN:
        skip.update((os.path.join(here, "lib-dynload"), os.path.join(here, "site-packages")))
    path = sys.path
    if here in path:
        path = path[path.index(here) + 1:]
    path = [p for p in path if p not in skip]
    finder = None
    for f in sys.meta_path:
        if getattr(f, "__name__", None) == "PathFinder":
            finder = f
    if not path or finder is None:
        return
    spec = finder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None or spec.origin == __file__:
        return
    import importlib.util

    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # As a failed import would: gone from sys.modules; site.py reports the error as it always does.
        sys.modules.pop("sitecustomize", None)
        raise


def _file(module):
    """A module's __file__ from its __dict__ (a module's __getattr__, PEP 562, must not run here); None if none."""
    d = getattr(module, "__dict__", None)
    f = d.get("__file__") if type(d) is dict else None
    return f if type(f) is str else None


def _modules(state):
    """(modules from the env's site-packages, modules from other site-packages dirs), top-level names; for a
    namespace package (no __init__, several distributions: google, mpl_toolkits) its imported subpackages,
    'google.protobuf'. Only modules imported after the start count."""
    own, other = set(), set()
    sp = state["site_packages"]
    marker = os.sep + "site-packages" + os.sep
    mods = sys.modules
    namespace = {}
    for name in mods.keys() - state["before"]:
        top, dot, rest = name.partition(".")
        if dot:
            if "." in rest:
                continue
            if top not in namespace:
                d = getattr(mods.get(top), "__dict__", None)
                namespace[top] = type(d) is dict and d.get("__file__") is None and d.get("__path__") is not None
            if not namespace[top]:
                continue  # a submodule of a regular package: its top-level name is what counts
        f = _file(mods.get(name))
        if f is None:
            continue
        if f.startswith(sp):
            own.add(name)
        elif marker in f:
            other.add(name)
    return sorted(own), sorted(other)


def _script():
    main = sys.modules.get("__main__")
    d = getattr(main, "__dict__", None)
    spec = d.get("__spec__") if type(d) is dict else None
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name != "__main__":
        if name.endswith(".__main__"):
            name = name[: -len(".__main__")]
        return "-m " + name
    argv = getattr(sys, "argv", None) or [""]
    arg0 = argv[0] if isinstance(argv[0], str) else ""
    if arg0 in ("", "-"):
        return "interactive"
    return arg0 if arg0 == "-c" else os.path.basename(arg0)


def _json(value):
    """Compact JSON of str/int/float/bool/list/dict, ASCII only (no control characters reach the log)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
            return '"' + value + '"'
        out = []
        for ch in value:
            o = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif 0x20 <= o < 0x7F:
                out.append(ch)
            elif o < 0x10000:
                out.append("\\u%04x" % o)
            else:
                o -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (o >> 10), 0xDC00 + (o & 0x3FF)))
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "[" + ",".join(_json(v) for v in value) + "]"
    return "{" + ",".join(_json(k) + ":" + _json(v) for k, v in value.items()) + "}"


def _user(users, salt):
    uid = os.getuid()
    if users == "hashed":
        try:
            from _sha2 import sha256  # 3.12+; built in, unlike hashlib's OpenSSL start-up
        except ImportError:
            try:
                from _sha256 import sha256
            except ImportError:
                from hashlib import sha256
        return [("user", "h:" + sha256(("%s:%d" % (salt, uid)).encode()).hexdigest()[:16])]
    # $USER, not the password database: a lookup may go to LDAP and block at exit.
    return [("user", os.environ.get("USER") or os.environ.get("LOGNAME") or ""), ("uid", uid)]


def _payload(state):
    """The record. Its keys come in a fixed order, the counted ones first: `cpkgs usage` reads the logs with one
    regular expression over that prefix (and falls back to a JSON parser for anything else)."""
    import time

    dest, sample, users, salt = state["settings"]
    own, other = _modules(state)
    head = [("cpkgs_usage", 1), ("env", _ENV), ("platform", _PLATFORM)] + _user(users, salt) + [
        ("start", round(state["start"], 3)),
        ("layer", sys.prefix != sys.base_prefix),
    ]
    tail = [
        ("host", os.uname().nodename),
        ("seconds", round(time.monotonic() - state["mono"], 3)),
        ("script", _script()[:200]),
        ("interactive", bool(sys.flags.interactive)),
        ("python", "%d.%d" % sys.version_info[:2]),
        ("sample", sample),
    ]
    head = ",".join(_json(k) + ":" + _json(v) for k, v in head)
    tail = ",".join(_json(k) + ":" + _json(v) for k, v in tail)
    # Bounded: names beyond the budget are dropped and counted, never split over two datagrams.
    budget = _MAX_PAYLOAD - len(head) - len(tail) - 60
    lists = []
    dropped = 0
    for key, names in (("modules", own), ("user_modules", other)):
        kept = []
        for n in names:
            text = _json(n)
            if len(text) + 1 > budget:
                dropped += 1
                continue
            budget -= len(text) + 1
            kept.append(text)
        lists.append('"%s":[%s]' % (key, ",".join(kept)))
    return "{%s,%s,%s%s}" % (head, ",".join(lists), tail, ',"dropped":%d' % dropped if dropped else "")


def _datagram(state, payload):
    import time

    now = time.time()
    pid = os.getpid()
    if state["settings"][0] == "syslog":
        # The form glibc's syslog(3) sends to the local socket (RFC 3164 without a hostname), which rsyslog,
        # syslog-ng and journald all parse; month names fixed, whatever locale the program set.
        t = time.localtime(now)
        month = "JanFebMarAprMayJunJulAugSepOctNovDec"[3 * (t.tm_mon - 1):3 * t.tm_mon]
        stamp = "%s %2d %02d:%02d:%02d" % (month, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
        line = "<14>%s %s[%d]: %s" % (stamp, _TAG, pid, payload)
    else:
        # RFC 5424 over UDP: facility user, severity info; a UTC timestamp with milliseconds.
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % (int(now * 1000) % 1000)
        host = os.uname().nodename
        host = host if host and host.isascii() and host.isprintable() and " " not in host else "-"
        line = "<14>1 %s %s %s %d - - %s" % (stamp, host[:255], _TAG, pid, payload)
    return line.encode("ascii", "replace")


def _send(dest, data):
    import _socket  # the C module: `socket` would import enum and selectors at exit

    if dest == "syslog":
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            for path in ("/dev/log", "/var/run/syslog"):
                try:
                    s.sendto(data, path)
                    return
                except OSError:
                    continue
        finally:
            s.close()
        return
    s = _socket.socket(_socket.AF_INET6 if ":" in dest[0] else _socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        s.setblocking(False)  # a full socket buffer drops the record instead of waiting
        s.sendto(data, dest)
    finally:
        s.close()


def _at_exit(state):
    try:
        if os.getpid() != state["pid"]:
            return  # a forked child leaving through sys.exit: its parent sends the record
        _send(state["settings"][0], _datagram(state, _payload(state)))
    except BaseException:
        pass  # never a traceback, never another exit status


try:
    _state = _start()
except Exception:
    _state = None
_chain()
if _state is not None:
    # What site.py, .pth files and another sitecustomize imported is the machinery of every start, not the program.
    _state["before"] = frozenset(sys.modules)
