"""Step 3 of new-env (stage): install the chosen packages with py-rattler into the job's private staging dir beside
the final prefix, with that final prefix patched in (alternative_target_prefix), under the package cache's lock:
only package-cache entries nobody else could write are linked, hard links only into an admin-only cache."""

from __future__ import annotations

import asyncio
import contextlib
import os

from rattler import MatchSpec, Platform, install

from cpkgs_admin.errors import BuildError
from cpkgs_admin.integrity.memo import HashMemo
from cpkgs_admin.pipeline.cache import RATTLER_CACHE_LOCK, check_entries, close_entry_locks
from cpkgs_admin.pipeline.job import Job
from cpkgs_admin.pipeline.plan import InstallPlan, cache_is_admin_only, mib, mount_point, plan_install
from cpkgs_admin.site.locks import cache_locked, wait_for_flock
from cpkgs_admin.site.paths import native_subdir
from cpkgs_admin.site.records import PackageEntry


def dist_of(p: PackageEntry) -> str:
    """The package's directory name in the cache (and its conda-meta record's): the archive name's stem."""
    return p.filename.removesuffix(".conda").removesuffix(".tar.bz2") or f"{p.name}-{p.version}-{p.build}"


def make_staging(job: Job) -> None:
    """JOB's staging dir, private (0700) until it is sealed and renamed into place."""
    try:
        os.mkdir(job.staging, 0o700)
    except PermissionError:
        raise BuildError(f"cannot create {job.staging}: permission denied (are you a site admin?)") from None


def stage(job: Job) -> None:
    """Install JOB's packages into its staging dir. Sets job.hard_links and job.memo: files hard-linked from the
    admin-only cache whose inode an earlier build hashed, unchanged since, are not read again by the check (the hash
    memo); everything else is. `cpkgs verify` always reads every byte."""
    site = job.site
    with cache_locked(site):
        dropped, fresh = check_entries(site, [dist_of(p) for p in job.record.packages])
        job.warnings += dropped
        job.hard_links = cache_is_admin_only(site.pkgs_cache_dir, site.admin_gid())
        job.memo = HashMemo(site.hash_memo_dir, site.pkgs_cache_dir) if job.hard_links else None
        wait_for_flock(site.pkgs_cache_dir / RATTLER_CACHE_LOCK, "the site package cache", site.config.lock_timeout)
        plan = plan_install(job)
        job.installing = True
        install_planned(job, plan)
        job.installing = False
        close_entry_locks(site, fresh)
        if job.memo is not None:  # nobody else may put their own file there for a later build to link
            for pkg in job.record.packages:
                job.memo.harden(dist_of(pkg))
    os.chmod(job.staging, 0o700)  # install may have reset it; keep it hidden until sealed
    # py-rattler 0.28 drops a cache marker into the prefix it installs into; it belongs to no package.
    with contextlib.suppress(FileNotFoundError):
        (job.staging / "CACHEDIR.TAG").unlink()


def install_planned(job: Job, plan: InstallPlan) -> None:
    cache_dir = job.site.pkgs_cache_dir

    async def run() -> None:
        await install(
            job.records,
            target_prefix=job.staging,
            cache_dir=cache_dir,
            installed_packages=[],
            platform=Platform(job.subdir),
            execute_link_scripts=job.subdir == native_subdir(),
            show_progress=job.progress,
            # py-rattler 0.28 hands this list to Rust unwrapped; pass the inner objects it expects.
            requested_specs=[MatchSpec(s)._match_spec for s in job.requested] if job.requested else None,
            alternative_target_prefix=job.final,
            config=plan.config,
            client=plan.client,
        )

    try:
        asyncio.run(run())
    except Exception as exc:
        text = str(exc)
        if "(os error 28)" in text:  # ENOSPC: the estimate passed and the disk filled all the same
            where = cache_dir if "package cache" in text else job.final.parent
            raise BuildError(
                f"no space left on {mount_point(where)} (needed about {mib(plan.need)} MiB by the packages' file "
                f"lists, {plan.free // 2**20} MiB were free: a package unpacks to more than its list says, or "
                "something else filled the disk)"
            ) from None
        raise BuildError(f"install into {job.staging.name} failed: {_rattler_error(exc)}") from None


def _rattler_error(exc: Exception) -> str:
    """rattler's error chain in one line: its first line, and the last cause when that names an OS error (the
    errno is what tells a full disk or a failing server from a bad package)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1].removeprefix("Caused by:").strip()
    return f"{lines[0]}: {last}" if len(lines) > 1 and "(os error" in last else lines[0]
