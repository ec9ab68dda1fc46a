"""`cpkgs verify`: every published env's files against conda-meta and cpkgs' manifests, their owners, the seal's
permissions and where their symlinks lead (integrity's engines, reading every byte)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.integrity.checks import Problem, check_integrity, check_permissions
from cpkgs_admin.integrity.content import escaping_symlinks
from cpkgs_admin.integrity.manifest import meta_digest, package_executables, read_conda_meta
from cpkgs_admin.integrity.owners import Owners
from cpkgs_admin.lifecycle.guards import stray_entries
from cpkgs_admin.outputs.condafiles import FROZEN, frozen_problem
from cpkgs_admin.site.records import DAMAGED_RECORD_HINT, get_record, load_all, load_record_file
from cpkgs_admin.site.tools import build_of, tool_platforms, tool_records


@dataclass
class VerifyReport:
    name: str
    platform: str
    prefix: str
    files: int = 0
    bytes: int = 0
    unsealed: bool = False
    problems: list[Problem] = field(default_factory=list)
    status: str = "active"  # the record's
    # Why the env was not checked (removed, and moved away by `purge` before or during the walk), or None.
    skipped: str | None = None
    kind: str = "env"  # or "tool": a build of the installation's cpkgs tool (cpkgs install-tool)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = not self.problems
        return d


def verify_prefix(
    prefix: Path, *, expect_sealed: bool, name: str = "", platform: str = "", meta_sha256: str | None = None,
    cache: Path | None = None,
    admin_gid: int | None = None,
) -> VerifyReport:
    rep = VerifyReport(name=name or prefix.name, platform=platform, prefix=str(prefix))
    if not prefix.is_dir():
        rep.problems.append(Problem("missing", str(prefix), "environment directory does not exist"))
        return rep
    meta = read_conda_meta(prefix)  # once, for the digest and the expected files
    if meta_sha256 is not None:
        try:
            if meta_digest(prefix, meta) != meta_sha256:
                rep.problems.append(Problem("modified", "conda-meta", "package metadata changed since publish"))
        except OSError as exc:
            rep.problems.append(Problem("unreadable", "conda-meta", exc.strerror or str(exc)))
    owners = Owners(prefix.lstat().st_uid, cache, admin_gid)
    problems, files, nbytes, tree = check_integrity(prefix, meta=meta, owners=owners)
    rep.files, rep.bytes = files, nbytes
    rep.problems += problems + check_permissions(prefix, expect_sealed, package_executables(prefix), tree)
    # A package's symlink has no content hash: where it points is checked here (published at PREFIX, which may
    # also be reached through a symlinked site root).
    roots = tuple(dict.fromkeys([str(prefix), os.path.realpath(prefix)]))
    rep.problems += [Problem("symlink", rel, f"points outside the environment ({target})")
                     for rel, target in escaping_symlinks(prefix, tree, roots)]
    frozen = frozen_problem(prefix) if expect_sealed else None
    if frozen is not None:  # CEP 22's marker: what stops root's own conda (outputs.condafiles)
        rep.problems.append(Problem("frozen", FROZEN, frozen))
    rep.unsealed = not expect_sealed
    return rep


def verify_site(site: Any) -> VerifyReport | None:
    """What a conda left at the site (lifecycle.guards): a report named `site`, or None when there is nothing."""
    strays = stray_entries(site)
    if not strays:
        return None
    rep = VerifyReport(name="site", platform="", prefix=str(site.root), status="")
    rep.problems = [Problem("stray", s.path, s.why) for s in strays]
    return rep


def verify_envs(site: Any, names: Iterable[str]) -> list[VerifyReport]:
    """Every env named, or every recorded env still at its path (removed ones too: running jobs use them until
    `purge` moves them away). A removed env that is gone, or goes during its walk, is skipped with a note."""
    names = list(names)
    reports = []
    if names:
        records = [get_record(site, n, None) for n in names]
    else:
        damaged: list[tuple[Path, str]] = []
        records = load_all(site.records_dir, damaged=damaged)
        records = [r for r in records if r.status != "removed" or os.path.lexists(r.prefix)]
        # Its env cannot be checked without the record (the expected hashes' digest is in it): a problem to report,
        # not a reason to leave the other envs unchecked.
        for path, msg in damaged:
            try:
                where = str(site.env_prefix(path.stem, path.parent.name))
            except CpkgsError:
                where = ""
            rep = VerifyReport(name=path.stem, platform=path.parent.name, prefix=where)
            rep.problems.append(Problem("record", str(path), f"{msg.removeprefix(f'{path}: ')}; {DAMAGED_RECORD_HINT}"))
            reports.append(rep)
    reports += [_verify_record(site, rec) for rec in records]
    _name_sharing_envs(site, reports)
    if not names:
        whole = verify_site(site)
        reports += [whole] if whole is not None else []
        reports += _verify_tools(site)
    return reports


def _verify_tools(site: Any) -> list[VerifyReport]:
    """Every build of the cpkgs tool still present, as an env (its record has an env record's fields)."""
    out = []
    for platform in tool_platforms(site):
        for rec in tool_records(site, platform):
            if not os.path.lexists(rec.prefix):
                continue
            rep = _verify_record(site, rec)
            rep.name, rep.kind = f"cpkgs tool {build_of(rec)} ({rec.platform})", "tool"
            out.append(rep)
    return out


def _verify_record(site: Any, rec: Any) -> VerifyReport:
    prefix = Path(rec.prefix)
    failure: CpkgsError | OSError | None = None
    try:
        rep = verify_prefix(
            prefix,
            expect_sealed=rec.status != "unsealed" and not rec.unsealed,  # (removed during an unseal: as it was)
            name=rec.name,
            platform=rec.platform,
            meta_sha256=rec.meta_sha256,
            cache=site.pkgs_cache_dir,
            admin_gid=site.admin_gid(),
        )
    except (CpkgsError, OSError) as exc:  # e.g. conda-meta gone in the middle
        rep, failure = VerifyReport(name=rec.name, platform=rec.platform, prefix=str(prefix)), exc
    rep.status = rec.status
    if failure is not None or not os.path.lexists(prefix):
        # The tree went during the walk: `purge` moved a removed env away (rename first, then delete: its files
        # vanish under the walk). Only its record can tell that from damage; it is read again now.
        gone = _removed_meanwhile(site, rec)
        if gone is not None:
            return VerifyReport(name=rec.name, platform=rec.platform, prefix=str(prefix), status="removed",
                                skipped=gone)
    if failure is not None:
        why = failure.strerror if isinstance(failure, OSError) and failure.strerror else str(failure)
        rep.problems.append(Problem("unreadable", str(prefix), why))
    return rep


def _removed_meanwhile(site: Any, rec: Any) -> str | None:
    """The note for REC's env when its record now says removed and its tree is no longer at its path."""
    if os.path.lexists(rec.prefix):
        return None
    try:
        now = load_record_file(site.record_path(rec.name, rec.platform))
    except CpkgsError:  # its record deleted or damaged by hand: not a removal, a problem to report
        return None
    if now.status != "removed":
        return None
    return "removed, and moved away by 'cpkgs purge' (before or during this check): nothing to verify"


def _name_sharing_envs(site: Any, reports: list[VerifyReport]) -> None:
    """A modified file that is a hard link (into the package cache, shared with other envs built from it) is damaged
    in every env linking the inode: its problem names them ("also in: A, B"). Found by inode at the same path in
    the other recorded envs of the platform: one lstat per env and damaged linked file."""
    others: list[Any] | None = None
    for rep in reports:
        for i, problem in enumerate(rep.problems):
            if problem.kind != "modified" or not rep.prefix:
                continue
            try:
                st = os.lstat(os.path.join(rep.prefix, problem.path))
            except OSError:
                continue
            if st.st_nlink < 2 or not stat.S_ISREG(st.st_mode):
                continue
            if others is None:
                others = load_all(site.records_dir)  # removed envs too: still at their path until purged
            sharing = [r.name for r in others
                       if r.platform == rep.platform and r.prefix != rep.prefix and _same_inode(r.prefix, problem, st)]
            if sharing:
                detail = f"{problem.detail}; also in: {', '.join(sharing)}"
                rep.problems[i] = Problem(problem.kind, problem.path, detail)


def _same_inode(prefix: str, problem: Problem, st: os.stat_result) -> bool:
    try:
        other = os.lstat(os.path.join(prefix, problem.path))
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


