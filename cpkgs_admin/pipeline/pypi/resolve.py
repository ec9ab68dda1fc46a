"""Step 2 for the pip part: the spec's pip requirements resolved against the conda packages already staged, to
exact wheels with sha256 hashes (uv pip compile), the wheels fetched or built into the wheel store.

Every Python distribution a conda package installed is fixed at its version, as pip sees an installed
distribution: it is a constraint `name==version`, its dependencies are conda's business (uv's
dependency-metadata gives it none) and a stub wheel makes it resolvable where no index serves that version. A
requirement that needs another version is refused naming the pip requirement, the conda package and both versions.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import PipError
from cpkgs_admin.pipeline.pypi.artifacts import Artifact, index_args, wheel_for
from cpkgs_admin.pipeline.pypi.availability import missing_message, missing_requirements
from cpkgs_admin.pipeline.pypi.inventory import Distribution, EnvInventory
from cpkgs_admin.pipeline.pypi.record import LockedRequirements, LockEntry, PypiPackage, Source
from cpkgs_admin.pipeline.pypi.requirements import IndexOptions, PipRequest, PipRequirement, canonical
from cpkgs_admin.pipeline.pypi.store import WheelStore, sha256_path
from cpkgs_admin.pipeline.pypi.target import TargetPython
from cpkgs_admin.pipeline.pypi.uvtool import UvFailed, run_uv
from cpkgs_admin.pipeline.pypi.wheelfile import WheelContents, wheel_contents
from cpkgs_admin.site.pypi_config import PypiConfig

REQUIREMENTS_IN = "requirements.in"


@dataclass(frozen=True)
class PipLock:
    """The pip part, locked: one wheel per package, each in the store (wheels: name -> path), and what each will
    write (contents: name -> WheelContents, read from the wheel when it was locked)."""

    packages: tuple[PypiPackage, ...]
    wheels: dict[str, Path] = field(default_factory=dict)
    options: IndexOptions = field(default_factory=IndexOptions)
    contents: dict[str, WheelContents] = field(default_factory=dict)


def _locked(packages: list[PypiPackage], wheels: dict[str, Path], opts: IndexOptions,
            target: TargetPython) -> PipLock:
    scheme = target.scheme()
    contents = {p.name: wheel_contents(wheels[p.name], scheme, p.name, p.version) for p in packages}
    return PipLock(packages=tuple(packages), wheels=wheels, options=opts, contents=contents)


@dataclass(frozen=True)
class _Pin:
    name: str
    version: str
    line: str  # as uv wrote it: name==version, or name @ URL
    via: tuple[str, ...]
    index: str | None


def effective_options(config: PypiConfig, spec: IndexOptions) -> IndexOptions:
    """The site's `pypi:` locations with the spec's own: its --index-url replaces the site's, its extra indexes
    and find-links come first, --no-index drops every index (find-links stay)."""
    if not config.enabled:
        raise PipError("pip: this site does not allow pip sections (cpkgs.yaml pypi.enabled: false)")
    named = spec.index_url or spec.extra_index_urls or spec.find_links or spec.no_index
    if named and not config.spec_indexes:
        raise PipError("pip: this site does not let spec files choose package indexes (cpkgs.yaml "
                       "pypi.spec_indexes: false); drop --index-url/--extra-index-url/--find-links/--no-index")
    return IndexOptions(
        index_url=spec.index_url or config.index_url,
        extra_index_urls=tuple(dict.fromkeys((*spec.extra_index_urls, *config.extra_index_urls))),
        find_links=tuple(dict.fromkeys((*spec.find_links, *config.find_links))),
        no_index=spec.no_index,
        pre=spec.pre,
    )


def check_policy(request: PipRequest, config: PypiConfig) -> IndexOptions:
    """Step 1: the site's `pypi:` rules for REQUEST (pip sections allowed, the spec's own indexes, builds from
    source); the locations it resolves against."""
    opts = effective_options(config, request.options)
    if not config.build_from_source:
        for r in request.requirements:
            if r.kind == "vcs" or r.sdist:
                raise PipError(f"pip: {r.where}: {r.text!r} needs a build from source, which this site does not "
                               "allow (cpkgs.yaml pypi.build_from_source: false)")
    return opts


@dataclass(frozen=True)
class ResolvedPin:
    """One package of a resolution that fetched nothing (the dry run)."""

    name: str
    version: str
    index: str | None
    requested: bool
    requirement: str | None


def lock_pip(request: PipRequest, target: TargetPython, config: PypiConfig, *, store: WheelStore, cache_dir: Path,
             work_dir: Path, inventory: EnvInventory | None = None) -> PipLock:
    """Resolve REQUEST for TARGET's python against the conda distributions staged there; fetch or build each wheel.
    WORK_DIR: a private scratch directory (kept by the caller or removed)."""
    opts = check_policy(request, config)
    inv = inventory or EnvInventory(target.staging)
    pins = _resolve(request, target, opts, inv.conda_distributions(), cache_dir, work_dir, config.build_from_source)
    return _fetch(pins, request, target, opts, store, cache_dir, work_dir, config.build_from_source)


def resolve_pip(request: PipRequest, target: TargetPython, config: PypiConfig, *, conda: list[Distribution],
                cache_dir: Path, work_dir: Path) -> list[ResolvedPin]:
    """The dry run's resolution: against CONDA (the distributions the conda part will install, from its packages'
    file lists), nothing fetched (uv reads the indexes' metadata; an sdist's metadata may be built)."""
    opts = check_policy(request, config)
    pins = _resolve(request, target, opts, conda, cache_dir, work_dir, config.build_from_source)
    asked = {r.name: r for r in request.requirements if r.name}
    out = []
    for p in pins:
        req = asked.get(p.name) or _unnamed(request.requirements, p)
        out.append(ResolvedPin(p.name, p.version, p.index, req is not None, req.text if req else None))
    return out


def _resolve(request: PipRequest, target: TargetPython, opts: IndexOptions, conda: list[Distribution],
             cache_dir: Path, work_dir: Path, allow_build: bool) -> list[_Pin]:
    provided = _provided(conda)
    unpinnable = sorted({d.name for d in conda} - set(provided))
    for r in request.requirements:
        if r.name in provided and r.kind != "index":
            d = provided[r.name]
            raise PipError(f"pip: {r.where}: {r.text!r} would replace {d.display_name} {d.version} of the conda "
                           f"package {d.conda_package} {d.conda_version}; pip may not replace conda's files")
    work_dir.mkdir(parents=True, exist_ok=True)
    return _compile(request, target, opts, provided, unpinnable, cache_dir, work_dir, allow_build)


def _provided(conda: list[Distribution]) -> dict[str, Distribution]:
    from packaging.version import InvalidVersion, Version  # noqa: PLC0415  (packaging: see __init__)

    out = {}
    for d in conda:
        try:
            Version(d.version)
        except InvalidVersion:
            continue  # uv cannot pin it; it is excluded from the resolution instead (_write_inputs)
        out[d.name] = d
    return out


def _write_inputs(request: PipRequest, provided: dict[str, Distribution], unpinnable: list[str], work: Path,
                  with_conda: bool) -> list[str]:
    """requirements.in, constraints, uv.toml and the stub find-links dir; the extra uv arguments they need."""
    (work / REQUIREMENTS_IN).write_text("".join(r.line + "\n" for r in request.requirements))
    constraints = [c.line for c in request.constraints]
    toml_lines: list[str] = []
    args = ["-c", str(work / "constraints.txt")]
    if with_conda:
        stubs = work / "conda-stubs"
        stubs.mkdir(exist_ok=True)
        for d in provided.values():
            constraints.append(f"{d.name}=={d.version}")
            toml_lines += ["[[dependency-metadata]]", f'name = "{d.name}"', f'version = "{d.version}"',
                           "requires-dist = []", ""]
            _stub_wheel(stubs, d)
        args += ["--find-links", str(stubs)]
        if unpinnable:
            (work / "excludes.txt").write_text("".join(n + "\n" for n in unpinnable))
            args += ["--excludes", str(work / "excludes.txt")]
    (work / "constraints.txt").write_text("".join(c + "\n" for c in constraints))
    # An explicit config file keeps the admin's own uv.toml out (uv reads no other when given one).
    (work / "uv.toml").write_text("\n".join(toml_lines) + "\n")
    return [*args, "--config-file", str(work / "uv.toml")]


def _stub_wheel(stubs: Path, d: Distribution) -> None:
    """A metadata-only wheel standing for a conda-installed distribution (never installed: it is not emitted)."""
    norm = d.name.replace("-", "_")
    di = f"{norm}-{d.version}.dist-info"
    files = {f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {d.name}\nVersion: {d.version}\n",
             f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: cpkgs\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    path = stubs / f"{norm}-{d.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        rows = []
        for name, text in files.items():
            zf.writestr(name, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(text.encode())}")
        zf.writestr(f"{di}/RECORD", "\n".join([*rows, f"{di}/RECORD,,"]) + "\n")


def target_args(target: TargetPython) -> list[str]:
    """What uv resolves for: the env's python version and platform, never its interpreter (a dry run has none staged,
    an osx-arm64 env's cannot run here). cpkgs' own interpreter only serves uv for building sdists' metadata; where
    this user cannot resolve its real path (uv canonicalizes it), uv takes the first python on PATH for that."""
    try:
        os.path.realpath(sys.executable, strict=True)
        python = ["--python", sys.executable]
    except OSError:
        python = []
    return [*python, "--python-version", target.full_version, *target.platform.uv_args()]


def _compile_args(target: TargetPython, opts: IndexOptions, cache_dir: Path, work: Path, out: str,
                  allow_build: bool) -> list[str]:
    # uv pip compile takes an existing output file's pins as preferences (pip-compile's habit): start from none.
    (work / out).unlink(missing_ok=True)
    args = ["pip", "compile", str(work / REQUIREMENTS_IN), *target_args(target), "--cache-dir",
            str(cache_dir), "-o", str(work / out), "--no-header", "--annotation-style", "line",
            "--emit-index-annotation", *index_args(opts)]
    if opts.pre:
        args += ["--prerelease", "allow"]
    if not allow_build:
        args.append("--no-build")  # not even for metadata: no package's build code runs
    return args


def _compile(request: PipRequest, target: TargetPython, opts: IndexOptions, provided: dict[str, Distribution],
             unpinnable: list[str], cache_dir: Path, work: Path, allow_build: bool) -> list[_Pin]:
    extra = _write_inputs(request, provided, unpinnable, work, with_conda=True)
    no_emit = [a for d in provided.values() for a in ("--no-emit-package", d.name)]
    try:
        run_uv([*_compile_args(target, opts, cache_dir, work, "resolved.txt", allow_build), *extra, *no_emit],
               what="resolving the pip requirements", env=target.platform.environ())
    except UvFailed as failed:
        missing = missing_requirements(request.requirements, opts)
        if missing:
            raise PipError(missing_message(missing, opts)) from None
        _diagnose(request, target, opts, provided, cache_dir, work, failed, allow_build)
        raise
    pins = _read_resolved((work / "resolved.txt").read_text())
    return [p for p in pins if p.name not in provided]


def _diagnose(request: PipRequest, target: TargetPython, opts: IndexOptions, provided: dict[str, Distribution],
              cache_dir: Path, work: Path, failed: UvFailed, allow_build: bool) -> None:
    """The constrained resolution failed: resolve once more as if no conda package were there. If that works, the
    first conda distribution it would replace is the conflict to name; if not, the requirements fail on their own."""
    free = work / "unconstrained"
    free.mkdir(exist_ok=True)
    extra = _write_inputs(request, provided, [], free, with_conda=False)
    try:
        run_uv([*_compile_args(target, opts, cache_dir, free, "resolved.txt", allow_build), *extra],
               what="resolving the pip requirements", env=target.platform.environ())
    except UvFailed as alone:
        raise PipError(f"pip: cannot resolve the pip requirements: {alone.reason}") from None
    pins = {p.name: p for p in _read_resolved((free / "resolved.txt").read_text())}
    from packaging.version import Version  # noqa: PLC0415  (packaging: see __init__)

    by_name = {r.name: r for r in request.requirements if r.name}
    for name, pin in sorted(pins.items(), key=lambda kv: (kv[0] not in by_name, kv[0])):
        d = provided.get(name)
        if d is None or Version(pin.version) == Version(d.version):
            continue
        chain = _chain(name, pins, set(by_name))
        req = by_name.get(chain[0]) if chain else None
        change = "an upgrade" if Version(pin.version) > Version(d.version) else "a downgrade"
        asked = f"pip requirement {req.text!r} ({req.where})" if req else "the pip requirements"
        through = f" through {' -> '.join(chain)}" if len(chain) > 1 else ""
        suggest = (f"'{d.conda_package} {pin.version}'" if canonical(d.conda_package or "") == name
                   else f"a version of {d.conda_package} that brings {d.display_name} {pin.version}")
        raise PipError(f"{asked} needs {d.display_name} {pin.version}{through} ({change}), but the conda package "
                       f"{d.conda_package} {d.conda_version} installs {d.display_name} {d.version}; pip may not "
                       f"replace conda's files: change the conda spec (to {suggest}) or the pip requirement")
    raise failed


def _chain(name: str, pins: dict[str, _Pin], top: set[str]) -> list[str]:
    """top-level requirement -> ... -> NAME, following uv's 'via' annotations."""
    paths = [[name]]
    seen = {name}
    while paths:
        path = paths.pop(0)
        head = path[0]
        if head in top:
            return path
        for parent in pins[head].via if head in pins else ():
            if parent in pins and parent not in seen:
                seen.add(parent)
                paths.append([parent, *path])
    return []


