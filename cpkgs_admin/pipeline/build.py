"""`cpkgs new-env`: the pipeline of DESIGN.md, a module per step.

1 spec (spec.py) -> 2 solve (solve.py) -> [dry run: the packages] -> 3 stage (stage.py: a hidden 0700 dir in the
same envs/, final prefix patched in) -> 4 post-process (post.py) -> 5 check (check.py) -> 6 seal, 7 publish
(publish.py: rename, record, generated files, audit). assemble.py runs steps 3 to 7 under the env's lock, passing
one Job (job.py) along.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import BuildError, UsageError
from cpkgs_admin.pipeline.cache import secure_cache
from cpkgs_admin.pipeline.job import BuildRequest, BuildResult, Log, Solved
from cpkgs_admin.pipeline.leftovers import existing_env_problem
from cpkgs_admin.pipeline.solve import choose_packages, env_overrides, package_entries, parse_overrides
from cpkgs_admin.pipeline.spec import check_python, check_removed
from cpkgs_admin.site.locks import cache_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.specs import ExplicitLock, check_sources, read_explicit


def new_env(site: Site, req: BuildRequest, *, progress: bool = False, log: Log = None) -> BuildResult:
    # Site.build_umask: what rattler creates gets its modes from the umask. Envs are sealed with explicit modes anyway.
    old_umask = os.umask(site.build_umask())
    try:
        return _new_env(site, req, progress=progress, log=log)
    finally:
        os.umask(old_umask)


def _new_env(site: Site, req: BuildRequest, *, progress: bool, log: Log) -> BuildResult:
    t0 = time.monotonic()
    lock = None
    if req.pip_lock and not req.lock_file:
        raise UsageError("--pip-lock goes with --lock FILE (the pins of the pip part of the env the lock is of)")
    if req.lock_file:
        check_sources(req.specs, req.spec_file, req.from_env, req.lock_file, req.add, req.remove)
        lock = read_explicit(req.lock_file)
    subdir = _platform(site, req, lock)
    overrides = {**site.config.virtual_packages, **env_overrides(), **parse_overrides(req.overrides)}
    cache_warnings = [] if req.dry_run else _ready_to_build(site, req.name.name, subdir)
    repodata_cache = site.repodata_cache_dir if os.access(site.state_dir, os.W_OK) else None

    chosen = choose_packages(site, req, lock, subdir, overrides, repodata_cache, log)
    timings = {"solve": time.monotonic() - t0}
    packages = package_entries(chosen.records, chosen.channel_name)
    if req.remove:
        check_removed(packages, req.remove)
    check_python(chosen.pip, packages, str(chosen.spec.source))
    if req.dry_run:
        final = site.env_prefix(req.name.name, subdir)
        pins = _dry_run_pins(site, chosen, subdir, overrides, final)
        return BuildResult(name=req.name.name, platform=subdir, prefix=str(final), packages=packages, dry_run=True,
                           seconds=time.monotonic() - t0, timings=timings, warnings=chosen.warnings,
                           pypi_packages=pins)
    # Steps 3 to 7 bring the catalog (jinja2), the hashing pools and the activation runner: 45 ms of imports
    # (python -X importtime) that a dry run never needs.
    from cpkgs_admin.pipeline.assemble import assemble  # noqa: PLC0415

    solved = Solved(subdir, chosen.spec, chosen.records, packages, chosen.requested, chosen.channels, overrides,
                    cache_warnings, chosen.warnings, t0, timings, chosen.pip)
    return assemble(site, req, solved, progress=progress, log=log)


def _platform(site: Site, req: BuildRequest, lock: ExplicitLock | None) -> str:
    """The platform to build for: --platform, else the lock file's, else this host's; one the site serves."""
    if req.platform is not None and not req.platform.strip():
        raise UsageError("--platform needs a platform name (e.g. linux-64, osx-arm64)")
    # An explicit file names its platform: build for it unless --platform says otherwise.
    subdir = req.platform or (lock.platform if lock and lock.platform else None) or site.default_subdir()
    if subdir not in site.config.platforms:
        raise UsageError(
            f"platform {subdir} is not served by this site (platforms: {', '.join(site.config.platforms)}); "
            f"add it with 'cpkgs init --platform {subdir}'"
        )
    return subdir


def _ready_to_build(site: Site, name: str, subdir: str) -> list[str]:
    """Before solving: refused when NAME cannot be built here (no envs dir, not writable, the name taken: no solve
    needed to say so); the package cache secured before the solver reads the repodata cache in it (a cache found
    open to others is closed and cleaned). The cache's warnings."""
    envs_dir = site.envs_dir(subdir)
    if not envs_dir.is_dir():
        raise BuildError(f"{envs_dir} does not exist; run 'cpkgs init --platform {subdir}'")
    if not os.access(envs_dir, os.W_OK) or not os.access(site.locks_dir, os.W_OK):
        raise BuildError(f"cannot write to {envs_dir}: permission denied (are you a site admin?)")
    existing_env_problem(site, name, subdir)
    with cache_locked(site):
        return secure_cache(site).warnings


def _dry_run_pins(site: Site, chosen: Any, subdir: str, overrides: dict[str, str], final: Path) -> list[Any]:
    """The pip part of a dry run (none without one)."""
    if chosen.pip is None:
        return []
    # The pip machinery: 45-55 ms of imports (python -X importtime) that a spec without a pip part never needs.
    from cpkgs_admin.pipeline.pip import dry_run_pins  # noqa: PLC0415

    return dry_run_pins(site, chosen.pip, chosen.records, subdir, overrides, final)
