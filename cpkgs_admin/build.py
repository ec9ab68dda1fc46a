"""`cpkgs new-env`: the pipeline of DESIGN.md, one function per step.

spec -> solve -> stage (hidden 0700 dir in the same envs/, final prefix patched in) -> post-process -> verify ->
seal -> publish (rename, record, generated files, audit). A kill at any moment leaves at most a hidden staging dir
that the next run for that name removes; the lock is a lease that a dead owner does not hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shlex
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin import __version__, aio
from cpkgs_admin.errors import BuildError, CpkgsError, EnvExists, SpecError, UsageError, os_error_text
from cpkgs_admin.pkgcache import HASH_MEMO_DIR
from cpkgs_admin.site.audit import audited
from cpkgs_admin.site.files import write_staged
from cpkgs_admin.site.locks import env_locked, site_locked
from cpkgs_admin.site.names import EnvName
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.process import current_user
from cpkgs_admin.site.records import EnvRecord, PackageEntry, save_record
from cpkgs_admin.site.specs import (
    ExplicitLock,
    Spec,
    apply_changes,
    check_sources,
    check_variables,
    explicit_text,
    from_environment_file,
    from_family,
    read_explicit,
    validate_specs,
)

Log = Callable[[str], None] | None
STAGING_PREFIX = ".staging-"
# '@' cannot occur in a name: `.staging-rr-1@<id>` can never be mistaken for a staging dir of `rr-1-2`.
STAGING_SEP = "@"
EMBEDDED_RECORD = "conda-meta/cpkgs/record.json"
PKG_LIST = "list-of-pkgs-inside.txt"
EXPLICIT_LOCK = "conda-meta/cpkgs/explicit.txt"


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
                {"name": p.name, "version": p.version, "build": p.build, "channel": p.channel, "sha256": p.sha256,
                 "url": p.url}
                for p in self.packages
            ],
        }


# ----------------------------------------------------------------------------------------------------- 1. spec


def resolve_spec(site: Site, req: BuildRequest, subdir: str) -> tuple[Spec, list[Any]]:
    """(spec, locked records for --from). --lock is handled separately."""
    check_sources(req.specs, req.spec_file, req.from_env, req.lock_file, req.add, req.remove)
    if req.from_env:
        from cpkgs_admin.site.records import get_record

        old = get_record(site, req.from_env, subdir)
        if old.status == "removed":
            raise SpecError(f"--from {old.name}: that environment was removed; its exact packages are no longer on "
                            "the drive (rebuild from its lock: cpkgs export, then new-env --lock)")
        from cpkgs_admin.site.specs import spec_name

        warnings: list[str] = []
        add = validate_specs(req.add, warnings)
        # An env built from a lock file requested no specs: every package it holds counts as requested.
        base = tuple(old.requested_specs) or tuple(p.name for p in old.packages)
        specs = apply_changes(base, add, req.remove)
        removed = {spec_name(r) for r in req.remove}
        missing = removed - {p.name for p in old.packages}
        if missing:
            raise SpecError(f"--remove {', '.join(sorted(missing))}: not in {old.name}")
        implied = sorted(removed - {spec_name(s) for s in base})
        if implied:
            raise SpecError(
                f"--remove {', '.join(implied)}: {old.name} did not ask for it, another package needs it "
                f"(asked for: {', '.join(spec_name(s) for s in base)}); remove what needs it instead"
            )
        locked = [r for r in _prefix_records(Path(old.prefix)) if r.name.normalized not in removed]
        # The site's channels of today, not OLD's: mirrors move; OLD's exact builds are kept through `locked`.
        # A record may predate today's rules for variables (or have been edited): they go into every activation.
        variables = check_variables(dict(old.variables), f"--from {old.name}", warnings)
        spec = Spec(specs=specs, source=f"--from {old.name}", extends=tuple(old.extends), variables=variables,
                    warnings=tuple(warnings))
        return spec, locked
    if req.spec_file:
        spec = from_environment_file(req.spec_file)
        if req.specs:
            extra: list[str] = []
            more = validate_specs(req.specs, extra)
            spec = dataclasses.replace(spec, specs=spec.specs + more, warnings=spec.warnings + tuple(extra))
        return spec, []
    if req.specs:
        warnings = []
        specs = validate_specs(req.specs, warnings)
        return Spec(specs=specs, source="command line", warnings=tuple(warnings)), []
    return from_family(site.specs_dir, req.name.family), []


def refuse_pip(spec: Spec) -> None:
    """A spec's `pip:` list (Spec.pip): not built yet; the PyPI step of DESIGN.md will take it from here."""
    if spec.pip:
        raise SpecError(
            f"spec file {spec.source}: a 'pip:' section is not supported; build conda packages or use 'cpkgs extend'"
        )