def _read_resolved(text: str) -> list[_Pin]:
    """uv pip compile's requirements.txt with line annotations: `pin  # via a, b` then `    # from INDEX`."""
    from packaging.requirements import Requirement  # noqa: PLC0415  (packaging: see __init__)

    pins: list[_Pin] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("# from ") and pins:
            last = pins[-1]
            pins[-1] = _Pin(last.name, last.version, last.line, last.via, line[len("# from "):].strip())
            continue
        if line.startswith(("#", "-")):
            continue
        req_text, _, ann = line.partition("  # via ")
        req = Requirement(req_text.strip())
        version = next((s.version for s in req.specifier if s.operator == "=="), "")
        via = tuple(canonical(v.strip()) if not v.strip().startswith("-") else v.strip()
                    for v in ann.split(",") if v.strip())
        pins.append(_Pin(canonical(req.name), version, req_text.strip(), via, None))
    return pins


def _artifacts(pins: list[_Pin], target: TargetPython, opts: IndexOptions, cache_dir: Path,
               work: Path) -> dict[str, tuple[str, Artifact]]:
    """name -> (version, the artifact uv picks for this interpreter): the pins once more, as pylock.toml."""
    sub = work / "artifacts"
    sub.mkdir(exist_ok=True)
    (sub / REQUIREMENTS_IN).write_text("".join(p.line + "\n" for p in pins))
    (sub / "uv.toml").write_text("\n")
    (sub / "pylock.toml").unlink(missing_ok=True)
    run_uv(["pip", "compile", str(sub / REQUIREMENTS_IN), *target_args(target), "--cache-dir",
            str(cache_dir), "--no-deps", "--config-file", str(sub / "uv.toml"), "-o", str(sub / "pylock.toml"),
            *index_args(opts), *(["--prerelease", "allow"] if opts.pre else [])],
           what="locating the pinned pip packages", env=target.platform.environ())
    data = tomllib.loads((sub / "pylock.toml").read_text())
    out: dict[str, tuple[str, Artifact]] = {}
    for pkg in data.get("packages", []):
        out[canonical(pkg["name"])] = (str(pkg.get("version", "")), _artifact(pkg, sub))
    return out


