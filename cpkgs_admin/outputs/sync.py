"""The generated files outside envs (kernelspecs, modulefiles, the catalog page) kept in line with the records.

`preflight` runs before anything is installed and refuses an env whose generated names collide with another's.
`publish_outside` runs after publishing (and after `retire`, `seal`) and writes them; `withdraw_outside` runs after
`remove`. `cpkgs refresh` (lifecycle/refresh.py) regenerates them for every env.

Kernelspecs and modulefiles are per platform: every platform has its own trees (`Site.outputs_root`: the root for
the site's primary platform, the first in cpkgs.yaml's `platforms`; the platform's installation for the others).
So NAME built for two platforms has two independent sets of files, each pointing into its own installation, and
name collisions, family defaults (.modulerc) and orphans are all decided within one platform's tree.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError, UsageError
from cpkgs_admin.outputs.activation import Activation, record_activation
from cpkgs_admin.outputs.catalog import after_change
from cpkgs_admin.outputs.kernels import generated_kernel_files, kernel_files, kernel_names, kernel_owner, wants_kernel
from cpkgs_admin.outputs.modules import family_files, is_generated, module_files
from cpkgs_admin.site.files import make_dirs_exact, write_if_changed
from cpkgs_admin.site.locks import site_locked
from cpkgs_admin.site.names import parse_name
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, PackageEntry, load_all
from cpkgs_admin.site.usage_config import usage_variables

# ----------------------------------------------------------------------------------------------------- preflight


def preflight(site: Site, name: Any, subdir: str, packages: list[PackageEntry]) -> None:
    """Before anything is installed: refuse an env whose module or kernel names would collide with another env's
    of the same platform (each platform has its own module and kernel trees). A damaged record still names its env
    (the file's name): its names stay taken, and it does not stop other builds."""
    damaged: list[tuple[Path, str]] = []
    # (name, family, version, may have kernels) of the platform's other envs
    others: list[tuple[str, str, str, bool]] = [
        (r.name, r.family, r.version, wants_kernel(r.all_packages))
        for r in load_all(site.records_dir, shared=True, damaged=damaged)
        if r.status != "removed" and r.name != name.name and r.platform == subdir
    ]
    for path, _why in damaged:
        if path.parent.name == subdir and path.stem != name.name:
            with contextlib.suppress(CpkgsError):
                n = parse_name(path.stem)
                others.append((n.name, n.family, n.version, True))
    for other, family, version, _k in others:
        if family != name.family and family.casefold() == name.family.casefold():
            raise UsageError(
                f"{name.name} would put modules in {name.family}/, which differs only in case from {family}/ "
                f"of {other}; use the family name {family}"
            )
        if family == name.family and version == name.version:
            raise UsageError(
                f"{name.name} and {other} would both be module {family}/{version}; choose another name"
            )
    if not wants_kernel(packages):
        return
    mine = set(kernel_names(name.name))
    for other, _f, _v, kernels in others:
        if kernels and mine & set(kernel_names(other)):
            clash = sorted(mine & set(kernel_names(other)))[0]
            raise UsageError(
                f"{name.name} and {other} would both have the Jupyter kernel {clash}; choose another name"
            )
    for k in sorted(mine):
        spec = site.kernel_dir(k, subdir) / "kernel.json"
        # A kernel cpkgs wrote for a name no longer published is an orphan `refresh` removes; anyone else's stays.
        if spec.exists() and kernel_owner(spec) is None:
            raise UsageError(f"{name.name} would replace the Jupyter kernel {spec.parent}, which cpkgs did not write")


# ----------------------------------------------------------------------------------------------------- outside envs


def file_mode(site: Site) -> tuple[int, int, int | None]:
    """(dir mode, file mode, group) of generated files: the same rule as `cpkgs init`. Group-writable only with the
    admin group, which must exist on this host (a ConfigError otherwise: never group-writable for another group)."""
    dmode, fmode = site.shared_modes()
    return dmode, fmode, site.admin_gid()


def published(site: Site, records: list[EnvRecord]) -> list[EnvRecord]:
    """The published envs of every platform (each has its own outside files), oldest first."""
    live = [r for r in records if r.status != "removed" and Path(r.prefix).is_dir()]
    return sorted(live, key=lambda r: (r.created, r.name, r.platform))


def env_outputs(site: Site, rec: EnvRecord, warnings: list[str] | None = None) -> dict[Path, str]:
    """Kernelspecs and modulefiles of one env, in its platform's trees."""
    act = record_activation(site, rec, warnings)
    if rec.python_version is not None:
        # Usage records (site/usage_config.py): the env's hook reads CPKGS_USAGE_SEND, which a module load or a kernel
        # must set as conda.sh does; a refresh adds or drops it when cpkgs.yaml's usage.enabled changes.
        act = Activation(act.path_prepend, act.variables + usage_variables(site.config.usage, str(site.root)))
    return {**kernel_files(site, rec, act), **module_files(site, rec, act)}


def family_outputs(site: Site, family: str, platform: str, chosen: list[EnvRecord]) -> dict[Path, str]:
    """The .modulerc files of FAMILY in PLATFORM's tree, from that platform's members only."""
    members = [r for r in chosen if r.family == family and r.platform == platform]
    return family_files(site, family, platform, members)


def write_outputs(site: Site, files: dict[Path, str]) -> list[str]:
    dmode, fmode, gid = file_mode(site)
    changed = []
    for path, text in sorted(files.items()):
        make_dirs_exact(path.parent, dmode, gid)  # explicit: an admin's umask 077 must not hide modules from users
        if write_if_changed(path, text, fmode, gid):
            changed.append(str(path))
    return changed


def remove_outputs(paths: list[Path], stop: tuple[Path, ...]) -> list[str]:
    """Unlink generated files, then their directories while empty (never above STOP). Small files are unlinked,
    not trashed: a reader on another host that has one open keeps it through NFS's silly-rename."""
    removed = []
    for path in sorted(set(paths)):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path))
        d = path.parent
        while d not in stop and d != d.parent:
            try:
                d.rmdir()
            except OSError:  # not empty (another file, or a .nfsXXXX of an open one): leave it
                break
            d = d.parent
    return removed


