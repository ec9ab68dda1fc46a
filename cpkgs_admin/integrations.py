"""Hooks the build pipeline calls for site integrations (SQLite off NFS, PEP 668, kernels, modulefiles).

`preflight` runs before anything is installed and refuses an env whose generated names collide with another's.
`env_integration_files` are written inside the env before sealing; `publish_outside` runs after publishing (and
after `retire`) and writes the generated files that live outside envs (kernelspecs, modulefiles);
`withdraw_outside` runs after `remove`. `cpkgs refresh` (refresh.py) regenerates the outside files for every env.

Kernelspecs and modulefiles are per platform: every platform has its own trees (`Site.outputs_root`: the root for
the site's primary platform, the first in cpkgs.yaml's `platforms`; the platform's installation for the others).
So NAME built for two platforms has two independent sets of files, each pointing into its own installation, and
name collisions, family defaults (.modulerc) and orphans are all decided within one platform's tree.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError, UsageError
from cpkgs_admin.kernels import generated_kernel_files, kernel_files, kernel_names, kernel_owner, wants_kernel
from cpkgs_admin.localdb import db_config_files, stdlib_dir
from cpkgs_admin.modules import family_files, is_generated, module_files
from cpkgs_admin.site.files import make_dirs_exact, write_if_changed
from cpkgs_admin.site.locks import site_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, PackageEntry, load_all

MARKER = "EXTERNALLY-MANAGED"
# Shell bookkeeping and what the module/kernel set themselves: not "variables the activate.d scripts set".
_NOT_ACTIVATION = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "PATH", "CONDA_PREFIX", "CONDA_DEFAULT_ENV"})
ACTIVATION_TIMEOUT = 60.0


# ----------------------------------------------------------------------------------------------------- activation


@dataclass(frozen=True)
class Activation:
    """What an env's etc/conda/activate.d/*.sh scripts do to the environment, beyond conda's own PATH entry."""

    path_prepend: tuple[str, ...] = ()
    variables: tuple[tuple[str, str], ...] = ()


# Who runs an env's activate.d scripts when cpkgs measures what they set (at publish, seal, refresh): they are a
# channel's code, so never root. Run by root, the measuring shell runs as uid/gid 65534 (nobody/nogroup on Linux; on
# macOS an id no account has: either way one that owns nothing, and needs no passwd entry to be switched to), with
# no supplementary groups, a clean environment, no stdin and "/" (readable by anyone) as its working directory: a
# script can then read what every user can read and write nothing of the site's or the admin's. An admin who is not
# root builds with their own uid: switching to another user needs privileges, and an unprivileged user namespace
# (unshare -U) only renames the admin inside it while the kernel still grants the scripts everything the admin may
# write; so the scripts run as that admin, as they would when that admin activates the env themself.
MEASURING_UID = 65534
MEASURING_GID = 65534


def _run_sh(script: str, env: dict[str, str], where: Path) -> bytes:
    as_nobody = os.geteuid() == 0
    drop: dict[str, Any] = (
        {"user": MEASURING_UID, "group": MEASURING_GID, "extra_groups": []} if as_nobody else {}
    )
    try:
        # Its own session: a Ctrl-C at the terminal is cpkgs' to handle, not the scripts' to die of.
        proc: subprocess.CompletedProcess[bytes] = subprocess.run(
            ["/bin/sh", "-c", script], env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True,
            timeout=ACTIVATION_TIMEOUT, check=False, start_new_session=True, **drop,
        )
    except subprocess.TimeoutExpired:
        raise CpkgsError(f"{where}: activate.d scripts did not finish within {ACTIVATION_TIMEOUT:.0f}s") from None
    return proc.stdout


def _measuring_user() -> str:
    return f"uid {MEASURING_UID}" if os.geteuid() == 0 else "this user"


def _env0(dump: bytes) -> dict[str, str]:
    """`env -0` output -> variables."""
    out: dict[str, str] = {}
    for item in dump.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


_measured: dict[tuple[Path, str], Activation] = {}


def activation_of(prefix: Path, name: str) -> Activation:
    """activation_of_scripts, once per env and process (new-env records it, then writes the modulefile with it)."""
    key = (prefix, name)
    if key not in _measured:
        _measured[key] = activation_of_scripts(prefix, name)
    return _measured[key]


def activation_of_scripts(prefix: Path, name: str) -> Activation:
    """Run PREFIX's activate.d/*.sh in a clean `sh` with CONDA_PREFIX set, as an unprivileged user (see _run_sh),
    and diff `env -0` before and after.

    The one place this is computed; kernelspecs and modulefiles both use it. Values are fixed at publish: a script
    that reads the user's own environment (say $JAVA_HOME) gets the publisher's clean one.
    """
    act_dir = prefix / "etc" / "conda" / "activate.d"
    try:
        scripts = sorted(p for p in act_dir.iterdir() if p.name.endswith(".sh") and p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return Activation()
    if not scripts:
        return Activation()
    base_path = f"{prefix}/bin:/usr/bin:/bin"
    env = {"PATH": base_path, "CONDA_PREFIX": str(prefix), "CONDA_DEFAULT_ENV": name, "CONDA_SHLVL": "1",
           "HOME": "/nonexistent", "LC_ALL": "C"}
    # One shell: its environment, a separator no variable can contain (NUL-delimited, random), the scripts sourced
    # like conda does (one after another in sorted order, a failing one does not stop the rest; their own output
    # goes to stderr, away from the dumps), then its environment again.
    sep = f"cpkgs-{uuid.uuid4().hex}"
    # A script the measuring user cannot read would be skipped with a complaint on stderr (or end dash): an
    # activation measured without it would look complete. Checked first, by that user.
    unreadable = f"unreadable-{sep}:"
    readable = "".join(f"[ -r {shlex.quote(str(s))} ] || {{ printf '{unreadable}%s' {shlex.quote(s.name)}; exit 1; }}\n"
                       for s in scripts)
    sourcing = "".join(f". {shlex.quote(str(s))}\n" for s in scripts)
    out = _run_sh(f"{readable}env -0; printf '\\0{sep}\\0'; {{\n{sourcing}}} >&2; env -0", env, act_dir)
    if out.startswith(unreadable.encode()):
        script = out[len(unreadable):].decode("utf-8", "replace")
        raise CpkgsError(f"{act_dir}: {_measuring_user()} cannot read {script}: activation is measured as an "
                         "unprivileged user, so the env must be readable by all users")
    first, found, second = out.partition(f"\0{sep}\0".encode())
    if not found or not second:
        what = "an activate.d script ended the shell (exit?)" if found else "/bin/sh did not run them"
        raise CpkgsError(f"{act_dir}: cannot read what the scripts set: {what}")
    before, after = _env0(first), _env0(second)
    variables = tuple(
        sorted((k, v) for k, v in after.items() if k not in _NOT_ACTIVATION and before.get(k) != v)
    )
    new_path = after.get("PATH", base_path)
    prepend: list[str] = []
    if new_path != base_path:
        if new_path.endswith(":" + base_path):
            prepend = new_path[: -len(base_path) - 1].split(":")
        else:
            old = set(base_path.split(":"))
            prepend = [p for p in new_path.split(":") if p and p not in old]
    return Activation(path_prepend=tuple(p for p in prepend if p), variables=variables)


# ----------------------------------------------------------------------------------------------------- inside envs


def marker_text(name: str) -> str:
    return (
        "[externally-managed]\n"
        f"Error=This Python belongs to {name}, a shared, read-only environment managed by cpkgs:\n"
        " pip cannot install into it (not even with --user, and not as root).\n"
        " To add packages of your own, make a personal environment layered on it:\n"
        f"     cpkgs extend {name} DIR\n"
        " Site admins change shared environments by building a new version (cpkgs new-env).\n"
    )


def env_integration_files(staging: Path, final: Path, record: Any) -> dict[str, str]:
    """Files for inside the env before sealing (the PEP 668 marker, the SQLite-off-NFS configs): relative path ->
    text; the build writes them with its own.

    Envs without python get nothing. Nothing here embeds a path (the config finds its directory at run time), so
    FINAL is not needed; it is in the signature because anything that does must embed it, not STAGING.
    """
    if record.python_version is None:
        return {}
    stdlib = stdlib_dir(staging)
    files: dict[str, str] = {}
    if stdlib is not None:
        files[str((stdlib / MARKER).relative_to(staging))] = marker_text(record.name)
    files.update(db_config_files(stdlib))
    return files


# ----------------------------------------------------------------------------------------------------- preflight


def preflight(site: Site, name: Any, subdir: str, packages: list[PackageEntry]) -> None:
    """Before anything is installed: refuse an env whose module or kernel names would collide with another env's
    of the same platform (each platform has its own module and kernel trees). A damaged record still names its env
    (the file's name): its names stay taken, and it does not stop other builds."""
    from cpkgs_admin.site.names import parse_name

    damaged: list[tuple[Path, str]] = []
    # (name, family, version, may have kernels) of the platform's other envs
    others: list[tuple[str, str, str, bool]] = [
        (r.name, r.family, r.version, wants_kernel(r.packages))
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


def activation_to_json(act: Activation) -> dict[str, Any]:
    return {"path_prepend": list(act.path_prepend), "variables": dict(act.variables)}


def activation_from_json(data: Any) -> Activation | None:
    """The activation a record keeps; None when it has none or it is not in the shape cpkgs writes."""
    if not isinstance(data, dict):
        return None
    prepend, variables = data.get("path_prepend"), data.get("variables")
    if not isinstance(prepend, list) or not isinstance(variables, dict):
        return None
    if not all(isinstance(p, str) for p in prepend) or not all(isinstance(v, str) for v in variables.values()):
        return None
    return Activation(path_prepend=tuple(prepend), variables=tuple(sorted(variables.items())))


def keep_activation(site: Site, rec: EnvRecord) -> str | None:
    """On a host of REC's platform, run its activate.d scripts at REC's prefix and keep what they set in REC (for
    other platforms' hosts); the reason when they failed, REC keeping what it had. Elsewhere nothing: they cannot
    run here."""
    if rec.platform != site.native_subdir:
        return None
    try:
        rec.activation = activation_to_json(activation_of(Path(rec.prefix), rec.name))
    except CpkgsError as exc:
        return str(exc)
    return None


def record_activation(site: Site, rec: EnvRecord, warnings: list[str] | None = None) -> Activation:
    """What REC's modulefile and kernels set beyond conda's own variables. On a host of the env's platform the
    activate.d scripts run (as they are now: an unseal may have changed them); elsewhere they cannot (and must
    not) run, and the activation the record kept from publish is used, or, without one, nothing beyond what conda
    itself sets (PATH, CONDA_PREFIX, CONDA_DEFAULT_ENV). Scripts that fail here fall back to the kept activation
    (one env's broken script must not stop `refresh` or `retire` for the site), with a line in WARNINGS."""
    kept = activation_from_json(rec.activation)
    if rec.platform == site.native_subdir:
        try:
            return _with_spec_variables(activation_of(Path(rec.prefix), rec.name), rec)
        except CpkgsError as exc:
            if warnings is not None:
                what = "the variables kept at publish" if kept is not None else "conda's own variables only"
                warnings.append(f"{rec.name}: {exc}; its modulefile and kernels get {what}")
    return _with_spec_variables(kept or Activation(), rec)


def _with_spec_variables(act: Activation, rec: EnvRecord) -> Activation:
    """The spec file's variables (the record keeps them) under what the scripts measurably set: the measurement
    keeps only what changed from the measuring shell's own environment (LC_ALL=C is already set there), and the
    packages' scripts run after cpkgs' own 00- script, so their values win."""
    if not rec.variables:
        return act
    merged = {**rec.variables, **dict(act.variables)}
    return Activation(path_prepend=act.path_prepend, variables=tuple(merged.items()))


def env_outputs(site: Site, rec: EnvRecord, warnings: list[str] | None = None) -> dict[Path, str]:
    """Kernelspecs and modulefiles of one env, in its platform's trees."""
    act = record_activation(site, rec, warnings)
    if rec.python_version is not None:
        # Usage records (usage/config.py): the env's hook reads CPKGS_USAGE_SEND, which a module load or a kernel
        # must set as conda.sh does; a refresh adds or drops it when cpkgs.yaml's usage.enabled changes.
        from cpkgs_admin.site.usage_config import usage_variables

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
    from cpkgs_admin.site.names import parse_name

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
    from cpkgs_admin.catalog import after_change

    with site_locked(site):
        written, removed = _sync_name(site, record)
        catalog = after_change(site, record, warnings)
    return written + removed + catalog


def withdraw_outside(site: Site, record: Any, warnings: list[str] | None = None) -> list[str]:
    """Remove generated files of a removed env (its platform's trees only); returns paths removed. Its catalog page
    stays, saying it was removed (best effort, as in publish_outside)."""
    from cpkgs_admin.catalog import after_change

    with site_locked(site):
        _written, removed = _sync_name(site, record)
        after_change(site, record, warnings)
    return removed
