"""Step 5 of new-env (verify): every file of the staged env against conda-meta and cpkgs' manifests, and its owners,
before it is sealed. Cache inodes the hash memo vouches for are not read again; failures a damaged package-cache
entry explains raise DamagedCache, for one more try from freshly extracted packages."""

from __future__ import annotations

from cpkgs_admin.errors import BuildError
from cpkgs_admin.integrity.checks import Problem, check_integrity
from cpkgs_admin.integrity.manifest import expected_files
from cpkgs_admin.integrity.owners import Owners
from cpkgs_admin.pipeline.job import Job

# Problems a damaged cache entry explains: a package file with other bytes, gone, of another type, or owned by
# someone else (the cache inode itself, hard-linked, or the copy made of it).
_CACHE_KINDS = frozenset({"modified", "missing", "replaced", "owner"})


class DamagedCache(Exception):
    """Verify found files of packages whose cache entries are wrong (the build failed on the cache, not the spec)."""

    def __init__(self, message: str, dists: list[str], first: str) -> None:
        super().__init__(message)
        self.message = message
        self.dists = dists
        self.first = first


def check(job: Job) -> None:
    site = job.site
    # The staging dir's owner as the server reports it (NFS may map this admin to another uid).
    owners = Owners(job.staging.lstat().st_uid, site.pkgs_cache_dir if job.hard_links else None, site.admin_gid())
    problems, _n, _b, _tree = check_integrity(job.staging, memo=job.memo, tree=job.tree, meta=job.meta, owners=owners)
    if problems:
        _raise_verify_failed(job, problems)
    if job.memo is not None:
        job.memo.save()


def _raise_verify_failed(job: Job, problems: list[Problem]) -> None:
    p = problems[0]
    message = (f"verify failed before publishing {job.record.name}: {p.kind} {p.path} ({p.detail})"
               + (f" and {len(problems) - 1} more" if len(problems) > 1 else ""))
    dist_of = {rel: e.dist for rel, e in expected_files(job.staging, job.meta).items()}
    dists = sorted({dist_of.get(q.path, "") for q in problems})
    cache = job.site.pkgs_cache_dir
    if all(q.kind in _CACHE_KINDS for q in problems) and all(d and (cache / d).is_dir() for d in dists):
        raise DamagedCache(message, dists, f"{p.kind} {p.path}: {p.detail}")
    raise BuildError(message)
