"""cpkgs' own wheel for `install-tool`: an admin-given one (--wheel), else the running cpkgs made into one.

The running cpkgs: an editable install (a checkout) is built by `uv build` from a copy of the files a build reads
(pyproject's packages and package data): the admin's checkout gets nothing written into it (setuptools would leave
build/ and egg-info there, root-owned), and the checkout may be read-only (a mount). A regular install is re-packed
from its RECORD: the exact files that run, each checked against its RECORD hash, offline, with no build backend;
why not the source dir of direct_url.json: it may have changed or be gone since; why not `cpkgs==V` from the index:
a site's own tool is rarely on its index.

Identity: `digest` over the wheel RECORD's sorted (path, hash) rows, RECORD aside: a uv build and a re-pack of the
same files agree; zip timestamps do not count.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata as md
import io
import json
import posixpath
import shutil
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cpkgs_admin.errors import BuildError, UsageError
from cpkgs_admin.pipeline.pypi.uvtool import run_uv
from cpkgs_admin.pipeline.pypi.wheelfile import format_record, headers, record_hash
from cpkgs_admin.site.pypi_config import PypiConfig
from cpkgs_admin.site.tools import BUILD_NAME

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Files of an installed distribution that are the installer's, not the wheel's (PEP 376, 610, 627).
_INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"})


@dataclass(frozen=True)
class OwnWheel:
    path: Path
    version: str
    digest: str  # identity of the files (see the module docstring)
    constraints: tuple[str, ...]  # name==version of the running closure (empty for --wheel)


def wheel_digest(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(io.StringIO(zf.read(record).decode("utf-8"))))
    lines = sorted(f"{r[0]},{r[1]}" for r in rows if r and r[0] != record)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def given_wheel(path: Path) -> OwnWheel:
    """--wheel FILE: a readable cpkgs wheel for every platform (py3-none-any)."""
    if not path.is_file():
        raise UsageError(f"--wheel {path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted({n.split("/", 1)[0] for n in zf.namelist() if n.split("/", 1)[0].endswith(".dist-info")})
            meta = headers(zf.read(f"{infos[0]}/METADATA")) if len(infos) == 1 else {}
            tags = headers(zf.read(f"{infos[0]}/WHEEL")).get("Tag", "") if len(infos) == 1 else ""
        digest = wheel_digest(path)
    except (OSError, zipfile.BadZipFile, KeyError, StopIteration, UnicodeError) as exc:
        raise UsageError(f"--wheel {path}: not a readable wheel ({exc})") from None
    name, version = str(meta.get("Name", "")), str(meta.get("Version", ""))
    if canonicalize_name(name or "?") != "cpkgs":
        raise UsageError(f"--wheel {path.name}: a wheel of {name or 'nothing'}, not of cpkgs")
    if str(tags).strip() != "py3-none-any" or not BUILD_NAME.match(version):
        raise UsageError(f"--wheel {path.name}: not a cpkgs wheel for every platform (py3-none-any, tag {tags!r})")
    return OwnWheel(path, version, digest, ())


def running_wheel(out_dir: Path, pypi: PypiConfig) -> OwnWheel:
    """The running cpkgs as a wheel in OUT_DIR, with its running dependency closure as constraints."""
    # Installed ones (a RECORD) first: a checkout's setuptools egg-info is found too when its dir is on sys.path.
    dists = sorted(md.distributions(name="cpkgs"), key=lambda d: d.read_text("RECORD") is None)
    if not dists:
        raise BuildError("this cpkgs is not an installed distribution; give the wheel to install (--wheel)")
    dist = dists[0]
    source = _editable_source(dist)
    path = _build_source(source, out_dir, pypi) if source is not None else _repack(dist, out_dir)
    return OwnWheel(path, str(dist.version), wheel_digest(path), tuple(running_closure(dist)))


def running_closure(dist: md.Distribution) -> list[str]:
    """name==version of every installed dependency of DIST (this host's markers): what the tool gets."""
    env: dict[str, str] = {**{k: str(v) for k, v in default_environment().items()}, "extra": ""}
    seen: dict[str, str] = {}
    todo = [Requirement(r) for r in (dist.requires or [])]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        try:
            dep = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = f"{name}=={dep.version}"
        todo += [Requirement(r) for r in (dep.requires or [])]
    return sorted(seen.values())


def _editable_source(dist: md.Distribution) -> Path | None:
    text = dist.read_text("direct_url.json")
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return None
    if not (isinstance(data, dict) and (data.get("dir_info") or {}).get("editable")):
        return None
    url = str(data.get("url", ""))
    return Path(unquote(urlsplit(url).path)) if url.startswith("file://") else None


def _build_source(source: Path, out_dir: Path, pypi: PypiConfig) -> Path:
    """uv build of a copy of SOURCE's build inputs: the build backend from the site's pypi locations."""
    try:
        project = tomllib.loads((source / "pyproject.toml").read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read {source / 'pyproject.toml'} of the running cpkgs: {exc}") from None
    setup = project.get("tool", {}).get("setuptools", {})
    tops = {str(p).split(".")[0] for p in setup.get("packages", [])}
    tops |= {str(d).split("/")[0] for d in setup.get("package-dir", {}).values()}
    copy = out_dir / "src"
    copy.mkdir()
    for f in source.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, copy / f.name)
    for top in sorted(tops):
        shutil.copytree(source / top, copy / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # A private cache: the admin's ~/.cache may be read-only or shared; the build backend is a few small wheels.
    run_uv(["build", "--no-config", "--wheel", *_locations(pypi), "--cache-dir", str(out_dir / "uv-cache"),
            "--out-dir", str(out_dir / "dist"), str(copy)], what="building the running cpkgs' wheel", timeout=600)
    (whl,) = (out_dir / "dist").glob("cpkgs-*.whl")
    return whl


def _locations(pypi: PypiConfig) -> list[str]:
    args = ["--index-url", pypi.index_url] if pypi.index_url else ["--no-index"]
    args += [a for u in pypi.extra_index_urls for a in ("--extra-index-url", u)]
    return args + [a for f in pypi.find_links for a in ("--find-links", f)]


def _repack(dist: md.Distribution, out_dir: Path) -> Path:
    """A wheel of the installed files RECORD lists under site-packages, each checked against its hash; no byte
    code, no console scripts (the installer makes them from entry_points.txt), no installer files; a new RECORD;
    fixed zip timestamps (the same install gives the same bytes)."""
    files = [f for f in dist.files or [] if _packed(f)]
    info_dir = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if info_dir is None:
        raise BuildError("the running cpkgs has no RECORD to re-pack; give the wheel to install (--wheel)")
    path = out_dir / f"cpkgs-{dist.version}-py3-none-any.whl"
    rows: list[list[str]] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(files, key=lambda f: (f.parts[0] == info_dir, str(f))):
            data = f.read_binary()
            if f.hash is None or record_hash(data) != f"{f.hash.mode}={f.hash.value}":
                raise BuildError(f"the installed cpkgs file {f} has changed since it was installed; reinstall cpkgs "
                                 "or give the wheel to install (--wheel)")
            _write(zf, str(f), data)
            rows.append([str(f), record_hash(data), str(len(data))])
        if not any(str(f) == f"{info_dir}/WHEEL" for f in files):
            raise BuildError("the running cpkgs' dist-info has no WHEEL file; give the wheel to install (--wheel)")
        record = f"{info_dir}/RECORD"
        _write(zf, record, format_record([*rows, [record, "", ""]]).encode())
    return path


def _packed(f: md.PackagePath) -> bool:
    parts = f.parts
    if not parts or parts[0] == ".." or "__pycache__" in parts or str(f).endswith(".pyc"):
        return False
    return not (parts[0].endswith(".dist-info") and posixpath.basename(str(f)) in _INSTALLER_FILES)


def _write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, ZIP_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)
