"""`cpkgs install-tool` for each platform asked: cpkgs' wheel made once, then per platform under the tool's lock:
already current (nothing to do), a kept build of the same cpkgs (switch back to it), or a new build through the
pipeline's steps (solve, stage, pip step, the tool's post-process, check, seal), published and switched to."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin import __version__
from cpkgs_admin.errors import BuildError, PipError, UsageError
from cpkgs_admin.pipeline.cache import secure_cache
from cpkgs_admin.pipeline.job import BuildRequest, Job, Log
from cpkgs_admin.pipeline.pip import secure_uv_cache
from cpkgs_admin.pipeline.pypi.store import WheelStore
from cpkgs_admin.pipeline.solve import choose_packages, env_overrides, package_entries
from cpkgs_admin.pipeline.spec import check_python
from cpkgs_admin.pipeline.tool.finish import build_and_check
from cpkgs_admin.pipeline.tool.switch import clean_leftovers, publish_build, switch_to
from cpkgs_admin.pipeline.tool.wheel import OwnWheel, given_wheel, running_wheel
from cpkgs_admin.site.locks import cache_locked, tool_locked, uv_cache_locked
from cpkgs_admin.site.names import EnvName
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.process import current_user
from cpkgs_admin.site.records import EnvRecord, timestamp
from cpkgs_admin.site.tools import build_dirs, build_of, current_build, tool_records


@dataclass
class ToolResult:
    platform: str
    version: str
    build: str
    prefix: str
    action: str  # built | switched | current
    previous: str | None
    python: str
    packages: int
    files: int
    size: int
    seconds: float
    purge_after: str | None = None  # the previous build's, when this run superseded it
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"platform": self.platform, "version": self.version, "build": self.build, "prefix": self.prefix,
                "action": self.action, "previous": self.previous, "python": self.python, "packages": self.packages,
                "files": self.files, "size": self.size, "seconds": round(self.seconds, 3)}


def install_tool(site: Site, platforms: tuple[str, ...], wheel: Path | None, rebuild: bool,
                 log: Log = None) -> list[ToolResult]:
    subdirs = list(dict.fromkeys(platforms or (site.default_subdir(),)))
    for subdir in subdirs:
        _admin_check(site, subdir)
    _pypi_source(site)
    old_umask = os.umask(site.build_umask())
    try:
        with tempfile.TemporaryDirectory(prefix="cpkgs-tool-") as tmp:
            own = given_wheel(wheel) if wheel is not None else running_wheel(Path(tmp), site.config.pypi)
            stored = _store(site, own)
            return [_one(site, subdir, own, stored, rebuild, Path(tmp), log) for subdir in subdirs]
    finally:
        os.umask(old_umask)


def _admin_check(site: Site, subdir: str) -> None:
    if subdir not in site.config.platforms:
        raise UsageError(f"platform {subdir} is not served by this site (platforms: "
                         f"{', '.join(site.config.platforms)}); add it with 'cpkgs init --platform {subdir}'")
    inst, tool = site.installation(subdir), site.tool_dir(subdir)
    where = tool if tool.is_dir() else inst
    if not inst.is_dir():
        raise BuildError(f"{inst} does not exist; run 'cpkgs init --platform {subdir}'")
    if not os.access(where, os.W_OK) or not os.access(site.locks_dir, os.W_OK):
        raise BuildError(f"cannot write to {where}: permission denied (are you a site admin?)")


def _pypi_source(site: Site) -> None:
    cfg = site.config.pypi
    if not cfg.enabled:
        raise PipError("install-tool needs the site's pypi: section enabled (cpkgs.yaml pypi.enabled: false)")
    if not (cfg.index_url or cfg.extra_index_urls or cfg.find_links):
        raise PipError(f"install-tool needs somewhere to get cpkgs' dependencies from: {site.config_file} pypi: "
                       "has no index_url, extra_index_urls or find_links")


def _store(site: Site, own: OwnWheel) -> Path:
    """The wheel into the site's wheel store (admin-only, by sha256): the spec names it there, pinned by hash."""
    dmode, fmode = site.private_modes()
    with uv_cache_locked(site):
        secure_uv_cache(site)
        path, _sha = WheelStore(site.wheel_store_dir, dir_mode=dmode, file_mode=fmode & ~0o111).add(own.path)
    return path


