"""`cpkgs new-env`: the pipeline of DESIGN.md, one function per step.

spec -> solve -> stage (hidden 0700 dir in the same envs/, final prefix patched in) -> post-process -> verify ->
seal -> publish (rename, record, generated files, audit). A kill at any moment leaves at most a hidden staging dir
that the next run for that name removes; the lock is a lease that a dead owner does not hold.
"""

from __future__ import annotations

import asyncio
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

from cpkgs_admin import __version__
from cpkgs_admin.errors import BuildError, CpkgsError, EnvExists, SpecError, UsageError
from cpkgs_admin.locking import SiteLock, audited, current_user, env_locked, site_locked, write_staged
from cpkgs_admin.names import EnvName
from cpkgs_admin.records import EnvRecord, PackageEntry, save_record
from cpkgs_admin.site import Site
from cpkgs_admin.spec import (
    Spec,
    apply_changes,
    check_sources,
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
# Inside the site package cache: digests of cache inodes new-env has already hashed (verify.HashMemo).
HASH_MEMO_DIR = ".cpkgs-verified"
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
                {"name": p.name, "version": p.version, "build": p.build, "channel": p.channel, "sha256": p.sha256}
                for p in self.packages
            ],
        }


# ----------------------------------------------------------------------------------------------------- 1. spec


def resolve_spec(site: Site, req: BuildRequest, subdir: str) -> tuple[Spec, list[Any]]:
    """(spec, locked records for --from). --lock is handled separately."""
    check_sources(req.specs, req.spec_file, req.from_env, req.lock_file, req.add, req.remove)
    if req.from_env:
        from cpkgs_admin.envs import get_record

        old = get_record(site, req.from_env, subdir)
        if old.status == "removed":
            raise SpecError(f"--from {old.name}: that environment was removed; its exact packages are no longer on "
                            "the drive (rebuild from its lock: cpkgs export, then new-env --lock)")
        from cpkgs_admin.spec import spec_name

        validate_specs(req.add)
        # An env built from a lock file requested no specs: every package it holds counts as requested.
        base = tuple(old.requested_specs) or tuple(p.name for p in old.packages)
        specs = apply_changes(base, req.add, req.remove)
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
        spec = Spec(specs=specs, source=f"--from {old.name}", extends=tuple(old.extends),
                    variables=tuple(old.variables.items()))
        return spec, locked
    if req.spec_file:
        spec = from_environment_file(req.spec_file)
        if req.specs:
            spec = dataclasses.replace(spec, specs=spec.specs + validate_specs(req.specs))
        return spec, []
    if req.specs:
        return Spec(specs=validate_specs(req.specs), source="command line"), []
    return from_family(site.specs_dir, req.name.family), []


def _prefix_records(prefix: Path) -> list[Any]:
    from rattler import PrefixRecord

    out = []
    for p in sorted((prefix / "conda-meta").glob("*.json")):
        with contextlib.suppress(Exception):
            out.append(PrefixRecord.from_path(p))
    return out