def _artifact(pkg: dict[str, Any], base: Path) -> Artifact:
    """One pylock.toml package entry (PEP 751). Local files come as `path`, relative to the lock file's directory."""
    def sha(entry: dict[str, Any]) -> str | None:
        value = (entry.get("hashes") or {}).get("sha256")
        return str(value) if value else None

    def url(entry: dict[str, Any]) -> str:
        if entry.get("url"):
            return str(entry["url"])
        return (base / str(entry["path"])).resolve().as_uri()

    if pkg.get("wheels"):
        w = pkg["wheels"][0]
        return Artifact(kind="wheel", url=url(w), sha256=sha(w))
    if pkg.get("vcs"):
        v = pkg["vcs"]
        return Artifact(kind="vcs", url=url(v), commit=v.get("commit-id"),
                        requested_revision=v.get("requested-revision"), subdirectory=v.get("subdirectory"))
    if pkg.get("archive"):
        a = pkg["archive"]
        return Artifact(kind="archive", url=url(a), sha256=sha(a), subdirectory=a.get("subdirectory"))
    if pkg.get("sdist"):
        s = pkg["sdist"]
        return Artifact(kind="sdist", url=url(s), sha256=sha(s))
    raise PipError(f"pip: {pkg.get('name')}: no wheel, sdist, archive or git source to install from")


