"""NFS-safe mutual exclusion: lease locks with owner records, their recovery, listing and breaking, and notices.

Why not flock/fcntl: NFS clients implement them through NLM or NFSv4 state that many servers and client mounts
(``nolock``, ``local_lock=all``) get wrong across hosts. filelock's soft locks only need an exclusive create and a
rename, which NFS does atomically on the server. `SoftFileLease` adds a heartbeat so that a holder that died on
*another* host can be taken over once its lease ran out, while a same-host holder that died is recovered at once
(filelock proves death by pid + process start time, never by pid alone).

Lock directories may be writable by others (the admin group's `.cpkgs/locks`, a user's home for link-user's lock):
every file this module creates there is created exclusively without following symlinks (a private temp name,
O_EXCL|O_NOFOLLOW) and changed only through its descriptor, so nobody can redirect a write, truncate or chmod of
root's to a file of their choosing. A lock marker appears under its name with its owner record already in it
(written to a private temp file, then link()ed into place): a kill can never leave an empty marker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from cpkgs_admin.errors import CpkgsError, LockBusy, PermissionProblem, os_error_text
from cpkgs_admin.site.files import NO_FOLLOW, atomic_write, read_no_follow
from cpkgs_admin.site.notices import notice
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.process import current_command, current_user, process_start

# filelock is imported inside the functions that take or look at a lock (noqa: PLC0415 below): 28 ms to import (it
# loads asyncio; python -X importtime), which `list`, `info`, `verify` and `new-env --dry-run` never need.




@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    start: float | None
    user: str
    command: str
    acquired_at: float


@dataclass(frozen=True)
class LockInfo:
    name: str
    path: str
    owner: LockOwner | None
    age_seconds: float | None
    # held | stale (same-host owner dead) | expired (lease not refreshed) | empty (0 bytes: its creator was killed
    # before writing it, by a cpkgs before markers were linked into place) | unreadable (not a lock record)
    state: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


def _owner_file(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".owner.json")


# --------------------------------------------------------------------------------------------------- dead markers

# An empty or unreadable marker this much older than the server's now has no writer left. cpkgs' markers appear
# with their record in them (linked into place), so such a marker is an older cpkgs's, killed between its create
# and its write (filelock's own gap is nanoseconds: MALFORMED_LOCK_AGE_THRESHOLD, tox-dev/filelock#532), or junk.
UNREADABLE_GRACE = 2.0
# Leftovers of a process killed inside a takeover or a clock probe (hidden names): removed after this long.
LEFTOVER_GRACE = 3600.0
# How long a wait goes unsaid.
WAIT_NOTICE_SECONDS = 2.0


def server_now(directory: Path) -> float | None:
    """The file server's clock: the mtime of a file just created in DIRECTORY (mkstemp: a random name, O_EXCL and
    O_NOFOLLOW, so no planted symlink is ever written through). Ages of markers are judged on it, never on this
    host's clock (NFS clients' clocks drift)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".clock-")
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@dataclass(frozen=True)
class _Verdict:
    why: str  # the holder is gone: a sentence for the notice
    seen: tuple[int, int, int]  # the marker judged: (inode, mtime in ns, size)


def _marker(path: Path) -> tuple[Any, os.stat_result] | None:
    """(filelock's owner record or None when the marker holds none, its lstat); None when there is no marker."""
    from filelock._soft import parse_marker, read_lock_file  # noqa: PLC0415  (filelock: see the top)

    try:
        content, st = read_lock_file(str(path))  # lstat + an O_NOFOLLOW|O_NONBLOCK read: never a symlink's target
    except OSError:
        return None
    return parse_marker(content), st


