"""The interpreter the pip part is for: its version, its platform and where an install puts each kind of file.

Nothing here runs the env's python. Resolution, the dry run and builds for another platform (an osx-arm64 env built
on a Linux host) all need the same answer without it: the version comes from the conda `python` record, the
platform from the env's conda platform and the virtual packages its solve used (`__glibc`, `__osx`), the layout
from the file list of the python package (`lib/pythonX.Y/os.py`), on disk once staged or from its paths.json.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cpkgs_admin.errors import PipError

# uv's --python-platform names it knows (uv 0.13): manylinux_2_17 .. 2_40 for x86_64 and aarch64.
_MANYLINUX_MIN, _MANYLINUX_MAX = 17, 40
# conda platform -> (machine for manylinux, uv's macOS triple, default macOS deployment target)
_ARCH = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}
_MACOS = {"osx-arm64": ("aarch64-apple-darwin", "11.0"), "osx-64": ("x86_64-apple-darwin", "10.13")}
_STDLIB = re.compile(r"lib/(python3\.\d+t?)/os\.py\Z")


@dataclass(frozen=True)
class PythonPlatform:
    """Where the env's python runs, as uv's resolver and installer need it (tags and markers)."""

    subdir: str  # conda platform: linux-64, osx-arm64, ...
    triple: str  # uv --python-platform: x86_64-manylinux_2_28, aarch64-apple-darwin
    macos_target: str | None = None  # MACOSX_DEPLOYMENT_TARGET for a macOS triple

    def uv_args(self) -> list[str]:
        return ["--python-platform", self.triple]

    def environ(self) -> dict[str, str]:
        return {"MACOSX_DEPLOYMENT_TARGET": self.macos_target} if self.macos_target else {}

    @property
    def shown(self) -> str:
        return f"{self.triple} (macOS {self.macos_target})" if self.macos_target else self.triple


def python_platform(subdir: str, virtual: Mapping[str, str]) -> PythonPlatform:
    """SUBDIR's platform for wheels, from the solve's virtual packages (name -> version): a Linux env gets the
    manylinux level of `__glibc` (the oldest glibc the site's hosts declare, not the build host's), a macOS env the
    `__osx` version as its deployment target."""
    if subdir in _ARCH:
        glibc = virtual.get("__glibc", "2.17")
        m = re.match(r"2\.(\d+)", glibc)
        if not m:
            raise PipError(f"the pip part needs the env's glibc version: __glibc={glibc!r} is not 2.N")
        level = min(max(int(m.group(1)), _MANYLINUX_MIN), _MANYLINUX_MAX)
        return PythonPlatform(subdir, f"{_ARCH[subdir]}-manylinux_2_{level}")
    if subdir in _MACOS:
        triple, default = _MACOS[subdir]
        osx = virtual.get("__osx", default)
        if not re.fullmatch(r"\d+(\.\d+){0,2}", osx):
            raise PipError(f"the pip part needs the env's macOS version: __osx={osx!r} is not a version")
        return PythonPlatform(subdir, triple, osx if "." in osx else f"{osx}.0")
    raise PipError(f"the pip part is not supported for {subdir} envs (linux-64, linux-aarch64, osx-64, osx-arm64)")


@dataclass(frozen=True)
class TargetPython:
    """The env's python. Paths in the scheme are relative to the prefix (posix), the same in staging and final."""

    staging: Path
    final: Path
    executable: Path  # <staging>/bin/python: what a native install gives uv, and what scripts name (with final)
    version: str  # "3.11"
    full_version: str  # "3.11.7": what the resolver evaluates markers and requires-python with
    platform: PythonPlatform
    native: bool  # the env's python runs on this host (same platform): uv installs, it compiles byte code
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

    def scheme(self) -> dict[str, str]:
        return {"purelib": self.purelib, "platlib": self.platlib, "scripts": self.scripts, "data": self.data,
                "include": self.include}


def scheme_from_paths(paths: Iterable[str]) -> dict[str, str] | None:
    """The install scheme of a CPython whose package lists PATHS (prefix-relative): sysconfig's posix_prefix for
    it, from its stdlib dir name (lib/python3.11, or lib/python3.13t for a free-threaded build). None: no stdlib."""
    for p in paths:
        m = _STDLIB.match(p)
        if m:
            lib = f"lib/{m.group(1)}"
            return {"purelib": f"{lib}/site-packages", "platlib": f"{lib}/site-packages", "scripts": "bin",
                    "data": ".", "include": f"include/{m.group(1)}"}
    return None


def python_version_of(prefix: Path) -> str | None:
    """The version of the conda package `python` staged in PREFIX (its conda-meta record), or None."""
    try:
        names = sorted(n for n in os.listdir(prefix / "conda-meta") if n.startswith("python-") and n.endswith(".json"))
    except OSError:
        return None
    for n in names:
        try:
            data = json.loads((prefix / "conda-meta" / n).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("name") == "python" and isinstance(data.get("version"), str):
            return str(data["version"])
    return None


def env_python(prefix: Path) -> Path | None:
    for rel in ("bin/python", "bin/python3"):
        p = prefix / rel
        if os.path.lexists(p):
            return p
    return None


def _xy(version: str) -> str:
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise PipError(f"the pip part needs a python version X.Y, the env's python is {version!r}")
    return f"{m.group(1)}.{m.group(2)}"


def target_for_prefix(staging: Path, final: Path, platform: PythonPlatform, *, native: bool) -> TargetPython:
    """The staged env's python, read from its files (conda-meta and the stdlib dir): nothing is run."""
    version = python_version_of(staging)
    exe = env_python(staging)
    if version is None or exe is None:
        raise PipError(f"the pip part needs python in the env: {final.name} has no python package (add python to "
                       "the conda dependencies)")
    lib = staging / "lib"
    try:
        stdlibs = [f"lib/{d}/os.py" for d in sorted(os.listdir(lib)) if (lib / d / "os.py").is_file()]
    except OSError:
        stdlibs = []
    scheme = scheme_from_paths(stdlibs)
    if scheme is None:
        raise PipError(f"the pip part needs the env's standard library: {final.name} has no lib/python3.*/os.py")
    return TargetPython(staging=staging, final=final, executable=exe, version=_xy(version), full_version=version,
                        platform=platform, native=native, **scheme)


def target_for_paths(final: Path, python_version: str, python_paths: Iterable[str],
                     platform: PythonPlatform) -> TargetPython:
    """The python a dry run resolves for: nothing staged, the layout from the python package's file list."""
    scheme = scheme_from_paths(python_paths) or scheme_from_paths([f"lib/python{_xy(python_version)}/os.py"])
    assert scheme is not None
    return TargetPython(staging=final, final=final, executable=final / "bin" / "python", version=_xy(python_version),
                        full_version=python_version, platform=platform, native=False, **scheme)


def same_byte_code(version: str) -> bool:
    """Whether this interpreter writes the byte code of an env's CPython VERSION: the same X.Y and both final
    releases (the magic number changes between alphas, betas and release candidates). Byte code does not depend on
    the OS: an osx-arm64 env's pycs can be made here."""
    return (sys.implementation.name == "cpython" and sys.version_info.releaselevel == "final"
            and re.fullmatch(r"\d+\.\d+\.\d+", version) is not None
            and _xy(version) == f"{sys.version_info[0]}.{sys.version_info[1]}")
