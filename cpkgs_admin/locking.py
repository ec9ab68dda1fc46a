"""NFS-safe mutual exclusion, atomic state writes and the audit log.

Why not flock/fcntl: NFS clients implement them through NLM or NFSv4 state that many servers and client mounts
(``nolock``, ``local_lock=all``) get wrong across hosts. filelock's soft locks only need an exclusive create and a
rename, which NFS does atomically on the server. `SoftFileLease` adds a heartbeat so that a holder that died on
*another* host can be taken over once its lease ran out, while a same-host holder that died is recovered at once
(filelock proves death by pid + process start time, never by pid alone).
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import os
import socket
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from cpkgs_admin.errors import CpkgsError, LockBusy, PermissionProblem, os_error_text

# --------------------------------------------------------------------------------------------------- atomic writes


def atomic_write(
    path: Path, data: bytes | str, mode: int = 0o644, *, durable: bool = True, gid: int | None = None
) -> None:
    """Temp file in the same directory, fsync, os.replace: readers see the old or the new file, never half of one.

    The temp name starts with '.' and ends with '.tmp' so listings skip it; the directory is fsynced so the rename
    survives a crash of the writer's host (NFS commits on close, local filesystems need the dir fsync). Not DURABLE:
    no fsyncs, for files whose loss in a crash of this host does not matter (a lock's owner record dies with the
    lock's holder), still never seen half-written. GID: the group the file must have (the site's admin group, for
    a file made group-writable), set before it replaces the old one.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if gid is not None and os.fstat(fh.fileno()).st_gid != gid:
                _give_group(fh.fileno(), gid, path)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
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


def write_if_changed(path: Path, data: str, mode: int = 0o644, gid: int | None = None, *, durable: bool = True) -> bool:
    """Atomically write `data` unless the file already holds exactly it (and has `mode`, and group GID when given).
    True when changed. A group-writable MODE goes with the admin group's GID: never group-writable for whatever
    group the file happened to have. DURABLE as in atomic_write."""
    try:
        if path.read_text(encoding="utf-8") == data:
            st = path.stat()
            if (gid is None or st.st_gid == gid) and (st.st_mode & 0o7777) == mode:
                return False
            try:
                if gid is not None and st.st_gid != gid:
                    os.chmod(path, mode & ~0o020)  # not group-writable while the group is still the wrong one
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                    try:
                        _give_group(fd, gid, path)
                    finally:
                        os.close(fd)
                os.chmod(path, mode)
            except PermissionError:
                raise PermissionProblem(f"cannot set the mode or group of {path}: it belongs to uid {st.st_uid} "
                                        "(run this as that user or root)") from None
            return True
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write(path, data, mode, gid=gid, durable=durable)
    return True


# --------------------------------------------------------------------------------------------------- owner records


@functools.cache
def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def current_command() -> str:
    return " ".join(["cpkgs", *sys.argv[1:]])[:300]


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
    state: str  # held | stale (same-host owner dead) | expired (lease not refreshed) | unknown

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


def _owner_file(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".owner.json")


# --------------------------------------------------------------------------------------------------- the lock


