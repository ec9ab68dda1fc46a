"""Files and directories that belong to a user: editing their `.condarc` whoever runs cpkgs, and telling whether
another user controls a path (a `cpkgs extend` layer directory).

Whose rights. Root editing /home/alice/.condarc must not do with root's rights what alice could not do herself:
her `.condarc` may be a symlink to a root-only file, or dangle towards /etc/cron.d/x, and the lock, temp and backup
files go into her directory, where she can plant symlinks under the names they will have. So when a component of
the path (the file as named, the file its symlink leads to, a directory above either) belongs to a user other than
root and us, the whole edit runs in a forked child that has become that user (setgroups, setgid, setuid: for good,
and the kernel marks the child non-dumpable, so that user cannot ptrace it). Every open, lock, rename and unlink
then happens with that user's rights, and the file keeps its owner. The child reports back over a pipe as JSON,
never pickle: those bytes come from a process running as someone else. A non-root user cannot change uid: cpkgs
refuses to edit a file another user controls. A directory anyone can write (no sticky bit) is refused for everyone:
anyone could swap the file. Root acting as itself also refuses a directory a group other than its own can write.

Lost updates. The user's editor (or a shell loop appending lines) may write while cpkgs edits. The new text goes to
a temp file beside the target; just before the rename cpkgs checks that the name still holds the inode it read and
that this inode still starts with the bytes it read, else (an editor saved a new file, or changed what was read)
it starts over from the new content. Bytes only appended since the read, before or during the rename, are then
appended to the new file (cpkgs holds the old inode open and reads them there): the result is the edit made at the
moment of the read followed by the appends, as `>>` would have left it. Starting over for appends instead would
never finish against a steady appender (parsing takes longer than the gap between two lines). A rewrite of the
old inode during the rename is kept beside the file as `NAME.cpkgs-rewritten-*` and reported. A writer that keeps
the old file open and writes to it long after cannot be helped by any rename-based edit (editors saving a file do
not).

Backups: one per change, `NAME.cpkgs-backup-YYYYMMDDTHHMMSS[-N]` beside the target, with its mode and group; the
newest KEEP_BACKUPS stay, older ones go.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import grp
import importlib
import json
import os
import pkgutil
import pwd
import re
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from cpkgs_admin import errors
from cpkgs_admin.errors import ConfigError, CpkgsError, PermissionProblem
from cpkgs_admin.site.files import decode_text, open_regular, read_fd_bytes
from cpkgs_admin.site.locks import SiteLock

KEEP_BACKUPS = 3
ATTEMPTS = 20  # fresh reads when the file keeps changing under the edit
NEW_FILE_MODE = 0o644
_REPLY_LIMIT = 64 * 1024 * 1024  # the child's report: two texts of at most MAX_TEXT_BYTES, JSON-escaped

# ----------------------------------------------------------------------------------------------- who controls a path


@dataclass(frozen=True)
class Component:
    path: str
    st: os.stat_result


def chain(path: Path) -> list[Component]:
    """The existing components of PATH as named, from / down, each lstat'ed (a symlink is judged itself, not what
    it points at); the walk stops at the first missing one."""
    p = Path(os.path.abspath(path))
    out: list[Component] = []
    for part in [*reversed(p.parents), p]:
        try:
            out.append(Component(str(part), os.lstat(part)))
        except OSError:
            break
    return out


def private_group(gid: int, uid: int) -> bool:
    """GID is UID's own group with no other member (user private groups, where umask 002 makes dirs 0775)."""
    try:
        pw, gr = pwd.getpwuid(uid), grp.getgrgid(gid)
    except KeyError:
        return False
    return pw.pw_gid == gid and set(gr.gr_mem) <= {pw.pw_name}


def group_label(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_label(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def others_can_write(st: os.stat_result) -> str | None:
    """Who besides its owner can swap the entries of a directory: 'everyone', 'group G', or None. The sticky bit
    (/tmp) leaves renaming and removing an entry to the entry's owner; the owner's private group is the owner."""
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_ISVTX:
        return None
    if st.st_mode & stat.S_IWOTH:
        return "everyone"
    if st.st_mode & stat.S_IWGRP and not private_group(st.st_gid, st.st_uid):
        return f"group {group_label(st.st_gid)}"
    return None


@dataclass(frozen=True)
class Actor:
    """A user whose rights an edit takes."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str


def actor(uid: int) -> Actor:
    """UID with its groups from the user database; a uid without an entry gets no group but nogroup (the group of
    their files may be one root gave them for another purpose, gid 0 after a plain `chown UID`)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return Actor(uid, _nogroup(), (), f"uid {uid}")
    return Actor(uid, pw.pw_gid, tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)), f"{pw.pw_name} (uid {uid})")