@dataclass
class Chosen:
    """Step 2's outcome: the packages, what was asked for, and the channels by name with the URLs read."""

    spec: Spec
    records: list[Any]
    requested: list[str]
    channels: dict[str, list[str]]
    channel_name: Callable[[Any], str]
    warnings: list[str]


def choose_packages(site: Site, req: BuildRequest, lock: ExplicitLock | None, subdir: str,
                    overrides: dict[str, str], cache_dir: Path | None, log: Log) -> Chosen:
    """Solve the request (or find a lock file's packages) on the site's channels, names mapped to its URLs."""
    from cpkgs_admin.site.channels import plan_channels
    from cpkgs_admin.solve import check_channels, lock_sources, resolve_lock, solve, virtual_packages

    cmap = site.config.channel_resolver
    if lock is not None:
        plan = plan_channels(cmap, cli=req.channels, site_channels=site.config.channels)
        sources, names = lock_sources(lock, check_channels(plan.sources) if plan.sources else [], cmap)
        if log:
            log(f"resolving {len(lock.packages)} locked packages")
        records = resolve_lock(lock, sources, subdir, cache_dir)
        spec = Spec(specs=(), source=f"--lock {req.lock_file}", variables=lock.variables)
        used: dict[str, list[str]] = {}
        for src in sources:
            used.setdefault(src.name, []).append(src.url)
        return Chosen(spec, records, [], used, lambda r: names.get(r.file_name, str(r.channel or "")), [])
    spec, locked = resolve_spec(site, req, subdir)
    refuse_pip(spec)
    if not spec.specs:
        raise SpecError(f"nothing to install: {spec.source} lists no dependencies")
    where = f"spec file {spec.source}" if spec.sha256 else str(spec.source)
    plan = plan_channels(cmap, cli=req.channels, spec_channels=spec.channels, site_channels=site.config.channels,
                         specs=spec.specs, where=where)
    check_channels(plan.sources)
    if log:
        log(f"solving {len(spec.specs)} specs for {subdir} on {', '.join(plan.names())}")
    records = solve(plan.sources, plan.specs, subdir, virtual_packages(subdir, overrides), locked, cache_dir,
                    shown=spec.specs, names=plan.names())
    return Chosen(spec, records, list(spec.specs), plan.named, lambda r: plan.name_of(str(r.channel or "")),
                  [*spec.warnings, *plan.warnings])


def _prefix_records(prefix: Path) -> list[Any]:
    from rattler import PrefixRecord

    out = []
    for p in sorted((prefix / "conda-meta").glob("*.json")):
        with contextlib.suppress(Exception):
            out.append(PrefixRecord.from_path(p))
    return out


