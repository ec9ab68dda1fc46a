"""The pip part of new-env (a spec's `pip:` section), in the pipeline's steps; the work is pypi/part.py's.

1 spec     spec.pip_plan: the pip lines (or --pip-lock's pins) read and checked against cpkgs.yaml's `pypi:` rules
           before anything is solved; after the solve, spec.check_python: the conda part must give the env python.
2 dry run  dry_run_pins: resolved against the conda packages' file lists for the env's python and platform.
4 pip part pip_step (after the conda part is staged, before the post-process): resolved against the staged conda
           distributions, wheels fetched or built into the wheel store, installed, byte-compiled; the record gets
           the pypi entries and the post-process the lock text.
uv's cache (.cpkgs/uv-cache) is admin-only like the package cache: files are hard links into it only then, and uv
runs under cpkgs' NFS-safe lock (uv's own flock does not reach across NFS hosts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rattler.networking import Client

from cpkgs_admin.integrity.pipfiles import PIP_LOCK
from cpkgs_admin.pipeline.job import Job
from cpkgs_admin.pipeline.plan import cache_is_admin_only, rattler_config, read_package_files
from cpkgs_admin.pipeline.pypi.inventory import Distribution, distributions_from_paths
from cpkgs_admin.pipeline.pypi.part import PipPlan, build_pip_part, dry_run_pip_part, pip_record
from cpkgs_admin.pipeline.pypi.record import PypiPackage, lock_text, mirror_wheels
from cpkgs_admin.pipeline.pypi.store import WheelStore
from cpkgs_admin.pipeline.pypi.target import (
    PythonPlatform,
    python_platform,
    target_for_paths,
    target_for_prefix,
)
from cpkgs_admin.pipeline.solve import virtual_packages
from cpkgs_admin.site.locks import uv_cache_locked
from cpkgs_admin.site.paths import Site, native_subdir
from cpkgs_admin.site.records import PackageEntry


def platform_of(subdir: str, overrides: dict[str, str]) -> PythonPlatform:
    """The env's platform for wheels, from the virtual packages its conda solve used."""
    return python_platform(subdir, {v.name.normalized: str(v.version) for v in virtual_packages(subdir, overrides)})


def pypi_entry(p: PypiPackage) -> PackageEntry:
    """A pip package as the record lists it beside the conda ones."""
    extra = {"index": p.index, "requested": p.requested, "requirement": p.requirement,
             "source": p.source.to_json() if p.source else None, "dist_info": p.dist_info}
    return PackageEntry(name=p.name, version=p.version, build="pypi", channel=p.shown_source, sha256=p.sha256,
                        url=p.url, filename=p.filename, kind="pypi", extra=extra)


# ----------------------------------------------------------------------------------------------------- dry run


def dry_run_pins(site: Site, plan: PipPlan, records: list[Any], subdir: str, overrides: dict[str, str],
                 final: Path) -> list[PackageEntry]:
    """The pip part of a dry run: nothing staged; the conda part's distributions from its packages' file lists (the
    cache entries, or the archives' by range requests), resolved for the env's python version and platform."""
    files = read_package_files(records, site.pkgs_cache_dir, Client.from_config(rattler_config(False)))
    by_dist = {str(r.file_name).removesuffix(".conda").removesuffix(".tar.bz2"): r for r in records}
    lists = [(by_dist[f.dist].name.normalized, str(by_dist[f.dist].version), [e.path for e in f.entries])
             for f in files if f.dist in by_dist]
    python = next((r for r in records if r.name.normalized == "python"), None)
    assert python is not None  # check_python
    python_paths = next(paths for name, _v, paths in lists if name == "python")
    target = target_for_paths(final, str(python.version), python_paths, platform_of(subdir, overrides))
    conda: list[Distribution] = distributions_from_paths(lists)
    with _uv_cache(site, dry_run=True) as (cache, _hard), tempfile.TemporaryDirectory(prefix="cpkgs-pip-") as work:
        pins = dry_run_pip_part(plan, target, conda, cache_dir=cache, work_dir=Path(work))
    return [PackageEntry(name=p.name, version=p.version, build="pypi", channel=p.index or "", sha256="",
                         kind="pypi", extra={"requested": p.requested, "requirement": p.requirement})
            for p in sorted(pins, key=lambda p: p.name)]