def _dead_verdict(path: Path, lease_seconds: float, *, expired_too: bool) -> _Verdict | None:
    """Why the marker at PATH has no live holder, or None while it may have one. Same-host owners are proven dead
    by pid + start time (filelock's rule); another host's only by a lease unrefreshed for two periods (EXPIRED_TOO);
    an empty or unreadable marker once it is UNREADABLE_GRACE old. Ages on the server's clock."""
    from filelock._identity import owner_is_stale  # noqa: PLC0415  (filelock: see the top)

    got = _marker(path)
    if got is None:
        return None
    rec, st = got
    seen = (st.st_ino, st.st_mtime_ns, st.st_size)
    if rec is None:
        if stat.S_ISDIR(st.st_mode):
            return None
        now = server_now(path.parent)
        if now is None or now - st.st_mtime < UNREADABLE_GRACE:
            return None
        what = "empty" if stat.S_ISREG(st.st_mode) and st.st_size == 0 else "not a lock record"
        return _Verdict(f"it was {what} for {now - st.st_mtime:.0f}s (left by a process killed while taking it)",
                        seen)
    if rec.mode != "lease":
        return None  # another tool's lock: not ours to judge
    if owner_is_stale(rec.pid, rec.hostname, rec.start):
        return _Verdict(f"its holder, pid {rec.pid} on this host, is gone", seen)
    if not expired_too:
        return None
    now = server_now(path.parent)
    # Two lease periods without a refresh (the holder refreshes every third of one): the holder is gone or cut off.
    if now is not None and now - st.st_mtime > 2 * (rec.lease_duration or lease_seconds):
        return _Verdict(f"its holder on {rec.hostname} stopped renewing its lease {now - st.st_mtime:.0f}s ago", seen)
    return None


def _remove_if_unchanged(path: Path, seen: tuple[int, int, int]) -> bool:
    """Remove the marker at PATH if it is still the one judged (same inode, mtime, size): renamed aside first, so
    of several processes recovering it at once one wins, and a marker renewed or replaced meanwhile goes back."""
    taken = path.with_name(f".{path.name}.expired-{uuid.uuid4().hex}")
    try:
        os.rename(path, taken)
    except OSError:
        return False  # someone else moved it first
    try:
        st = os.lstat(taken)
        same = (st.st_ino, st.st_mtime_ns, st.st_size) == seen
    except OSError:
        same = False
    if not same:
        with contextlib.suppress(OSError):
            os.link(taken, path, follow_symlinks=False)  # give it back, unless a new holder took the name
    with contextlib.suppress(OSError):
        os.unlink(taken)
    return same


def _recover(path: Path, lease_seconds: float, *, expired_too: bool) -> str | None:
    """Remove a marker whose holder is provably gone; a sentence saying what was recovered, else None."""
    verdict = _dead_verdict(path, lease_seconds, expired_too=expired_too)
    if verdict is None or not _remove_if_unchanged(path, verdict.seen):
        return None
    owner = read_owner(path)
    if owner is not None and not _owner_alive(owner):
        with contextlib.suppress(OSError):
            _owner_file(path).unlink()
    return f"recovered {path.name}: {verdict.why}"


def _owner_alive(owner: LockOwner) -> bool:
    """Whether the owner record may name a live process (another host's always may)."""
    if owner.host != socket.gethostname():
        return True
    start = process_start(owner.pid)
    return start is not None and (owner.start is None or abs(start - owner.start) < 1.0)


def sweep_dead_locks(locks_dir: Path, lease_seconds: float) -> list[str]:
    """Remove the locks in LOCKS_DIR whose holder is provably gone: same-host owners dead by pid + start time,
    empty or unreadable markers past the grace (never another host's by pid: its lease decides, or `locks break`).
    Also old leftovers of killed takeovers and clock probes. One sentence per lock removed."""
    said: list[str] = []
    try:
        entries = list(os.scandir(locks_dir))
    except OSError:
        return said
    now: float | None = None
    for entry in entries:
        if entry.name.endswith(".lock") and not entry.name.startswith("."):
            with contextlib.suppress(OSError):
                if (msg := _recover(Path(entry.path), lease_seconds, expired_too=False)) is not None:
                    said.append(msg)
        elif entry.name.startswith(".clock-") or ".lock.expired-" in entry.name or ".lock.new-" in entry.name:
            now = now if now is not None else server_now(locks_dir)
            with contextlib.suppress(OSError):
                if now is not None and now - entry.stat(follow_symlinks=False).st_mtime > LEFTOVER_GRACE:
                    os.unlink(entry.path)
    return said


_swept: set[str] = set()


def sweep_once(locks_dir: Path, lease_seconds: float) -> None:
    """sweep_dead_locks, once per process and directory (at the first lock a command takes there), saying what
    it removed."""
    key = str(locks_dir)
    if key in _swept:
        return
    _swept.add(key)
    for msg in sweep_dead_locks(locks_dir, lease_seconds):
        notice(msg)


