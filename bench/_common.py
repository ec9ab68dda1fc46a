"""Helpers shared by the bench/bench_*.py scripts: paths, the test channel, a fresh site, timing, machine facts.

Every benchmark builds its own site in a temporary directory (under $CPKGS_BENCH_TMP, else the system temp dir), so
`make bench` works on a fresh machine: the local test channel is built once per machine and cached.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The interpreter running the bench is the venv's (`make bench`, or .venv/bin/python bench/x.py); its bin dir holds
# the `cpkgs` console script. Fall back to the repo's venv.
_BIN = Path(sys.executable).parent
CPKGS = str(_BIN / "cpkgs") if (_BIN / "cpkgs").exists() else str(REPO / ".venv" / "bin" / "cpkgs")
PYTHON = sys.executable

CRASHES: list[str] = []  # runs that died of a signal and were rerun (see timed), with when and how

SPECS = ["python", "cpkgs-test-app", "cpkgs-test-textprefix", "cpkgs-test-binprefix", "cpkgs-test-activate"]


def byte_compile() -> None:
    """Byte-compile cpkgs like a regular `pip install` does. The venv's editable install leaves that to the first
    run, and with PYTHONDONTWRITEBYTECODE set (it is on some machines) every run would compile every module again
    (~10-30 ms a run): a cost no installed cpkgs pays."""
    import compileall

    compileall.compile_dir(str(REPO / "cpkgs_admin"), quiet=1)


def channel_dir() -> Path:
    """The local test channel (built and cached per machine on first use). Also byte-compiles cpkgs: every
    benchmark that needs the channel runs cpkgs."""
    byte_compile()
    sys.path.insert(0, str(REPO / "tests" / "channel"))
    try:
        from build_channel import ensure_channel  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return Path(ensure_channel())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def temp_dir(tag: str) -> Iterator[Path]:
    base = os.environ.get("CPKGS_BENCH_TMP") or None
    d = Path(tempfile.mkdtemp(prefix=f"cpkgs-bench-{tag}-", dir=base))
    try:
        yield d
    finally:
        rmtree(d)


def rmtree(path: Path) -> None:
    """Remove a tree that may hold sealed (0555/0444) environments."""
    if not path.exists():
        return
    for dirpath, dirnames, _files in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            with contextlib.suppress(OSError):
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def cpkgs(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CPKGS, "--root", str(root), *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"cpkgs {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def make_site(root: Path, channel: Path) -> Path:
    cpkgs(root, "init", "-c", channel.as_uri())
    return root


# The CPU seconds of timed()'s last command.
LAST_CPU = [0.0]


def timed(
    cmd: Sequence[str], retry_crash: int = 0, cleanup: Callable[[], None] | None = None, tag: str = "", **kw: Any
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Wall time of one whole command (interpreter start included), output captured.

    RETRY_CRASH: rerun a run that died of a signal up to that many times (logged, in CRASHES with TAG), e.g. the bare
    py-rattler script (py-rattler 0.28's runtime may crash at interpreter exit: bench/probe_install_crash.py), after
    calling CLEANUP; a nonzero exit is always fatal.
    """
    while True:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(list(cmd), capture_output=True, check=False, **kw)
        dt = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds (user + system, all its threads and children): what the command costs the machine, which the
        # other work on a shared machine moves much less than the wall time.
        LAST_CPU[0] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode < 0 and retry_crash > 0:
            retry_crash -= 1
            CRASHES.append(f"{tag or Path(cmd[0]).name}: {crash_text(proc)}")
            log(f"warning: {_show(cmd)} died: {crash_text(proc)}; rerunning it")
            if cleanup:
                cleanup()
            continue
        if proc.returncode != 0:
            raise SystemExit(f"{_show(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}")
        return dt, proc


def crash_text(proc: subprocess.CompletedProcess[bytes]) -> str:
    """How a process that died of a signal died: the signal, whether it had printed its result (then it died at
    interpreter exit, its work done), and the first line of a fatal error message."""
    import signal

    try:
        name = signal.Signals(-proc.returncode).name
    except ValueError:
        name = f"signal {-proc.returncode}"
    when = "after printing its result (at exit)" if proc.stdout.strip() else "before printing its result"
    fatal = [ln for ln in proc.stderr.decode(errors="replace").splitlines()
             if ln.startswith(("Fatal Python error", "thread '")) or "panicked" in ln]
    import re

    # Without the addresses in it (a thread state's), so that equal crashes count as one kind.
    return f"{name} {when}" + (f": {re.sub(r'0x[0-9a-f]+', '0x...', fatal[0])[:160]}" if fatal else "")


def loadavg() -> float:
    return os.getloadavg()[0]


def _show(cmd: Sequence[str]) -> str:
    shown = " ".join(a if len(a) < 80 else a[:40].strip().replace("\n", " ") + " ..." for a in cmd[:8])
    return shown + (f" ... ({len(cmd) - 8} more arguments)" if len(cmd) > 8 else "")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt_runs(xs: Sequence[float], unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
    return "[" + ", ".join(f"{x * scale:.{digits}f}" for x in xs) + f"] {unit}"


def tree_bytes(prefix: Path) -> tuple[int, int]:
    """(regular files, bytes) under PREFIX, symlinks not followed."""
    files = size = 0
    for dirpath, _d, names in os.walk(prefix):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return files, size


def _fs_type(path: str) -> str:
    best, fstype = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3:
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, f"{parts[2]} ({parts[0]} on {mnt})"
    return fstype


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    tmp = os.path.realpath(os.environ.get("CPKGS_BENCH_TMP") or tempfile.gettempdir())
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram": ram,
        "tmp_fs": _fs_type(tmp),
        "tmp": tmp,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def print_machine() -> dict[str, Any]:
    m = machine()
    print(f"machine: nproc={m['nproc']}  cpu={m['cpu']}  ram={m['ram']}  {m['tmp']}: {m['tmp_fs']}  "
          f"python {m['python']}  {m['date']}  load {m['loadavg_1m']}")
    if m["loadavg_1m"] > 0.5 * (m["nproc"] or 1):
        log(f"warning: load average {m['loadavg_1m']} on {m['nproc']} CPUs: other work is running, figures will be noisy")
    return m


def drop_writeback() -> None:
    """Flush dirty pages so no timed run pays for the previous run's writeback."""
    with contextlib.suppress(AttributeError, OSError):
        os.sync()


def final_json(bench: str, data: dict[str, Any]) -> None:
    print(json.dumps({"bench": bench, **data}, sort_keys=False), flush=True)
