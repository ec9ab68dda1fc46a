"""Steps 3 to 7 of new-env, once the packages are chosen: under the env's lock, stage (install), post-process and
check the env in a private staging dir, then seal and publish it. A kill at any moment leaves at most a hidden
staging dir that the next run for that name removes; the lock is a lease that a dead owner does not hold."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from cpkgs_admin import __version__
from cpkgs_admin.errors import BuildError
from cpkgs_admin.outputs.catalog import render as catalog_render
from cpkgs_admin.outputs.sync import preflight
from cpkgs_admin.pipeline.cache import drop_entry
from cpkgs_admin.pipeline.check import DamagedCache, check
from cpkgs_admin.pipeline.job import BuildRequest, BuildResult, Job, Log, Solved
from cpkgs_admin.pipeline.leftovers import clean_stale_staging, discarded_on_failure, existing_env_problem
from cpkgs_admin.pipeline.post import post
from cpkgs_admin.pipeline.publish import publish, restore, seal
from cpkgs_admin.pipeline.stage import make_staging, stage
from cpkgs_admin.site.locks import cache_locked, env_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.process import current_user
from cpkgs_admin.site.records import EnvRecord, timestamp


def warm_up() -> None:
    """What steps 3 to 7 will need that costs time to get ready: the catalog's templates compiled (importing this
    module brought the rest)."""
    catalog_render.warm()


def assemble(site: Site, req: BuildRequest, solved: Solved, *, progress: bool, log: Log) -> BuildResult:
    name, subdir = req.name.name, solved.subdir
    existing_env_problem(site, name, subdir)  # fail fast, before waiting for a lock
    preflight(site, req.name, subdir, solved.packages)
    with env_locked(site, name, subdir):
        restored = existing_env_problem(site, name, subdir)
        if restored is not None:
            warnings = restore(site, name, subdir, restored)
            return BuildResult(name=name, platform=subdir, prefix=str(site.env_prefix(name, subdir)),
                               packages=restored.packages, file_count=restored.file_count, size=restored.size,
                               seconds=time.monotonic() - solved.started, restored=True, warnings=warnings)
        clean_stale_staging(site, subdir, name, log)
        job = Job(site, _record(site, req, solved), solved.records, solved.requested, progress, solved.timings,
                  solved.cache_warnings, pip=solved.pip)
        _staged(job)
        with discarded_on_failure(job.staging, name, fenced=lambda: False):
            with job.timed("seal"):
                seal(job)
            with job.timed("publish"):
                warnings = [*job.warnings, *solved.warnings, *publish(job, req.name)]
    return BuildResult(name=name, platform=subdir, prefix=job.record.prefix, packages=solved.packages,
                       pypi_packages=job.record.pypi_packages,
                       file_count=job.record.file_count, size=job.record.size,
                       seconds=time.monotonic() - solved.started, timings=job.timings, warnings=warnings)


def _record(site: Site, req: BuildRequest, solved: Solved) -> EnvRecord:
    """The record the build fills in (its size, file count and digest come with the post-process)."""
    spec = solved.spec
    return EnvRecord(
        name=req.name.name, family=req.name.family, version=req.name.version, platform=solved.subdir,
        prefix=str(site.env_prefix(req.name.name, solved.subdir)), requested_specs=solved.requested,
        channels=list(solved.channels), channel_urls=solved.channels, packages=solved.packages,
        creator=current_user(), host=socket.gethostname(), created=timestamp(), cpkgs_version=__version__, size=0,
        file_count=0, spec_source=spec.source, spec_sha256=spec.sha256, extends=list(spec.extends),
        variables=dict(spec.variables), virtual_packages=solved.overrides,
    )


def _staged(job: Job) -> None:
    """Stage, post-process and check JOB; when the check finds package files wrong in a way their cache entries
    explain (bit rot, an edit through another env's hard link), those entries are dropped and the env staged once
    more from freshly fetched and extracted packages, with a warning naming them. A second failure is the build's
    error."""
    try:
        stage_and_check(job)
        return
    except DamagedCache as damaged:
        with cache_locked(job.site):
            for dist in damaged.dists:
                drop_entry(job.site.pkgs_cache_dir, dist)
        job.warnings.append(f"package cache entr{'y' if len(damaged.dists) == 1 else 'ies'} "
                            f"{', '.join(damaged.dists)} damaged ({damaged.first}): dropped, fetched and extracted "
                            "again")
    job.new_staging()
    try:
        stage_and_check(job)
    except DamagedCache as again:
        raise BuildError(f"{again.message}, also after extracting {', '.join(again.dists)} again") from None


def stage_and_check(job: Job, own_step: tuple[str, Callable[[Job], None]] | None = None) -> None:
    """Steps 3 to 5 in a new private staging dir; any failure removes it (DamagedCache too). OWN_STEP: (its timing
    name, the step) writing a build's own files after the pip step, before the post-process (the cpkgs tool's)."""
    make_staging(job)
    with discarded_on_failure(job.staging, job.record.name, fenced=lambda: job.installing):
        with job.timed("install"):
            stage(job)
        if job.pip is not None:
            # The pip machinery: 45-55 ms of imports (python -X importtime) that an env without a pip part never needs.
            from cpkgs_admin.pipeline.pip import pip_step  # noqa: PLC0415

            with job.timed("pip"):
                pip_step(job)
        if own_step is not None:
            with job.timed(own_step[0]):
                own_step[1](job)
        with job.timed("post"):
            post(job)
        with job.timed("verify"):
            check(job)
