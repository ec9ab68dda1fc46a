"""Changes to a published env's status: seal and unseal (a maintenance window), retire (a successor, a message), remove
(hidden and refused on activation; the tree stays for running jobs until `purge`)."""

from __future__ import annotations

import contextlib
import os
import pwd
import time
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError, PermissionProblem, UsageError
from cpkgs_admin.integrity.tree import seal_tree, unseal_tree
from cpkgs_admin.outputs.activation import keep_activation
from cpkgs_admin.outputs.sync import publish_outside, withdraw_outside
from cpkgs_admin.site.audit import audited
from cpkgs_admin.site.config import parse_duration
from cpkgs_admin.site.files import atomic_write
from cpkgs_admin.site.locks import env_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.process import current_user
from cpkgs_admin.site.records import (
    EnvRecord,
    get_record,
    load_all,
    removed_line,
    retired_line,
    save_record,
    timestamp,
)
from cpkgs_admin.site.text import check_printable

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
    rec = _live(site, name, platform)
    with env_locked(site, rec.name, rec.platform):
        rec = _live(site, name, rec.platform)
        seal_tree(Path(rec.prefix), site.admin_gid())
        rec.unsealed = None
        rec.status = "retired" if rec.retired else "active"

        # The maintenance may have changed the activate.d scripts: other platforms' hosts use the record's copy.
        # Scripts it broke leave the activation kept so far; `refresh` says why.
        keep_activation(site, rec)
        _update(site, rec, "seal")

        with contextlib.suppress(CpkgsError):
            publish_outside(site, rec)  # its modulefile and kernels with what the scripts set now
    return rec


def unseal_env(site: Site, name: str, reason: str, platform: str | None) -> EnvRecord:
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
            f"cannot remove {prefix}: it belongs to {owner_words(st.st_uid)}; a sealed env can be removed only by "
            "the admin who built it, or root"
        )


def successor_warnings(site: Site, rec: EnvRecord) -> list[str]:
    """Retired envs that send their users to REC, which is now removed or retired itself."""
    what = "a removed environment" if rec.status == "removed" else "an environment retired too"
    return [
        f"{r.name} is retired with {rec.name} as its successor, so its users are sent to {what}: "
        f"run 'cpkgs retire {r.name} --successor NEWER'"
        for r in load_all(site.records_dir, damaged=[])  # a damaged record: list and verify report it
        if r.platform == rec.platform and r.status != "removed" and (r.retired or {}).get("successor") == rec.name
    ]


def only_owner_deletes(uid: int) -> str:
    return f"it belongs to {owner_words(uid)}: only that admin or root can delete it"


def owner_words(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


# ----------------------------------------------------------------------------------------------------- purge