# --------------------------------------------------------------------------------------------------- the lock


@functools.cache
def _lease_class() -> Any:
    """filelock's SoftFileLease, with its marker linked into place whole.

    filelock creates the marker (O_CREAT|O_EXCL|O_NOFOLLOW, which cannot follow a planted symlink) and only then
    writes its owner record into it: a kill -9 in between leaves an empty marker, which filelock keeps as held
    forever (an empty marker is a filelock < 3.22 holder to it: _soft/_exclusive/_recovery.py RECORDLESS_MARKER;
    tox-dev/filelock#532). Here the record goes into a private temp file (mkstemp: O_EXCL|O_NOFOLLOW, random name)
    that link() gives the marker's name, failing with EEXIST when the lock is taken: NFS makes link atomic on the
    server, and the name never exists without its record. Relies on filelock 4.3's _create_marker and
    _write_lock_info hooks (pyproject: filelock >= 4.3, < 5); a test kills holders at random moments."""
    from filelock import SoftFileLease  # noqa: PLC0415  (filelock: see the top)

    for hook in ("_create_marker", "_write_lock_info", "_mark_descriptor_pending"):
        if not hasattr(SoftFileLease, hook):
            raise CpkgsError(f"filelock {_filelock_version()} lacks {hook}: cpkgs needs filelock 4.3 or newer (< 5)")

    class LinkedLease(SoftFileLease):  # type: ignore[misc, valid-type]
        def _create_marker(self, path: str, flags: int, opened: list[int]) -> int:
            directory, name = os.path.split(path)
            fd, tmp = tempfile.mkstemp(dir=directory or ".", prefix=f".{name}.new-")
            try:
                taken: FileExistsError | None = None
                try:
                    os.fchmod(fd, 0o644)  # whatever the umask: readable for `cpkgs locks`, writable by its holder
                    super()._write_lock_info(fd)  # filelock's own record: pid, host, start, lease token
                    os.link(tmp, path, follow_symlinks=False)
                except FileExistsError as exc:
                    taken = exc  # held; or an NFS reply to a retransmitted LINK whose first try made it: see below
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                mine = os.fstat(fd)
                try:
                    there = os.lstat(path)
                except FileNotFoundError:  # released by its holder meanwhile: try again
                    there = None
                if there is None or (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
                    # Held by another; or the temp name was swapped before link(): the lock name is not ours.
                    raise taken or FileExistsError(errno.EEXIST, "lock taken by another file", path)
            except BaseException:
                os.close(fd)
                raise
            opened.append(fd)
            self._mark_descriptor_pending(fd)
            return fd

        def _write_lock_info(self, fd: int) -> None:  # type: ignore[override]
            pass  # written by _create_marker, before the marker got its name

    return LinkedLease


def _filelock_version() -> str:
    from importlib.metadata import version  # noqa: PLC0415  (23 ms to import, for this error message only)

    return version("filelock")


class SiteLock:
    """An NFS-safe lease lock with a human-readable owner record beside it.

    `timeout` < 0 waits forever, 0 tries once. On timeout raises LockBusy naming the owner. A wait longer than
    WAIT_NOTICE_SECONDS says what it waits for and who holds it (notice), as does a recovered dead marker.
    """

    # Locks this process holds, by path, with their depth: taking one again inside itself (publish → refresh of
    # generated files → audit) nests instead of waiting for itself.
    _held: ClassVar[dict[str, int]] = {}

    def __init__(self, path: Path, *, what: str, lease_seconds: float, timeout: float) -> None:
        self.path = path
        self.what = what
        self.lease_seconds = lease_seconds
        self.timeout = timeout
        self._lock: Any = None
        self._nested = False
        self._owner: LockOwner | None = None

    def _make(self) -> Any:
        return _lease_class()(
            str(self.path),
            lease_duration=self.lease_seconds,
            timeout=self.timeout,
            poll_interval=min(0.05, self.lease_seconds / 10),
            thread_local=False,
            is_singleton=False,
        )

    def acquire(self) -> None:
        from filelock import Timeout  # noqa: PLC0415  (filelock: see the top)

        if not self.path.parent.is_dir():
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except PermissionError:
                raise PermissionProblem(f"cannot create lock directory {self.path.parent}: permission denied") from None
            except OSError as exc:
                raise CpkgsError(f"cannot create lock directory {self.path.parent}: {exc.strerror}") from None
        key = str(self.path)
        if SiteLock._held.get(key):
            SiteLock._held[key] += 1
            self._nested = True
            return
        from filelock import LeaseSettingsMismatch  # noqa: PLC0415  (filelock: see the top)

        self._lock = self._make()
        try:
            self._acquire_with_expiry()
        except LeaseSettingsMismatch:
            self._lock = None
            raise LockBusy(
                f"{self.what} is held under another lease_seconds than cpkgs.yaml now says; wait for its holder to "
                f"finish, or run 'cpkgs locks break {self.path.name}'"
            ) from None
        except Timeout:
            self._lock = None
            raise LockBusy(
                f"{self.what} is locked{holder_text(self.path, ' by ')}; wait, or if that process is gone run "
                f"'cpkgs locks break {self.path.name}'"
            ) from None
        except PermissionError:
            self._lock = None
            raise PermissionProblem(f"cannot create lock {self.path}: permission denied") from None
        except OSError as exc:
            self._lock = None
            raise CpkgsError(f"cannot create lock {self.path}: {exc.strerror}") from None
        self._record_owner()
        SiteLock._held[key] = 1

    def _record_owner(self) -> None:
        try:
            owner = LockOwner(
                host=socket.gethostname(),
                pid=os.getpid(),
                start=process_start(os.getpid()),
                user=current_user(),
                command=current_command(),
                acquired_at=time.time(),
            )
            # Not fsynced: it names the holder for `cpkgs locks` and error messages, and dies with the holder anyway.
            atomic_write(_owner_file(self.path), json.dumps(asdict(owner), indent=2, sort_keys=True) + "\n",
                         durable=False)
        except BaseException:
            # Held, but the caller's `with` never started (Ctrl-C while psutil loads, a full disk): let go now, or
            # the lock would outlive this process (taken over as stale later, but listed by `cpkgs locks`).
            with contextlib.suppress(Exception):
                mine = read_owner(self.path)
                if mine is not None and (mine.pid, mine.host) == (os.getpid(), socket.gethostname()):
                    _owner_file(self.path).unlink()
            with contextlib.suppress(Exception):
                self._lock.release()
            self._lock = None
            raise
        self._owner = owner

    def _acquire_with_expiry(self) -> None:
        """filelock's own acquire, in slices of at most a second; between slices, take over a marker whose holder is
        provably gone, and once the wait is longer than WAIT_NOTICE_SECONDS say what it waits for.

        filelock takes over an expired lease with renameat2(RENAME_EXCHANGE), which the Linux NFS client refuses
        (filelock's _util.py says so), so on NFS a dead host's lock would stay until `locks break`; and it never
        takes over an empty marker. Here expiry is judged on the server's clock (server_now), never on ours."""
        from filelock import Timeout  # noqa: PLC0415  (filelock: see the top)

        started = time.monotonic()
        deadline = None if self.timeout < 0 else started + self.timeout
        told = False
        step = 0.0  # the first try does not wait: a free lock costs no slice, a dead one is recovered at once
        while True:
            try:
                self._lock.acquire(timeout=step)
                return
            except Timeout:
                recovered = _recover(self.path, self.lease_seconds, expired_too=True)
                if recovered is not None:
                    notice(recovered)
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise
                if not told and now - started >= WAIT_NOTICE_SECONDS:
                    told = True
                    notice(f"waiting for {self.what}{holder_text(self.path, ': held by ')}")
                step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - now))

    def release(self, failing: bool = False) -> None:
        """Let go. FAILING: the work under the lock is failing with its own error, which a lock that cannot be
        removed (the filesystem gone read-only or failing) must not replace: the marker then stays, naming this
        process, and the next acquirer takes it over once this process is gone (dead owner on this host) or its
        lease ran out (another host)."""
        if self._nested:
            SiteLock._held[str(self.path)] -= 1
            self._nested = False
            return
        if self._lock is None:
            return
        SiteLock._held.pop(str(self.path), None)
        # Remove the owner record only if it is still ours: after `locks break` it belongs to the next holder.
        if read_owner(self.path) == self._owner:
            with contextlib.suppress(OSError):
                _owner_file(self.path).unlink()
        lost = getattr(self._lock, "compromise", None)
        try:
            self._lock.release()
        except OSError as exc:
            if failing:
                return
            raise CpkgsError(f"cannot release {self.what}: {os_error_text(exc)}; it is taken over as stale once "
                             "this process has exited") from None
        finally:
            self._lock = None
        if lost is not None:
            # The lease was broken or expired while we worked (`locks break`, or a host that stalled past its
            # lease): another process may have changed the same things. Say so rather than report success.
            raise CpkgsError(f"{self.what}: lost the lock while working ({lost.reason}); check the result")

    def __enter__(self) -> SiteLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        self.release(failing=exc_type is not None)


