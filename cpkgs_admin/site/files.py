"""Files on the share: written atomically and with exact modes, read without following anyone's symlink or blocking on
a FIFO.

Atomic writes: a temp file in the same directory, fsync, os.replace (pipx's metadata files), so readers see the old
file or the new one. Directories others can write (the admin group's, a user's home): every file is created
exclusively without following symlinks and changed only through its descriptor, so nobody can redirect a write,
truncate or chmod of root's to a file of their choosing.

`read_text_file` (and its two steps `open_regular` / `read_fd_text`) is the one reader for cpkgs.yaml, spec and
lock files and users' condarc files: only a regular file (a FIFO would block the open or the read forever, a
device like /dev/zero would fill memory), at most MAX_TEXT_BYTES, UTF-8, each problem one error line naming the
file (and, for bad UTF-8, the byte offset).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError, PermissionProblem

# Opening a name that may be someone's planted symlink or FIFO: never follow the link, never block on the FIFO.
NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK


def atomic_write(
    path: Path, data: bytes | str, mode: int = 0o644, *, durable: bool = True, gid: int | None = None
) -> None:
    """Temp file in the same directory, fsync, os.replace: readers see the old or the new file, never half of one.

    The temp name starts with '.' and ends with '.tmp' so listings skip it; the directory is fsynced so the rename
    survives a crash of the writer's host (NFS commits on close, local filesystems need the dir fsync). Not DURABLE:
    no fsyncs, for files whose loss in a crash of this host does not matter (a lock's owner record dies with the
    lock's holder), still never seen half-written. GID: the group the file must have (the site's admin group, for
    a file made group-writable), set before it replaces the old one.
    The temp file is mkstemp's (O_EXCL|O_NOFOLLOW, random name) and its mode and group are set through its
    descriptor: in a directory others can write, a name swapped for a symlink meanwhile cannot redirect them, and
    rename() replaces a symlink at PATH itself, never its target.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # never more open than that, whatever the umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if gid is not None and os.fstat(fh.fileno()).st_gid != gid:
                _give_group(fh.fileno(), gid, path)
            os.fchmod(fh.fileno(), mode)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_staged(path: Path, data: str, mode: int = 0o644) -> None:
    """Write a file inside a build's private staging dir: what atomic_write would write, without its temp file and
    fsyncs. Nobody sees a staging dir before the rename publishes it whole, and a failed run discards it, so a temp
    file and rename add nothing; the package files rattler wrote next to it are not fsynced either, so per-file
    fsyncs bought no durability but cost ~2-4 ms each on ext4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a new inode, as os.replace would give
    with open(path, "wb") as fh:
        fh.write(data.encode("utf-8"))
    os.chmod(path, mode)


def atomic_write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def _give_group(fd: int, gid: int, path: Path) -> None:
    try:
        os.fchown(fd, -1, gid)
    except PermissionError:
        raise PermissionProblem(f"cannot give {path} the site's admin group (gid {gid}): are you a member?") from None


def read_no_follow(path: Path, limit: int = 1 << 20) -> bytes | None:
    """The bytes of the regular file at PATH (at most LIMIT), or None when PATH is missing, a symlink, not a regular
    file or unreadable: a name in a directory others can write is never followed to a file of their choosing."""
    try:
        fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
    except OSError:
        return None
    try:
        return _read_up_to(fd, limit) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks = []
    while limit > 0 and (chunk := os.read(fd, min(limit, 1 << 16))):
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def write_if_changed(path: Path, data: str, mode: int = 0o644, gid: int | None = None, *, durable: bool = True) -> bool:
    """Atomically write `data` unless the file already holds exactly it (and has `mode`, and group GID when given).
    True when changed. A group-writable MODE goes with the admin group's GID: never group-writable for whatever
    group the file happened to have. The existing file is read and its mode changed through a descriptor opened
    without following a symlink: a symlink at PATH is replaced by the file, its target never touched. DURABLE as in
    atomic_write."""
    want = data.encode("utf-8")
    try:
        fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
    except OSError:  # missing, a symlink (ELOOP), unreadable: written anew
        fd = -1
    if fd >= 0:
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size == len(want) and _read_up_to(fd, len(want) + 1) == want:
                if (gid is None or st.st_gid == gid) and (st.st_mode & 0o7777) == mode:
                    return False
                _set_mode_and_group(fd, st, mode, gid, path)
                return True
        finally:
            os.close(fd)
    atomic_write(path, data, mode, gid=gid, durable=durable)
    return True


def _set_mode_and_group(fd: int, st: os.stat_result, mode: int, gid: int | None, path: Path) -> None:
    try:
        if gid is not None and st.st_gid != gid:
            os.fchmod(fd, mode & ~0o020)  # not group-writable while the group is still the wrong one
            _give_group(fd, gid, path)
        os.fchmod(fd, mode)
    except PermissionError:
        raise PermissionProblem(f"cannot set the mode or group of {path}: it belongs to uid {st.st_uid} "
                                "(run this as that user or root)") from None


def make_dir_exact(path: Path, mode: int, gid: int | None) -> None:
    """Create directory PATH (if missing) with exactly MODE and group GID, whatever the umask: created 0700, so it
    is never open to anyone before its mode is set, and changed through a descriptor opened without following a
    symlink (in a parent others can write, the new name could be swapped for one meanwhile)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if gid is not None:
            _give_group(fd, gid, path)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def make_dirs_exact(path: Path, mode: int, gid: int | None) -> None:
    """PATH and its missing parents, each made by make_dir_exact (existing ones are left as they are)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        make_dir_exact(d, mode, gid)



# --------------------------------------------------------------------------------------------------- reading

# A condarc, spec or cpkgs.yaml is a few KB; an explicit lock file of a large env about 100 KB.
MAX_TEXT_BYTES = 4 * 1024 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    kind = next((f"is {text}, not" for test, text in _KINDS if test(mode)), "is not")
    return f"{kind} a regular file (cpkgs reads only regular files)"


def open_regular(path: Path, label: str, error: type[CpkgsError], *, nofollow: bool = False) -> int:
    """A read-only descriptor of PATH, which must be a regular file; FileNotFoundError propagates (callers decide
    what a missing file means). O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer; NOFOLLOW:
    for a path whose symlinks the caller has already resolved (a link appearing there since is refused)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{label}: is a directory, not a file") from None
    except PermissionError:
        raise error(f"{label}: cannot read: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and nofollow:
            raise error(f"{label}: became a symlink while cpkgs was reading it; run again") from None
        raise error(f"{label}: cannot read: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{label}: {_not_regular(mode)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd_bytes(fd: int, label: str, error: type[CpkgsError], limit: int = MAX_TEXT_BYTES) -> bytes:
    """The whole file behind FD, from offset 0 whatever was read before (pread: the offset stays)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = os.pread(fd, min(1 << 20, limit + 1 - size), size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error(f"{label}: cannot read: {exc.strerror}") from None
    if size > limit:
        raise error(f"{label}: larger than {limit // (1024 * 1024)} MiB; not a file cpkgs reads")
    return b"".join(chunks)


def decode_text(raw: bytes, label: str, error: type[CpkgsError]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: not UTF-8 text (byte {exc.start})") from None


def read_fd_text(fd: int, label: str, error: type[CpkgsError], limit: int = MAX_TEXT_BYTES) -> str:
    """The whole file behind FD as UTF-8 text."""
    return decode_text(read_fd_bytes(fd, label, error, limit), label, error)


def read_text_file(path: Path, label: str, error: type[CpkgsError], *, nofollow: bool = False,
                   limit: int = MAX_TEXT_BYTES) -> str:
    """PATH's text; `error(label + ": problem")` for anything but a missing file (FileNotFoundError)."""
    fd = open_regular(path, label, error, nofollow=nofollow)
    try:
        return read_fd_text(fd, label, error, limit)
    finally:
        os.close(fd)