def _nogroup() -> int:
    for name in ("nogroup", "nobody"):
        with contextlib.suppress(KeyError):
            return grp.getgrnam(name).gr_gid
    return 65534


def editor_for(path: Path) -> Actor | None:
    """Whose rights an edit of PATH needs: None for ours, else the one other user who controls it (root only; a
    PermissionProblem for anyone else, or when the path is not safe to edit with any one user's rights).

    Root is judged on every component of the path as named and of the file it resolves to: a user owning any of
    them can swap what comes below. Anyone else only on the file and its directory: what a user above could do
    to them there the kernel already limits to their own rights."""
    me = os.geteuid()
    named, real = chain(path), chain(Path(os.path.realpath(path)))
    comps = named + real if me == 0 else named[-2:] + real[-2:]
    owners: dict[int, Component] = {}
    for c in comps:
        if c.st.st_uid not in (0, me):
            owners.setdefault(c.st.st_uid, c)
        if others_can_write(c.st) == "everyone":
            raise PermissionProblem(f"{path}: {c.path} is writable by everyone (no sticky bit): anyone could swap "
                                    "the file; move it elsewhere")
    if len(owners) > 1:
        (a, ca), (b, cb) = list(owners.items())[:2]
        raise PermissionProblem(f"{path}: {ca.path} belongs to {user_label(a)} and {cb.path} to {user_label(b)}; "
                                "run this as the file's owner")
    if owners:
        uid, c = next(iter(owners.items()))
        if me != 0:
            raise PermissionProblem(f"{path}: {c.path} belongs to {user_label(uid)}, not to you; only that user "
                                    "(or root) may edit it")
        return actor(uid)
    for c in comps if me == 0 else ():
        who = others_can_write(c.st)
        if who:
            raise PermissionProblem(f"{path}: {c.path} is writable by {who}: its members could swap the file; "
                                    "run this as the file's owner")
    return None


# ----------------------------------------------------------------------------------------------- as another user


# The child may not be able to read our own installation (a venv under root's 0700 home): whatever it will import
# is imported before it gives up our rights. filelock imports its parts when first used (a lazy package
# __getattr__, imports inside functions), so all of them, listed from its own directory: a plain library, 65 ms.
_LOCK_MODULES = ("psutil",)
_LOCK_PACKAGES = ("filelock",)


def _preload(modules: tuple[str, ...], packages: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)
    for name in packages:
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, f"{name}."):
            importlib.import_module(info.name)


def run_as(who: Actor | None, fn: Callable[[], dict[str, Any]], preload: tuple[str, ...] = ()) -> dict[str, Any]:
    """fn(), with WHO's rights: in a forked child that has become WHO (None: here, with ours). A CpkgsError in the
    child is raised again here, with its class and message. PRELOAD: modules fn imports (besides the lock's),
    imported here first."""
    if who is None:
        return fn()
    _preload((*_LOCK_MODULES, *preload), _LOCK_PACKAGES)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(who, fn, w)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as fh:
            data = fh.read(_REPLY_LIMIT)
    finally:
        os.waitpid(pid, 0)
    return _reply(data, who)