def _fetch(pins: list[_Pin], request: PipRequest, target: TargetPython, opts: IndexOptions, store: WheelStore,
           cache_dir: Path, work: Path, allow_build: bool) -> PipLock:
    arts = _artifacts(pins, target, opts, cache_dir, work) if pins else {}
    asked = {r.name: r for r in request.requirements if r.name}
    packages: list[PypiPackage] = []
    wheels: dict[str, Path] = {}
    for pin in pins:
        version, art = arts.get(pin.name, (pin.version, None))  # type: ignore[arg-type]
        if art is None:
            raise PipError(f"pip: {pin.name} {pin.version} was resolved but cannot be located again")
        req = asked.get(pin.name) or _unnamed(request.requirements, pin)
        path, source = wheel_for(pin.name, version, art, store=store, target=target, opts=opts,
                                 cache_dir=cache_dir, work_dir=work, allow_build=allow_build)
        if source is not None and source.kind == "vcs":
            source = replace(source, requested_revision=_requested_revision(req))
        pkg = _package(pin.name, version, path, art, source, pin.index, req)
        if req is not None and req.hashes:
            _check_hashes(req, pkg, source)
        packages.append(pkg)
        wheels[pin.name] = path
    return _locked(packages, wheels, opts, target)


def _requested_revision(req: PipRequirement | None) -> str | None:
    """The revision a git line named (`git+URL@main`), not the commit it resolved to."""
    if req is None or req.kind != "vcs":
        return None
    url = req.line.partition(" @ ")[2] or req.line
    path = url.split("#", 1)[0].split(" ;", 1)[0].split("://", 1)[-1]
    _, at, rev = path.rpartition("@")
    return rev if at and "/" not in rev else None


