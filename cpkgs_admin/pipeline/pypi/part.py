"""The pip part as the new-env pipeline runs it: one call per step (DESIGN.md "Environment lifecycle").

1 spec     plan_pip_part: the spec's pip lines (or --pip-lock's pins) read and checked against the site's rules, the
           locations decided (--pip-index replaces the site's for one build), before anything is solved.
2 dry run  dry_run_pip_part: resolved against the conda part's file lists; nothing staged or fetched.
4 pip part build_pip_part: resolved against the staged conda part (or the pins taken as they are), wheels fetched
           or built into the wheel store, installed, byte-compiled; returns what the record and the post-process
           need.
The caller holds the uv cache lock around steps 2 and 4 (uv's own flock does not work across NFS hosts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cpkgs_admin.errors import PipError, UsageError
from cpkgs_admin.pipeline.pypi.bytecode import compile_pip_part
from cpkgs_admin.pipeline.pypi.install import install_pip
from cpkgs_admin.pipeline.pypi.inventory import Distribution
from cpkgs_admin.pipeline.pypi.record import LockedRequirements, PypiPackage, read_lock_text
from cpkgs_admin.pipeline.pypi.requirements import IndexOptions, PipRequest, parse_pip_section
from cpkgs_admin.pipeline.pypi.resolve import (
    ResolvedPin,
    check_policy,
    effective_options,
    lock_from_file,
    lock_pip,
    resolve_pip,
)
from cpkgs_admin.pipeline.pypi.store import WheelStore
from cpkgs_admin.pipeline.pypi.target import TargetPython
from cpkgs_admin.site.pypi_config import PypiConfig, find_links_problem, index_url_problem


@dataclass(frozen=True)
class PipPlan:
    """Step 1's outcome: what to build (a request to resolve, or pins to take) and the site's rules for it."""

    config: PypiConfig  # the site's `pypi:`, with --pip-index's location in place of its own
    request: PipRequest | None = None
    locked: LockedRequirements | None = None

    @property
    def requested_lines(self) -> list[str]:
        """What `--from` carries and `info` shows: the requirements as the resolver got them."""
        if self.request is not None:
            return [r.line for r in self.request.requirements]
        return [e.name for e in self.locked.entries if e.requested] if self.locked else []


def pip_index_config(config: PypiConfig, value: str) -> PypiConfig:
    """--pip-index VALUE: a PEP 503 index URL, or a directory (or file:// URL) of wheels, instead of the site's
    locations for this build. A directory holding `simple/index.html` (what `cpkgs mirror` writes under pypi/) is
    taken as that index."""
    path = unquote(urlsplit(value).path) if value.startswith("file://") else value
    if "://" not in path:
        if not os.path.isdir(path):
            raise UsageError(f"--pip-index {value}: no such directory")
        root = Path(os.path.abspath(path))
        for simple in (root / "simple", root):
            if (simple / "index.html").is_file() and not any(root.glob("*.whl")):
                return replace(config, index_url=simple.as_uri(), extra_index_urls=(), find_links=())
        return replace(config, index_url=None, extra_index_urls=(), find_links=(str(root),))
    problem = index_url_problem(value) or find_links_problem(value)
    if problem:
        raise UsageError(f"--pip-index {problem}")
    return replace(config, index_url=value.rstrip("/"), extra_index_urls=(), find_links=())


def plan_pip_part(lines: tuple[str, ...], base_dir: str | None, spec_source: str, config: PypiConfig, *,
                  pip_lock: Path | None = None, pip_index: str | None = None) -> PipPlan | None:
    """None: the env has no pip part. LINES: the spec's `pip:` lines, relative paths from BASE_DIR (the spec
    file's directory); PIP_LOCK: `new-env --lock ... --pip-lock FILE`."""
    if pip_index is not None:
        config = pip_index_config(config, pip_index)
    if pip_lock is not None:
        if not config.enabled:
            raise PipError("pip: this site does not allow pip sections (cpkgs.yaml pypi.enabled: false)")
        return PipPlan(config=config, locked=read_lock_text(pip_lock))
    if not lines:
        return None
    spec_file = Path(base_dir or ".") / Path(spec_source).name
    request = parse_pip_section(list(lines), spec_file)
    check_policy(request, config)
    return PipPlan(config=config, request=request)


def dry_run_pip_part(plan: PipPlan, target: TargetPython, conda: list[Distribution], *, cache_dir: Path,
                     work_dir: Path) -> list[ResolvedPin]:
    if plan.request is not None:
        return resolve_pip(plan.request, target, plan.config, conda=conda, cache_dir=cache_dir, work_dir=work_dir)
    assert plan.locked is not None
    provided = {d.name: d for d in conda}
    return [ResolvedPin(e.name, e.version, None, e.requested, None) for e in plan.locked.entries
            if e.name not in provided]


@dataclass(frozen=True)
class PipPart:
    packages: list[PypiPackage]  # installed, with their dist-info dirs
    options: IndexOptions  # where they came from (the lock file's option lines)
    compiled: bool  # byte code made (False: another platform's env of another python version)


def build_pip_part(plan: PipPlan, target: TargetPython, *, store: WheelStore, cache_dir: Path, work_dir: Path,
                   hard_links: bool) -> PipPart:
    if plan.request is not None:
        lock = lock_pip(plan.request, target, plan.config, store=store, cache_dir=cache_dir, work_dir=work_dir)
    else:
        assert plan.locked is not None
        # The site's locations (or --pip-index's), not the lock file's: its --index-url lines say where the pins
        # came from, for pip and uv elsewhere; this site fetches from its own mirrors (as conda URLs in a lock are
        # mapped to the site's channels).
        options = effective_options(plan.config, IndexOptions())
        lock = lock_from_file(plan.locked, target, plan.config, store=store, cache_dir=cache_dir,
                              work_dir=work_dir, options=options)
    packages = install_pip(lock, target, cache_dir=cache_dir, work_dir=work_dir, hard_links=hard_links)
    compiled = compile_pip_part(target, packages)
    options = lock.options if plan.request is not None else plan.locked.options if plan.locked else lock.options
    return PipPart(packages=packages, options=options, compiled=compiled)


def pip_record(plan: PipPlan, part: PipPart | None, target: TargetPython | None) -> dict[str, Any]:
    """The env record's `pip` key: what was asked, from where, for which platform, whether byte-compiled."""
    opts = part.options if part is not None else IndexOptions()
    return {
        "requested": plan.requested_lines,
        "options": {"index_url": opts.index_url, "extra_index_urls": list(opts.extra_index_urls),
                    "find_links": list(opts.find_links), "no_index": opts.no_index, "pre": opts.pre},
        "platform": target.platform.triple if target is not None else None,
        "bytecode": part.compiled if part is not None else None,
    }