def _child(who: Actor, fn: Callable[[], dict[str, Any]], w: int) -> NoReturn:
    try:
        reply: dict[str, Any]
        try:
            # Groups and gid while still root; setuid last sets real, effective and saved uid: no way back.
            os.setgroups(list(who.groups))
            os.setgid(who.gid)
            os.setuid(who.uid)
            reply = {"ok": fn()}
        except CpkgsError as exc:
            reply = {"error": type(exc).__name__, "message": str(exc)}
        except BaseException as exc:
            reply = {"internal": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(w, "wb") as fh:
            fh.write(json.dumps(reply).encode("utf-8"))
    finally:
        os._exit(0)  # no atexit handlers, no buffered output of the parent's written twice


def _reply(data: bytes, who: Actor) -> dict[str, Any]:
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise CpkgsError(f"the edit with the rights of {who.name} ended without a report")
    ok = reply.get("ok")
    if isinstance(ok, dict):
        return ok
    if "error" in reply:
        cls = getattr(errors, str(reply["error"]), None)
        if not (isinstance(cls, type) and issubclass(cls, CpkgsError)):
            cls = CpkgsError
        raise cls(str(reply.get("message")))
    raise RuntimeError(f"while editing with the rights of {who.name}: {reply.get('internal')}")


# ----------------------------------------------------------------------------------------------- the edit


@dataclass
class Outcome:
    target: str  # the file read and written (a symlink's target)
    old: str | None  # None: the file did not exist
    new: str | None  # None: nothing to change
    backup: str | None = None
    written: bool = False
    carried: int = 0  # bytes someone appended to the old file after it was read, appended to the new one
    editor: str | None = None  # the user whose rights the edit took, when not ours

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Outcome:
        def text(key: str) -> str | None:
            v = d.get(key)
            if v is not None and not isinstance(v, str):
                raise CpkgsError(f"bad report from the edit: {key}")
            return v

        target = text("target")
        if target is None or not isinstance(d.get("written"), bool) or not isinstance(d.get("carried"), int):
            raise CpkgsError("bad report from the edit")
        return cls(target, text("old"), text("new"), text("backup"), d["written"], d["carried"], text("editor"))


def target_of(path: Path) -> Path:
    """The file a (chain of) symlink(s) points at: edited there so the link stays a link."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def edit_file(
    path: Path,
    compute: Callable[[str | None], str | None],
    *,
    dry_run: bool,
    lease: float,
    timeout: float,
    preload: tuple[str, ...] = (),
) -> Outcome:
    """Read PATH (a symlink: its target), COMPUTE the new text from the old (None: no file; returns None: no change)
    and write it, all with the rights of whoever controls PATH (editor_for), under a lock beside the target.
    PRELOAD: the modules COMPUTE imports (see run_as)."""
    who = editor_for(path)

    def work() -> dict[str, Any]:
        return asdict(_edit(path, compute, dry_run, lease, timeout, recheck=who is None))

    out = Outcome.from_json(run_as(who, work, preload))
    out.editor = who.name if who is not None else None
    return out


def _edit(path: Path, compute: Callable[[str | None], str | None], dry_run: bool, lease: float,
          timeout: float, *, recheck: bool) -> Outcome:
    target = target_of(path)
    if recheck and editor_for(path) is not None:
        # With our own rights, once the symlinks are resolved: a name created meanwhile in a sticky directory (a
        # symlink of someone else's where nothing was when editor_for looked) is caught here; after this, only
        # the last component can still appear, and every open, link and rename of it refuses to follow a link.
        raise PermissionProblem(f"{path}: changed owner while cpkgs was checking it; run again")
    if dry_run:
        fd = _open(target, path)
        try:
            old = None if fd is None else decode_text(read_fd_bytes(fd, str(path), ConfigError), str(path), ConfigError)
        finally:
            if fd is not None:
                os.close(fd)
        return Outcome(str(target), old, compute(old))
    if not target.parent.is_dir():
        raise ConfigError(f"{path}: directory {target.parent} does not exist")
    lock = SiteLock(target.with_name(target.name + ".cpkgs.lock"), what=str(target), lease_seconds=lease,
                    timeout=timeout)
    with lock:
        for _ in range(ATTEMPTS):
            out = _attempt(path, target, compute)
            if out is not None:
                return out
    raise CpkgsError(f"{path}: changed {ATTEMPTS} times while cpkgs was writing it; run again when it is quiet")


def _open(target: Path, path: Path) -> int | None:
    """TARGET for reading, or None when it does not exist. O_NOFOLLOW: its symlinks are resolved already."""
    try:
        return open_regular(target, str(path), ConfigError, nofollow=True)
    except FileNotFoundError:
        return None


def _attempt(path: Path, target: Path, compute: Callable[[str | None], str | None]) -> Outcome | None:
    """One read-compute-write; None when the file changed before the rename (the caller reads it again)."""
    fd = _open(target, path)
    try:
        raw = None if fd is None else read_fd_bytes(fd, str(path), ConfigError)
        old = None if raw is None else decode_text(raw, str(path), ConfigError)
        new = compute(old)
        if new is None or new == old:
            return Outcome(str(target), old, new)
        try:
            written = _write(path, target, fd, raw, new.encode("utf-8"))
        except PermissionError:
            raise PermissionProblem(f"{path}: cannot write {target}: permission denied") from None
        except OSError as exc:
            raise CpkgsError(f"{path}: cannot write {target}: {exc.strerror}") from None
        if written is None:
            return None
        backup, carried = written
        return Outcome(str(target), old, new, str(backup) if backup else None, True, carried)
    finally:
        if fd is not None:
            os.close(fd)


def _write(path: Path, target: Path, fd: int | None, raw: bytes | None, data: bytes) -> tuple[Path | None, int] | None:
    """Backup, temp file, check, rename. (backup, bytes carried over), or None when the file changed meanwhile."""
    st = os.fstat(fd) if fd is not None else None
    backup = _keep_copy(target, raw, st, "backup") if raw is not None else None
    tmp = _temp_file(target, data, st)
    installed = False
    try:
        if _as_read(path, target, fd, raw):
            installed = _install(tmp, target, create=fd is None)
    finally:
        if not installed:
            for leftover in (tmp, backup):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
    if not installed:
        return None
    carried = _carry_over(path, target, fd, raw, st) if fd is not None and raw is not None else 0
    _fsync_dir(target.parent)
    _prune_backups(target)
    return backup, carried


def _as_read(path: Path, target: Path, fd: int | None, raw: bytes | None) -> bool:
    """TARGET still names the inode read (or still nothing) and that inode still starts with the bytes read: what
    was appended since comes after the edit (_carry_over), as if the edit had happened at the moment of the read."""
    try:
        now = os.lstat(target)
    except FileNotFoundError:
        return fd is None
    if fd is None or raw is None:
        return False
    held = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
        return False
    return read_fd_bytes(fd, str(path), ConfigError).startswith(raw)


def _install(tmp: Path, target: Path, *, create: bool) -> bool:
    if not create:
        os.replace(tmp, target)
        return True
    try:
        os.link(tmp, target)  # a file created meanwhile stays (a rename would replace it)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP) or os.path.lexists(target):
            raise
        os.replace(tmp, target)  # a filesystem without hard links
        return True
    os.unlink(tmp)
    return True


def _carry_over(path: Path, target: Path, fd: int, raw: bytes, st: os.stat_result | None) -> int:
    """Bytes written to the old inode since it was read, up to and after the rename, which readers of TARGET no
    longer see: appended ones go to the end of the new file, where appending after the edit puts them; anything
    else is kept beside it and reported."""
    seen, carried = raw, 0
    while True:
        now = read_fd_bytes(fd, str(path), ConfigError)
        if now == seen:
            return carried
        if not now.startswith(seen):
            kept = _keep_copy(target, now, st, "rewritten")
            raise CpkgsError(f"{path} was rewritten while cpkgs replaced it: that version is kept as {kept}; "
                             f"compare it with {target} and run again")
        extra = now[len(seen) :]
        afd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _write_all(afd, extra)
            os.fsync(afd)
        finally:
            os.close(afd)
        seen, carried = now, carried + len(extra)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fill(fd: int, path: Path | str, data: bytes, st: os.stat_result | None) -> None:
    """DATA into the new file PATH open at FD, with the mode and (if its editor may give it) the group of the file it
    stands for; FD closed, PATH unlinked if that fails."""
    try:
        _fill_fd(fd, data, st)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)


def _fill_fd(fd: int, data: bytes, st: os.stat_result | None) -> None:
    _write_all(fd, data)
    if st is not None and os.fstat(fd).st_gid != st.st_gid:
        with contextlib.suppress(PermissionError):  # a group the editor is not in: the directory's stays
            os.fchown(fd, -1, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777 if st is not None else NEW_FILE_MODE)  # after fchown: it clears
    os.fsync(fd)


def _keep_copy(target: Path, data: bytes, st: os.stat_result | None, kind: str) -> Path:
    """A new file `TARGET.cpkgs-KIND-STAMP[-N]` holding DATA; created exclusively, never through a symlink."""
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    base = f"{target.name}.cpkgs-{kind}-{stamp}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    # After the last N of this second: names sort in the order the copies were made, even when pruning freed one.
    suffix = re.compile(re.escape(base) + r"(?:-(\d+))?\Z")
    taken = [int(m[1] or 0) for m in map(suffix.match, os.listdir(target.parent)) if m]
    first = max(taken) + 1 if taken else 0
    for n in range(first, first + 1000):
        candidate = target.with_name(base if n == 0 else f"{base}-{n}")
        try:
            fd = os.open(candidate, flags, 0o600)
        except FileExistsError:
            continue
        _fill(fd, candidate, data, st)
        return candidate
    raise CpkgsError(f"{target}: too many files named {base}*")


def _temp_file(target: Path, data: bytes, st: os.stat_result | None) -> Path:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".cpkgs-tmp")  # O_EXCL, 0600
    _fill(fd, tmp, data, st)
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _prune_backups(target: Path) -> None:
    """Keep the newest KEEP_BACKUPS backups of TARGET (by the time in their names)."""
    pattern = re.compile(re.escape(target.name) + r"\.cpkgs-backup-(\d{8}T\d{6})(?:-(\d+))?\Z")
    found: list[tuple[tuple[str, int], str]] = []
    with os.scandir(target.parent) as entries:
        for e in entries:
            m = pattern.match(e.name)
            if m and e.is_file(follow_symlinks=False):
                found.append(((m[1], int(m[2] or 0)), e.path))
    for _, old in sorted(found)[:-KEEP_BACKUPS]:
        with contextlib.suppress(OSError):
            os.unlink(old)