def stops(site: Site, platforms: list[str]) -> tuple[Path, ...]:
    """Directories remove_outputs never removes: each platform's tree tops, its installation and the root."""
    out: list[Path] = [site.root]
    for p in platforms:
        out += [site.kernels_dir(p), site.modulefiles_dir(p), site.modulefiles_tcl_dir(p), site.outputs_root(p)]
    return tuple(out)


def _family_of(name: str) -> str | None:
    try:
        return parse_name(name).family
    except CpkgsError:
        return None


def _sync_name(site: Site, rec: EnvRecord) -> tuple[list[str], list[str]]:
    """Bring the outside files of REC's name and family in REC's platform's trees in line with the records;
    (written, removed)."""
    plat = rec.platform
    damaged: list[tuple[Path, str]] = []
    chosen = [r for r in published(site, load_all(site.records_dir, shared=True, damaged=damaged))
              if r.platform == plat]
    target = next((r for r in chosen if r.name == rec.name), None)
    desired: dict[Path, str] = {}
    if target is not None:
        desired.update(env_outputs(site, target))
    # The family's default version needs every member's record: with one of them damaged, its .modulerc files
    # stay as they are until the record is repaired (`refresh` then says what it could not read).
    family_whole = not any(p.parent.name == plat and _family_of(p.stem) == rec.family for p, _why in damaged)
    if family_whole:
        desired.update(family_outputs(site, rec.family, plat, chosen))
    written = write_outputs(site, desired)
    candidates = [site.module_file(rec.family, rec.version, plat), site.module_file_tcl(rec.family, rec.version, plat)]
    if family_whole:
        candidates += [site.module_rc(rec.family, plat), site.module_rc_tcl(rec.family, plat)]
    stale = [p for p in candidates if p not in desired and p.is_file() and is_generated(p)]
    stale += [p for p in generated_kernel_files(site, plat) if kernel_owner(p) == rec.name and p not in desired]
    return written, remove_outputs(stale, stops(site, [plat]))


def publish_outside(site: Site, record: Any, warnings: list[str] | None = None) -> list[str]:
    """Generated files outside the env for a newly published or changed env; returns paths written. The catalog
    page comes last and is best effort: its failure is a line in WARNINGS."""
    with site_locked(site):
        written, removed = _sync_name(site, record)
        catalog = after_change(site, record, warnings)
    return written + removed + catalog


def withdraw_outside(site: Site, record: Any, warnings: list[str] | None = None) -> list[str]:
    """Remove generated files of a removed env (its platform's trees only); returns paths removed. Its catalog page
    stays, saying it was removed (best effort, as in publish_outside)."""
    with site_locked(site):
        _written, removed = _sync_name(site, record)
        after_change(site, record, warnings)
    return removed
