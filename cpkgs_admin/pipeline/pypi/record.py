"""What the pip part records: one entry per PyPI package for the env record (`"kind": "pypi"` beside the conda
entries), a companion requirements file with --hash pins that pip and uv install with --require-hashes (export,
new-env --lock read it back), and a mirror of the locked wheels for sites without internet.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import PipError
from cpkgs_admin.pipeline.pypi.requirements import IndexOptions, PipRequirement, _Reader, canonical, logical_lines
from cpkgs_admin.pipeline.pypi.store import WheelStore

SOURCE_COMMENT = "# cpkgs-source:"
REQUESTED_COMMENT = "# cpkgs-requested:"


@dataclass(frozen=True)
class Source:
    """Where a wheel that no index serves came from. kind: "vcs" (a git commit, built), "sdist" (a source archive,
    built), "url" (a wheel given by URL or path)."""

    kind: str
    url: str  # vcs: the repository URL with git+ (no revision); sdist/url: the archive's URL
    sha256: str | None = None  # sdist: the source archive's hash
    commit: str | None = None
    requested_revision: str | None = None
    subdirectory: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> Source:
        if not isinstance(data, dict) or data.get("kind") not in ("vcs", "sdist", "url") or not data.get("url"):
            raise ValueError(f"not a pip source: {data!r}")
        def opt(key: str) -> str | None:
            value = data.get(key)
            return str(value) if value is not None else None

        return cls(kind=str(data["kind"]), url=str(data["url"]), sha256=opt("sha256"), commit=opt("commit"),
                   requested_revision=opt("requested_revision"), subdirectory=opt("subdirectory"))

    def pinned_url(self) -> str:
        """A pip/uv requirement URL naming exactly this source (git: at the commit)."""
        if self.kind != "vcs":
            return self.url
        url = f"{self.url}@{self.commit}" if self.commit else self.url
        return f"{url}#subdirectory={self.subdirectory}" if self.subdirectory else url


@dataclass(frozen=True)
class PypiPackage:
    """One PyPI package of an env: the wheel that was installed and where it came from."""

    name: str  # canonical
    version: str
    filename: str  # the wheel
    sha256: str  # of the wheel
    url: str  # where the wheel was fetched from; for a built wheel, its source's URL
    index: str | None = None  # the index or find-links location that served it
    requested: bool = False  # asked for by the spec (not only needed by another package)
    requirement: str | None = None  # the spec line that asked for it
    source: Source | None = None
    dist_info: str = ""  # prefix-relative .dist-info, once installed

    @property
    def shown_source(self) -> str:
        """Where it came from, as tables show it (the channel column): the index or find-links location, a git
        URL at its commit, or the wheel's URL."""
        if self.source is not None and self.source.kind == "vcs":
            return self.source.pinned_url()
        if self.source is not None and self.source.kind == "url":
            return self.url
        return self.index or self.url

    def pin(self) -> str:
        """An exact requirement line for it (`export --format yaml`): name==version, or the pinned git commit or
        wheel URL it was built or taken from."""
        if self.source is not None and self.source.kind == "vcs":
            return f"{self.name} @ {self.source.pinned_url()}"
        if self.source is not None and self.source.kind == "url":
            return f"{self.name} @ {self.url}"
        return f"{self.name}=={self.version}"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "pypi", "name": self.name, "version": self.version, "filename": self.filename,
                             "sha256": self.sha256, "url": self.url, "index": self.index,
                             "requested": self.requested, "requirement": self.requirement,
                             "source": self.source.to_json() if self.source else None, "dist_info": self.dist_info}
        return d

    @classmethod
    def from_json(cls, data: Any) -> PypiPackage:
        if not isinstance(data, dict) or data.get("kind") != "pypi":
            raise ValueError("not a pypi package entry")
        for key in ("name", "version", "filename", "sha256", "url"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"pypi package entry without {key!r}")
        return cls(name=data["name"], version=data["version"], filename=data["filename"], sha256=data["sha256"],
                   url=data["url"], index=data.get("index"), requested=bool(data.get("requested")),
                   requirement=data.get("requirement"),
                   source=Source.from_json(data["source"]) if data.get("source") else None,
                   dist_info=str(data.get("dist_info") or ""))


