"""What Python distributions an env holds, and which conda package (or the pip part) put each there.

The resolver treats every distribution a conda package installed as fixed (its name at exactly that version, as
pip and uv see an installed distribution); kernels and the SQLite relocation ask `provides` whether IPython or
ipykernel is there, from either part.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpkgs_admin.integrity.manifest import read_conda_meta
from cpkgs_admin.integrity.pipfiles import read_record
from cpkgs_admin.pipeline.pypi.requirements import canonical
from cpkgs_admin.pipeline.pypi.wheelfile import headers

_SITE_GLOBS = ("lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/site-packages")
# A distribution's metadata in a package's file list: name-version.dist-info/METADATA, an egg-info dir's PKG-INFO, or
# an old single-file name-version[-pyX.Y].egg-info.
_META_PATH = re.compile(r"(?P<dir>lib/(?:python3[^/]*/)?(?:site|dist)-packages/"
                        r"(?P<stem>[^/]+)\.(?P<kind>dist|egg)-info)(?:/(?:METADATA|PKG-INFO))?\Z")


@dataclass(frozen=True)
class Distribution:
    name: str  # canonical
    display_name: str  # as METADATA spells it
    version: str
    metadata_dir: str  # prefix-relative .dist-info / .egg-info (a file for old single-file egg-info)
    conda_package: str | None  # the conda package that installed it; None: the pip part (or nobody's)
    conda_version: str | None = None

    @property
    def from_conda(self) -> bool:
        return self.conda_package is not None


def conda_owners(meta: Iterable[tuple[Path, bytes, Any]]) -> dict[str, tuple[str, str]]:
    """prefix-relative path -> (conda package name, version), from conda-meta records (verify.read_conda_meta)."""
    out: dict[str, tuple[str, str]] = {}
    for _p, _raw, data in meta:
        if not isinstance(data, dict):
            continue
        who = (str(data.get("name", "")), str(data.get("version", "")))
        for e in (data.get("paths_data") or {}).get("paths") or []:
            rel = e.get("_path") if isinstance(e, dict) else None
            if isinstance(rel, str):
                out[rel] = who
        for rel in data.get("files") or []:
            if isinstance(rel, str):
                out.setdefault(rel, who)
    return out


def distributions_from_paths(packages: Iterable[tuple[str, str, Iterable[str]]]) -> list[Distribution]:
    """The distributions conda packages will install, from their file lists ((conda name, version, paths) each):
    name and version from the metadata directory's name (PEP 427 / setuptools escaping), for the dry run, which
    stages nothing to read METADATA from."""
    out: dict[str, Distribution] = {}
    for conda_name, conda_version, paths in packages:
        for p in paths:
            m = _META_PATH.match(p)
            if m is None or (m.group("kind") == "dist" and not p.endswith("/METADATA")):
                continue
            parts = m.group("stem").split("-")
            if len(parts) < 2 or not parts[0] or not parts[1]:
                continue
            name = canonical(parts[0])
            out.setdefault(name, Distribution(name=name, display_name=parts[0], version=parts[1],
                                              metadata_dir=m.group("dir"), conda_package=conda_name,
                                              conda_version=conda_version))
    return list(out.values())


class EnvInventory:
    """The distributions of PREFIX (read once): site-packages' *.dist-info and *.egg-info, with their owners."""

    def __init__(self, prefix: Path, meta: list[tuple[Path, bytes, Any]] | None = None) -> None:
        self.prefix = prefix
        self.owners = conda_owners(read_conda_meta(prefix) if meta is None else meta)
        self.site_dirs = tuple(sorted(os.path.relpath(p, prefix) for g in _SITE_GLOBS
                                      for p in glob.glob(str(prefix / g)) if os.path.isdir(p)))
        self.distributions: dict[str, Distribution] = {}
        for site in self.site_dirs:
            for entry in sorted(os.listdir(prefix / site)):
                if entry.endswith((".dist-info", ".egg-info")):
                    dist = self._read(f"{site}/{entry}")
                    if dist is not None:
                        self.distributions.setdefault(dist.name, dist)

    def _read(self, rel: str) -> Distribution | None:
        path = self.prefix / rel
        meta_file = path
        if path.is_dir():
            meta_file = path / ("METADATA" if rel.endswith(".dist-info") else "PKG-INFO")
        try:
            head = headers(meta_file.read_bytes())
        except OSError:
            return None
        name, version = head.get("Name"), head.get("Version")
        if not name or not version:
            return None
        owner = self.owners.get(os.path.relpath(meta_file, self.prefix)) or self.owners.get(rel)
        return Distribution(name=canonical(str(name)), display_name=str(name), version=str(version),
                            metadata_dir=rel, conda_package=owner[0] if owner else None,
                            conda_version=owner[1] if owner else None)

    def conda_distributions(self) -> list[Distribution]:
        return [d for d in self.distributions.values() if d.from_conda]

    def pip_distributions(self) -> list[Distribution]:
        return [d for d in self.distributions.values() if not d.from_conda]

    def distribution(self, name: str) -> Distribution | None:
        return self.distributions.get(canonical(name))

    def module_path(self, module: str) -> str | None:
        """Where top-level MODULE is importable from site-packages (a package dir, module.py or an extension)."""
        top = module.split(".", 1)[0]
        for site in self.site_dirs:
            base = self.prefix / site
            if (base / top).is_dir() or (base / f"{top}.py").is_file():
                return f"{site}/{top}" if (base / top).is_dir() else f"{site}/{top}.py"
            ext = sorted(glob.glob(glob.escape(str(base / top)) + ".*.so")) + sorted(
                glob.glob(glob.escape(str(base / top)) + ".so"))
            if ext:
                return os.path.relpath(ext[0], self.prefix)
        return None

    def module_owner(self, module: str) -> Distribution | None:
        """The distribution whose RECORD lists top-level MODULE; else one of the conda package's owning it."""
        where = self.module_path(module)
        if where is None:
            return None
        for d in self.distributions.values():
            if self._lists(d, where):
                return d
        owner = self.owners.get(f"{where}/__init__.py") or self.owners.get(where)
        if owner is not None:
            return next((d for d in self.conda_distributions() if d.conda_package == owner[0]), None)
        return None

    def _lists(self, dist: Distribution, where: str) -> bool:
        try:
            rows = read_record(self.prefix / dist.metadata_dir / "RECORD")
        except (OSError, UnicodeDecodeError):
            return False
        site = os.path.dirname(dist.metadata_dir)
        for row in rows:
            rel = os.path.normpath(os.path.join(site, row[0]))
            if rel == where or rel.startswith(where + "/"):
                return True
        return False


def provides(prefix: Path, what: str, *, module: bool = False) -> Distribution | None:
    """Whether PREFIX (conda and pip parts) provides distribution WHAT (or, with MODULE, importable top-level module
    WHAT): the providing distribution, or None. A module found but listed by no distribution counts as provided by
    a pseudo distribution named after the module."""
    inv = EnvInventory(prefix)
    if not module:
        return inv.distribution(what)
    where = inv.module_path(what)
    if where is None:
        return None
    return inv.module_owner(what) or Distribution(name=canonical(what), display_name=what, version="",
                                                  metadata_dir="", conda_package=None)
