"""Publishing a tool build and switching to it.

Publish: the sealed staging dir renamed into place, then its record (a kill in between leaves a build with no
record: not current, removed by the next install-tool). Switch: a new symlink bin/.cpkgs-<id> -> ../<build>/bin/cpkgs
renamed onto bin/cpkgs (atomic on one filesystem and on the NFS server: an exec sees the old or the new link, never
none); a command already running keeps its build, whose script names that build's python, until purged. The build
switched away from is stamped `superseded` with the date after which `cpkgs purge` may delete it."""

from __future__ import annotations

import os
import time
import uuid

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.pipeline.job import Job
from cpkgs_admin.pipeline.leftovers import remove_leftover
from cpkgs_admin.site.audit import audited
from cpkgs_admin.site.config import parse_duration
from cpkgs_admin.site.paths import STAGING_PREFIX, Site
from cpkgs_admin.site.process import current_user
from cpkgs_admin.site.records import EnvRecord, timestamp
from cpkgs_admin.site.tools import build_dirs, build_of, current_build, save_tool_record, tool_records


def clean_leftovers(site: Site, subdir: str) -> list[str]:
    """Under the tool's lock: staging dirs (their builders are dead: the lock is ours) and published builds with no
    record that are not current (a run killed between rename and record). The paths removed."""
    d = site.tool_dir(subdir)
    recorded = {build_of(r) for r in tool_records(site, subdir)}
    gone = []
    try:
        names = os.listdir(d)
    except OSError:
        return []
    cur = current_build(site, subdir)
    for n in sorted(names):
        if n.startswith(STAGING_PREFIX) or (n in build_dirs(site, subdir) and n not in recorded and n != cur):
            remove_leftover(d / n)
            gone.append(n)
    return [str(d / n) for n in gone]


def publish_build(job: Job) -> None:
    os.rename(job.staging, job.final)
    os.chmod(job.final, 0o555)
    save_tool_record(job.site, job.record)


def switch_to(site: Site, subdir: str, record: EnvRecord, previous: EnvRecord | None) -> str | None:
    """bin/cpkgs -> RECORD's build; PREVIOUS stamped superseded. Returns PREVIOUS's purge_after."""
    bin_dir = site.tool_bin(subdir).parent
    bin_dir.mkdir(mode=site.shared_modes()[0], exist_ok=True)
    os.chmod(bin_dir, site.shared_modes()[0])
    tmp = bin_dir / f".cpkgs-{uuid.uuid4().hex[:12]}"
    os.symlink(f"../{build_of(record)}/bin/cpkgs", tmp)
    try:
        os.replace(tmp, site.tool_bin(subdir))
    except BaseException:
        os.unlink(tmp)
        raise
    fd = os.open(bin_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    purge_after = None
    if record.extra.pop("superseded", None) is not None:
        save_tool_record(site, record)
    if previous is not None and build_of(previous) != build_of(record):
        now = time.time()
        purge_after = timestamp(now + parse_duration(site.config.trash_grace, "trash_grace"))
        previous.extra["superseded"] = {"at": timestamp(now), "by": build_of(record), "purge_after": purge_after}
        save_tool_record(site, previous)
    try:
        audited(site, "install-tool", platform=subdir, build=build_of(record), version=record.version,
                previous=build_of(previous) if previous else None, by=current_user())
    except (CpkgsError, OSError):
        pass  # the switch is done; an audit line is not worth failing it
    return purge_after