def _unnamed(reqs: Iterable[PipRequirement], pin: _Pin) -> PipRequirement | None:
    """The line of a git URL that named no package: its URL, without revision, starts the pinned one."""
    url = pin.line.partition(" @ ")[2]
    for r in reqs:
        if r.name is None and url and url.startswith(r.line.split("#")[0].split(" ;")[0].rsplit("@", 1)[0]):
            return r
    return None


def _package(name: str, version: str, path: Path, art: Artifact, source: Source | None, index: str | None,
             req: PipRequirement | None) -> PypiPackage:
    sha = art.sha256 if art.kind == "wheel" and art.sha256 else sha256_path(path)
    url = source.url if source is not None and source.kind == "vcs" else art.url
    return PypiPackage(name=name, version=version, filename=path.name, sha256=sha, url=url,
                       index=index if source is None or source.kind == "sdist" else None,
                       requested=req is not None, requirement=req.text if req else None, source=source)


def _check_hashes(req: PipRequirement, pkg: PypiPackage, source: Source | None) -> None:
    have = {pkg.sha256} | ({source.sha256} if source and source.sha256 else set())
    if not have & set(req.hashes):
        got = source.sha256 if source and source.kind == "sdist" and source.sha256 else pkg.sha256
        raise PipError(f"pip: {req.where}: hash mismatch for {req.text!r}: got sha256 {got}, which is not one of the "
                       f"--hash values given")


# ---------------------------------------------------------------------------------------------- from a lock file