def package_entries(records: list[Any], channel_name: Callable[[Any], str]) -> list[PackageEntry]:
    """The records' entries; CHANNEL_NAME(record): the name the request gave its channel (url: where it came from)."""
    out = []
    for r in sorted(records, key=lambda r: r.name.normalized):
        out.append(
            PackageEntry(
                name=r.name.normalized,
                version=str(r.version),
                build=str(r.build),
                channel=channel_name(r),
                sha256=r.sha256.hex() if r.sha256 else "",
                md5=r.md5.hex() if r.md5 else "",
                url=str(r.url),
                subdir=str(r.subdir),
                filename=str(r.file_name),
                depends=tuple(r.depends),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------------- 3. stage


def remove_leftover(path: Path) -> None:
    """A staging dir of a run that died, or the empty file an interrupted run left in its place (discard_staging)."""
    from cpkgs_admin.integrity.tree import make_removable

    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            make_removable(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale_staging(site: Site, subdir: str, name: str | None = None, log: Log = None) -> tuple[list[str],
                                                                                                   list[str]]:
    """Staging dirs of builds that died, under SUBDIR's envs: (removed, could not be removed).

    Under NAME's own lock (a build of NAME), any staging dir for NAME belongs to a run that died. So does any other
    name's whose lock is free (taken at once, or over from a dead owner): a build killed where nothing could clean up
    (rattler aborting the process on a panic, kill -9, a host crash) leaves a 0700 dir that may never be built
    again under its name. Every build sweeps them, and so does `purge`."""
    from cpkgs_admin.site.names import parse_name

    removed: list[str] = []
    failed: list[str] = []
    try:
        entries = list(os.scandir(site.envs_dir(subdir)))
    except OSError:
        return removed, failed
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX) or STAGING_SEP not in entry.name:
            continue
        owner = entry.name[len(STAGING_PREFIX):].rpartition(STAGING_SEP)[0]
        try:
            if owner == name:
                remove_leftover(Path(entry.path))
            else:
                parse_name(owner)  # a lock path is made of it
                with env_locked(site, owner, subdir, timeout=0):
                    remove_leftover(Path(entry.path))
        except CpkgsError:
            continue  # a build of that name is running right now (LockBusy), or no name cpkgs would give a build
        if os.path.lexists(entry.path):
            failed.append(entry.path)
            continue
        removed.append(entry.path)
        if log:
            log(f"removed leftover staging dir {entry.name} of an interrupted run")
    return removed, failed


def _dist_of(p: PackageEntry) -> str:
    """The package's directory name in the cache (and its conda-meta record's): the archive name's stem."""
    return p.filename.removesuffix(".conda").removesuffix(".tar.bz2") or f"{p.name}-{p.version}-{p.build}"


def discard_staging(staging: Path, *, fenced: bool) -> None:
    """Delete a failed build's staging dir. FENCED: the failure came during the install (an error, Ctrl-C), whose worker
    threads may still be linking files: they would recreate STAGING's directories, world-readable, after an
    rmtree. So it is renamed aside and an empty private file takes its name, on which their paths fail; the file
    stays until the next build of the name (or `purge`) removes it, like any leftover of an interrupted run."""
    doomed = [staging]
    if fenced:
        doomed = []
        for i in range(5):  # a writer may recreate the dir between our rename and our create: rename that too
            aside = staging.with_name(f"{staging.name}-discarded{i}")
            try:
                os.rename(staging, aside)
            except FileNotFoundError:
                pass
            except OSError:
                break
            else:
                doomed.append(aside)
            try:
                os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                break
            except FileExistsError:
                continue
            except OSError:
                break
        if staging.is_dir() and not staging.is_symlink():
            doomed.append(staging)  # recreated more often than we moved it: removed all the same (0700 first)
    for d in doomed:
        if d.is_dir() and not d.is_symlink():  # never the placeholder file
            remove_leftover(d)


def mount_point(path: Path) -> Path:
    """The directory PATH's filesystem is mounted on: what a full disk is named by."""
    path = Path(os.path.abspath(path))
    try:
        dev = path.stat().st_dev
        while path != path.parent and path.parent.stat().st_dev == dev:
            path = path.parent
    except OSError:
        pass
    return path


def _mib(n: int) -> int:
    return -(-n // 2**20)


def check_space(cache_dir: Path, envs_dir: Path, need_cache: int, need_env: int) -> int:
    """NEED_CACHE bytes to unpack into the package cache, NEED_ENV to write into the env: refused before the install
    when a filesystem lacks them (both counted where the two share one). Returns the least free space seen."""
    import psutil

    needs: dict[int, tuple[Path, int]] = {}
    for path, need in ((cache_dir, need_cache), (envs_dir, need_env)):
        dev = path.stat().st_dev
        where, before = needs.get(dev, (path, 0))
        needs[dev] = (where, before + need)
    least = None
    for path, need in needs.values():
        free = psutil.disk_usage(str(path)).free
        if need > free:
            raise BuildError(f"not enough space on {mount_point(path)}: about {_mib(need)} MiB needed, "
                             f"{free // 2**20} MiB free")
        least = free if least is None else min(least, free)
    return least or 0


def cache_is_admin_only(cache_dir: Path, admin_gid: int | None) -> bool:
    """Whether only the admin (and the admin group) can write the package cache and every dir above it in .cpkgs.

    Only then may env files be hard links into it (DESIGN: never hard-linked to a cache anyone else can write):
    whoever can write the cache could otherwise change a sealed env's files behind its seal. The same goes for the
    hash memo kept in it (verify.HashMemo), which new-env trusts in place of re-reading linked files."""
    memo = cache_dir / HASH_MEMO_DIR
    try:
        for d in (cache_dir, cache_dir.parent, *([memo] if memo.exists() else [])):
            st = d.stat()
            if st.st_mode & 0o002:
                return False
            if st.st_mode & 0o020 and st.st_gid != admin_gid:
                return False
            if st.st_uid not in (0, os.getuid()):
                return False
    except OSError:
        return False
    return True


def rattler_config(hard_links: bool) -> Any:
    from rattler import Config

    # Hard links only into an admin-only cache: the shared inode is sealed with the env, and `unseal` breaks the
    # links before anything becomes writable. Files whose prefix is patched are always fresh copies. Symlinks stay
    # allowed: rattler uses them only for the package's own symlinks (bin/python -> python3.11), never into the
    # cache; forbidding them would turn those into copies.
    return Config.from_toml(f"allow-hard-links = {str(hard_links).lower()}\nallow-symbolic-links = true\n")


@dataclass(frozen=True)
class Stage:
    """Where and how one build installs its packages."""

    staging: Path
    final: Path
    subdir: str
    cache_dir: Path
    envs_dir: Path
    specs: list[str]
    progress: bool
    hard_links: bool


@dataclass(frozen=True)
class InstallPlan:
    config: Any
    client: Any
    need: int  # bytes, by the packages' file lists
    free: int  # bytes free when the install started (the least of the cache's and the envs' filesystems)


def plan_install(records: list[Any], st: Stage) -> InstallPlan:
    """Read every package's file list and refuse what no env may hold, before rattler sees it; refuse the build when
    the space those lists add up to is not there. Runs under the package cache's lock: the cache entries read here
    are the ones rattler then links."""
    from rattler.networking import Client

    from cpkgs_admin.content import read_package_files, space_needed
    from cpkgs_admin.integrity.content import check_paths

    config = rattler_config(st.hard_links)
    client = Client.from_config(config)
    files = read_package_files(records, st.cache_dir, client)
    check_paths((p.dist, p.entries) for p in files)
    need_cache, need_env = space_needed(files, st.hard_links)
    free = check_space(st.cache_dir, st.envs_dir, need_cache, need_env)
    return InstallPlan(config=config, client=client, need=need_cache + need_env, free=free)


def install_planned(records: list[Any], st: Stage, plan: InstallPlan) -> None:
    from rattler import MatchSpec, Platform, install

    native = st.subdir == _native()

    async def run() -> None:
        await install(
            records,
            target_prefix=st.staging,
            cache_dir=st.cache_dir,
            installed_packages=[],
            platform=Platform(st.subdir),
            execute_link_scripts=native,
            show_progress=st.progress,
            # py-rattler 0.28 hands this list to Rust unwrapped; pass the inner objects it expects.
            requested_specs=[MatchSpec(s)._match_spec for s in st.specs] if st.specs else None,
            alternative_target_prefix=st.final,
            config=plan.config,
            client=plan.client,
        )

    try:
        aio.run(run())
    except Exception as exc:
        text = str(exc)
        if "(os error 28)" in text:  # ENOSPC: the estimate passed and the disk filled all the same
            where = st.cache_dir if "package cache" in text else st.envs_dir
            raise BuildError(
                f"no space left on {mount_point(where)} (needed about {_mib(plan.need)} MiB by the packages' file "
                f"lists, {plan.free // 2**20} MiB were free: a package unpacks to more than its list says, or "
                "something else filled the disk)"
            ) from None
        raise BuildError(f"install into {st.staging.name} failed: {_rattler_error(exc)}") from None


def _rattler_error(exc: Exception) -> str:
    """rattler's error chain in one line: its first line, and the last cause when that names an OS error (the
    errno is what tells a full disk or a failing server from a bad package)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1].removeprefix("Caused by:").strip()
    return f"{lines[0]}: {last}" if len(lines) > 1 and "(os error" in last else lines[0]


def _native() -> str:
    from cpkgs_admin.site.paths import native_subdir

    return native_subdir()


# ----------------------------------------------------------------------------------------------------- 4. post-process


def pkg_list_text(packages: list[PackageEntry]) -> str:
    rows = [("# name", "version", "build", "channel")] + [(p.name, p.version, p.build, p.channel) for p in packages]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"


def _write_staged_json(path: Path, obj: Any) -> None:
    write_staged(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


VARIABLES_SCRIPT = "cpkgs-variables"


def _csh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''").replace("!", "\\!") + "'"


def variables_scripts(variables: dict[str, str]) -> dict[str, str]:
    """The env's activate.d/deactivate.d scripts for a spec file's `variables:` (sh and csh), by relative path.
    Activation sets them before the packages' own scripts run (00-, first in sorted order); deactivation unsets
    them after the packages' scripts (00- again: deactivate.d scripts run in reverse sorted order, in conda and in
    cpkgs' conda.sh), the order conda keeps for its env_vars. Every activation path runs them: conda.sh,
    conda.csh, a user's own conda; modulefiles and kernels get them with the activation (the record keeps them)."""
    if not variables:
        return {}
    from cpkgs_admin.site.specs import check_variables

    check_variables(variables, "variables")  # also those carried from a record (--from): names go into scripts
    head = "# Written by cpkgs new-env from the spec file's `variables:`; part of the sealed env.\n"
    # Locale variables last: tcsh re-reads the rest of a file it is sourcing in a new LC_ALL/LANG.
    names = sorted(variables, key=lambda n: (n == "LANG" or n.startswith("LC_"), n))
    return {
        f"etc/conda/activate.d/00-{VARIABLES_SCRIPT}.sh":
            head + "".join(f"export {n}={shlex.quote(variables[n])}\n" for n in names),
        f"etc/conda/activate.d/00-{VARIABLES_SCRIPT}.csh":
            head + "".join(f"setenv {n} {_csh_quote(variables[n])}\n" for n in names),
        f"etc/conda/deactivate.d/00-{VARIABLES_SCRIPT}.sh": head + "".join(f"unset {n}\n" for n in names),
        f"etc/conda/deactivate.d/00-{VARIABLES_SCRIPT}.csh": head + "".join(f"unsetenv {n}\n" for n in names),
    }


def post_process(staging: Path, final: Path, record: EnvRecord, meta: list[Any] | None = None) -> list[str]:
    """Site files inside the env; anything embedding a path embeds FINAL. Returns the relative paths written.
    META: conda-meta as verify.read_conda_meta parsed it (read here when not given)."""
    from cpkgs_admin.outputs.envfiles import env_integration_files
    from cpkgs_admin.outputs.usage.hook import write_usage_files

    ours = {
        PKG_LIST: pkg_list_text(record.packages),
        EXPLICIT_LOCK: explicit_text(record.packages, record.platform, record.variables),
    }
    # Files added among the packages' own (python's stdlib dir, etc/conda/*.d): a package's file in their place is
    # refused, as replacing it would fail verification against conda-meta.
    added = {**variables_scripts(record.variables), **env_integration_files(staging, final, record)}
    for rel in added:
        if os.path.lexists(staging / rel):
            raise BuildError(f"{record.name}: a package already ships {rel}; cpkgs cannot add its own there")
    for rel, text in {**ours, **added}.items():
        write_staged(staging / rel, text, 0o644)
    if meta is None:
        from cpkgs_admin.integrity.manifest import read_conda_meta

        meta = read_conda_meta(staging)
    # The usage hook and module index (usage/hook.py): in every env with python, whether records are on or not.
    usage = write_usage_files(staging, final, record, meta, native=record.platform == _native())
    return [*ours, *added, *usage]


# ----------------------------------------------------------------------------------------------------- pipeline


def _check_removed(packages: list[PackageEntry], remove: tuple[str, ...]) -> None:
    """--remove PKG that the solver put back (another package needs it): refused, naming who needs it."""
    from cpkgs_admin.site.specs import spec_name

    back = sorted({spec_name(r) for r in remove} & {p.name for p in packages})
    if back:
        name = back[0]
        needs = sorted(p.name for p in packages if any(spec_name(d) == name for d in p.depends))
        raise SpecError(f"--remove {name}: still needed by {', '.join(needs) or 'the other packages'}; "
                        "remove what needs it too")


def existing_env_problem(site: Site, name: str, subdir: str) -> EnvRecord | None:
    """Raise EnvExists when NAME is taken; return an embedded record to restore when a run died after publishing."""
    from cpkgs_admin.site.records import load_record_file, record_from_json

    rec_path = site.record_path(name, subdir)
    if rec_path.exists():
        rec = load_record_file(rec_path)
        raise EnvExists(
            f"environment {name} ({subdir}) already exists (status {rec.status}); environments are immutable: "
            "build a new version"
        )
    prefix = site.env_prefix(name, subdir)
    if prefix.exists() or prefix.is_symlink():
        embedded = prefix / EMBEDDED_RECORD
        if embedded.is_file():
            with contextlib.suppress(OSError, ValueError):
                return record_from_json(json.loads(embedded.read_bytes()), embedded)
        raise EnvExists(f"{prefix} exists but has no cpkgs record; remove it by hand or choose another name")
    return None


def new_env(site: Site, req: BuildRequest, *, progress: bool = False, log: Log = None) -> BuildResult:
    # Site.build_umask: what rattler creates gets its modes from the umask. Envs are sealed with explicit modes anyway.
    old_umask = os.umask(site.build_umask())
    try:
        return _new_env(site, req, progress=progress, log=log)
    finally:
        os.umask(old_umask)


def _new_env(site: Site, req: BuildRequest, *, progress: bool = False, log: Log = None) -> BuildResult:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    name = req.name.name
    lock = None
    if req.lock_file:
        check_sources(req.specs, req.spec_file, req.from_env, req.lock_file, req.add, req.remove)
        lock = read_explicit(req.lock_file)
    if req.platform is not None and not req.platform.strip():
        raise UsageError("--platform needs a platform name (e.g. linux-64, osx-arm64)")
    # An explicit file names its platform: build for it unless --platform says otherwise.
    subdir = req.platform or (lock.platform if lock and lock.platform else None) or site.default_subdir()
    if subdir not in site.config.platforms:
        raise UsageError(
            f"platform {subdir} is not served by this site (platforms: {', '.join(site.config.platforms)}); "
            f"add it with 'cpkgs init --platform {subdir}'"
        )
    from cpkgs_admin.solve import env_overrides, parse_overrides

    overrides = {**site.config.virtual_packages, **env_overrides(), **parse_overrides(req.overrides)}
    if not req.dry_run:
        envs_dir = site.envs_dir(subdir)
        if not envs_dir.is_dir():
            raise BuildError(f"{envs_dir} does not exist; run 'cpkgs init --platform {subdir}'")
        if not os.access(envs_dir, os.W_OK) or not os.access(site.locks_dir, os.W_OK):
            raise BuildError(f"cannot write to {envs_dir}: permission denied (are you a site admin?)")
        existing_env_problem(site, name, subdir)  # before solving: a taken name needs no solve to be refused
        # Before the solver reads the repodata cache in it: a cache found open to others is closed and cleaned.
        from cpkgs_admin.pkgcache import secure_cache
        from cpkgs_admin.site.locks import cache_locked

        with cache_locked(site):
            cache_warnings = secure_cache(site).warnings
    else:
        cache_warnings = []
    repodata_cache = site.pkgs_cache_dir / "repodata" if os.access(site.state_dir, os.W_OK) else None

    chosen = choose_packages(site, req, lock, subdir, overrides, repodata_cache, log)
    spec, records, requested = chosen.spec, chosen.records, chosen.requested
    timings["solve"] = time.monotonic() - t0
    packages = package_entries(records, chosen.channel_name)
    if req.remove:
        _check_removed(packages, req.remove)
    final = site.env_prefix(name, subdir)
    if req.dry_run:
        return BuildResult(name=name, platform=subdir, prefix=str(final), packages=packages, dry_run=True,
                           seconds=time.monotonic() - t0, timings=timings, warnings=chosen.warnings)

    existing_env_problem(site, name, subdir)  # fail fast, before waiting for a lock
    from cpkgs_admin.outputs.sync import preflight

    preflight(site, req.name, subdir, packages)
    envs_dir = site.envs_dir(subdir)
    with env_locked(site, name, subdir):
        restore = existing_env_problem(site, name, subdir)
        if restore is not None:
            # A run died after the rename: the env is complete and sealed; only its record is missing.
            os.chmod(final, 0o555)
            save_record(site.record_path(name, subdir), restore)
            warnings = _finish_publish(site, restore, "record restored")
            files, size = restore.file_count, restore.size
            return BuildResult(name=name, platform=subdir, prefix=str(final), packages=restore.packages,
                               file_count=files, size=size, seconds=time.monotonic() - t0, restored=True,
                               warnings=warnings)
        clean_stale_staging(site, subdir, name, log)
        record = EnvRecord(
            name=name,
            family=req.name.family,
            version=req.name.version,
            platform=subdir,
            prefix=str(final),
            requested_specs=requested,
            channels=list(chosen.channels),
            channel_urls=chosen.channels,
            packages=packages,
            creator=current_user(),
            host=socket.gethostname(),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            cpkgs_version=__version__,
            size=0,
            file_count=0,
            spec_source=spec.source,
            spec_sha256=spec.sha256,
            extends=list(spec.extends),
            variables=dict(spec.variables),
            virtual_packages=overrides,
        )
        job = _Job(site, record, records, requested, progress, timings, cache_warnings)
        staging, tree = _stage_healing(job)
        try:
            t = time.monotonic()
            from cpkgs_admin.integrity.tree import seal_tree

            seal_tree(staging, site.admin_gid(), top_mode=0o700, tree=tree)
            timings["seal"] = time.monotonic() - t

            t = time.monotonic()
            warnings = [*cache_warnings, *chosen.warnings, *_publish(site, req, staging, record)]
        except OSError as exc:
            # The filesystem failing under the build (EIO, EROFS, ENOSPC outside rattler): one line, what is staged
            # removed where it still can be (else by the next build).
            discard_staging(staging, fenced=False)
            raise BuildError(f"building {name} failed: {os_error_text(exc)}") from exc
        except BaseException:
            discard_staging(staging, fenced=False)
            raise
        timings["publish"] = time.monotonic() - t
    return BuildResult(
        name=name,
        platform=subdir,
        prefix=str(final),
        packages=packages,
        file_count=record.file_count,
        size=record.size,
        seconds=time.monotonic() - t0,
        timings=timings,
        warnings=warnings,
    )


@dataclass
class _Job:
    """What staging an env needs, for a second try after a damaged cache entry was dropped."""

    site: Site
    record: EnvRecord
    records: list[Any]  # rattler's records to install
    requested: list[str]
    progress: bool
    timings: dict[str, float]
    warnings: list[str]


class _DamagedCache(Exception):
    """Verify found files of packages whose cache entries are wrong (the build failed on the cache, not the spec)."""

    def __init__(self, message: str, dists: list[str], first: str) -> None:
        super().__init__(message)
        self.message = message
        self.dists = dists
        self.first = first


def _stage_healing(job: _Job) -> tuple[Path, dict[str, os.stat_result]]:
    """_stage; when verify finds package files wrong in a way their cache entries explain (bit rot, an edit through
    another env's hard link), those entries are dropped and the env staged once more from freshly fetched and
    extracted packages, with a warning naming them. A second failure is the build's error."""
    try:
        return _stage(job)
    except _DamagedCache as damaged:
        from cpkgs_admin.pkgcache import drop_entry
        from cpkgs_admin.site.locks import cache_locked

        with cache_locked(job.site):
            for dist in damaged.dists:
                drop_entry(job.site.pkgs_cache_dir, dist)
        job.warnings.append(f"package cache entr{'y' if len(damaged.dists) == 1 else 'ies'} "
                            f"{', '.join(damaged.dists)} damaged ({damaged.first}): dropped, fetched and extracted "
                            "again")
    try:
        return _stage(job)
    except _DamagedCache as again:
        raise BuildError(f"{again.message}, also after extracting {', '.join(again.dists)} again") from None


def _stage(job: _Job) -> tuple[Path, dict[str, os.stat_result]]:
    """Install into a new hidden staging dir, post-process, verify: (the staging dir, its scan). Any failure
    removes the staging dir; verify failing on package files their cache entries explain raises _DamagedCache."""
    site, record, timings = job.site, job.record, job.timings
    final, subdir = Path(record.prefix), record.platform
    staging = final.with_name(f"{STAGING_PREFIX}{record.name}{STAGING_SEP}{uuid.uuid4().hex[:12]}")
    installing = False
    try:
        os.mkdir(staging, 0o700)
    except PermissionError:
        raise BuildError(f"cannot create {staging}: permission denied (are you a site admin?)") from None
    try:
        t = time.monotonic()
        from cpkgs_admin.integrity.memo import HashMemo
        from cpkgs_admin.pkgcache import RATTLER_CACHE_LOCK, check_entries, close_entry_locks
        from cpkgs_admin.site.locks import cache_locked, wait_for_flock

        with cache_locked(site):
            dropped, fresh = check_entries(site, [_dist_of(p) for p in record.packages])
            job.warnings += dropped
            hard_links = cache_is_admin_only(site.pkgs_cache_dir, site.admin_gid())
            # Files hard-linked from the admin-only cache whose inode an earlier build hashed, unchanged since, are
            # not read again (HashMemo); everything else is. `cpkgs verify` always reads every byte.
            memo = HashMemo(site.pkgs_cache_dir / HASH_MEMO_DIR, site.pkgs_cache_dir) if hard_links else None
            wait_for_flock(site.pkgs_cache_dir / RATTLER_CACHE_LOCK, "the site package cache",
                           site.config.lock_timeout)
            stage = Stage(staging=staging, final=final, subdir=subdir, cache_dir=site.pkgs_cache_dir,
                          envs_dir=final.parent, specs=job.requested, progress=job.progress, hard_links=hard_links)
            plan = plan_install(job.records, stage)
            installing = True
            install_planned(job.records, stage, plan)
            installing = False
            close_entry_locks(site, fresh)
            if memo is not None:  # nobody else may put their own file there for a later build to link
                for pkg in record.packages:
                    memo.harden(_dist_of(pkg))
        os.chmod(staging, 0o700)  # install may have reset it; keep it hidden until sealed
        # py-rattler 0.28 drops a cache marker into the prefix it installs into; it belongs to no package.
        with contextlib.suppress(FileNotFoundError):
            (staging / "CACHEDIR.TAG").unlink()
        timings["install"] = time.monotonic() - t

        t = time.monotonic()
        tree, meta = _post_process_staged(staging, record)
        timings["post"] = time.monotonic() - t

        t = time.monotonic()
        from cpkgs_admin.integrity.checks import check_integrity
        from cpkgs_admin.integrity.owners import Owners

        # The staging dir's owner as the server reports it (NFS may map this admin to another uid).
        owners = Owners(staging.lstat().st_uid, site.pkgs_cache_dir if hard_links else None, site.admin_gid())
        problems, _n, _b, _tree = check_integrity(staging, memo=memo, tree=tree, meta=meta, owners=owners)
        if problems:
            _raise_verify_failed(site, staging, meta, problems, record.name)
        if memo is not None:
            memo.save()
        timings["verify"] = time.monotonic() - t
    except OSError as exc:
        # The filesystem failing under the build (EIO, EROFS, ENOSPC outside rattler): one line, what is staged
        # removed where it still can be (else by the next build).
        discard_staging(staging, fenced=installing)
        raise BuildError(f"building {record.name} failed: {os_error_text(exc)}") from exc
    except BaseException:
        # An install that failed or was interrupted can leave rattler's threads linking the other packages.
        discard_staging(staging, fenced=installing)
        raise
    return staging, tree


def _post_process_staged(staging: Path, record: EnvRecord) -> tuple[dict[str, os.stat_result], Any]:
    """post_process, then cpkgs' own manifests and the embedded record: (the staged tree's scan, its conda-meta)."""
    final = Path(record.prefix)
    from cpkgs_admin.integrity.manifest import (
        EXECUTABLES_LIST,
        SITE_MANIFEST,
        census_at_publish,
        meta_digest,
        read_conda_meta,
        site_manifest,
        unhashed_patched_files,
    )

    # Read and parsed once for the post-process (the usage module index), the manifest, the digest and verify.
    meta = read_conda_meta(staging)
    site_files = post_process(staging, final, record, meta)
    manifest = site_manifest(staging, [*site_files, *unhashed_patched_files(staging, meta)])
    # One walk of the staged env serves the census, verify's unexpected-file check and the seal: nobody
    # else can write the 0700 staging dir, so the scan stays true until the rename.
    from cpkgs_admin.integrity.tree import scan_tree

    tree = scan_tree(staging)
    from cpkgs_admin.integrity.content import check_installed

    check_installed(staging, final, meta, tree)
    record.file_count, record.size, executables = census_at_publish(tree)
    record.file_count += 3  # the manifest, the executables list and the embedded record below
    _write_staged_json(staging / SITE_MANIFEST, manifest)
    _write_staged_json(staging / EXECUTABLES_LIST, executables)
    record.meta_sha256 = meta_digest(staging, meta)
    _write_staged_json(staging / EMBEDDED_RECORD, record.to_json())
    for rel in (SITE_MANIFEST, EXECUTABLES_LIST, EMBEDDED_RECORD):
        tree[rel] = os.lstat(staging / rel)
    return tree, meta


# Problems a damaged cache entry explains: a package file with other bytes, gone, of another type, or owned by
# someone else (the cache inode itself, hard-linked, or the copy made of it).
_CACHE_KINDS = frozenset({"modified", "missing", "replaced", "owner"})


def _raise_verify_failed(site: Site, staging: Path, meta: Any, problems: list[Any], name: str) -> None:
    from cpkgs_admin.integrity.manifest import expected_files

    p = problems[0]
    message = (f"verify failed before publishing {name}: {p.kind} {p.path} ({p.detail})"
               + (f" and {len(problems) - 1} more" if len(problems) > 1 else ""))
    dist_of = {rel: e.dist for rel, e in expected_files(staging, meta).items()}
    dists = sorted({dist_of.get(q.path, "") for q in problems})
    if all(q.kind in _CACHE_KINDS for q in problems) and all(d and (site.pkgs_cache_dir / d).is_dir() for d in dists):
        raise _DamagedCache(message, dists, f"{p.kind} {p.path}: {p.detail}")
    raise BuildError(message)


def _publish(site: Site, req: BuildRequest, staging: Path, record: EnvRecord) -> list[str]:
    """Rename the sealed staging dir into place, then the record, generated files and audit line; the warnings."""
    from cpkgs_admin.outputs.sync import preflight

    name, subdir, final = record.name, record.platform, Path(record.prefix)
    with site_locked(site):
        # Again, under the site lock: two families racing for one module or kernel name cannot both pass.
        preflight(site, req.name, subdir, record.packages)
        # From the publish point on, an interrupt waits for the record, the generated files and the audit
        # line: an env half registered (published, no record) is worse than finishing in a moment.
        with _interrupts_deferred() as interrupted:
            # The publish point: rename is atomic on one filesystem, so users see no env or a whole sealed
            # one. The top dir opens to users only after the rename: a kill in between leaves nothing they
            # can enter.
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    # NFS clients cache "no such file" for a while: another host published this name
                    # after our existence checks looked.
                    msg = f"environment {name} ({subdir}) already exists: another run published it meanwhile"
                    raise EnvExists(msg) from None
                raise
            os.chmod(final, 0o555)
            # The activate.d scripts run at their final prefix, once, here: the record keeps what they set,
            # so modulefiles and kernels written later on any host (refresh on a Mac) carry it.
            from cpkgs_admin.outputs.activation import keep_activation

            act_error = keep_activation(site, record)
            act_warning = [f"{name}: {act_error}; its modulefile and kernels get conda's own variables only"
                           ] if act_error else []
            save_record(site.record_path(name, subdir), record)
            # Still under the site lock (publish_outside takes it again, nested): one acquisition, not two.
            warnings = [*act_warning, *_finish_publish(site, record, "ok")]
        if interrupted:
            warnings.append(f"interrupted after the publish point: {name} is published and recorded")
    return warnings


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[list[int]]:
    """SIGINT and SIGTERM only noted while the block runs (a list that gets the signal numbers); the default
    handling comes back after it. In the main thread only (signal handlers cannot be set elsewhere)."""
    import signal
    import threading

    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    wanted = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in wanted}
    for sig in wanted:
        signal.signal(sig, lambda signum, _frame: got.append(signum))
    try:
        yield got
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _finish_publish(site: Site, record: EnvRecord, result: str) -> list[str]:
    """After the publish point the env exists whatever happens next: generated files (modulefile, kernels) and
    the audit line are best effort. A failure is a warning naming the repair, not a failed command for an env
    that users can already activate."""
    from cpkgs_admin.outputs.sync import publish_outside

    warnings: list[str] = []
    try:
        publish_outside(site, record, warnings)
    except (CpkgsError, OSError) as exc:
        warnings.append(f"{record.name} is published, but its modulefile/kernels were not written: {exc}; "
                        "run 'cpkgs refresh'")
    try:
        audited(site, "new-env", env=record.name, platform=record.platform, packages=len(record.packages),
                result=result)
    except (CpkgsError, OSError) as exc:
        warnings.append(f"{record.name} is published, but the audit line was not written: {exc}")
    return warnings
