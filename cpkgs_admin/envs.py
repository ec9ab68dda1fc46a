"""The catalog and the lifecycle after publish: list, info, diff, export, seal/unseal, retire, remove, purge."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError, PermissionProblem, UsageError
from cpkgs_admin.outputs.views import EnvDiff, diff_records, export_record
from cpkgs_admin.site.audit import audited
from cpkgs_admin.site.config import parse_duration
from cpkgs_admin.site.files import atomic_write, make_dir_exact
from cpkgs_admin.site.locks import SiteLock, env_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.process import current_user
from cpkgs_admin.site.records import (
    EnvRecord,
    epoch_of,
    get_record,
    iter_record_files,
    record_problem,
    removed_line,
    retired_line,
    save_record,
    timestamp,
)
from cpkgs_admin.site.text import check_printable


@dataclass(frozen=True)
class ListRow:
    name: str
    platform: str
    status: str
    created: str
    size: int
    successor: str | None
    spec: str | None
    # A removed env still at its path (running jobs use it): when `purge` may move it away. None otherwise.
    purge_after: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "platform": self.platform,
            "status": self.status,
            "created": self.created,
            "size": self.size,
            "successor": self.successor,
            "spec": self.spec,
            "purge_after": self.purge_after,
        }


def list_envs(site: Site, show_all: bool = False, damaged: list[tuple[Path, str]] | None = None) -> list[ListRow]:
    """Reads records only. json.loads of the whole record is the cost; 500 records take a few ms. A record that
    cannot be read raises CpkgsError, or with DAMAGED goes there as (path, error line) while the others are listed."""
    rows = []
    for _plat, path in iter_record_files(site.records_dir):
        try:
            row = _list_row(path)
        except CpkgsError as exc:
            if damaged is None:
                raise
            damaged.append((path, str(exc)))
            continue
        if row is not None and (show_all or row.status not in ("retired", "removed")):
            rows.append(row)
    rows.sort(key=lambda r: (r.name, r.platform))
    return rows


def _list_row(path: Path) -> ListRow | None:
    import json

    try:
        d = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None  # removed since the listing
    except (OSError, ValueError) as exc:
        raise CpkgsError(f"{path}: unreadable record ({exc})") from None
    # record_from_json's own checks, without building every package entry: list agrees with verify and refresh.
    problem = record_problem(d, path)
    if problem:
        raise CpkgsError(f"{path}: damaged record ({problem})")
    removed = d.get("removed") or {}
    return ListRow(
        name=d["name"],
        platform=d["platform"],
        status=d.get("status", "active"),
        created=d["created"],
        size=d["size"],
        successor=(d.get("retired") or {}).get("successor"),
        spec=d.get("spec_source"),
        # (an older cpkgs moved removed envs into the trash at once and wrote "trash" then; purge writes it too)
        purge_after=None if "trash" in removed else removed.get("purge_after"),
    )


# ----------------------------------------------------------------------------------------------------- diff/export


def diff_envs(site: Site, old: str, new: str) -> EnvDiff:
    return diff_records(get_record(site, old, None), get_record(site, new, None))


def export_env(site: Site, name: str, fmt: str, platform: str | None) -> str:
    return export_record(get_record(site, name, platform), fmt)


# ----------------------------------------------------------------------------------------------------- seal/unseal


def _update(site: Site, rec: EnvRecord, action: str, **audit_fields: Any) -> None:
    when = timestamp()
    rec.history.append({"action": action, "at": when, "by": current_user(), **audit_fields})
    save_record(site.record_path(rec.name, rec.platform), rec)
    audited(site, action, env=rec.name, platform=rec.platform, **audit_fields)


def _live(site: Site, name: str, platform: str | None) -> EnvRecord:
    """NAME's record for a command that changes it (seal, unseal, retire, remove): an admin group unknown on this
    host fails here, before anything changes (what those commands write is made group-writable for it)."""
    site.admin_gid()
    rec = get_record(site, name, platform)
    if rec.status == "removed":
        raise CpkgsError(f"environment {name} ({rec.platform}) was removed")
    return rec


def seal_env(site: Site, name: str, platform: str | None) -> EnvRecord:
    from cpkgs_admin.integrity.tree import seal_tree

    rec = _live(site, name, platform)
    with env_locked(site, rec.name, rec.platform):
        rec = _live(site, name, rec.platform)
        seal_tree(Path(rec.prefix), site.admin_gid())
        rec.unsealed = None
        rec.status = "retired" if rec.retired else "active"
        from cpkgs_admin.outputs.activation import keep_activation
        from cpkgs_admin.outputs.sync import publish_outside

        # The maintenance may have changed the activate.d scripts: other platforms' hosts use the record's copy.
        # Scripts it broke leave the activation kept so far; `refresh` says why.
        keep_activation(site, rec)
        _update(site, rec, "seal")

        with contextlib.suppress(CpkgsError):
            publish_outside(site, rec)  # its modulefile and kernels with what the scripts set now
    return rec


def unseal_env(site: Site, name: str, reason: str, platform: str | None) -> EnvRecord:
    from cpkgs_admin.integrity.tree import unseal_tree

    if not reason.strip():
        raise UsageError("--reason must say why the environment is unsealed")
    check_printable(reason, "--reason")  # `cpkgs info` shows it
    rec = _live(site, name, platform)
    with env_locked(site, rec.name, rec.platform):
        rec = _live(site, name, rec.platform)
        unseal_tree(Path(rec.prefix))
        rec.unsealed = {"at": timestamp(), "by": current_user(), "reason": reason}
        rec.status = "unsealed"
        _update(site, rec, "unseal", reason=reason)
    return rec


# ----------------------------------------------------------------------------------------------------- retire/remove


def retire_env(site: Site, name: str, successor: str | None, message: str | None, platform: str | None,
               warnings: list[str] | None = None) -> EnvRecord:
    """WARNINGS gets what went wrong after the record changed and did not stop the command (the catalog page)."""
    from cpkgs_admin.outputs.sync import publish_outside

    rec = _live(site, name, platform)
    if successor:
        succ = get_record(site, successor, rec.platform)
        if succ.status == "removed":
            raise UsageError(f"successor {successor} was removed")
        if succ.retired:
            raise UsageError(f"successor {successor} is retired itself; name an environment users should move to")
        if succ.name == rec.name:
            raise UsageError("an environment cannot be its own successor")
    if message is not None:
        # Shown to users on activation (conda.sh, conda.csh read it with a builtin) and by `module load`.
        check_printable(message, "--message")
        if len(message) > 500:
            raise UsageError("--message must be one line of at most 500 characters")
    with env_locked(site, rec.name, rec.platform):
        rec = _live(site, name, rec.platform)
        rec.retired = {"successor": successor, "message": message, "at": timestamp(),
                       "by": current_user()}
        if rec.status != "unsealed":
            rec.status = "retired"
        # The marker the shell reads with a builtin, no fork: one line, shown on activation.
        atomic_write(site.retired_marker(rec.name, rec.platform), retired_line(rec) + "\n")
        _update(site, rec, "retire", successor=successor, message=message)
        publish_outside(site, rec, warnings)
    return rec


def remove_env(site: Site, name: str, platform: str | None, warnings: list[str] | None = None) -> EnvRecord:
    """Withdraw NAME: its marker refuses new activations (naming the successor), its modulefiles and kernels go,
    listings hide it; its tree stays at its path until the first `purge` after the grace (`trash_grace`). A job
    started from it imports modules for days after it started: only purge moves the tree away. WARNINGS as in
    retire_env."""
    from cpkgs_admin.outputs.sync import withdraw_outside

    rec = _live(site, name, platform)
    grace = parse_duration(site.config.trash_grace, "trash_grace")
    with env_locked(site, rec.name, rec.platform):
        rec = _live(site, name, rec.platform)
        _check_mover(site.env_prefix(rec.name, rec.platform))
        now = time.time()
        rec.status = "removed"
        rec.removed = {"at": timestamp(now), "by": current_user(), "purge_after": timestamp(now + grace)}
        marker = site.retired_marker(rec.name, rec.platform)
        try:
            before: str | None = marker.read_text(encoding="utf-8")
        except FileNotFoundError:
            before = None
        # The marker first: from here on the shells refuse it, whatever happens to the rest.
        atomic_write(marker, removed_line(rec) + "\n")
        try:
            _update(site, rec, "remove", purge_after=rec.removed["purge_after"])
        except BaseException:
            with contextlib.suppress(OSError):
                if before is None:
                    marker.unlink()
                else:
                    atomic_write(marker, before)
            raise
        withdraw_outside(site, rec, warnings)
    return rec


def _check_mover(prefix: Path) -> None:
    """Only an admin who can later move PREFIX into the trash may remove it: its owner (who built it) or root.
    Moving a directory to another parent rewrites its '..', which needs write permission on the sealed directory
    itself, and only the owner may open it up (POSIX)."""
    try:
        st = prefix.lstat()
    except FileNotFoundError:
        return
    if os.geteuid() != 0 and st.st_uid != os.geteuid():
        raise PermissionProblem(
            f"cannot remove {prefix}: it belongs to {_owner_words(st.st_uid)}; a sealed env can be removed only by "
            "the admin who built it, or root"
        )


def successor_warnings(site: Site, rec: EnvRecord) -> list[str]:
    """Retired envs that send their users to REC, which is now removed or retired itself."""
    from cpkgs_admin.site.records import load_all

    what = "a removed environment" if rec.status == "removed" else "an environment retired too"
    return [
        f"{r.name} is retired with {rec.name} as its successor, so its users are sent to {what}: "
        f"run 'cpkgs retire {r.name} --successor NEWER'"
        for r in load_all(site.records_dir, damaged=[])  # a damaged record: list and verify report it
        if r.platform == rec.platform and r.status != "removed" and (r.retired or {}).get("successor") == rec.name
    ]


def _only_owner_deletes(uid: int) -> str:
    return f"it belongs to {_owner_words(uid)}: only that admin or root can delete it"


def _owner_words(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _move_to_trash(prefix: Path, trash: Path) -> None:
    """Rename a sealed env into the trash (NFS: rename first, delete later). Moving a directory to another parent
    rewrites its '..', which needs write permission on the directory itself: the sealed top (0555) gets u+w for the
    rename and loses it again after. Only its owner (the admin who built it) may do that, or root: anyone else gets
    a CpkgsError saying who can."""
    st = prefix.lstat()
    me = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    opened = False
    if me != 0 and st.st_uid != me:
        raise PermissionProblem(_only_owner_deletes(st.st_uid))
    try:
        if not mode & stat.S_IWUSR and me != 0:
            os.chmod(prefix, mode | stat.S_IWUSR)
            opened = True
        os.rename(prefix, trash)
    except PermissionError:
        raise PermissionProblem(f"cannot move it to {trash}: permission denied") from None
    except OSError as exc:
        raise CpkgsError(f"cannot move it to {trash}: {exc.strerror}") from None
    finally:
        if opened:
            with contextlib.suppress(OSError):
                os.chmod(trash if trash.exists() else prefix, mode)


# ----------------------------------------------------------------------------------------------------- purge

_TRASH_NAME = re.compile(r".+@[a-z0-9-]+@(?P<stamp>[0-9]+)\Z")


@dataclass
class PurgeReport:
    moved: list[str] = field(default_factory=list)  # removed envs' paths moved into the trash (then deleted)
    # removed envs kept at their path: {"name", "platform", "prefix", "purge_after"}
    waiting: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept_busy: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: not deleted, not busy

    def to_json(self) -> dict[str, Any]:
        return {
            "moved": self.moved,
            "waiting": self.waiting,
            "deleted": self.deleted,
            "kept_busy": self.kept_busy,
            "kept_young": self.kept_young,
            "staging_removed": self.staging_removed,
            "failed": self.failed,
        }


# unlink/rmdir errors that mean "in use", not "not allowed": kept and retried by a later purge
_BUSY_ERRNOS = frozenset({errno.EBUSY, errno.ETXTBSY})


def _delete_tree_except_nfs(top: Path) -> tuple[list[str], str | None]:
    """Delete TOP bottom-up, leaving `.nfsXXXX` files (an NFS client's silly-renames of files still open on some
    host: the client removes them at last close; deleting them ourselves would break that process).

    Returns (busy paths left behind, why the rest could not be deleted or None); TOP itself stays when anything
    remains. A permission problem is not "busy": purge reports it and fails instead of keeping it quietly."""
    from cpkgs_admin.integrity.tree import make_removable

    try:
        st = top.lstat()
        make_removable(top)
    except FileNotFoundError:
        return [], None
    except PermissionError:
        me = os.geteuid()
        if me != 0 and st.st_uid != me:
            return [], _only_owner_deletes(st.st_uid)
        return [], "permission denied"
    except OSError as exc:
        return [], exc.strerror or str(exc)
    busy: list[str] = []
    failed: str | None = None
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            if n.startswith(".nfs"):
                busy.append(p)
                continue
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno in _BUSY_ERRNOS:
                    busy.append(p)
                elif failed is None:
                    failed = f"cannot delete {p}: {exc.strerror}"
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if os.path.islink(p):
                continue
            with contextlib.suppress(OSError):
                os.rmdir(p)
    if failed is not None:
        return busy, failed
    if not busy:
        try:
            os.rmdir(top)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(top, ignore_errors=True)
    if os.path.lexists(top) and not busy:
        # On the host that holds a file open, unlink "succeeds" (the client silly-renames it to .nfsXXXX) and only
        # the rmdir fails: whatever is still there is busy, whatever the unlinks said.
        busy = [os.path.join(d, n) for d, _dirs, files in os.walk(top) for n in files] or [str(top)]
    return busy, None


def _purge_stale_staging(site: Site, rep: PurgeReport) -> None:
    """Staging dirs of builds that died, of any name: removed when their name's lock is free (no build running)."""
    from cpkgs_admin.pipeline.leftovers import clean_stale_staging

    for subdir in site.config.platforms:
        removed, failed = clean_stale_staging(site, subdir)
        rep.staging_removed += removed
        for path in failed:
            try:
                why = _only_owner_deletes(os.lstat(path).st_uid)
            except OSError as exc:
                why = exc.strerror or str(exc)
            rep.failed.append({"path": path, "reason": why})


