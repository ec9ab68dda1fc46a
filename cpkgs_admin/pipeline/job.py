"""One build on its way through the pipeline: the request (BuildRequest), the result (BuildResult), and the Job that
every step after the solve takes and adds to (where the env is staged, how, what the steps found and took)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpkgs_admin.site.names import EnvName
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, PackageEntry
from cpkgs_admin.site.specs import Spec

if TYPE_CHECKING:  # for annotations only: the dry run imports this module, never the integrity engines (8 ms)
    from cpkgs_admin.integrity.checks import Problem
    from cpkgs_admin.integrity.manifest import CondaMeta
    from cpkgs_admin.integrity.memo import HashMemo
    from cpkgs_admin.integrity.owners import Owners
    from cpkgs_admin.integrity.watch import StagedCheck
    from cpkgs_admin.pipeline.pypi.part import PipPlan

Log = Callable[[str], None] | None


@dataclass(frozen=True)
class BuildRequest:
    name: EnvName
    specs: tuple[str, ...] = ()
    spec_file: Path | None = None
    from_env: str | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    lock_file: Path | None = None
    channels: tuple[str, ...] = ()
    platform: str | None = None
    overrides: tuple[str, ...] = ()
    dry_run: bool = False
    pip_lock: Path | None = None  # with lock_file: the pip part's pins (cpkgs export NAME --format pip)
    pip_index: str | None = None  # the pip part from this index or wheel directory instead of cpkgs.yaml's pypi:


@dataclass
class BuildResult:
    name: str
    platform: str
    prefix: str
    packages: list[PackageEntry]
    dry_run: bool = False
    file_count: int = 0
    size: int = 0
    seconds: float = 0.0
    restored: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    pypi_packages: list[PackageEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "platform": self.platform,
            "prefix": self.prefix,
            "dry_run": self.dry_run,
            "file_count": self.file_count,
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "packages": [
                {"kind": p.kind, "name": p.name, "version": p.version, "build": p.build, "channel": p.channel,
                 "sha256": p.sha256, "url": p.url}
                for p in [*self.packages, *self.pypi_packages]
            ],
        }


@dataclass
class Solved:
    """What steps 1 and 2 decided, for the steps after them: the platform, the spec, rattler's records and the
    packages as the record lists them, the requested specs, the channels by name (with the URLs read), the virtual
    package overrides; the warnings so far (the package cache's, then the spec's and the channels'), the times."""

    subdir: str
    spec: Spec
    records: list[Any]
    packages: list[PackageEntry]
    requested: list[str]
    channels: dict[str, list[str]]
    overrides: dict[str, str]
    cache_warnings: list[str]
    warnings: list[str]
    started: float  # time.monotonic() when the build started
    timings: dict[str, float]
    pip: PipPlan | None = None  # the pip part to build


@dataclass
class Job:
    """What staging, checking, sealing and publishing an env need, and what each step leaves for the next: the record
    being built (its prefix is the final one), rattler's records to install, the private staging dir, whether its
    files are hard links into the admin-only cache (and the hash memo vouching for them), what was checked during
    the install, the staged tree's scan (with STAGED: what the seal must look at) and its conda-meta, and the steps'
    times and warnings."""

    site: Site
    record: EnvRecord
    records: list[Any]  # rattler's records to install
    requested: list[str]
    progress: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    staging: Path = field(init=False)
    installing: bool = False  # rattler's install is running: its threads may still write into the staging dir
    hard_links: bool = False
    memo: HashMemo | None = None
    owners: Owners | None = None  # who may own the staged env's files
    # The packages' files checked during the install (integrity.watch), or None: the check reads the whole tree.
    staged: StagedCheck | None = None
    problems: list[Problem] | None = None  # what the post-process's final check found (with STAGED)
    tree: dict[str, os.stat_result] = field(default_factory=dict)
    meta: CondaMeta = field(default_factory=list)
    pip: PipPlan | None = None  # the pip part (pipeline/pip.py), None: none
    pip_files: dict[str, str] = field(default_factory=dict)  # what the pip step leaves for the post-process
    pip_dists: list[tuple[str, str, str]] = field(default_factory=list)  # (name, version, dist-info dir)
    own_files: list[str] = field(default_factory=list)  # files cpkgs wrote before the post-process (its manifest)
    usage_hook: bool = True  # the usage hook and module index (not in the cpkgs tool: no env of the site)

    def __post_init__(self) -> None:
        self.new_staging()

    def new_staging(self) -> None:
        """A fresh staging dir name (each try stages into its own)."""
        self.staging = self.site.staging_dir(self.record.name, self.record.platform, uuid.uuid4().hex[:12])

    @property
    def final(self) -> Path:
        return Path(self.record.prefix)

    @property
    def subdir(self) -> str:
        return self.record.platform

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """STEP's time into TIMINGS, when it succeeds."""
        t = time.monotonic()
        yield
        self.timings[step] = time.monotonic() - t