def read_owner(lock_path: Path) -> LockOwner | None:
    raw = read_no_follow(_owner_file(lock_path), 1 << 16)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return LockOwner(**data)
    except (ValueError, TypeError):
        return None


def holder_text(lock_path: Path, lead: str) -> str:
    """LEAD + who holds the lock at LOCK_PATH, for a wait notice or a busy error; "" when nothing says."""
    owner = read_owner(lock_path)
    if owner is not None:
        since = f", for {time.time() - owner.acquired_at:.0f}s" if owner.acquired_at else ""
        return f"{lead}{owner.user}@{owner.host} pid {owner.pid} ({owner.command}{since})"
    got = _marker(lock_path)
    if got is None:
        return ""
    rec, st = got
    if rec is not None:
        return f"{lead}pid {rec.pid} on {rec.hostname}"
    what = "an empty lock file" if st.st_size == 0 else "a lock file with no owner record"
    return f"{lead}{what} (recovered {UNREADABLE_GRACE:g}s after its creation if nobody writes it)"


def _marker_state(lock_path: Path, lease_seconds: float) -> tuple[str, Any]:
    """What filelock's marker says: held / stale / expired / empty / unreadable, plus its owner record."""
    # the same proof of death filelock itself applies
    from filelock._identity import owner_is_stale  # noqa: PLC0415  (filelock: see the top)

    got = _marker(lock_path)
    if got is None:
        return "gone", None  # released between the listing and the look
    rec, st = got
    if rec is None:
        return ("empty" if stat.S_ISREG(st.st_mode) and st.st_size == 0 else "unreadable"), None
    if owner_is_stale(rec.pid, rec.hostname, rec.start):
        return "stale", rec
    age = time.time() - st.st_mtime
    if rec.lease_duration is not None and age > rec.lease_duration:
        return "expired", rec
    return "held", rec