def lock_from_file(locked: LockedRequirements, target: TargetPython, config: PypiConfig, *, store: WheelStore,
                   cache_dir: Path, work_dir: Path, options: IndexOptions | None = None,
                   inventory: EnvInventory | None = None) -> PipLock:
    """new-env --lock: exactly the pinned wheels (hash-checked), from the store, the lock's indexes (or OPTIONS,
    e.g. a mirror's), or rebuilt from a pinned sdist or git commit. No resolution: nothing else is installed."""
    opts = options or effective_options(config, locked.options)
    inv = inventory or EnvInventory(target.staging)
    provided = {d.name: d for d in inv.conda_distributions()}
    entries = []
    for e in locked.entries:
        d = provided.get(e.name)
        if d is not None:
            if d.version == e.version:
                continue  # the conda package installs exactly this one
            raise PipError(f"pip lock file {e.where}: {e.name} {e.version} would replace {d.display_name} "
                           f"{d.version} of the conda package {d.conda_package} {d.conda_version}")
        entries.append(e)
    work_dir.mkdir(parents=True, exist_ok=True)
    packages: list[PypiPackage] = []
    wheels: dict[str, Path] = {}
    for e, path, pkg in _locked_wheels(entries, target, opts, store, cache_dir, work_dir, config.build_from_source):
        packages.append(pkg)
        wheels[e.name] = path
    return _locked(packages, wheels, opts, target)


def _locked_wheels(entries: list[LockEntry], target: TargetPython, opts: IndexOptions, store: WheelStore,
                   cache_dir: Path, work: Path, allow_build: bool) -> list[tuple[LockEntry, Path, PypiPackage]]:
    out = []
    from_index = [e for e in entries if e.source is None and not _stored(e, store)]
    pins = [_Pin(e.name, e.version, f"{e.name}=={e.version}", (), None) for e in from_index]
    arts = _artifacts(pins, target, opts, cache_dir, work) if pins else {}
    for e in entries:
        stored = _stored(e, store)
        if stored is not None:
            url = e.url or (e.source.url if e.source else stored.as_uri())
            pkg = PypiPackage(name=e.name, version=e.version, filename=stored.name, sha256=stored.parent.name,
                              url=url, requested=e.requested, source=e.source)
            out.append((e, stored, pkg))
            continue
        art = arts[e.name][1] if e.name in arts else _served(e, target, opts, cache_dir, work)
        if art is None:
            if e.source is None:
                raise PipError(f"pip lock file {e.where}: {e.name} {e.version} is on none of the indexes")
            art = _source_artifact(e)
        elif art.kind == "wheel" and art.sha256 not in e.hashes:
            raise PipError(f"pip lock file {e.where}: the index serves {e.name} {e.version} as "
                           f"{art.url.rsplit('/', 1)[-1]} with sha256 {art.sha256}, which the lock does not pin")
        path, src = wheel_for(e.name, e.version, art, store=store, target=target, opts=opts, cache_dir=cache_dir,
                              work_dir=work, allow_build=allow_build)
        pkg = _package(e.name, e.version, path, art, src or e.source, None, None)
        out.append((e, path, replace(pkg, requested=e.requested, source=e.source or src)))
    return out


def _stored(e: LockEntry, store: WheelStore) -> Path | None:
    return next((p for h in e.hashes if (p := store.get(h)) is not None), None)


def _served(e: LockEntry, target: TargetPython, opts: IndexOptions, cache_dir: Path, work: Path) -> Artifact | None:
    """The locked wheel of a package built from source (or given by URL), when the indexes serve exactly it (a
    mirror made by mirror_wheels does); None: rebuild it from its source."""
    if e.source is None:
        return None
    try:
        arts = _artifacts([_Pin(e.name, e.version, f"{e.name}=={e.version}", (), None)], target, opts, cache_dir,
                          work)
    except PipError:
        return None
    art = arts.get(e.name, ("", None))[1]
    return art if art is not None and art.kind == "wheel" and art.sha256 in e.hashes else None


def _source_artifact(e: LockEntry) -> Artifact:
    src = e.source
    assert src is not None
    if src.kind == "vcs":
        return Artifact(kind="vcs", url=src.url, commit=src.commit, subdirectory=src.subdirectory)
    if src.kind == "sdist":
        return Artifact(kind="sdist", url=src.url, sha256=src.sha256)
    return Artifact(kind="archive", url=src.url, sha256=e.hashes[0])
