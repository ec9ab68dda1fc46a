"""Step 2 of new-env: solve with py-rattler against the site's channels; resolve explicit lock files."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import SolveError, SpecError, UsageError
from cpkgs_admin.site import channel_problem, native_subdir, normalize_channel
from cpkgs_admin.spec import ExplicitLock, split_filename

# Virtual packages of platforms we cannot detect from here (building an osx env on a Linux admin host).
_FOREIGN_VIRTUALS: dict[str, list[tuple[str, str, str]]] = {
    "osx-arm64": [("__unix", "0", "0"), ("__osx", "11.0", "0"), ("__archspec", "1", "arm64")],
    "osx-64": [("__unix", "0", "0"), ("__osx", "10.15", "0"), ("__archspec", "1", "x86_64")],
    "linux-64": [
        ("__unix", "0", "0"), ("__linux", "5.10", "0"), ("__glibc", "2.28", "0"), ("__archspec", "1", "x86_64"),
    ],
    "linux-aarch64": [
        ("__unix", "0", "0"), ("__linux", "5.10", "0"), ("__glibc", "2.28", "0"), ("__archspec", "1", "aarch64"),
    ],
}


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """--override-virtual __cuda=12.4 (the leading '__' may be omitted)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, ver = item.partition("=")
        name = name.strip()
        if not sep or not name or not ver.strip():
            raise UsageError(f"--override-virtual {item!r}: expected PKG=VERSION, e.g. __cuda=12.4")
        if not name.startswith("__"):
            name = "__" + name
        if not re.match(r"__[a-z0-9][a-z0-9_.-]*\Z", name):
            raise UsageError(f"--override-virtual {item!r}: {name!r} is not a virtual package name (e.g. __cuda)")
        out[name] = ver.strip()
    return out


def env_overrides() -> dict[str, str]:
    """conda's own CONDA_OVERRIDE_* variables, which admins already know."""
    out = {}
    known = (("CONDA_OVERRIDE_CUDA", "__cuda"), ("CONDA_OVERRIDE_GLIBC", "__glibc"), ("CONDA_OVERRIDE_OSX", "__osx"))
    for var, pkg in known:
        val = os.environ.get(var)
        if val:
            out[pkg] = val
    return out


def virtual_packages(subdir: str, overrides: dict[str, str]) -> list[Any]:
    from rattler import BuildString, GenericVirtualPackage, PackageName, Version, VirtualPackage

    found: dict[str, Any] = {}
    if subdir == native_subdir():
        for vp in VirtualPackage.detect():
            g = vp.into_generic()
            found[g.name.normalized] = g
    else:
        for name, ver, build in _FOREIGN_VIRTUALS.get(subdir, [("__unix", "0", "0")]):
            found[name] = GenericVirtualPackage(PackageName(name), Version(ver), BuildString(build))
    for name, ver in overrides.items():
        try:
            found[name] = GenericVirtualPackage(PackageName(name), Version(ver), BuildString("0"))
        except Exception:
            raise UsageError(f"virtual package override {name}={ver!r} is not a valid version") from None
    return list(found.values())


def check_channels(channels: Sequence[str]) -> list[str]:
    out = []
    for ch in channels:
        ch = normalize_channel(ch)
        problem = channel_problem(ch)
        if problem:
            raise UsageError(f"channel {ch!r} {problem}")
        if ch.startswith("file://"):
            path = Path(ch[len("file://"):])
            try:
                exists = path.is_dir()
            except PermissionError:
                raise SolveError(f"channel {ch} is not readable by this user") from None
            if not exists:
                raise SolveError(f"channel {ch} does not exist (no directory {path})")
        out.append(ch)
    if not out:
        raise UsageError("no channels: configure some with 'cpkgs init -c CHANNEL' or pass -c CHANNEL")
    return out


def make_gateway(cache_dir: Path | None) -> Any:
    from rattler import Gateway

    return Gateway(cache_dir=cache_dir) if cache_dir else Gateway()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def solve(
    channels: Sequence[str],
    specs: Sequence[str],
    subdir: str,
    virtuals: list[Any],
    locked: list[Any] | None = None,
    cache_dir: Path | None = None,
) -> list[Any]:
    """Solve SPECS for SUBDIR; one-line SolveError when unsatisfiable (the solver's first reason line)."""
    from rattler import Channel, MatchSpec, Platform
    from rattler import solve as rsolve

    async def run() -> list[Any]:
        return await rsolve(
            sources=[Channel(c) for c in channels],
            specs=[MatchSpec(s) for s in specs],
            gateway=make_gateway(cache_dir),
            platforms=[Platform(subdir), Platform("noarch")],
            locked_packages=locked or None,
            virtual_packages=virtuals,
            # conda adds pip to every python (its add_pip_as_python_dependency default); admins expect that.
            add_pip_as_python_dependency=True,
        )

    try:
        return asyncio.run(run())
    except Exception as exc:
        name = type(exc).__name__
        text = str(exc)
        if "Solver" in name or "unsolvable" in text.lower() or "cannot be installed" in text or "No candidates" in text:
            detail = " ".join(line.strip() for line in text.splitlines() if line.strip())
            raise SolveError(f"cannot solve {' '.join(specs)} for {subdir}: {detail[:400]}") from None
        raise SolveError(f"solve failed for {subdir}: {name}: {_first_line(exc)}") from None


def resolve_lock(lock: ExplicitLock, channels: Sequence[str], subdir: str, cache_dir: Path | None) -> list[Any]:
    """Find each locked file in the channels (and its own URL's channel when reachable); check its hash."""
    from rattler import Channel, MatchSpec

    sources: list[str] = []
    for p in lock.packages:
        if p.url.startswith("file://"):
            chan_dir = Path(p.url[len("file://"):]).parent.parent
            if chan_dir.is_dir():
                sources.append(chan_dir.as_uri())
    sources = list(dict.fromkeys([*channels, *sources]))
    if not sources:
        raise SpecError(f"lock file {lock.path}: no reachable channel holds its packages; pass -c CHANNEL")
    specs = []
    for p in lock.packages:
        name, version, build = split_filename(p.filename)
        specs.append(MatchSpec(f"{name}=={version}={build}"))

    async def run() -> Any:
        gw = make_gateway(cache_dir)
        return await gw.query([Channel(s) for s in sources], [subdir, "noarch"], specs, recursive=False)

    try:
        result = asyncio.run(run())
    except Exception as exc:
        raise SolveError(f"cannot read channels for lock file {lock.path}: {_first_line(exc)}") from None
    by_file: dict[str, list[Any]] = {}
    for per_source in result:
        for rec in per_source:
            by_file.setdefault(rec.file_name, []).append(rec)
    records = []
    for p in lock.packages:
        candidates = by_file.get(p.filename, [])
        match = None
        for rec in candidates:
            sha = rec.sha256.hex() if rec.sha256 else None
            md5 = rec.md5.hex() if rec.md5 else None
            if (p.sha256 and sha == p.sha256) or (not p.sha256 and p.md5 and md5 == p.md5) or (
                not p.sha256 and not p.md5
            ):
                match = rec
                break
        if match is None:
            if candidates:
                raise SpecError(f"lock file {lock.path}: {p.filename} found, but its hash differs from the lock")
            raise SpecError(f"lock file {lock.path}: {p.filename} is in none of the channels {', '.join(sources)}")
        records.append(match)
    return records
