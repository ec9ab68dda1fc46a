"""Getting one resolved package's wheel into the store: download it (hash-checked), or build it from its sdist or
git commit in an isolated build (uv build) with the env's own python, so a compiled wheel fits the env's ABI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cpkgs_admin.errors import PipError
from cpkgs_admin.pipeline.pypi.record import Source
from cpkgs_admin.pipeline.pypi.requirements import IndexOptions, canonical
from cpkgs_admin.pipeline.pypi.store import WheelStore
from cpkgs_admin.pipeline.pypi.target import TargetPython
from cpkgs_admin.pipeline.pypi.uvtool import run_uv


@dataclass(frozen=True)
class Artifact:
    """What the resolver chose for a package (one entry of uv's pylock.toml)."""

    kind: str  # "wheel" | "sdist" | "vcs" | "archive"
    url: str
    sha256: str | None = None
    commit: str | None = None
    requested_revision: str | None = None
    subdirectory: str | None = None


def index_args(opts: IndexOptions) -> list[str]:
    """uv's index flags for OPTS. Extra indexes come first: uv's first-index strategy then takes a name from the
    first index that has it (pip would merge all, which lets a public index shadow a private name)."""
    args: list[str] = []
    indexes = [] if opts.no_index else [*opts.extra_index_urls, *([opts.index_url] if opts.index_url else [])]
    if not indexes:
        args.append("--no-index")
    else:
        # The last one is uv's default index: without one given, uv would fall back to PyPI.
        for url in indexes[:-1]:
            args += ["--index", url]
        args += ["--default-index", indexes[-1]]
    for loc in opts.find_links:
        args += ["--find-links", loc]
    return args


def wheel_for(name: str, version: str, art: Artifact, *, store: WheelStore, target: TargetPython,
              opts: IndexOptions, cache_dir: Path, work_dir: Path, allow_build: bool) -> tuple[Path, Source | None]:
    """(the wheel in the store, its source when no index served it as a wheel)."""
    if art.kind == "wheel" or (art.kind == "archive" and _filename(art.url).endswith(".whl")):
        path, _sha = store.download(art.url, art.sha256)
        return path, Source(kind="url", url=art.url) if art.kind == "archive" else None
    if not allow_build:
        raise PipError(f"pip: {name} {version} has no wheel for this env's python and building from source is "
                       "off (cpkgs.yaml pypi.build_from_source: false)")
    # A source built before for the same python and platform gives the wheel built then: envs built from one
    # sdist or commit hold the same bytes (builds are not reproducible: a zip's timestamps differ).
    for_target = f"{target.full_version} {target.platform.triple}"
    if art.kind in ("sdist", "archive"):
        sdist, sha = store.download(art.url, art.sha256)
        built = store.built(f"sdist {sha} {for_target}")
        if built is None:
            built, wheel_sha = store.add(_build(sdist, name, version, target, opts, cache_dir, work_dir))
            store.remember_built(f"sdist {sha} {for_target}", wheel_sha)
        return built, Source(kind="sdist", url=art.url, sha256=sha)
    if art.kind == "vcs":
        key = f"vcs {art.url} {art.commit} {art.subdirectory or ''} {for_target}"
        built = store.built(key) if art.commit else None
        if built is None:
            src = _checkout(art, name, work_dir)
            built, wheel_sha = store.add(_build(src, name, version, target, opts, cache_dir, work_dir))
            store.remember_built(key, wheel_sha)
        return built, Source(kind="vcs", url=art.url if art.url.startswith("git+") else f"git+{art.url}",
                             commit=art.commit, requested_revision=art.requested_revision,
                             subdirectory=art.subdirectory)
    raise PipError(f"pip: {name} {version}: cannot install a {art.kind} source")


def _filename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _git(args: list[str], what: str, cwd: Path | None = None) -> None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = subprocess.run(["git", *args], check=False, capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=1800, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise PipError(f"pip: {what}: git is not installed") from None
    except subprocess.TimeoutExpired:
        raise PipError(f"pip: {what}: git did not finish") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise PipError(f"pip: {what}: {last}")


def _checkout(art: Artifact, name: str, work_dir: Path) -> Path:
    if not art.commit:
        raise PipError(f"pip: {name}: the resolver gave no commit for {art.url}")
    repo = art.url.removeprefix("git+")
    dest = work_dir / f"src-{canonical(name)}"
    shutil.rmtree(dest, ignore_errors=True)
    _git(["clone", "--quiet", "--no-checkout", repo, str(dest)], f"git clone {repo}")
    _git(["-c", "advice.detachedHead=false", "checkout", "--quiet", art.commit], f"git checkout {art.commit}", dest)
    if (dest / ".gitmodules").exists():
        _git(["submodule", "update", "--init", "--recursive", "--quiet"], f"git submodules of {repo}", dest)
    src = dest / art.subdirectory if art.subdirectory else dest
    if not src.is_dir():
        raise PipError(f"pip: {name}: {art.url} has no directory {art.subdirectory!r} at {art.commit}")
    return src


def _build(src: Path, name: str, version: str, target: TargetPython, opts: IndexOptions, cache_dir: Path,
           work_dir: Path) -> Path:
    from packaging.utils import parse_wheel_filename  # noqa: PLC0415  (packaging: see __init__)
    from packaging.version import Version  # noqa: PLC0415  (packaging: see __init__)

    out = work_dir / f"built-{canonical(name)}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # The env's own python builds, so a compiled extension fits its ABI; an env for another platform cannot run
    # its python here: cpkgs' own builds, and only a pure wheel (no compiled code, no platform tag) is kept.
    python = str(target.executable) if target.native else sys.executable
    run_uv(["build", "--no-config", "--wheel", "--out-dir", str(out), "--python", python,
            "--cache-dir", str(cache_dir), *index_args(opts), str(src)], what=f"building {name} {version}")
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise PipError(f"pip: building {name} {version} gave {len(wheels)} wheels, expected one")
    got_name, got_version, _b, tags = parse_wheel_filename(wheels[0].name)
    if canonical(got_name) != canonical(name) or got_version != Version(version):
        raise PipError(f"pip: building {name} {version} gave {wheels[0].name}")
    if not target.native and any(t.abi != "none" or t.platform != "any" for t in tags):
        raise PipError(f"pip: {name} {version} has no wheel for {target.platform.subdir} (python {target.version}) "
                       f"and its source builds a platform wheel ({wheels[0].name}), which cannot be made for "
                       f"{target.platform.subdir} on this host: build it on a {target.platform.subdir} host and list "
                       "the wheel")
    return wheels[0]