# ------------------------------------------------------------------------------------------- companion lock file


def lock_text(packages: Iterable[PypiPackage], options: IndexOptions, title: str = "") -> str:
    """A requirements file pinning every wheel by sha256: `pip install --no-deps --require-hashes -r FILE` and
    `uv pip install --no-deps --require-hashes -r FILE` install exactly these (wheels built from git or an sdist
    need the mirror: cpkgs keeps the source in a `# cpkgs-source:` comment and rebuilds from it)."""
    lines = [
        f"# pip part{f' of {title}' if title else ''}, locked by cpkgs: every package pinned to one wheel by sha256.",
        "# pip install --no-deps --require-hashes -r FILE   (or uv pip install ...; cpkgs new-env --lock reads it)",
    ]
    packages = sorted(packages, key=lambda p: p.name)
    requested = [p.name for p in packages if p.requested]
    if requested:
        lines.append(f"{REQUESTED_COMMENT} {' '.join(requested)}")
    lines += _option_lines(options)
    for p in packages:
        hashes = [p.sha256]
        if p.source is not None:
            extra = f" {p.source.sha256}" if p.source.sha256 else ""
            lines.append(f"{SOURCE_COMMENT} {p.name} {p.source.kind} {p.source.pinned_url()}{extra}")
            if p.source.kind == "sdist" and p.source.sha256:
                hashes.append(p.source.sha256)  # pip may build the pinned sdist where the wheel is not served
        head = f"{p.name} @ {p.url}" if p.source is not None and p.source.kind == "url" else f"{p.name}=={p.version}"
        lines.append(" \\\n".join([head, *(f"    --hash=sha256:{h}" for h in hashes)]))
    return "\n".join(lines) + "\n"


def _option_lines(options: IndexOptions) -> list[str]:
    out = []
    if options.no_index:
        out.append("--no-index")
    elif options.index_url:
        out.append(f"--index-url {options.index_url}")
    out += [f"--extra-index-url {u}" for u in options.extra_index_urls if not options.no_index]
    out += [f"--find-links {loc}" for loc in options.find_links]
    return out


@dataclass(frozen=True)
class LockEntry:
    name: str
    version: str
    hashes: tuple[str, ...]
    where: str
    url: str | None = None  # a wheel pinned by URL
    source: Source | None = None
    requested: bool = True  # False when the file's '# cpkgs-requested:' line does not name it


@dataclass(frozen=True)
class LockedRequirements:
    path: str
    options: IndexOptions
    entries: tuple[LockEntry, ...]