def list_locks(locks_dir: Path, lease_seconds: float) -> list[LockInfo]:
    out: list[LockInfo] = []
    if not locks_dir.is_dir():
        return out
    try:
        names = sorted(e.name for e in os.scandir(locks_dir) if e.name.endswith(".lock")
                       and not e.name.startswith(".") and not e.is_dir(follow_symlinks=False))
    except PermissionError:
        raise PermissionProblem(f"cannot read {locks_dir}: only the site's admins can see its locks") from None
    for name in names:
        path = locks_dir / name
        state, rec = _marker_state(path, lease_seconds)
        if state == "gone":
            continue
        owner = read_owner(path)
        if owner is None and rec is not None:
            owner = LockOwner(host=rec.hostname, pid=rec.pid, start=None, user="?", command="?", acquired_at=0.0)
        age = time.time() - owner.acquired_at if owner and owner.acquired_at else None
        out.append(LockInfo(name=path.name, path=str(path), owner=owner, age_seconds=age, state=state))
    return out


def break_lock(locks_dir: Path, name: str, lease_seconds: float) -> LockInfo:
    """Remove a lock whoever holds it: the operator says its holder is gone (`cpkgs locks break`)."""
    from filelock import SoftFileLease  # noqa: PLC0415  (filelock: see the top)

    if "/" in name or name.startswith("."):
        raise CpkgsError(f"{name!r} is not a lock name (see 'cpkgs locks')")
    path = locks_dir / (name if name.endswith(".lock") else name + ".lock")
    if not os.path.lexists(path):
        raise CpkgsError(f"no lock named {path.name} in {locks_dir}")
    info = next((i for i in list_locks(locks_dir, lease_seconds) if i.name == path.name), None)
    try:
        SoftFileLease(str(path), lease_duration=lease_seconds, is_singleton=False).force_break()
        with contextlib.suppress(FileNotFoundError):
            _owner_file(path).unlink()
    except PermissionError:
        raise PermissionProblem(f"cannot remove lock {path}: permission denied") from None
    return info or LockInfo(name=path.name, path=str(path), owner=None, age_seconds=None, state="unreadable")


