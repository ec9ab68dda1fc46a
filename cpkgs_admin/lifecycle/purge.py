"""`cpkgs purge`: removed envs past their grace moved from their path into the trash, the trash emptied (NFS: rename
first, delete later; `.nfsXXXX` files of files still open on some host are kept), staging dirs of dead builds
removed."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError, PermissionProblem
from cpkgs_admin.integrity.tree import make_removable
from cpkgs_admin.lifecycle.status import only_owner_deletes
from cpkgs_admin.pipeline.leftovers import clean_stale_staging
from cpkgs_admin.pipeline.tool.switch import clean_leftovers
from cpkgs_admin.site.audit import audited
from cpkgs_admin.site.config import parse_duration
from cpkgs_admin.site.files import make_dir_exact
from cpkgs_admin.site.locks import SiteLock, env_locked, tool_locked
from cpkgs_admin.site.paths import Site, trash_stamp
from cpkgs_admin.site.process import current_user
from cpkgs_admin.site.records import EnvRecord, epoch_of, load_all, load_record_file, save_record, timestamp
from cpkgs_admin.site.tools import build_of, current_build, tool_platforms, tool_records


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
    try:
        st = top.lstat()
        make_removable(top)
    except FileNotFoundError:
        return [], None
    except PermissionError:
        me = os.geteuid()
        if me != 0 and st.st_uid != me:
            return [], only_owner_deletes(st.st_uid)
        return [], "permission denied"
    except OSError as exc:
        return [], exc.strerror or str(exc)
    busy: list[str] = []
    failed: str | None = None
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        why = _unlink_files(dirpath, filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))],
                            busy)
        failed = failed or why
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if os.path.islink(p):
                continue
            with contextlib.suppress(OSError):
                os.rmdir(p)
    if failed is not None:
        return busy, failed
    return _remove_top(top, busy), None


def _unlink_files(dirpath: str, names: list[str], busy: list[str]) -> str | None:
    """Unlink DIRPATH's NAMES but NFS's silly-renames and files in use (both into BUSY); why the first that could
    not be deleted for another reason was not, or None."""
    failed = None
    for n in names:
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
    return failed


def _remove_top(top: Path, busy: list[str]) -> list[str]:
    """TOP itself, once emptied; what is busy in it."""
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
    return busy


def _purge_stale_staging(site: Site, rep: PurgeReport) -> None:
    """Staging dirs of builds that died, of any name: removed when their name's lock is free (no build running)."""
    for subdir in site.config.platforms:
        removed, failed = clean_stale_staging(site, subdir)
        rep.staging_removed += removed
        for path in failed:
            try:
                why = only_owner_deletes(os.lstat(path).st_uid)
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
        moved |= _move_superseded_tools(site, grace if older_than is not None else None, now, rep)
        _empty_trash(site, grace, now, moved, rep)
    if rep.deleted or rep.kept_busy or rep.staging_removed or rep.failed or rep.moved:
        audited(site, "purge", moved=rep.moved, deleted=rep.deleted, kept_busy=rep.kept_busy,
                staging_removed=rep.staging_removed, failed=[f["path"] for f in rep.failed])
    return rep


def trash_past_grace(entry: os.DirEntry[str], grace: float, now: float) -> bool:
    """Whether a trash entry's grace has passed (from its stamp: see trash_stamp) by NOW."""
    return now - trash_stamp(entry) >= grace


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
        trash = site.trash_entry(rec.name, rec.platform, stamp)
        try:
            _move_removed_env(site, rec, prefix, trash)
        except CpkgsError as exc:
            rep.failed.append({"path": str(prefix), "reason": str(exc)})
            continue
        rep.moved.append(str(prefix))
        moved.add(str(trash))
    return moved


def _move_superseded_tools(site: Site, grace: float | None, now: float, rep: PurgeReport) -> set[str]:
    """Builds of the cpkgs tool that are not current, past their grace (the record's superseded.purge_after, or with
    GRACE that long after the switch away from them; no stamp: the last switch, bin/cpkgs's mtime), moved into the
    trash and their records dropped; the others listed as waiting. The current build is never purged."""
    moved: set[str] = set()
    for platform in [p for p in site.config.platforms if p in tool_platforms(site) or site.tool_dir(p).is_dir()]:
        with tool_locked(site, platform):
            rep.staging_removed += clean_leftovers(site, platform)  # no install-tool runs: the lock is ours
            cur = current_build(site, platform)
            for rec in tool_records(site, platform):
                build = build_of(rec)
                if build == cur:
                    continue
                due = _tool_due(site, rec, grace)
                if due > now:
                    rep.waiting.append({"name": f"tool {build}", "platform": platform, "prefix": rec.prefix,
                                        "purge_after": timestamp(due), "kind": "tool"})
                    continue
                prefix = Path(rec.prefix)
                if os.path.lexists(prefix):
                    trash = site.trash_entry(f"cpkgs-tool-{build}", platform, int(now))
                    make_dir_exact(site.trash_dir, site.private_modes()[0], site.admin_gid())
                    _move_to_trash(prefix, trash)
                    rep.moved.append(rec.prefix)
                    moved.add(str(trash))
                site.tool_record_path(build, platform).unlink(missing_ok=True)
    return moved


def _tool_due(site: Site, rec: EnvRecord, grace: float | None) -> float:
    sup = rec.extra.get("superseded") or {}
    if grace is None and epoch_of(sup.get("purge_after")) is not None:
        return float(epoch_of(sup.get("purge_after")) or 0)
    at = epoch_of(sup.get("at"))
    if at is None:
        try:
            at = os.lstat(site.tool_bin(rec.platform)).st_mtime
        except OSError:
            at = 0.0
    return at + (grace if grace is not None else parse_duration(site.config.trash_grace, "trash_grace"))


def _move_removed_env(site: Site, rec: EnvRecord, prefix: Path, trash: Path) -> None:
    """Rename REC's tree at PREFIX to TRASH (jobs still running from it lose it now), drop its marker (the shells
    find no env of that name any more) and say so in its record."""
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
        if e.path not in due and not trash_past_grace(e, grace, now):
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
        raise PermissionProblem(only_owner_deletes(st.st_uid))
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