def purge_trash(site: Site, older_than: str | None) -> PurgeReport:
    """Removed envs whose grace has passed are moved from their path into the trash, and the trash is emptied. A
    removed env's grace ends at its record's `purge_after` (the remove's time plus `trash_grace` then), or, with
    OLDER_THAN, that long after its removal; a trash entry's that long (default `trash_grace`) after its stamp."""
    grace = parse_duration(older_than if older_than is not None else site.config.trash_grace, "--older-than")
    rep = PurgeReport()
    _purge_stale_staging(site, rep)
    # Purges serialize on their own lock: deleting big trees can take minutes on NFS, and holding the site lock
    # that long would stall every publish and audit line.
    purge_lock = SiteLock(site.locks_dir / "purge.lock", what="purge", lease_seconds=site.config.lease_seconds,
                          timeout=site.config.lock_timeout)
    with purge_lock:
        now = time.time()
        moved = _move_removed_envs(site, grace if older_than is not None else None, now, rep)
        _empty_trash(site, grace, now, moved, rep)
    if rep.deleted or rep.kept_busy or rep.staging_removed or rep.failed or rep.moved:
        audited(site, "purge", moved=rep.moved, deleted=rep.deleted, kept_busy=rep.kept_busy,
                staging_removed=rep.staging_removed, failed=[f["path"] for f in rep.failed])
    return rep