# --------------------------------------------------------------------------------------------------- py-rattler's flock


def wait_for_flock(path: Path, what: str, timeout: float) -> None:
    """Wait until nobody holds a flock on PATH, saying so after WAIT_NOTICE_SECONDS, and LockBusy after TIMEOUT
    (< 0: forever) naming the holder.

    py-rattler takes an exclusive flock on its package cache's .cache.lock and waits for it without a word or an
    end. This probe takes and drops the same lock first (dropped at once: rattler opens the file again, and a
    flock held here would block it), so a holder is named instead of a silent hang. Opened read-write without
    following a symlink: the Linux NFS client emulates flock with byte-range locks, which need a writable fd."""
    try:
        fd = os.open(path, os.O_RDWR | NO_FOLLOW)
    except OSError:
        return  # absent (rattler creates it) or not ours to probe
    started = time.monotonic()
    told = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            except OSError:
                return  # no flock here (ENOLCK on a mount without locking): rattler meets the same
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            waited = time.monotonic() - started
            if 0 <= timeout <= waited:
                raise LockBusy(f"{what} is locked: {path} is flock'ed by {_flock_holders(fd)}; wait for it, or end "
                               "that process")
            if not told and waited >= WAIT_NOTICE_SECONDS:
                told = True
                notice(f"waiting for {what}: {path} is flock'ed by {_flock_holders(fd)}")
            time.sleep(0.1)
    finally:
        os.close(fd)


def _flock_holders(fd: int) -> str:
    """Who holds a flock on FD's file, from /proc/locks (this host's processes only)."""
    import psutil  # noqa: PLC0415  (15 ms to import, only once a build waits for rattler's cache lock)

    ino = os.fstat(fd).st_ino
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(ino):
                pids.append(int(fields[4]))
    who = []
    for pid in sorted(set(pids)):
        try:
            proc = psutil.Process(pid)
            who.append(f"pid {pid} ({proc.username()}: {' '.join(proc.cmdline())[:80]})")
        except (psutil.Error, OSError):
            who.append(f"pid {pid}")
    return ", ".join(who) or "a process on another host (or one this user cannot see)"


@contextlib.contextmanager
def _locked(site: Site, path: Path, what: str, timeout: float | None) -> Iterator[SiteLock]:
    """Every named lock of the site: the lease and timeout of cpkgs.yaml, dead same-host locks swept first."""
    sweep_once(site.locks_dir, site.config.lease_seconds)
    lock = SiteLock(path, what=what, lease_seconds=site.config.lease_seconds,
                    timeout=site.config.lock_timeout if timeout is None else timeout)
    with lock:
        yield lock


def site_locked(site: Site, timeout: float | None = None) -> contextlib.AbstractContextManager[SiteLock]:
    return _locked(site, site.site_lock, f"site {site.root}", timeout)


def env_locked(site: Site, name: str, subdir: str,
               timeout: float | None = None) -> contextlib.AbstractContextManager[SiteLock]:
    return _locked(site, site.env_lock(name, subdir), f"environment {name} ({subdir})", timeout)


def cache_locked(site: Site) -> contextlib.AbstractContextManager[SiteLock]:
    """The site package cache: py-rattler guards it with flock, which NFS does not honour across hosts (builds on
    two hosts could extract into one entry at once); this NFS-safe lock serializes them."""
    return _locked(site, site.locks_dir / "pkgs-cache.lock", "the site package cache", None)


def uv_cache_locked(site: Site) -> contextlib.AbstractContextManager[SiteLock]:
    """uv's cache (.cpkgs/uv-cache) and the wheel store: uv locks its cache with flock, which NFS does not honour
    across hosts; every uv call of a build runs under this NFS-safe lock instead."""
    return _locked(site, site.locks_dir / "uv-cache.lock", "the site's uv cache", None)


def tool_locked(site: Site, subdir: str) -> contextlib.AbstractContextManager[SiteLock]:
    """One `install-tool` (or purge of tool builds) per installation at a time."""
    return _locked(site, site.tool_lock(subdir), f"the cpkgs tool ({subdir})", None)
