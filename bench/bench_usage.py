"""Benchmark of issue 18 (usage records): what the hook costs a python run, and what `cpkgs usage` costs.

1. Hook: `python -c pass` and a script importing ~100 top-level modules from the env (stdlib and site-packages,
   ~600 modules in sys.modules at exit), each with records on (CPKGS_USAGE_SEND set: one datagram to a UDP socket
   this script holds open and drains) and off (unset), in the same env; the variants alternate (rotated order per
   round), round 0 warms up, median of N (default 30). Target: <= 2 ms added (median on - median off); the
   distribution of both and of the paired per-round differences is printed.
   The test env's packages ship no byte code and users cannot write it on the sealed env, so every run would
   compile each imported module from source (hundreds of ms of noise): both variants run with PYTHONPYCACHEPREFIX
   pointing at one warm local dir. The hook itself is byte code in the env (sitecustomize.pyc): not affected.
2. Report: `cpkgs usage --json` (the whole command) over a generated 1,000,000-record collector file in rsyslog's
   format (7 envs, 300 users, 20 packages, a foreign line per 1,000). Target: <= 5 s.

Run: .venv/bin/python bench/bench_usage.py [--runs N] [--records N]    (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET_HOOK_MS = 2.0
TARGET_REPORT_S = 5.0
ENV = "bench-1.0"
STDLIB = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "binascii", "bisect", "bz2", "calendar", "cmath",
    "codecs", "collections", "colorsys", "concurrent.futures", "configparser", "contextlib", "contextvars", "copy",
    "csv", "ctypes", "dataclasses", "datetime", "decimal", "difflib", "dis", "email.parser", "enum", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html.parser", "http.client", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "keyword",
    "linecache", "locale", "logging", "lzma", "mimetypes", "numbers", "operator", "optparse", "pathlib", "pickle",
    "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re", "sched", "secrets",
    "selectors", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "ssl", "stat", "statistics",
    "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "traceback", "types", "typing", "unittest", "uuid", "warnings", "weakref", "xml.etree.ElementTree", "zipfile",
    "zlib",
]
SITE_PACKAGES = [
    "traitlets", "pygments", "packaging", "dateutil", "platformdirs", "psutil", "jupyter_core", "wcwidth", "parso",
    "ptyprocess", "pexpect", "decorator", "executing", "pure_eval", "asttokens", "comm",
]


def stats(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4)
    return (f"min {min(xs) * 1e3:.2f}  p25 {q[0] * 1e3:.2f}  median {statistics.median(xs) * 1e3:.2f}  "
            f"p75 {q[2] * 1e3:.2f}  max {max(xs) * 1e3:.2f} ms")


def run_cpu(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system, from the kernel's exact runtime accounting)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    dt, _ = C.timed(cmd, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt, cpu


# Inside one process with records on: the hook's exit work (what atexit runs), timed directly, after the imports.
EXIT_PROBE = """
import sys, time, sitecustomize as s
exec(open(sys.argv[1]).read())
t = time.perf_counter()
s._send(s._state["settings"][0], s._datagram(s._state, s._payload(s._state)))
print(time.perf_counter() - t, len(sys.modules))
"""


def _drain(sink: socket.socket) -> int:
    n = 0
    while True:
        try:
            n += bool(sink.recv(65536))
        except BlockingIOError:
            return n


def bench_hook(python: str, script: Path, runs: int, pycache: Path) -> dict[str, dict[str, float]]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    port = sink.getsockname()[1]
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "USER": "bench", "PYTHONPYCACHEPREFIX": str(pycache)}
    on = {**base, "CPKGS_USAGE_SEND": f"to=udp://127.0.0.1:{port} sample=1 users=plain"}
    cases = {"pass": [python, "-c", "pass"], "imports": [python, str(script)]}
    out: dict[str, dict[str, float]] = {}
    for case, cmd in cases.items():
        wall: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(runs + 1):
            for variant in ("off", "on") if r % 2 == 0 else ("on", "off"):
                dt, ct = run_cpu(cmd, on if variant == "on" else base)
                if r > 0:
                    wall[variant].append(dt)
                    cpu[variant].append(ct)
        received = _drain(sink)
        added = statistics.median(wall["on"]) - statistics.median(wall["off"])
        added_cpu = statistics.median(cpu["on"]) - statistics.median(cpu["off"])
        diffs = [a - b for a, b in zip(wall["on"], wall["off"], strict=True)]
        for v in ("off", "on"):
            print(f"{case:8} {v:3} wall: {stats(wall[v])}")
            print(f"{case:8} {v:3} cpu:  {stats(cpu[v])}")
        verdict = "ok" if added * 1e3 <= TARGET_HOOK_MS else "MISSED"
        print(f"{case:8} paired on-off wall per round: {stats(diffs)}")
        print(f"{case:8} added: wall {added * 1e3:.2f} ms (median on - median off; target <= {TARGET_HOOK_MS} ms: "
              f"{verdict}), cpu {added_cpu * 1e3:.2f} ms; records received {received} of {runs + 1}")
        out[case] = {"off_median_ms": round(statistics.median(wall["off"]) * 1e3, 3),
                     "on_median_ms": round(statistics.median(wall["on"]) * 1e3, 3),
                     "added_ms": round(added * 1e3, 3), "added_cpu_ms": round(added_cpu * 1e3, 3),
                     "paired_median_ms": round(statistics.median(diffs) * 1e3, 3), "received": received}
    exits = []
    for _ in range(runs):
        _, proc = C.timed([python, "-c", EXIT_PROBE, str(script)], env=on)
        exits.append(float(proc.stdout.split()[0]))
        modules = int(proc.stdout.split()[1])
    _drain(sink)
    print(f"the hook's exit work alone (payload, datagram, send; {modules} modules loaded): {stats(exits)}")
    out["exit_work"] = {"median_ms": round(statistics.median(exits) * 1e3, 3), "modules": modules}
    sink.close()
    return out


def write_log(path: Path, n: int) -> None:
    rnd = random.Random(18)
    mods = [*SITE_PACKAGES, "numpy", "scipy", "pandas", "matplotlib"]
    now = time.time()
    with open(path, "w") as fh:
        for i in range(n):
            if i % 1000 == 0:
                fh.write("Dec  6 18:01:09 node7 sshd[77]: session opened for user alice\n")
            r = {"cpkgs_usage": 1, "env": f"demo-{i % 7}.0", "platform": "linux-64", "user": f"u{i % 300}",
                 "uid": 1000 + i % 300, "start": round(now - (n - i) * 5.0, 3), "layer": i % 50 == 0,
                 "modules": sorted(rnd.sample(mods, 8)), "user_modules": [], "host": f"node{i % 50}",
                 "seconds": 1.489, "script": "plot.py", "interactive": False, "python": "3.11", "sample": 1.0}
            fh.write(f"Dec  6 18:01:09 node{i % 50} cpkgs-usage[{i % 30000}] {json.dumps(r, separators=(',', ':'))}\n")


def bench_report(root: Path, tmp: Path, n: int) -> dict[str, float]:
    log = tmp / "usage.log"
    C.log(f"writing a {n}-record log ...")
    write_log(log, n)
    cfg = root / "cpkgs.yaml"
    cfg.write_text(cfg.read_text().replace("  logs: []", f"  logs: [{log}]"))
    times = []
    for _ in range(3):
        dt, proc = C.timed([C.CPKGS, "--root", str(root), "usage", "--json"])
        times.append(dt)
    data = json.loads(proc.stdout)
    best = statistics.median(times)
    size = log.stat().st_size
    print(f"report over {data['records']} records ({size / 2**20:.0f} MiB, {data['skipped_lines']} foreign lines): "
          f"median {best:.2f} s of 3 {C.fmt_runs(times)} (target <= {TARGET_REPORT_S} s: "
          f"{'ok' if best <= TARGET_REPORT_S else 'MISSED'})")
    return {"records": data["records"], "median_s": round(best, 3), "bytes": size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--records", type=int, default=1_000_000)
    args = ap.parse_args()
    m = C.print_machine()
    channel = C.channel_dir()
    with C.temp_dir("usage") as tmp:
        root = tmp / "site"
        C.cpkgs(root, "init", "-c", channel.as_uri())
        C.log(f"building {ENV} ...")
        C.cpkgs(root, "new-env", ENV, "python", "pip", "ipykernel")
        python = str(root / "anaconda3_linux" / "envs" / ENV / "bin" / "python")
        script = tmp / "imports.py"
        script.write_text("".join(f"try:\n    import {name}\nexcept ImportError:\n    pass\n"
                                  for name in STDLIB + SITE_PACKAGES))
        pycache = tmp / "pycache"
        hook = bench_hook(python, script, args.runs, pycache)
        report = bench_report(root, tmp, args.records)
        ok = all(hook[c]["added_ms"] <= TARGET_HOOK_MS for c in ("pass", "imports"))
        ok = ok and report["median_s"] <= TARGET_REPORT_S
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        C.final_json("usage", {"hook": hook, "report": report, "runs": args.runs, "ok": ok, "machine": m,
                               "loadavg_1m_after": round(os.getloadavg()[0], 2)})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