def read_lock_text(path: Path) -> LockedRequirements:
    """A companion file as lock_text writes it (or any hash-pinned requirements file of `name==version` lines)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipError(f"pip lock file {path}: cannot read: {exc}") from None
    sources: dict[str, Source] = {}
    requested: set[str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.startswith(SOURCE_COMMENT):
            sources.update([_source_comment(raw[len(SOURCE_COMMENT):], f"{path} line {n}")])
        elif raw.startswith(REQUESTED_COMMENT):
            requested = {canonical(n) for n in raw[len(REQUESTED_COMMENT):].split()}
    reader = _Reader()
    for n, line in logical_lines(text):
        where = f"{path} line {n}"
        if line.lstrip().startswith(("-r", "--requirement", "-c", "--constraint", "-e", "--editable")):
            raise PipError(f"pip lock file {where}: a lock file pins every package itself; {line.split()[0]} "
                           "is not allowed in it")
        reader.line(line, where, path.parent, ())
    entries = [_lock_entry(r, sources) for r in reader.reqs]
    if requested is not None:
        entries = [replace(e, requested=e.name in requested) for e in entries]
    if not entries:
        raise PipError(f"pip lock file {path}: pins no packages")
    return LockedRequirements(path=str(path), options=reader.opts, entries=tuple(entries))


def _source_comment(text: str, where: str) -> tuple[str, Source]:
    parts = text.split()
    if len(parts) not in (3, 4) or parts[1] not in ("vcs", "sdist", "url"):
        raise PipError(f"pip lock file {where}: expected '{SOURCE_COMMENT} NAME vcs|sdist|url URL [SHA256]'")
    name, kind, url = canonical(parts[0]), parts[1], parts[2]
    if kind != "vcs":
        return name, Source(kind=kind, url=url, sha256=parts[3].lower() if len(parts) == 4 else None)
    pinned, _, sub = url.partition("#subdirectory=")
    base, at, commit = pinned.rpartition("@")
    if not at or not base.startswith("git+") or "://" not in base or not commit or "/" in commit:
        raise PipError(f"pip lock file {where}: {url!r} is not a git URL pinned to a commit (git+URL@COMMIT)")
    return name, Source(kind=kind, url=base, commit=commit, subdirectory=sub or None)


def _lock_entry(r: PipRequirement, sources: dict[str, Source]) -> LockEntry:
    from packaging.requirements import Requirement  # noqa: PLC0415  (packaging: see __init__)

    if not r.hashes:
        raise PipError(f"pip lock file {r.where}: {r.text!r} has no --hash=sha256:...")
    if r.kind == "url" and r.name:
        url = r.line.partition(" @ ")[2].split(" ;")[0]
        version = _wheel_version(url) or ""
        return LockEntry(name=r.name, version=version, hashes=r.hashes, where=r.where, url=url,
                         source=Source(kind="url", url=url))
    spec = list(Requirement(r.line.split(" ;")[0]).specifier) if r.kind == "index" else []
    if r.kind != "index" or len(spec) != 1 or spec[0].operator != "==" or "*" in spec[0].version or not r.name:
        raise PipError(f"pip lock file {r.where}: {r.text!r} is not pinned with == to one version")
    return LockEntry(name=r.name, version=spec[0].version, hashes=r.hashes, where=r.where,
                     source=sources.get(r.name))


def _wheel_version(url: str) -> str | None:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename  # noqa: PLC0415  (packaging: see __init__)

    try:
        return str(parse_wheel_filename(url.rsplit("/", 1)[-1])[1])
    except InvalidWheelFilename:
        return None


# ------------------------------------------------------------------------------------------------------- mirror


def mirror_wheels(packages: Iterable[PypiPackage], store: WheelStore, dest: Path, *,
                  layout: str = "find-links", download: bool = True) -> IndexOptions:
    """Copy every locked wheel into DEST: a flat find-links directory (layout "find-links") or a PEP 503 simple tree
    (layout "simple": DEST/simple/<name>/index.html, files in DEST/files). A wheel missing from the store is
    downloaded from its recorded URL first (DOWNLOAD) and hash-checked. Returns the index options that install
    from DEST alone (for lock_text)."""
    if layout not in ("find-links", "simple"):
        raise PipError(f"mirror layout {layout!r}: use 'find-links' or 'simple'")
    pkgs = sorted(packages, key=lambda p: p.name)
    files_dir = dest if layout == "find-links" else dest / "files"
    for p in pkgs:
        if store.get(p.sha256) is None:
            if not download or (p.source is not None and p.source.kind != "url"):
                raise PipError(f"pip: the wheel {p.filename} ({p.sha256[:12]}…) is not in {store.root}; "
                               "a wheel built from source cannot be fetched again")
            store.download(p.url, p.sha256, p.filename)
        store.copy_out(p.sha256, files_dir)
    if layout == "find-links":
        return IndexOptions(no_index=True, find_links=(str(dest),))
    _write_simple(pkgs, dest)
    return IndexOptions(index_url=(dest / "simple").as_uri())


def _write_simple(pkgs: list[PypiPackage], dest: Path) -> None:
    simple = dest / "simple"
    by_name: dict[str, list[PypiPackage]] = {}
    for p in pkgs:
        by_name.setdefault(p.name, []).append(p)
    for name, group in by_name.items():
        d = simple / name
        d.mkdir(parents=True, exist_ok=True)
        links = "".join(
            f'<a href="../../files/{html.escape(p.filename)}#sha256={p.sha256}">{html.escape(p.filename)}</a><br>\n'
            for p in group
        )
        _write(d / "index.html", f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    root_links = "".join(f'<a href="{html.escape(n)}/">{html.escape(n)}</a><br>\n' for n in sorted(by_name))
    _write(simple / "index.html", f"<!DOCTYPE html>\n<html><body>\n{root_links}</body></html>\n")


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o644)
