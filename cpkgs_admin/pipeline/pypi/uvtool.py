"""Running uv (the `uv` PyPI package's binary): one place for its environment and for its error lines.

uv resolves, builds and installs the pip part. It runs with no configuration of its own (no uv.toml of the admin,
no UV_*/PIP_* variables): cpkgs.yaml's `pypi:` section and the spec decide everything, so two admins with different
dotfiles build the same env.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cpkgs_admin.errors import PipError

# Variables that would steer uv, pip (inside isolated builds) or the target interpreter away from what cpkgs asks.
_DROP_PREFIXES = ("UV_", "PIP_")
_DROP = frozenset({"VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                   # The env's platform decides the macOS wheels (target.PythonPlatform), not the admin's shell.
                   "MACOSX_DEPLOYMENT_TARGET", "_PYTHON_HOST_PLATFORM", "ARCHFLAGS"})


def uv_binary() -> str:
    try:
        from uv import find_uv_bin  # noqa: PLC0415  (uv may not be installed: a message, not a crash)
    except ImportError:
        raise PipError("the pip part needs uv (pip install 'uv'), which is not installed with this cpkgs") from None
    try:
        return str(find_uv_bin())
    except FileNotFoundError:
        raise PipError("the uv package is installed but its binary is missing; reinstall uv") from None


def uv_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES) and k not in _DROP}
    # Builds run the env's own python: it must not write byte code into the staged stdlib (verify would find the
    # files no package lists).
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["NO_COLOR"] = "1"
    env["UV_NO_PROGRESS"] = "1"
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.update(extra or {})
    return env


def run_uv(args: Sequence[str], *, what: str, cwd: Path | None = None, timeout: float | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """uv ARGS (ENV: variables to set, e.g. the macOS deployment target); a PipError naming WHAT and uv's own
    reason when it fails."""
    cmd = [uv_binary(), *args]
    # Never where the admin stands: uv would take a project's .venv or uv.toml found from the working directory.
    cwd = cwd or Path("/")
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=uv_environ(env), cwd=cwd,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PipError(f"pip: {what}: uv did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise PipError(f"pip: {what}: cannot run uv: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        raise UvFailed(what, proc.stderr)
    return proc


class UvFailed(PipError):
    """uv exited non-zero; the message is uv's reason on one line, the full text is kept for diagnosis."""

    def __init__(self, what: str, stderr: str) -> None:
        self.stderr = stderr
        self.reason = uv_reason(stderr)
        super().__init__(f"pip: {what}: {self.reason}")


def uv_reason(stderr: str) -> str:
    """uv's error and its causes on one line: 'error: X / cause: Y / cause: Z' -> 'X: Y: Z'. A build backend's own
    output (tracebacks) is left out when uv gave its reason lines; only without them is the first text used."""
    marked: list[str] = []
    other: list[str] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        for prefix in ("error:", "cause:", "×", "╰─▶", "Caused by:"):
            if line.startswith(prefix):
                line = line[len(prefix):].strip()
                if line and line not in marked:
                    marked.append(line)
                break
        else:
            if line and not line.startswith(("hint:", "help:", "warning:", "Using ", "Resolved ", "Prepared ")):
                other.append(line)
    parts = marked or other[:3]
    text = ": ".join(parts) if parts else "uv failed without a message"
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= 600 else text[:600] + "…"