def package_entries(records: list[Any]) -> list[PackageEntry]:
    out = []
    for r in sorted(records, key=lambda r: r.name.normalized):
        out.append(
            PackageEntry(
                name=r.name.normalized,
                version=str(r.version),
                build=str(r.build),
                channel=str(r.channel or ""),
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
    from cpkgs_admin.seal import make_removable

    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            make_removable(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale_staging(envs_dir: Path, name: str, log: Log) -> None:
    """Under the name lock, any staging dir for NAME belongs to a run that died: remove it."""
    if not envs_dir.is_dir():
        return
    for entry in os.scandir(envs_dir):
        if not entry.name.startswith(f"{STAGING_PREFIX}{name}{STAGING_SEP}"):
            continue
        doomed = Path(entry.path)
        if log:
            log(f"removing leftover staging dir {doomed.name} of an interrupted run")
        remove_leftover(doomed)


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


def check_space(path: Path, records: list[Any]) -> None:
    import psutil

    # .conda archives are zstd: unpacked trees are typically 3-5x larger; count 4x plus the cached archive.
    archive = sum(int(r.size or 0) for r in records)
    need = archive * 5
    free = psutil.disk_usage(str(path)).free
    if need > free:
        raise BuildError(
            f"not enough space on {path}: about {need // 2**20} MiB needed, {free // 2**20} MiB free"
        )


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


def install_into(
    records: list[Any],
    staging: Path,
    final: Path,
    subdir: str,
    cache_dir: Path,
    specs: list[str],
    progress: bool,
    hard_links: bool,
) -> None:
    from rattler import Config, MatchSpec, Platform, install

    # Hard links only into an admin-only cache: the shared inode is sealed with the env, and `unseal` breaks the
    # links before anything becomes writable. Files whose prefix is patched are always fresh copies. Symlinks stay
    # allowed: rattler uses them only for the package's own symlinks (bin/python -> python3.11), never into the
    # cache; forbidding them would turn those into copies.
    config = Config.from_toml(f"allow-hard-links = {str(hard_links).lower()}\nallow-symbolic-links = true\n")
    native = subdir == _native()

    async def run() -> None:
        await install(
            records,
            target_prefix=staging,
            cache_dir=cache_dir,
            installed_packages=[],
            platform=Platform(subdir),
            execute_link_scripts=native,
            show_progress=progress,
            # py-rattler 0.28 hands this list to Rust unwrapped; pass the inner objects it expects.
            requested_specs=[MatchSpec(s)._match_spec for s in specs] if specs else None,
            alternative_target_prefix=final,
            config=config,
        )

    try:
        asyncio.run(run())
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise BuildError(f"install into {staging.name} failed: {text[0] if text else type(exc).__name__}") from None


def _native() -> str:
    from cpkgs_admin.site import native_subdir

    return native_subdir()


# ----------------------------------------------------------------------------------------------------- 4. post-process


def explicit_text(packages: list[PackageEntry], subdir: str, variables: dict[str, str] | None = None) -> str:
    """A conda explicit file; the env's spec-file variables ride along as comments (conda skips them, `cpkgs
    new-env --lock` reads them back)."""
    from cpkgs_admin.spec import VARIABLE_COMMENT

    lines = [
        "# This file may be used to create an environment using: cpkgs new-env NAME --lock FILE",
        f"# platform: {subdir}",
        *(f"{VARIABLE_COMMENT} {k}={v}" for k, v in (variables or {}).items()),
        "@EXPLICIT",
    ]
    for p in packages:
        lines.append(f"{p.url}#{p.sha256}" if p.sha256 else (f"{p.url}#{p.md5}" if p.md5 else p.url))
    return "\n".join(lines) + "\n"


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
    from cpkgs_admin.spec import check_variables

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
    from cpkgs_admin.integrations import env_integration_files
    from cpkgs_admin.usage.hook import write_usage_files

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
        from cpkgs_admin.verify import read_conda_meta

        meta = read_conda_meta(staging)
    # The usage hook and module index (usage/hook.py): in every env with python, whether records are on or not.
    usage = write_usage_files(staging, final, record, meta, native=record.platform == _native())
    return [*ours, *added, *usage]


# ----------------------------------------------------------------------------------------------------- pipeline


def _check_removed(packages: list[PackageEntry], remove: tuple[str, ...]) -> None:
    """--remove PKG that the solver put back (another package needs it): refused, naming who needs it."""
    from cpkgs_admin.spec import spec_name

    back = sorted({spec_name(r) for r in remove} & {p.name for p in packages})
    if back:
        name = back[0]
        needs = sorted(p.name for p in packages if any(spec_name(d) == name for d in p.depends))
        raise SpecError(f"--remove {name}: still needed by {', '.join(needs) or 'the other packages'}; "
                        "remove what needs it too")


def existing_env_problem(site: Site, name: str, subdir: str) -> EnvRecord | None:
    """Raise EnvExists when NAME is taken; return an embedded record to restore when a run died after publishing."""
    from cpkgs_admin.records import load_record_file, record_from_json

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
    # With an admin group, what this build and rattler create in the shared cache and state (lock files, cache
    # entries, the hash memo) must stay usable by the other admins, whatever this admin's umask: group-writable
    # (the site's setgid dirs give it the admin group). Envs are sealed whatever the umask.
    old_umask = os.umask(0o002) if site.config.admin_group else None
    try:
        return _new_env(site, req, progress=progress, log=log)
    finally:
        if old_umask is not None:
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
    from cpkgs_admin.solve import check_channels, env_overrides, parse_overrides, resolve_lock, solve, virtual_packages

    overrides = {**site.config.virtual_packages, **env_overrides(), **parse_overrides(req.overrides)}
    if not req.dry_run:
        envs_dir = site.envs_dir(subdir)
        if not envs_dir.is_dir():
            raise BuildError(f"{envs_dir} does not exist; run 'cpkgs init --platform {subdir}'")
        if not os.access(envs_dir, os.W_OK) or not os.access(site.locks_dir, os.W_OK):
            raise BuildError(f"cannot write to {envs_dir}: permission denied (are you a site admin?)")
        existing_env_problem(site, name, subdir)  # before solving: a taken name needs no solve to be refused
    repodata_cache = site.pkgs_cache_dir / "repodata" if os.access(site.state_dir, os.W_OK) else None

    if lock is not None:
        wanted = req.channels or site.config.channels
        channels = check_channels(wanted) if wanted else []
        if log:
            log(f"resolving {len(lock.packages)} locked packages")
        records = resolve_lock(lock, channels, subdir, repodata_cache)
        spec = Spec(specs=(), channels=tuple(channels), source=f"--lock {req.lock_file}", variables=lock.variables)
        requested: list[str] = []
    else:
        spec, locked = resolve_spec(site, req, subdir)
        if not spec.specs:
            raise SpecError(f"nothing to install: {spec.source} lists no dependencies")
        channels = check_channels(req.channels or spec.channels or site.config.channels)
        if log:
            log(f"solving {' '.join(spec.specs)} for {subdir}")
        records = solve(channels, spec.specs, subdir, virtual_packages(subdir, overrides), locked, repodata_cache)
        requested = list(spec.specs)
    timings["solve"] = time.monotonic() - t0
    packages = package_entries(records)
    if req.remove:
        _check_removed(packages, req.remove)
    final = site.env_prefix(name, subdir)
    if req.dry_run:
        return BuildResult(name=name, platform=subdir, prefix=str(final), packages=packages, dry_run=True,
                           seconds=time.monotonic() - t0, timings=timings)

    existing_env_problem(site, name, subdir)  # fail fast, before waiting for a lock
    from cpkgs_admin.integrations import preflight

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
        clean_stale_staging(envs_dir, name, log)
        check_space(envs_dir, records)
        staging = envs_dir / f"{STAGING_PREFIX}{name}{STAGING_SEP}{uuid.uuid4().hex[:12]}"
        installing = False
        try:
            os.mkdir(staging, 0o700)
        except PermissionError:
            raise BuildError(f"cannot create {staging}: permission denied (are you a site admin?)") from None
        try:
            t = time.monotonic()
            hard_links = cache_is_admin_only(site.pkgs_cache_dir, site.admin_gid())
            # py-rattler guards its package cache with flock, which NFS does not honour across hosts: builds on
            # two hosts could extract into one cache entry at once. The NFS-safe lock serializes them.
            from cpkgs_admin.verify import HashMemo

            # Files hard-linked from the admin-only cache whose inode an earlier build hashed, unchanged since, are
            # not read again (HashMemo); everything else is. `cpkgs verify` always reads every byte.
            memo = HashMemo(site.pkgs_cache_dir / HASH_MEMO_DIR, site.pkgs_cache_dir) if hard_links else None
            with SiteLock(site.locks_dir / "pkgs-cache.lock", what="the site package cache",
                          lease_seconds=site.config.lease_seconds, timeout=site.config.lock_timeout):
                installing = True
                install_into(records, staging, final, subdir, site.pkgs_cache_dir, requested, progress, hard_links)
                installing = False
                if memo is not None:  # nobody else may put their own file there for a later build to link
                    for pkg in packages:
                        memo.harden(_dist_of(pkg))
            os.chmod(staging, 0o700)  # install may have reset it; keep it hidden until sealed
            # py-rattler 0.28 drops a cache marker into the prefix it installs into; it belongs to no package.
            with contextlib.suppress(FileNotFoundError):
                (staging / "CACHEDIR.TAG").unlink()
            timings["install"] = time.monotonic() - t

            t = time.monotonic()
            record = EnvRecord(
                name=name,
                family=req.name.family,
                version=req.name.version,
                platform=subdir,
                prefix=str(final),
                requested_specs=requested,
                channels=list(channels),
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
            from cpkgs_admin.verify import (
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
            from cpkgs_admin.seal import scan_tree

            tree = scan_tree(staging)
            record.file_count, record.size, executables = census_at_publish(tree)
            record.file_count += 3  # the manifest, the executables list and the embedded record below
            _write_staged_json(staging / SITE_MANIFEST, manifest)
            _write_staged_json(staging / EXECUTABLES_LIST, executables)
            record.meta_sha256 = meta_digest(staging, meta)
            _write_staged_json(staging / EMBEDDED_RECORD, record.to_json())
            for rel in (SITE_MANIFEST, EXECUTABLES_LIST, EMBEDDED_RECORD):
                tree[rel] = os.lstat(staging / rel)
            timings["post"] = time.monotonic() - t

            t = time.monotonic()
            from cpkgs_admin.verify import Owners, check_integrity

            # The staging dir's owner as the server reports it (NFS may map this admin to another uid).
            owners = Owners(staging.lstat().st_uid, site.pkgs_cache_dir if hard_links else None, site.admin_gid())
            problems, _n, _b, _tree = check_integrity(staging, memo=memo, tree=tree, meta=meta, owners=owners)
            if problems:
                p = problems[0]
                raise BuildError(
                    f"verify failed before publishing {name}: {p.kind} {p.path} ({p.detail})"
                    + (f" and {len(problems) - 1} more" if len(problems) > 1 else "")
                )
            if memo is not None:
                memo.save()
            timings["verify"] = time.monotonic() - t

            t = time.monotonic()
            from cpkgs_admin.seal import seal_tree

            seal_tree(staging, site.admin_gid(), top_mode=0o700, tree=tree)
            timings["seal"] = time.monotonic() - t

            t = time.monotonic()
            from cpkgs_admin.integrations import preflight

            with site_locked(site):
                # Again, under the site lock: two families racing for one module or kernel name cannot both pass.
                preflight(site, req.name, subdir, packages)
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
                    from cpkgs_admin.integrations import keep_activation

                    act_error = keep_activation(site, record)
                    act_warning = [f"{name}: {act_error}; its modulefile and kernels get conda's own variables only"
                                   ] if act_error else []
                    save_record(site.record_path(name, subdir), record)
                    # Still under the site lock (publish_outside takes it again, nested): one acquisition, not two.
                    warnings = [*act_warning, *_finish_publish(site, record, "ok")]
                if interrupted:
                    warnings.append(f"interrupted after the publish point: {name} is published and recorded")
        except BaseException:
            # An install that failed or was interrupted can leave rattler's threads linking the other packages.
            discard_staging(staging, fenced=installing)
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
    from cpkgs_admin.integrations import publish_outside

    warnings = []
    try:
        publish_outside(site, record)
    except (CpkgsError, OSError) as exc:
        warnings.append(f"{record.name} is published, but its modulefile/kernels were not written: {exc}; "
                        "run 'cpkgs refresh'")
    try:
        audited(site, "new-env", env=record.name, platform=record.platform, packages=len(record.packages),
                result=result)
    except (CpkgsError, OSError) as exc:
        warnings.append(f"{record.name} is published, but the audit line was not written: {exc}")
    return warnings
