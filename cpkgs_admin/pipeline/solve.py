"""Step 2 of new-env: solve with py-rattler against the site's channels (names mapped to its mirrors), or find an
explicit lock file's packages there; the packages chosen, as the record will list them."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rattler import (
    BuildString,
    Channel,
    Gateway,
    GenericVirtualPackage,
    MatchSpec,
    PackageName,
    Platform,
    Version,
    VirtualPackage,
)
from rattler import solve as rsolve

from cpkgs_admin.errors import SolveError, SpecError, UsageError
from cpkgs_admin.pipeline.job import BuildRequest, Log
from cpkgs_admin.pipeline.spec import pip_lock_warnings, pip_plan, resolve_spec
from cpkgs_admin.site.channels import ChannelMap, Source, lock_channel, plan_channels
from cpkgs_admin.site.config import channel_problem
from cpkgs_admin.site.paths import Site, native_subdir
from cpkgs_admin.site.records import PackageEntry
from cpkgs_admin.site.specs import ExplicitLock, Spec, split_filename

if TYPE_CHECKING:
    from cpkgs_admin.pipeline.pypi.part import PipPlan

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


def check_channels(sources: Sequence[Source]) -> list[Source]:
    """SOURCES' URLs usable: a supported scheme, a file:// channel's directory there and readable."""
    for src in sources:
        shown = src.url if src.name == src.url else f"{src.name} ({src.url})"
        problem = channel_problem(src.url)
        if problem:
            raise UsageError(f"channel {shown} {problem}")
        if src.url.startswith("file://"):
            path = Path(src.url[len("file://"):])
            try:
                exists = path.is_dir()
            except PermissionError:
                raise SolveError(f"channel {shown} is not readable by this user") from None
            if not exists:
                hint = " (did you mean 'defaults'?)" if src.name == "default" else ""
                raise SolveError(f"channel {shown} does not exist (no directory {path}){hint}")
    if not sources:
        raise UsageError("no channels: configure some with 'cpkgs init -c CHANNEL' or pass -c CHANNEL")
    return list(sources)


def make_gateway(cache_dir: Path | None) -> Any:

    return Gateway(cache_dir=cache_dir) if cache_dir else Gateway()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# How many missing packages an unsatisfiable solve names (conda names them all: PackagesNotFoundInChannelsError).
MAX_NAMED = 20


def solve(
    sources: Sequence[Source],
    specs: Sequence[str],
    subdir: str,
    virtuals: list[Any],
    locked: list[Any] | None = None,
    cache_dir: Path | None = None,
    shown: Sequence[str] | None = None,
    names: Sequence[str] = (),
) -> list[Any]:
    """Solve SPECS for SUBDIR. Unsatisfiable: one SolveError line naming the requested packages no channel has (as
    SHOWN, the request's own words for SPECS) and the channels by NAMES, else the solver's reason."""

    gateway = make_gateway(cache_dir)

    async def run() -> list[Any]:
        return await rsolve(
            sources=[Channel(s.url) for s in sources],
            specs=[MatchSpec(s) for s in specs],
            gateway=gateway,
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
        if not ("Solver" in name or "unsolvable" in text.lower() or "cannot be installed" in text
                or "No candidates" in text):
            raise SolveError(f"solve failed for {subdir}: {name}: {_first_line(exc)}") from None
        missing = missing_specs(gateway, sources, specs, subdir, shown or specs)
        if missing:
            more = f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
            chans = ", ".join(names or dict.fromkeys(s.name for s in sources))
            shown_missing = ", ".join(_quoted(m) for m in missing[:MAX_NAMED])
            raise SolveError(f"cannot solve for {subdir}: no channel has {shown_missing}{more} "
                             f"(channels: {chans})") from None
        detail = " ".join(line.strip(" │├└─") for line in text.splitlines() if line.strip(" │├└─"))
        detail = detail.removeprefix("Cannot solve the request because of: ")
        raise SolveError(f"cannot solve the {len(specs)} requested packages for {subdir}: {detail[:400]}") from None


def _quoted(spec: str) -> str:
    """SPEC in a comma-separated list: quoted when it holds a comma or a space itself (`eigen >=3, <4`)."""
    if not (" " in spec or "," in spec):
        return spec
    return f"'{spec}'" if "'" not in spec else f'"{spec}"'


def missing_specs(
    gateway: Any, sources: Sequence[Source], specs: Sequence[str], subdir: str, shown: Sequence[str]
) -> list[str]:
    """Those of SPECS (as SHOWN) that no record of SOURCES matches: what conda calls PackagesNotFoundInChannels
    (conda/core/solve.py `_run_sat`). Virtual packages (`__cuda`) are the solver's to judge."""

    wanted = [(MatchSpec(s), label) for s, label in zip(specs, shown, strict=True) if not s.lstrip().startswith("__")]
    if not wanted:
        return []

    async def run() -> Any:
        return await gateway.query([Channel(s.url) for s in sources], [subdir, "noarch"], [m for m, _ in wanted],
                                   recursive=False)

    try:
        per_source = asyncio.run(run())
    except Exception:  # the solve's own reason is the better message then
        return []
    records = [r for recs in per_source for r in recs]
    return [label for m, label in wanted if not any(m.matches(r) for r in records)]


def lock_sources(
    lock: ExplicitLock, sources: Sequence[Source], cmap: ChannelMap
) -> tuple[list[Source], dict[str, str]]:
    """(where to look for the locked files, file name -> channel name). SOURCES first, then the channel of each
    package URL as this site serves it: where channel_map or channel_alias moves it (a mirror), or where it is a
    file:// channel still there. Other remote URLs are left to SOURCES: an air-gapped site could not reach them."""
    out = list(sources)
    known = {s.url for s in out}
    names: dict[str, str] = {}
    for p in lock.packages:
        name, base = lock_channel(cmap, p.url, lock.channels)
        names[p.filename] = name
        moved = base != p.url.rsplit("/", 2)[0].rstrip("/")
        here = base.startswith("file://") and Path(base[len("file://"):]).is_dir()
        if (moved or here) and base not in known:
            out.append(Source(name, base))
            known.add(base)
    return out, names


def resolve_lock(lock: ExplicitLock, sources: Sequence[Source], subdir: str, cache_dir: Path | None) -> list[Any]:
    """Find each locked file in SOURCES (see lock_sources); check its hash."""

    urls = list(dict.fromkeys(s.url for s in sources))
    if not urls:
        raise SpecError(f"lock file {lock.path}: no reachable channel holds its packages; pass -c CHANNEL")
    specs = []
    for p in lock.packages:
        name, version, build = split_filename(p.filename)
        specs.append(MatchSpec(f"{name}=={version}={build}"))

    async def run() -> Any:
        gw = make_gateway(cache_dir)
        return await gw.query([Channel(u) for u in urls], [subdir, "noarch"], specs, recursive=False)

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
            raise SpecError(f"lock file {lock.path}: {p.filename} is in none of the channels {', '.join(urls)}")
        records.append(match)
    return records


@dataclass
class Chosen:
    """Step 2's outcome: the packages, what was asked for, and the channels by name with the URLs read."""

    spec: Spec
    records: list[Any]
    requested: list[str]
    channels: dict[str, list[str]]
    channel_name: Callable[[Any], str]
    warnings: list[str]
    pip: PipPlan | None = None  # the pip part, read and checked at step 1 (pipeline/pip.py)


def choose_packages(site: Site, req: BuildRequest, lock: ExplicitLock | None, subdir: str,
                    overrides: dict[str, str], cache_dir: Path | None, log: Log) -> Chosen:
    """Solve the request (or find a lock file's packages) on the site's channels, names mapped to its URLs."""
    cmap = site.config.channel_resolver
    if lock is not None:
        plan = plan_channels(cmap, cli=req.channels, site_channels=site.config.channels)
        sources, names = lock_sources(lock, check_channels(plan.sources) if plan.sources else [], cmap)
        if log:
            log(f"resolving {len(lock.packages)} locked packages")
        records = resolve_lock(lock, sources, subdir, cache_dir)
        spec = Spec(specs=(), source=f"--lock {req.lock_file}", variables=lock.variables)
        used: dict[str, list[str]] = {}
        for src in sources:
            used.setdefault(src.name, []).append(src.url)
        return Chosen(spec, records, [], used, lambda r: names.get(r.file_name, str(r.channel or "")),
                      pip_lock_warnings(req, lock), pip_plan(site, req, spec, lock))
    spec, locked = resolve_spec(site, req, subdir)
    pip = pip_plan(site, req, spec, None)
    if not spec.specs:
        raise SpecError(f"nothing to install: {spec.source} lists no dependencies")
    where = f"spec file {spec.source}" if spec.sha256 else str(spec.source)
    plan = plan_channels(cmap, cli=req.channels, spec_channels=spec.channels, site_channels=site.config.channels,
                         specs=spec.specs, where=where)
    check_channels(plan.sources)
    if log:
        log(f"solving {len(spec.specs)} specs for {subdir} on {', '.join(plan.names())}")
    records = solve(plan.sources, plan.specs, subdir, virtual_packages(subdir, overrides), locked, cache_dir,
                    shown=spec.specs, names=plan.names())
    return Chosen(spec, records, list(spec.specs), plan.named, lambda r: plan.name_of(str(r.channel or "")),
                  [*spec.warnings, *plan.warnings], pip)


def package_entries(records: list[Any], channel_name: Callable[[Any], str]) -> list[PackageEntry]:
    """The records' entries; CHANNEL_NAME(record): the name the request gave its channel (url: where it came from)."""
    out = []
    for r in sorted(records, key=lambda r: r.name.normalized):
        out.append(
            PackageEntry(
                name=r.name.normalized,
                version=str(r.version),
                build=str(r.build),
                channel=channel_name(r),
                sha256=r.sha256.hex() if r.sha256 else "",
                md5=r.md5.hex() if r.md5 else "",
                url=str(r.url),
                subdir=str(r.subdir),
                filename=str(r.file_name),
                depends=tuple(r.depends),
            )
        )
    return out
