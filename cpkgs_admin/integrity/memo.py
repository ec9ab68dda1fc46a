"""The hash memo: digests of package-cache inodes new-env has already read and found right (HashMemo)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from cpkgs_admin.site.files import atomic_write


def _drop_group_other_write(fd: int) -> bool:
    """fchmod g-w,o-w of a regular file or directory open as FD; False when that failed."""
    try:
        st = os.fstat(fd)
        if (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) and st.st_mode & 0o022:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o022)
    except OSError:
        return False
    return True


class HashMemo:
    """The sha256 of package-cache inodes that new-env has already read and found right, so that the next build
    linking the same unchanged inode need not read it again.

    Env files hard-linked from the admin-only site cache are the cache's own inodes (pipeline.plan.cache_is_admin_only).
    An inode's entry is (inode number, size, mtime in ns, sha256), stored per package in the directory DIRECTORY;
    a file is taken as checked only when it is still a hard link with exactly that inode, size and mtime, owned by
    root or this admin and writable by nobody else. Any write to the inode moves its mtime, the rule git's index
    relies on; as in git, an inode whose mtime was less than RACY_SECONDS old when it was hashed is never
    remembered (a write in the same clock tick would not show). rattler gives extracted files their archive's
    mtime, so cache maintenance must remove whole entries, never rewrite files in place keeping their mtime
    (`rsync --inplace`, `cp -p` over a file): `cpkgs verify` after any such work.
    Each package's entries also name its extracted directory in the cache (CACHE/<package>: inode and ctime): when
    that directory is replaced (cache cleaned, package extracted again, inode numbers perhaps reused) the entries
    are dropped; a package with no such directory gets none. `harden` makes sure, once per extracted directory,
    that nobody else can replace files in it.
    The memo is a cache: lost or unreadable files are re-hashed, never trusted. `cpkgs verify` does not use it and
    reads every byte, so bit rot under an unchanged mtime is found there."""

    RACY_SECONDS = 2.0
    VERSION = 2

    def __init__(self, directory: Path, cache: Path) -> None:
        self.dir = directory
        self.cache = cache
        self._owners: dict[str, int] = {}
        self._me = os.getuid()
        self._entries: dict[str, dict[str, list[Any]] | None] = {}  # None: this package is not remembered
        self._idents: dict[str, list[int]] = {}
        self._hardened: dict[str, bool] = {}
        self._dirty: set[str] = set()

    def _ident(self, dist: str) -> list[int] | None:
        try:
            st = os.stat(self.cache / dist)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        self._owners[dist] = st.st_uid
        return [st.st_ino, st.st_ctime_ns]

    def trusted(self, dist: str, uid: int) -> bool:
        """Whether a file of DIST owned by UID may be vouched for: root, this admin, or who extracted the entry."""
        return self._load(dist) is not None and uid in (0, self._me, self._owners.get(dist))

    def _load(self, dist: str) -> dict[str, list[Any]] | None:
        if dist in self._entries:
            return self._entries[dist]
        got: dict[str, list[Any]] | None = None
        ident = self._ident(dist)
        if ident is not None:
            self._idents[dist] = ident
            self._hardened[dist] = False
            got = {}
            try:
                data = json.loads((self.dir / f"{dist}.json").read_bytes())
                if isinstance(data, dict) and data.get("version") == self.VERSION and data.get("entry") == ident:
                    files = data.get("files")
                    if isinstance(files, dict):
                        got = files
                    self._hardened[dist] = data.get("hardened") is True
            except (OSError, ValueError):
                pass
        self._entries[dist] = got
        return got

    def harden(self, dist: str) -> None:
        """Drop group and other write permission from DIST's extracted directory in the cache, once per extraction:
        a package may ship a directory mode 0777, and rattler keeps it in the cache, where anyone could then put
        their own file in place of one that envs are hard-linked to. Walks by directory descriptors and changes
        modes through descriptors opened without following symlinks: whoever can write there cannot redirect the
        change to another file. Marked done only when every change succeeded."""
        if self._load(dist) is None or self._hardened.get(dist):
            return
        ok = True
        try:
            for _dirpath, _dirnames, filenames, dirfd in os.fwalk(self.cache / dist, follow_symlinks=False):
                ok = _drop_group_other_write(dirfd) and ok
                for name in filenames:
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
                    except OSError as exc:
                        if exc.errno != errno.ELOOP:  # a symlink: nothing to change
                            ok = False
                        continue
                    try:
                        ok = _drop_group_other_write(fd) and ok
                    finally:
                        os.close(fd)
        except OSError:
            ok = False
        ident = self._ident(dist)  # chmod of the top directory moved its ctime
        if not ok or ident is None:
            return
        self._idents[dist] = ident
        self._hardened[dist] = True
        self._dirty.add(dist)

    def vouching(self, dist: str) -> tuple[dict[str, list[Any]], tuple[int, ...]] | None:
        """DIST's remembered inodes and the owners whose inodes they may vouch for (root, this admin, who extracted
        the package), or None when nothing of DIST is remembered. check_integrity vouches with them for the
        unchanged cache inodes of a new env's scanned tree, which then need no check item."""
        files = self._load(dist) if dist else None
        if not files:
            return None
        return files, (0, self._me, self._owners.get(dist, 0))

    def remember(self, dist: str, rel: str, uid: int, ino: int, size: int, mtime_ns: int, sha256: str) -> None:
        files = self._load(dist)
        if files is not None and self.trusted(dist, uid):
            files[rel] = [ino, size, mtime_ns, sha256]
            self._dirty.add(dist)

    def save(self) -> None:
        """Best effort and without fsync (a memo lost in a crash only costs a re-hash); a private temp file renamed
        into place, so nobody reads half a file or writes into it."""
        if not self._dirty:
            return
        try:
            self.dir.mkdir(mode=0o775, exist_ok=True)  # the umask decides: 002 where admins share a group
        except OSError:
            return
        for dist in sorted(self._dirty):
            doc = {"version": self.VERSION, "entry": self._idents[dist], "hardened": self._hardened.get(dist, False),
                   "files": self._entries[dist] or {}}
            with contextlib.suppress(OSError):
                atomic_write(self.dir / f"{dist}.json", json.dumps(doc), 0o644, durable=False)
        self._dirty.clear()
