"""Before step 3 installs anything: every package's file list (info/paths.json: from the site cache entry rattler
will link, else from the archive, with range requests for a remote .conda) checked against integrity.content's
rules, and the space those lists add up to (their sizes, not the archives': a small archive may unpack to gigabytes)
checked against the disks; whether env files may be hard links into the cache; rattler's settings for the install."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import psutil
from rattler import Config
from rattler.networking import Client
from rattler.package_streaming import PackageArchive

from cpkgs_admin.errors import BuildError
from cpkgs_admin.integrity.content import FileEntry, check_paths, path_problem, refuse
from cpkgs_admin.pipeline.job import Job
from cpkgs_admin.site.paths import HASH_MEMO_DIR

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

    return asyncio.run(all_of())


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


# ----------------------------------------------------------------------------------------------------- disks


def mount_point(path: Path) -> Path:
    """The directory PATH's filesystem is mounted on: what a full disk is named by."""
    path = Path(os.path.abspath(path))
    try:
        dev = path.stat().st_dev
        while path != path.parent and path.parent.stat().st_dev == dev:
            path = path.parent
    except OSError:
        pass
    return path


def mib(n: int) -> int:
    return -(-n // 2**20)


def check_space(cache_dir: Path, envs_dir: Path, need_cache: int, need_env: int) -> int:
    """NEED_CACHE bytes to unpack into the package cache, NEED_ENV to write into the env: refused before the install
    when a filesystem lacks them (both counted where the two share one). Returns the least free space seen."""
    needs: dict[int, tuple[Path, int]] = {}
    for path, need in ((cache_dir, need_cache), (envs_dir, need_env)):
        dev = path.stat().st_dev
        where, before = needs.get(dev, (path, 0))
        needs[dev] = (where, before + need)
    least = None
    for path, need in needs.values():
        free = psutil.disk_usage(str(path)).free
        if need > free:
            raise BuildError(f"not enough space on {mount_point(path)}: about {mib(need)} MiB needed, "
                             f"{free // 2**20} MiB free")
        least = free if least is None else min(least, free)
    return least or 0


def cache_is_admin_only(cache_dir: Path, admin_gid: int | None) -> bool:
    """Whether only the admin (and the admin group) can write the package cache and every dir above it in .cpkgs.

    Only then may env files be hard links into it (DESIGN: never hard-linked to a cache anyone else can write):
    whoever can write the cache could otherwise change a sealed env's files behind its seal. The same goes for the
    hash memo kept in it (integrity.memo.HashMemo), which new-env trusts in place of re-reading linked files."""
    memo = cache_dir / HASH_MEMO_DIR  # (Site.hash_memo_dir)
    try:
        for d in (cache_dir, cache_dir.parent, *([memo] if memo.exists() else [])):
            st = d.stat()
            if st.st_mode & 0o002:
                return False
            if st.st_mode & 0o020 and st.st_gid != admin_gid:
                return False
            if st.st_uid not in (0, os.getuid()):
                return False
    except OSError:
        return False
    return True


def rattler_config(hard_links: bool) -> Any:
    # Hard links only into an admin-only cache: the shared inode is sealed with the env, and `unseal` breaks the
    # links before anything becomes writable. Files whose prefix is patched are always fresh copies. Symlinks stay
    # allowed: rattler uses them only for the package's own symlinks (bin/python -> python3.11), never into the
    # cache; forbidding them would turn those into copies.
    return Config.from_toml(f"allow-hard-links = {str(hard_links).lower()}\nallow-symbolic-links = true\n")


@dataclass(frozen=True)
class InstallPlan:
    config: Any
    client: Any
    need: int  # bytes, by the packages' file lists
    free: int  # bytes free when the install started (the least of the cache's and the envs' filesystems)


def plan_install(job: Job) -> InstallPlan:
    """Read every package's file list and refuse what no env may hold, before rattler sees it; refuse the build when
    the space those lists add up to is not there. Runs under the package cache's lock: the cache entries read here
    are the ones rattler then links."""
    cache_dir = job.site.pkgs_cache_dir
    config = rattler_config(job.hard_links)
    client = Client.from_config(config)
    files = read_package_files(job.records, cache_dir, client)
    check_paths((p.dist, p.entries) for p in files)
    need_cache, need_env = space_needed(files, job.hard_links)
    free = check_space(cache_dir, job.final.parent, need_cache, need_env)
    return InstallPlan(config=config, client=client, need=need_cache + need_env, free=free)