def purge_due(rec: EnvRecord, grace: float | None = None) -> float | None:
    """When REC, removed and still at its path, may be moved into the trash: its record's purge_after, or with
    GRACE that long after its removal; None when the record says neither (then it is not moved)."""
    removed = rec.removed or {}
    if grace is not None:
        at = epoch_of(removed.get("at"))
        return None if at is None else at + grace
    return epoch_of(removed.get("purge_after"))


def _move_removed_envs(site: Site, grace: float | None, now: float, rep: PurgeReport) -> set[str]:
    """Move every removed env past its grace from its path into the trash. Returns the trash entries purge has
    moved there, now or by an earlier run (what .nfs files kept): their grace was spent at their path."""
    from cpkgs_admin.site.records import load_all

    moved: set[str] = set()
    for rec in load_all(site.records_dir, damaged=[]):  # a damaged record: list and verify report it
        if rec.status != "removed":
            continue
        prefix = site.env_prefix(rec.name, rec.platform)
        if not os.path.lexists(prefix):
            if (rec.removed or {}).get("moved"):
                moved.add(str((rec.removed or {}).get("trash")))
            continue  # purged before (or removed by an older cpkgs, which moved it at once: its grace runs there)
        due = purge_due(rec, grace)
        if due is None or now < due:
            rep.waiting.append({"name": rec.name, "platform": rec.platform, "prefix": str(prefix),
                                "purge_after": (rec.removed or {}).get("purge_after")})
            continue
        stamp = int(epoch_of((rec.removed or {}).get("at")) or now)
        trash = site.trash_dir / f"{rec.name}@{rec.platform}@{stamp}"
        try:
            _move_removed_env(site, rec, prefix, trash)
        except CpkgsError as exc:
            rep.failed.append({"path": str(prefix), "reason": str(exc)})
            continue
        rep.moved.append(str(prefix))
        moved.add(str(trash))
    return moved


