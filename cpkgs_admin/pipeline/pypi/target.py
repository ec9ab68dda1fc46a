"""The interpreter the pip part installs for: the staged env's own python, run once to learn its layout."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cpkgs_admin.errors import PipError

# Printed by the env's python: its version and where an install puts each kind of file (sysconfig's scheme for its
# own prefix, which is also what uv and pip use).
_QUERY = r"""
import json, sys, sysconfig
paths = sysconfig.get_paths()
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "prefix": sys.prefix,
                  "implementation": sys.implementation.name,
                  "paths": {k: paths[k] for k in ("purelib", "platlib", "scripts", "data", "include")}}))
"""


@dataclass(frozen=True)
class TargetPython:
    """The staged env's python. Paths in `scheme` are relative to the prefix (posix), the same in staging and final."""

    staging: Path
    final: Path
    executable: Path  # <staging>/bin/python: what uv is given, and what scripts name (with final for staging)
    version: str  # "3.11"
    purelib: str
    platlib: str
    scripts: str
    data: str
    include: str

    @property
    def final_executable(self) -> Path:
        return self.final / self.executable.relative_to(self.staging)

    def site_packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.purelib, self.platlib)))


def env_python(prefix: Path) -> Path | None:
    for rel in ("bin/python", "bin/python3"):
        p = prefix / rel
        if os.path.lexists(p):
            return p
    return None


def target_python(staging: Path, final: Path) -> TargetPython:
    """Ask STAGING's python about itself; a PipError when there is none or it cannot run on this host."""
    exe = env_python(staging)
    if exe is None:
        raise PipError(f"the pip part needs python in the env: {staging.name} has no bin/python (add python to "
                       "the conda dependencies)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        proc = subprocess.run([str(exe), "-I", "-B", "-c", _QUERY], check=False, capture_output=True, text=True,
                              env=env, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipError(f"the pip part needs the env's python to run on this host: {exe}: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipError(f"the pip part needs the env's python to run on this host: {exe} failed: {last}")
    try:
        info = json.loads(proc.stdout)
        prefix = os.path.realpath(info["prefix"])
        rel = {k: _inside(v, prefix) for k, v in info["paths"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise PipError(f"{exe}: unexpected answer about its layout ({exc})") from None
    if prefix != os.path.realpath(staging):
        raise PipError(f"{exe} reports its prefix as {info['prefix']}, not {staging}")
    return TargetPython(staging=staging, final=final, executable=exe, version=info["version"], **rel)


def _inside(path: str, prefix: str) -> str:
    rel = os.path.relpath(os.path.realpath(path), prefix)
    if rel.startswith(".."):
        raise ValueError(f"{path} is outside the env")
    return Path(rel).as_posix()
