"""The site package cache (`.cpkgs/pkgs`, py-rattler's): who may reach it, which entries a build may use, healing.

Others may only pass through the cache (Site.cache_dir_mode: 0711, or 2771 for the admin group) to the extracted
files of a package they already know by name (conda-pack reads a package's `info/` there; env files hard-linked from
it are the same inodes anyway); they can neither list it nor open py-rattler's lock files (`.cache.lock`,
`<entry>.lock`), its repodata cache or cpkgs' hash memo (Site.private_modes): an ordinary user holding a flock on
`.cache.lock` hung every build. Nothing in it is writable by anyone but its admins, whatever their umask (000 let
a user replace a package's file for every later build).

A cache found with other modes (a site from before, an admin's umask) is closed, and every entry someone else could
have written is dropped, to be extracted again: rattler keeps no archives here (it streams them), so "again" means
fetched again from the channel and checked against the package's sha256. The same happens to an entry a build finds
damaged (a file whose sha256 is wrong: bit rot, a stray edit through an env's hard link).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import PermissionProblem, SiteError
from cpkgs_admin.integrity.owners import in_group
from cpkgs_admin.integrity.tree import make_removable
from cpkgs_admin.site.files import make_dir_exact
from cpkgs_admin.site.paths import HASH_MEMO_DIR, REPODATA_DIR

# py-rattler's own files in its cache dir: the cache-wide flock file, and one `<entry>.lock` beside each extracted
# package (its revision and the archive's sha256).
RATTLER_CACHE_LOCK = ".cache.lock"
ENTRY_LOCK_SUFFIX = ".lock"
_DROPPED = ".cpkgs-dropped-"


@dataclass
class CacheFix:
    changed: bool = False
    warnings: list[str] = field(default_factory=list)


def _trusted(uid: int, admin_gid: int | None, cache_owner: int) -> bool:
    """Who may own what is in the cache: root, this admin, the cache's owner, a member of the site's admin group."""
    if uid in (0, os.geteuid(), cache_owner):
        return True
    return admin_gid is not None and _member(uid, admin_gid)


@functools.cache
def _member(uid: int, gid: int) -> bool:
    return in_group(uid, gid)


def _writable_by_others(st: os.stat_result, admin_gid: int | None) -> bool:
    if stat.S_ISLNK(st.st_mode):
        return False  # a symlink's own mode means nothing; its owner is checked
    return bool(st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != admin_gid))


def _open_cache_dir(cache: Path) -> int:
    """CACHE, opened without following a symlink unless root or this admin made it (an admin group member's
    symlink there must not turn root's chmod on a directory of their choosing)."""
    st = os.lstat(cache)
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
        raise SiteError(f"{cache} is a symlink made by uid {st.st_uid}: cpkgs does not follow it (remove it, or make "
                        "it as root)")
    return os.open(cache, os.O_RDONLY | os.O_DIRECTORY)


def secure_cache(site: Any) -> CacheFix:
    """Make the package cache exist with exactly its mode and the admin group, and its private parts (rattler's
    cache lock, the repodata cache, the hash memo) closed. A cache that had another mode is fixed, and what anyone
    but root and the admins could have written in it is dropped (once: it stays closed). Another admin's cache that
    others can reach further than they should is refused: only its owner or root can close it."""
    cache = site.pkgs_cache_dir
    gid = site.admin_gid()
    mode = site.cache_dir_mode()
    try:
        make_dir_exact(cache, mode, gid)
        fd = _open_cache_dir(cache)
    except PermissionError:
        raise PermissionProblem(f"cannot create or open the package cache {cache}: permission denied") from None
    except OSError as exc:
        raise SiteError(f"cannot create or open the package cache {cache}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        was = stat.S_IMODE(st.st_mode)
        if was == mode and (gid is None or st.st_gid == gid):
            return CacheFix(warnings=_close_private_parts(site))
        if st.st_uid != os.geteuid() and os.geteuid() != 0:
            if _open_further(st, mode, gid):
                raise PermissionProblem(f"the package cache {cache} is open to others (mode {was:04o}); its owner "
                                        f"(uid {st.st_uid}) or root must run 'cpkgs init' to close it")
            return CacheFix(warnings=_close_private_parts(site))
        try:
            if gid is not None and st.st_gid != gid:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o077)  # closed while the group is still the wrong one
                os.fchown(fd, -1, gid)
            os.fchmod(fd, mode)
        except PermissionError:
            raise PermissionProblem(f"cannot close the package cache {cache} (mode {was:04o}) to others: permission "
                                    "denied") from None
    finally:
        os.close(fd)
    dropped = _drop_exposed(cache, gid, st.st_uid)
    close_entry_locks(site, [e.name.removesuffix(ENTRY_LOCK_SUFFIX) for e in os.scandir(cache)
                             if e.name.endswith(ENTRY_LOCK_SUFFIX) and not e.name.startswith(".")])
    warnings = _close_private_parts(site)
    if dropped:
        shown = ", ".join(dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        warnings.append(f"the package cache {cache} was open to others (mode {was:04o}); closed it and dropped what "
                        f"others could have written ({shown}): extracted again when needed")
    return CacheFix(changed=True, warnings=warnings)


def _open_further(st: os.stat_result, mode: int, gid: int | None) -> bool:
    """Whether a cache dir with stat ST lets others (or a group other than the admin group) do more than MODE."""
    others = stat.S_IMODE(st.st_mode) & 0o007 & ~mode
    group = st.st_mode & 0o070 and st.st_gid != gid and st.st_gid != 0
    return bool(others or group)


def _close_private_parts(site: Any) -> list[str]:
    """rattler's cache lock (created here if missing, so never with rattler's umask modes), the repodata cache and
    the hash memo: exactly the site's private modes. Nothing to say unless one of them could not be closed."""
    cache = site.pkgs_cache_dir
    gid = site.admin_gid()
    dmode, fmode = site.private_modes()
    owner = os.stat(cache).st_uid
    problems = []
    for name, mode in ((REPODATA_DIR, dmode), (HASH_MEMO_DIR, dmode), (RATTLER_CACHE_LOCK, fmode)):
        path = cache / name
        try:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                # Found open: whatever is in it may be someone's (a forged memo entry would vouch for a replaced
                # file, forged repodata name another package): dropped, made again. Checked only then: a closed
                # one stays closed.
                if (stat.S_IMODE(st.st_mode) != mode or stat.S_ISLNK(st.st_mode)) and _first_exposed(
                        path, gid, owner) is not None:
                    _remove(path)
            if name == RATTLER_CACHE_LOCK:
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            else:
                make_dir_exact(path, mode, gid)
            set_exact(path, mode, gid)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
    return [f"cannot close {p} to others" for p in problems]


def set_exact(path: Path, mode: int, gid: int | None) -> bool:
    """Give PATH (never followed if a symlink: ELOOP) exactly MODE and GID through a descriptor, if it is ours to
    change; True when something changed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) == mode and (gid is None or st.st_gid == gid):
            return False
        if st.st_uid != os.geteuid() and os.geteuid() != 0:
            return False  # another admin's: theirs to fix (init as root fixes all)
        if gid is not None and st.st_gid != gid:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o077)
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
        return True
    finally:
        os.close(fd)


def _drop_exposed(cache: Path, admin_gid: int | None, owner: int) -> list[str]:
    """Drop every entry of CACHE that anyone but root or the admins could have written (any file or directory in it
    writable by others or owned by someone else), its rattler lock file too; and cpkgs' hash memo and the repodata
    cache whole where they were open (a forged memo entry would vouch for a replaced file)."""
    dropped: list[str] = []
    for entry in sorted(os.scandir(cache), key=lambda e: e.name):
        name = entry.name
        if name == RATTLER_CACHE_LOCK or name.startswith(_DROPPED):
            continue
        path = Path(entry.path)
        if name.endswith(ENTRY_LOCK_SUFFIX) and not entry.is_dir(follow_symlinks=False):
            dist = name.removesuffix(ENTRY_LOCK_SUFFIX)
            if _first_exposed(path, admin_gid, owner) is not None and dist not in dropped:
                drop_entry(cache, dist)
                dropped.append(dist)
            continue
        if name in (HASH_MEMO_DIR, REPODATA_DIR) or name.startswith("."):
            if _first_exposed(path, admin_gid, owner) is not None:
                _remove(path)
            continue
        if _first_exposed(path, admin_gid, owner) is not None and name not in dropped:
            drop_entry(cache, name)
            dropped.append(name)
    return dropped


def _first_exposed(top: Path, admin_gid: int | None, owner: int) -> str | None:
    """The first path under TOP (TOP included) writable by others or owned by someone else, else None."""
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return None
    if _writable_by_others(st, admin_gid) or not _trusted(st.st_uid, admin_gid, owner):
        return str(top)
    if not stat.S_ISDIR(st.st_mode):
        return None
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if _writable_by_others(st, admin_gid) or not _trusted(st.st_uid, admin_gid, owner):
                return p
    return None


def check_entries(site: Any, dists: list[str]) -> tuple[list[str], list[str]]:
    """Before an install: drop the cache entries of DISTS that others can write (their top directory or rattler's
    lock file writable by anyone but the owner and the admin group: cheap, and what is below was checked when the
    cache was last closed; who made an entry needs no check either: only admins can create one in a closed cache).
    (One warning per entry dropped, rattler extracts it again; the entries whose lock file rattler is about to
    create, for close_entry_locks after the install.)"""
    cache = site.pkgs_cache_dir
    gid = site.admin_gid()
    fmode = site.private_modes()[1]
    warnings: list[str] = []
    fresh: list[str] = []
    for dist in dists:
        lock = cache / f"{dist}{ENTRY_LOCK_SUFFIX}"
        for path in (cache / dist, lock):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if _writable_by_others(st, gid):
                drop_entry(cache, dist)
                warnings.append(f"package cache entry {dist} was writable by others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}): dropped it, extracted again")
                break
        try:
            if stat.S_IMODE(os.lstat(lock).st_mode) != fmode:
                fresh.append(dist)
        except OSError:
            fresh.append(dist)
    return warnings, fresh


def close_entry_locks(site: Any, dists: list[str]) -> None:
    """After an install: rattler's `<entry>.lock` files of DISTS (created with the umask's 0644 or 0664) closed to
    others: a user holding a flock on one could stall the next build needing that entry."""
    cache = site.pkgs_cache_dir
    gid = site.admin_gid()
    fmode = site.private_modes()[1]
    for dist in dists:
        with contextlib.suppress(OSError):
            set_exact(cache / f"{dist}{ENTRY_LOCK_SUFFIX}", fmode, gid)


def drop_entry(cache: Path, dist: str) -> None:
    """Remove DIST's extracted directory, rattler's lock file for it and its hash memo, so the next install fetches
    and extracts the package again. Renamed aside first: a removal cut short leaves no half entry under its name."""
    _remove(cache / dist)
    for extra in (cache / f"{dist}{ENTRY_LOCK_SUFFIX}", cache / HASH_MEMO_DIR / f"{dist}.json"):
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    aside = path.with_name(f"{_DROPPED}{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, aside)
    with contextlib.suppress(OSError):
        make_removable(aside)
    shutil.rmtree(aside, ignore_errors=True)