@contextlib.contextmanager
def _uv_cache(site: Site, *, dry_run: bool = False, warnings: list[str] | None = None) -> Iterator[tuple[Path, bool]]:
    """(uv's cache dir, whether env files may be hard links into it), under the uv cache lock. A dry run by someone
    who cannot take the site's locks gets a private temporary cache (nothing of the site is written)."""
    if dry_run and not os.access(site.locks_dir, os.W_OK):
        with tempfile.TemporaryDirectory(prefix="cpkgs-uv-") as tmp:
            yield Path(tmp), False
        return
    with uv_cache_locked(site):
        dropped = secure_uv_cache(site, with_store=not dry_run)
        if warnings is not None:
            warnings += dropped
        yield site.uv_cache_dir, cache_is_admin_only(site.uv_cache_dir, site.admin_gid())


def secure_uv_cache(site: Site, *, with_store: bool = True) -> list[str]:
    """.cpkgs/uv-cache and .cpkgs/wheels closed to everyone but the admins (0700, or 2770 with an admin group). A uv
    cache found writable by others is dropped whole and made again: anyone could have changed its unpacked files,
    which uv copies or links into envs (the wheel store is safe: every wheel is hash-checked when installed)."""
    warnings = []
    dmode, _fmode = site.private_modes()
    for d in (site.uv_cache_dir, *([site.wheel_store_dir] if with_store else [])):
        if d.is_dir() and d == site.uv_cache_dir and not cache_is_admin_only(d, site.admin_gid()):
            shutil.rmtree(d, ignore_errors=True)
            warnings.append(f"{d} was writable by others: dropped and made again")
        d.mkdir(mode=0o700, exist_ok=True)
        gid = site.admin_gid()
        if gid is not None and d.stat().st_gid != gid:
            os.chown(d, -1, gid)
        os.chmod(d, dmode)
    return warnings


# ----------------------------------------------------------------------------------------------------- step 4


def pip_step(job: Job) -> None:
    """Install JOB's pip part into its staging dir (after the conda part); the record gets its packages."""
    plan = job.pip
    if plan is None:
        return
    site, record = job.site, job.record
    platform = platform_of(job.subdir, record.virtual_packages)
    target = target_for_prefix(job.staging, job.final, platform, native=job.subdir == native_subdir())
    dmode, fmode = site.private_modes()
    store = WheelStore(site.wheel_store_dir, dir_mode=dmode, file_mode=fmode & ~0o111)
    with _uv_cache(site, warnings=job.warnings) as (cache, hard_links), \
            tempfile.TemporaryDirectory(prefix="cpkgs-pip-") as work:
        part = build_pip_part(plan, target, store=store, cache_dir=cache, work_dir=Path(work), hard_links=hard_links)
    record.pypi_packages = [pypi_entry(p) for p in sorted(part.packages, key=lambda p: p.name)]
    text = lock_text(part.packages, part.options, record.name)
    record.pip = {**pip_record(plan, part, target), "lock": text}
    job.pip_files = {PIP_LOCK: text}
    job.pip_dists = [(p.name, p.version, p.dist_info) for p in part.packages]
    if not part.compiled:
        job.warnings.append(f"{record.name}: the pip part is not byte-compiled: this host's python is not the env's "
                            f"{target.full_version}, which cannot run here ({record.platform}); imports compile in "
                            "memory at each start")


# ----------------------------------------------------------------------------------------------------- mirror


def mirror_pip_part(site: Site, pypi_packages: list[PackageEntry], dest: Path) -> int:
    """`cpkgs mirror`: the pip part's wheels into DEST/files (a find-links dir) with a PEP 503 index over them in
    DEST/simple; each from the wheel store (by sha256), else downloaded from its recorded URL, hash-checked. A wheel
    built from git or an sdist exists in the store only. Returns how many."""
    packages = [PypiPackage.from_json({**p.extra, "kind": "pypi", "name": p.name, "version": p.version,
                                       "filename": p.filename, "sha256": p.sha256, "url": p.url})
                for p in pypi_packages]
    dmode, _fmode = site.private_modes()
    if os.access(site.wheel_store_dir, os.W_OK | os.X_OK):
        mirror_wheels(packages, WheelStore(site.wheel_store_dir, dir_mode=dmode, file_mode=0o644), dest,
                      layout="simple")
        return len(packages)
    # Someone who cannot use the store (not an admin): every wheel from its recorded URL, through a scratch store.
    with tempfile.TemporaryDirectory(prefix="cpkgs-wheels-") as tmp:
        mirror_wheels(packages, WheelStore(Path(tmp), file_mode=0o644), dest, layout="simple")
    return len(packages)
