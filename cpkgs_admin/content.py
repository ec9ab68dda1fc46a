"""Packages' file lists (info/paths.json), read before rattler installs them: from the site cache entry rattler will
link, else from the archive (range requests for a remote .conda). They are checked against integrity.content's rules,
and give the space a build needs (their sizes, not the archives': a small archive may unpack to gigabytes)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cpkgs_admin import aio
from cpkgs_admin.errors import BuildError
from cpkgs_admin.integrity.content import FileEntry, path_problem, refuse

# Filesystems allocate whole blocks: a file costs its size rounded up to this.
_BLOCK = 4096
# A package's conda-meta record and the cache entry's info/ dir, roughly: a fixed part plus a line per file.
_META_FIXED = 16384
_META_PER_FILE = 256
# Archive reads at a time (range requests for remote .conda files).
_CONCURRENT_READS = 16
@dataclass(frozen=True)
class PackageFiles:
    dist: str  # name-version-build: the package's directory in the cache and its conda-meta record's name
    entries: tuple[FileEntry, ...]
    cached: bool  # rattler will link it from the cache entry as it is (nothing to unpack)
    archive_size: int


# ----------------------------------------------------------------------------------------------------- file lists


def _dist(rec: Any) -> str:
    name = str(rec.file_name)
    return name.removesuffix(".conda").removesuffix(".tar.bz2")


def _valid_cache_entry(cache_dir: Path, dist: str, sha256: bytes | None) -> Path | None:
    """The cache entry rattler will link DIST from without unpacking it again, or None.

    py-rattler 0.28 writes `<cache>/<dist>.lock` as an 8-byte revision and the sha256 of the archive the entry was
    unpacked from, and unpacks again when that differs from the record's. Only an entry whose lock names the
    record's sha256 is read here; anything else (no sha256, another format in a later rattler) is read from the
    archive: slower, never wrong."""
    if not sha256:
        return None
    try:
        with open(cache_dir / f"{dist}.lock", "rb") as fh:
            lock = fh.read(41)
    except OSError:
        return None
    entry = cache_dir / dist
    if len(lock) != 40 or lock[8:] != sha256 or not (entry / "info" / "paths.json").is_file():
        return None
    return entry


def _entries(dist: str, paths_json: bytes | None, files: bytes | None) -> tuple[FileEntry, ...]:
    """A package's files from its info/paths.json, or from the info/files list of packages older than that."""
    try:
        if paths_json is not None:
            doc = json.loads(paths_json)
            out = []
            for e in doc["paths"]:
                path, kind, size = e["_path"], e.get("path_type"), e.get("size_in_bytes")
                if not isinstance(path, str) or not (size is None or isinstance(size, int)):
                    raise TypeError(f"entry {e!r}")
                out.append(FileEntry(path, link=kind == "softlink", directory=kind == "directory", size=size,
                                     copied=bool(e.get("prefix_placeholder") or e.get("no_link"))))
            return tuple(out)
        if files is not None:
            return tuple(FileEntry(line) for line in files.decode().splitlines() if line)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BuildError(f"refusing package {dist}: its file list (info/paths.json) is not readable: {exc}") from None
    raise BuildError(f"refusing package {dist}: it has no file list (info/paths.json or info/files)")


async def _archive_lists(url: str, client: Any) -> tuple[bytes | None, bytes | None]:
    from rattler.package_streaming import PackageArchive

    parsed = urlparse(url)
    if parsed.scheme == "file":
        archive = await PackageArchive.from_path(unquote(parsed.path))
    else:  # a .conda over http(s): range requests for the info part only
        archive = await PackageArchive.from_url(client, url)
    got = await archive.read_files(["info/paths.json", "info/files"])
    return got.get("info/paths.json"), got.get("info/files")


_INVALID_MEMBER = "invalid package-relative archive path: "


def _unreadable(dist: str, url: str, exc: Exception) -> BuildError:
    """A package whose file list rattler's reader refuses is refused too; named by its path when the reader found
    one that cannot be inside a package (it checks every member of the archive's part it reads)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if first.startswith(_INVALID_MEMBER):
        path = first.removeprefix(_INVALID_MEMBER)
        return refuse(dist, path, path_problem(path) or "is not a path a package may hold")
    return BuildError(f"cannot read the file list of {dist} ({url}): {first}")


def read_package_files(records: list[Any], cache_dir: Path, client: Any) -> list[PackageFiles]:
    """Every record's file list: from its cache entry when rattler will use that one, else from its archive."""

    async def one(rec: Any, sem: asyncio.Semaphore) -> PackageFiles:
        dist = _dist(rec)
        size = int(rec.size or 0)
        entry = _valid_cache_entry(cache_dir, dist, rec.sha256)
        if entry is not None:
            try:
                data = (entry / "info" / "paths.json").read_bytes()
            except OSError:
                pass
            else:
                return PackageFiles(dist, _entries(dist, data, None), cached=True, archive_size=size)
        async with sem:
            try:
                lists = await _archive_lists(str(rec.url), client)
            except Exception as exc:  # rattler's own errors: no common base class to name
                raise _unreadable(dist, str(rec.url), exc) from None
        return PackageFiles(dist, _entries(dist, *lists), cached=False, archive_size=size)

    async def all_of() -> list[PackageFiles]:
        sem = asyncio.Semaphore(_CONCURRENT_READS)
        return list(await asyncio.gather(*(one(r, sem) for r in records)))

    return aio.run(all_of())


def _blocks(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def space_needed(pkgs: list[PackageFiles], hard_links: bool) -> tuple[int, int]:
    """(bytes unpacked into the package cache, bytes written into the env). Files rattler hard-links from the cache
    cost the env nothing; a package whose file list has no sizes counts five times its archive."""
    cache = env = 0
    for p in pkgs:
        files = [e for e in p.entries if not e.link and not e.directory]
        meta = _META_FIXED + _META_PER_FILE * len(p.entries)
        if any(e.size is None for e in files):
            unpacked = copied = p.archive_size * 5
        else:
            unpacked = sum(_blocks(e.size or 0) for e in files)
            copied = sum(_blocks(e.size or 0) for e in files if e.copied or not hard_links)
        env += copied + meta
        if not p.cached:
            cache += unpacked + meta
    return cache, env


# ----------------------------------------------------------------------------------------------------- symlinks