def _move_removed_env(site: Site, rec: EnvRecord, prefix: Path, trash: Path) -> None:
    """Rename REC's tree at PREFIX to TRASH (jobs still running from it lose it now), drop its marker (the shells
    find no env of that name any more) and say so in its record."""
    from cpkgs_admin.site.records import load_record_file

    with env_locked(site, rec.name, rec.platform):
        rec = load_record_file(site.record_path(rec.name, rec.platform))
        try:
            make_dir_exact(site.trash_dir, site.private_modes()[0], site.admin_gid())
        except OSError as exc:
            raise CpkgsError(f"cannot create {site.trash_dir}: {exc.strerror}") from None
        _move_to_trash(prefix, trash)
        with contextlib.suppress(OSError):  # (a marker left behind refuses a name that no longer exists anyway)
            site.retired_marker(rec.name, rec.platform).unlink()
        when = timestamp(time.time())
        rec.removed = {**(rec.removed or {}), "trash": str(trash), "moved": when}
        rec.history.append({"action": "purge", "at": when, "by": current_user(), "trash": str(trash)})
        try:
            save_record(site.record_path(rec.name, rec.platform), rec)
        except OSError as exc:  # moved all the same: it is in the trash, deleted after the grace from its removal
            raise CpkgsError(f"moved to {trash}, but its record cannot be written: {exc.strerror}") from None


def _empty_trash(site: Site, grace: float, now: float, due: set[str], rep: PurgeReport) -> None:
    """Delete trash entries older than GRACE, and those in DUE (moved there by purge, their grace spent at their
    path); `.nfsXXXX` files of files still open somewhere are left (kept_busy)."""
    try:
        entries = sorted(os.scandir(site.trash_dir), key=lambda e: e.name)
    except FileNotFoundError:
        entries = []
    for e in entries:
        if e.name.startswith(".nfs"):
            continue
        m = _TRASH_NAME.match(e.name)
        stamp = int(m.group("stamp")) if m else int(e.stat(follow_symlinks=False).st_mtime)
        if e.path not in due and now - stamp < grace:
            rep.kept_young.append(e.path)
            continue
        why: str | None = None
        busy: list[str] = []
        if e.is_dir(follow_symlinks=False):
            busy, why = _delete_tree_except_nfs(Path(e.path))
        else:
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                why = exc.strerror or str(exc)
        if why is not None:
            rep.failed.append({"path": e.path, "reason": why})
        elif busy:
            rep.kept_busy.append(e.path)
        else:
            rep.deleted.append(e.path)
