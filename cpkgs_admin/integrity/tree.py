"""An env's tree on disk: scanned once (scan_tree), sealed read-only for everyone, opened again for a maintenance
window, made removable before it is deleted."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from cpkgs_admin.errors import PermissionProblem

EXEC_BITS = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def sealed_mode(st_mode: int) -> int:
    """dirs 0555; files 0555 when anyone could execute them, else 0444. Drops setuid, setgid, sticky, write."""
    if stat.S_ISDIR(st_mode):
        return 0o555
    return 0o555 if st_mode & EXEC_BITS else 0o444


def scan_tree(top: Path, unreadable: list[tuple[str, str]] | None = None) -> dict[str, os.stat_result]:
    """Every entry under TOP (directories, files, symlinks; not TOP itself): relative path -> lstat, parents before
    their contents. An entry gone between listing and lstat (an NFS silly-rename file being deleted) is left out;
    symlinks to directories are entries, not followed. What cannot be read (a directory this user may not list)
    goes to UNREADABLE as (relative path, reason), or raises OSError when that is None.

    Each directory is opened once and its entries are stat-ed relative to it (fstatat): the kernel resolves the
    env's long prefix once per directory, not once per file (about a tenth of a big env's scan). One descriptor
    is open at a time."""
    out: dict[str, os.stat_result] = {}
    pending = [("", str(top))]
    while pending:
        rel_dir, path = pending.pop()
        try:
            fd = os.open(path, _DIR_FLAGS if rel_dir else _DIR_FLAGS & ~os.O_NOFOLLOW)  # TOP itself may be a link
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP) and rel_dir:
                continue  # replaced by a file or symlink since it was listed: its new entry is not ours to follow
            if unreadable is None:
                raise
            unreadable.append((rel_dir.rstrip("/") or ".", exc.strerror or str(exc)))
            continue
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    rel = rel_dir + entry.name
                    try:
                        out[rel] = st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        if unreadable is None:
                            raise
                        unreadable.append((rel, exc.strerror or str(exc)))
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        pending.append((rel + "/", path + "/" + entry.name))
        except OSError as exc:
            if unreadable is None:
                raise
            unreadable.append((rel_dir.rstrip("/") or ".", exc.strerror or str(exc)))
        finally:
            os.close(fd)
    return out


def seal_tree(
    top: Path, gid: int | None = None, top_mode: int = 0o555, tree: dict[str, os.stat_result] | None = None
) -> int:
    """Seal every file and directory under TOP, TOP itself last (a failure leaves it visibly unsealed).

    The build passes top_mode=0o700 so a staging dir stays private until it is renamed into place, and TREE, the
    scan_tree it already made of that dir, which nobody else can write, to spare a walk."""
    count = 0
    base = os.path.join(top, "")
    try:
        for rel, st in (scan_tree(top) if tree is None else tree).items():
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                if gid is not None and st.st_gid != gid:
                    os.lchown(base + rel, -1, gid)
                continue
            count += 1
            sealed = sealed_mode(mode)
            if (mode & 0o7777) == sealed and (gid is None or st.st_gid == gid):
                continue  # already sealed (a cache inode sealed with an earlier env): no system call
            if gid is not None and st.st_gid != gid:
                os.lchown(base + rel, -1, gid)
            if (mode & 0o7777) != sealed:
                os.chmod(base + rel, sealed)
        if gid is not None:
            os.lchown(top, -1, gid)
        os.chmod(top, top_mode)
    except PermissionError as exc:
        raise PermissionProblem(f"cannot seal {exc.filename}: permission denied") from None
    return count


def _break_link(path: str, st: os.stat_result) -> None:
    """Replace a hard-linked file by a private copy, so an edit during maintenance cannot reach the package cache
    (or another env sharing the inode)."""
    tmp = f"{path}.cpkgs-unlink.tmp"
    shutil.copy2(path, tmp)
    os.chmod(tmp, st.st_mode & 0o777)
    os.replace(tmp, path)


def unseal_tree(top: Path) -> int:
    """Owner-writable again (u+w), nothing else: group and others stay read-only. Hard links are broken first."""
    count = 0
    try:
        os.chmod(top, 0o755)
        base = os.path.join(top, "")
        entries = [(base + rel, st) for rel, st in scan_tree(top).items()]
        for path, st in entries:  # directories first get u+w so their files can be replaced
            if stat.S_ISDIR(st.st_mode):
                os.chmod(path, (st.st_mode & 0o777) | stat.S_IWUSR)
        for path, st in entries:
            if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                continue
            if st.st_nlink > 1:
                _break_link(path, st)
            os.chmod(path, (st.st_mode & 0o777) | stat.S_IWUSR)
            count += 1
    except PermissionError as exc:
        raise PermissionProblem(f"cannot unseal {exc.filename}: permission denied") from None
    return count


def make_removable(top: Path) -> None:
    """Before deleting a sealed tree: directories need u+w for their entries to be unlinked. 0700, TOP first: a
    deletion cut short (a second Ctrl-C, a file NFS keeps busy) leaves nothing others can enter."""
    os.chmod(top, 0o700)
    for dirpath, dirnames, _ in os.walk(top):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