def _one(site: Site, subdir: str, own: OwnWheel, stored: Path, rebuild: bool, tmp: Path, log: Log) -> ToolResult:
    t0 = time.monotonic()
    with tool_locked(site, subdir):
        warnings = [f"removed {p}: left by an install-tool that did not finish" for p in clean_leftovers(site, subdir)]
        records = {build_of(r): r for r in tool_records(site, subdir)}
        cur = current_build(site, subdir)
        cur_rec = records.get(cur) if cur else None
        intact = cur is not None and (site.tool_build(cur, subdir) / "bin" / "cpkgs").is_file()
        if cur_rec is not None and intact and cur_rec.extra.get("cpkgs_digest") == own.digest and not rebuild:
            return _result(cur_rec, "current", cur, t0, warnings)
        kept = [r for b, r in records.items() if b != cur and r.extra.get("cpkgs_digest") == own.digest
                and site.tool_build(b, subdir).is_dir()]
        if kept and not rebuild:
            purge_after = switch_to(site, subdir, kept[-1], cur_rec)
            return _result(kept[-1], "switched", cur, t0, warnings, purge_after)
        build = _next_name(own.version, {*records, *build_dirs(site, subdir)})
        record = _build(site, subdir, own, stored, build, tmp / subdir, log, warnings)
        purge_after = switch_to(site, subdir, record, cur_rec)
        return _result(record, "built", cur, t0, warnings, purge_after)


def _next_name(version: str, taken: set[str]) -> str:
    if version not in taken:
        return version
    n = 2
    while f"{version}-{n}" in taken:
        n += 1
    return f"{version}-{n}"


def _result(rec: EnvRecord, action: str, previous: str | None, t0: float, warnings: list[str],
            purge_after: str | None = None) -> ToolResult:
    return ToolResult(platform=rec.platform, version=rec.version,
                      build=build_of(rec), prefix=rec.prefix, action=action,
                      previous=previous if action != "current" else None, python=rec.python_version or "",
                      packages=len(rec.all_packages), files=rec.file_count, size=rec.size,
                      seconds=time.monotonic() - t0, purge_after=purge_after, warnings=warnings)


def _spec_file(work: Path, own: OwnWheel, stored: Path) -> Path:
    """The tool as an environment.yml: this interpreter's python X.Y from the site's channels, cpkgs from the stored
    wheel by file URL pinned by hash (no index can substitute another 'cpkgs'), the running closure as constraints."""
    work.mkdir(parents=True, exist_ok=True)
    pip = [f"cpkgs @ {stored.as_uri()} --hash=sha256:{stored.parent.name}"]
    if own.constraints:
        (work / "constraints.txt").write_text("".join(f"{c}\n" for c in own.constraints))
        pip.append("-c constraints.txt")
    spec = {"name": "cpkgs-tool",
            "dependencies": [f"python {sys.version_info[0]}.{sys.version_info[1]}.*", {"pip": pip}]}
    (work / "cpkgs-tool.yml").write_text(json.dumps(spec, indent=2))  # JSON is YAML
    return work / "cpkgs-tool.yml"


def _build(site: Site, subdir: str, own: OwnWheel, stored: Path, build: str, work: Path, log: Log,
           warnings: list[str]) -> EnvRecord:
    name = EnvName(f"cpkgs-{build}", "cpkgs", build)
    req = BuildRequest(name=name, spec_file=_spec_file(work, own, stored), platform=subdir)
    overrides = {**site.config.virtual_packages, **env_overrides()}
    with cache_locked(site):
        warnings += secure_cache(site).warnings
    chosen = choose_packages(site, req, None, subdir, overrides, site.repodata_cache_dir, log)
    packages = package_entries(chosen.records, chosen.channel_name)
    check_python(chosen.pip, packages, "the tool")
    record = EnvRecord(
        name=name.name, family="cpkgs", version=own.version, platform=subdir,
        prefix=str(site.tool_build(build, subdir)), requested_specs=chosen.requested, channels=list(chosen.channels),
        channel_urls=chosen.channels, packages=packages, creator=current_user(), host=socket.gethostname(),
        created=timestamp(), cpkgs_version=__version__, size=0, file_count=0, spec_source="cpkgs install-tool",
        virtual_packages=overrides, extra={"kind": "tool", "build": build, "cpkgs_digest": own.digest})
    job = ToolJob(site, record, chosen.records, chosen.requested, pip=chosen.pip)
    build_and_check(job)
    warnings += [*chosen.warnings, *job.warnings]
    publish_build(job)
    return job.record


@dataclass
class ToolJob(Job):
    """A Job whose staging dir is beside the tool's builds (the rename into place stays on one filesystem)."""

    def new_staging(self) -> None:
        build = str(self.record.extra["build"])
        self.staging = self.site.tool_staging(build, self.record.platform, uuid.uuid4().hex[:12])