class SiteLock:
    """An NFS-safe lease lock with a human-readable owner record beside it.

    `timeout` < 0 waits forever, 0 tries once. On timeout raises LockBusy naming the owner.
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
        from filelock import SoftFileLease

        return SoftFileLease(
            str(self.path),
            lease_duration=self.lease_seconds,
            timeout=self.timeout,
            poll_interval=min(0.05, self.lease_seconds / 10),
            thread_local=False,
            is_singleton=False,
        )

    def acquire(self) -> None:
        from filelock import Timeout

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise PermissionProblem(f"cannot create lock directory {self.path.parent}: permission denied") from None
        except OSError as exc:
            raise CpkgsError(f"cannot create lock directory {self.path.parent}: {exc.strerror}") from None
        key = str(self.path)
        if SiteLock._held.get(key):
            SiteLock._held[key] += 1
            self._nested = True
            return
        from filelock import LeaseSettingsMismatch

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
            owner = read_owner(self.path)
            who = f" by {owner.user}@{owner.host} pid {owner.pid} ({owner.command})" if owner else ""
            raise LockBusy(
                f"{self.what} is locked{who}; wait, or if that process is gone run 'cpkgs locks break {self.path.name}'"
            ) from None
        except PermissionError:
            raise PermissionProblem(f"cannot create lock {self.path}: permission denied") from None
        except OSError as exc:
            raise CpkgsError(f"cannot create lock {self.path}: {exc.strerror}") from None
        try:
            owner = LockOwner(
                host=socket.gethostname(),
                pid=os.getpid(),
                start=_process_start(os.getpid()),
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
        SiteLock._held[key] = 1

    def _acquire_with_expiry(self) -> None:
        """filelock's own acquire, in slices; between slices, take over a lease that has run out.

        filelock takes over an expired lease with renameat2(RENAME_EXCHANGE), which the Linux NFS client refuses
        (filelock's _util.py says so), so on NFS a dead host's lock would stay until `locks break`. Here expiry is
        judged on the server's clock (the mtime of a file we just wrote next to the marker), never on ours."""
        from filelock import Timeout

        deadline = None if self.timeout < 0 else time.monotonic() + self.timeout
        step = max(0.2, self.lease_seconds / 2)
        while True:
            left = step if deadline is None else max(0.0, min(step, deadline - time.monotonic()))
            try:
                self._lock.acquire(timeout=left)
                return
            except Timeout:
                if self._take_over_expired():
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def _take_over_expired(self) -> bool:
        from filelock import SoftFileLease
        from filelock._identity import owner_is_stale

        probe = SoftFileLease(str(self.path), lease_duration=self.lease_seconds, is_singleton=False)
        rec = probe.owner
        if rec is None or rec.mode != "lease":
            return False
        try:
            marker_mtime = self.path.stat().st_mtime
            clock = self.path.with_name(f".clock-{socket.gethostname()}-{os.getpid()}")
            clock.write_bytes(b"")
            server_now = clock.stat().st_mtime
            clock.unlink()
        except OSError:
            return False
        # Two lease periods without a refresh (the holder refreshes every third of one): the holder is gone or
        # cut off; same-host owners proven dead (pid + start time) need no wait.
        expired = server_now - marker_mtime > 2 * (rec.lease_duration or self.lease_seconds)
        if not expired and not owner_is_stale(rec.pid, rec.hostname, rec.start):
            return False
        taken = self.path.with_name(f".{self.path.name}.expired-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, taken)
        except OSError:
            return False  # someone else moved it first
        claimed = SoftFileLease(str(taken), lease_duration=self.lease_seconds, is_singleton=False).owner
        if claimed is None or claimed.token != rec.token:
            # Between our look and the rename a new holder took the lock: give it back if nobody replaced it.
            with contextlib.suppress(OSError):
                os.link(taken, self.path)
            with contextlib.suppress(OSError):
                os.unlink(taken)
            return False
        with contextlib.suppress(OSError):
            os.unlink(taken)
        stale_owner = read_owner(self.path)
        if stale_owner is not None and stale_owner.pid == rec.pid and stale_owner.host == rec.hostname:
            with contextlib.suppress(OSError):
                _owner_file(self.path).unlink()
        return True

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
    try:
        data = json.loads(_owner_file(lock_path).read_text(encoding="utf-8"))
        return LockOwner(**data)
    except (OSError, ValueError, TypeError):
        return None


def _marker_state(lock_path: Path, lease_seconds: float) -> tuple[str, Any]:
    """What filelock's marker says: held / stale / expired, plus its owner record."""
    from filelock import SoftFileLease
    from filelock._identity import owner_is_stale  # the same proof of death filelock itself applies

    probe = SoftFileLease(str(lock_path), lease_duration=lease_seconds, is_singleton=False)
    rec = probe.owner
    if rec is None:
        return "unknown", None
    if owner_is_stale(rec.pid, rec.hostname, rec.start):
        return "stale", rec
    try:
        age = time.time() - lock_path.stat().st_mtime
    except OSError:
        return "unknown", rec
    if rec.lease_duration is not None and age > rec.lease_duration:
        return "expired", rec
    return "held", rec


def list_locks(locks_dir: Path, lease_seconds: float) -> list[LockInfo]:
    out: list[LockInfo] = []
    if not locks_dir.is_dir():
        return out
    for path in sorted(locks_dir.glob("*.lock")):
        if not path.is_file():
            continue
        state, rec = _marker_state(path, lease_seconds)
        owner = read_owner(path)
        if owner is None and rec is not None:
            owner = LockOwner(host=rec.hostname, pid=rec.pid, start=None, user="?", command="?", acquired_at=0.0)
        age = time.time() - owner.acquired_at if owner and owner.acquired_at else None
        out.append(LockInfo(name=path.name, path=str(path), owner=owner, age_seconds=age, state=state))
    return out


def break_lock(locks_dir: Path, name: str, lease_seconds: float) -> LockInfo:
    """Remove a lock whoever holds it: the operator says its holder is gone (`cpkgs locks break`)."""
    from filelock import SoftFileLease

    if "/" in name or name.startswith("."):
        raise CpkgsError(f"{name!r} is not a lock name (see 'cpkgs locks')")
    path = locks_dir / (name if name.endswith(".lock") else name + ".lock")
    if not path.exists():
        raise CpkgsError(f"no lock named {path.name} in {locks_dir}")
    info = next((i for i in list_locks(locks_dir, lease_seconds) if i.name == path.name), None)
    try:
        SoftFileLease(str(path), lease_duration=lease_seconds, is_singleton=False).force_break()
        with contextlib.suppress(FileNotFoundError):
            _owner_file(path).unlink()
    except PermissionError:
        raise PermissionProblem(f"cannot remove lock {path}: permission denied") from None
    return info or LockInfo(name=path.name, path=str(path), owner=None, age_seconds=None, state="unknown")


# --------------------------------------------------------------------------------------------------- audit log


def audit(audit_log: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line. Callers hold the site lock: O_APPEND is not atomic across NFS clients."""
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "user": current_user(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": current_command(),
        **entry,
    }
    audit_log.parent.mkdir(parents=True, exist_ok=True)
    # Group-writable where the site has an admin group (its dirs are setgid), so every admin can append.
    parent = os.stat(audit_log.parent)
    shared = parent.st_mode & 0o2000
    fd = os.open(audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664 if shared else 0o644)
    try:
        st = os.fstat(fd)
        if shared and st.st_uid == os.geteuid():
            # Neither the umask of whoever created it nor a group from before the site had an admin group may lock
            # the other admins out.
            if st.st_gid != parent.st_gid:
                os.fchown(fd, -1, parent.st_gid)
            if stat.S_IMODE(st.st_mode) != 0o664:
                os.fchmod(fd, 0o664)
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def site_locked(site: Any, timeout: float | None = None) -> Iterator[SiteLock]:
    lock = SiteLock(
        site.site_lock,
        what=f"site {site.root}",
        lease_seconds=site.config.lease_seconds,
        timeout=site.config.lock_timeout if timeout is None else timeout,
    )
    with lock:
        yield lock


@contextlib.contextmanager
def env_locked(site: Any, name: str, subdir: str, timeout: float | None = None) -> Iterator[SiteLock]:
    lock = SiteLock(
        site.env_lock(name, subdir),
        what=f"environment {name} ({subdir})",
        lease_seconds=site.config.lease_seconds,
        timeout=site.config.lock_timeout if timeout is None else timeout,
    )
    with lock:
        yield lock


def audited(site: Any, action: str, **fields: Any) -> None:
    """Append an audit line under the site lock."""
    with site_locked(site):
        audit(site.audit_log, {"action": action, **fields})
