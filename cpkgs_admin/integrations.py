"""Hooks the build pipeline calls for site integrations (SQLite off NFS, PEP 668, kernels, modulefiles).

`preflight` runs before anything is installed and refuses an env whose generated names collide with another's.
`write_env_integrations` runs before sealing and writes inside the env; `publish_outside` runs after publishing (and
after `retire`) and writes the generated files that live outside envs (kernelspecs, modulefiles);
`withdraw_outside` runs after `remove`. `cpkgs refresh` (refresh.py) regenerates the outside files for every env.

Which record speaks for a name: kernelspecs and modulefiles are per name, not per platform, so when NAME exists for
several platforms the first platform in cpkgs.yaml's `platforms` wins (linux-64 by default).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import BuildError, CpkgsError, UsageError
from cpkgs_admin.kernels import generated_kernel_files, kernel_files, kernel_names, kernel_owner, wants_kernel
from cpkgs_admin.locking import atomic_write, site_locked, write_if_changed
from cpkgs_admin.modules import family_files, is_generated, module_files
from cpkgs_admin.profiles import template_text
from cpkgs_admin.records import EnvRecord, PackageEntry, load_all
from cpkgs_admin.site import Site

MARKER = "EXTERNALLY-MANAGED"
IPYTHON_CONFIG = "etc/ipython/ipython_config.py"
JUPYTER_CONFIGS = ("etc/jupyter/jupyter_server_config.py", "etc/jupyter/jupyter_notebook_config.py")
# (class, trait, local subdir, file): where each SQLite database goes. Traitlets applies a class's config to its
# subclasses, so HistoryAccessor covers HistoryManager too.
IPYTHON_DBS = (("HistoryAccessor", "hist_file", "ipython", "history.sqlite"),)
JUPYTER_DBS = (("NotebookNotary", "db_file", "jupyter", "nbsignatures.db"),)
# Optional extensions with their own SQLite file, configured only when the env has them.
OPTIONAL_JUPYTER_DBS = {
    "jupyter_server_fileid": ("BaseFileIdManager", "db_path", "jupyter", "file_id_manager.db"),
    "jupyter_server_ydoc": ("SQLiteYStore", "db_path", "jupyter", "ystore.db"),
    "jupyter_collaboration": ("SQLiteYStore", "db_path", "jupyter", "ystore.db"),
}
# Shell bookkeeping and what the module/kernel set themselves: not "variables the activate.d scripts set".
_NOT_ACTIVATION = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "PATH", "CONDA_PREFIX", "CONDA_DEFAULT_ENV"})
ACTIVATION_TIMEOUT = 60.0


# ----------------------------------------------------------------------------------------------------- activation


@dataclass(frozen=True)
class Activation:
    """What an env's etc/conda/activate.d/*.sh scripts do to the environment, beyond conda's own PATH entry."""

    path_prepend: tuple[str, ...] = ()
    variables: tuple[tuple[str, str], ...] = ()


def _env0(script: str, env: dict[str, str], where: Path) -> dict[str, str]:
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", script], env=env, cwd="/", capture_output=True, timeout=ACTIVATION_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise CpkgsError(f"{where}: activate.d scripts did not finish within {ACTIVATION_TIMEOUT:.0f}s") from None
    out: dict[str, str] = {}
    for item in proc.stdout.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def activation_of(prefix: Path, name: str) -> Activation:
    """Run PREFIX's activate.d/*.sh in a clean `sh` with CONDA_PREFIX set, and diff `env -0` before and after.

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
    before = _env0("env -0", env, act_dir)
    # Sourced like conda does: one after another in sorted order, a failing script does not stop the rest.
    sourcing = "".join(f". {shlex.quote(str(s))}\n" for s in scripts)
    after = _env0(sourcing + "env -0", env, act_dir)
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


def stdlib_dir(prefix: Path) -> Path | None:
    """lib/pythonX.Y (or X.Yt) of a unix env: where PEP 668's marker goes (sysconfig's 'stdlib' path)."""
    with contextlib.suppress(OSError):
        for d in sorted((prefix / "lib").glob("python3*")):
            if (d / "os.py").is_file():
                return d
    return None


def marker_text(name: str) -> str:
    return (
        "[externally-managed]\n"
        f"Error=This Python belongs to {name}, a shared, read-only environment managed by cpkgs:\n"
        " pip cannot install into it (not even with --user, and not as root).\n"
        " To add packages of your own, make a personal environment layered on it:\n"
        f"     cpkgs extend {name} DIR\n"
        " Site admins change shared environments by building a new version (cpkgs new-env).\n"
    )


def local_db_config(settings: tuple[tuple[str, str, str, str], ...]) -> str:
    text = template_text("local_db_config.py")
    line = "_CPKGS_SETTINGS = []"
    if line not in text:
        raise CpkgsError("template local_db_config.py lacks its '_CPKGS_SETTINGS = []' line")
    return text.replace(line, "_CPKGS_SETTINGS = " + repr([list(s) for s in settings]), 1)


def _has_module(stdlib: Path | None, module: str) -> bool:
    return stdlib is not None and (stdlib / "site-packages" / module).is_dir()


def write_env_integrations(staging: Path, final: Path, record: Any) -> list[str]:
    """Files written inside the env before sealing; returns their paths relative to the env.

    Envs without python get nothing. Nothing written here embeds a path (the config finds its directory at run
    time), so FINAL is not needed; it is in the signature because anything that does must embed it, not STAGING.
    """
    if record.python_version is None:
        return []
    stdlib = stdlib_dir(staging)
    files: dict[str, str] = {}
    if stdlib is not None:
        files[str((stdlib / MARKER).relative_to(staging))] = marker_text(record.name)
    files[IPYTHON_CONFIG] = local_db_config(IPYTHON_DBS)
    jupyter = list(JUPYTER_DBS)
    for module, setting in OPTIONAL_JUPYTER_DBS.items():
        if _has_module(stdlib, module) and setting not in jupyter:
            jupyter.append(setting)
    for rel in JUPYTER_CONFIGS:
        files[rel] = local_db_config(tuple(jupyter))
    for rel, text in files.items():
        path = staging / rel
        if path.exists() or path.is_symlink():
            # A package's own file: replacing it would fail verification against conda-meta.
            raise BuildError(f"{record.name}: a package already ships {rel}; cpkgs cannot add its own there")
        atomic_write(path, text, 0o644)
    return list(files)


# ----------------------------------------------------------------------------------------------------- preflight


def preflight(site: Site, name: Any, subdir: str, packages: list[PackageEntry]) -> None:
    """Before anything is installed: refuse an env whose module or kernel names would collide with another env's."""
    others = [r for r in load_all(site.records_dir) if r.status != "removed" and r.name != name.name]
    for r in others:
        if r.family != name.family and r.family.casefold() == name.family.casefold():
            raise UsageError(
                f"{name.name} would put modules in {name.family}/, which differs only in case from {r.family}/ "
                f"of {r.name}; use the family name {r.family}"
            )
        if r.family == name.family and r.version == name.version:
            raise UsageError(
                f"{name.name} and {r.name} would both be module {r.family}/{r.version}; choose another name"
            )
    if not wants_kernel(packages):
        return
    mine = set(kernel_names(name.name))
    for r in others:
        if wants_kernel(r.packages) and mine & set(kernel_names(r.name)):
            clash = sorted(mine & set(kernel_names(r.name)))[0]
            raise UsageError(
                f"{name.name} and {r.name} would both have the Jupyter kernel {clash}; choose another name"
            )
    for k in sorted(mine):
        spec = site.kernel_dir(k) / "kernel.json"
        # A kernel cpkgs wrote for a name no longer published is an orphan `refresh` removes; anyone else's stays.
        if spec.exists() and kernel_owner(spec) is None:
            raise UsageError(f"{name.name} would replace the Jupyter kernel {spec.parent}, which cpkgs did not write")


# ----------------------------------------------------------------------------------------------------- outside envs


def file_mode(site: Site) -> tuple[int, int]:
    """(dir mode, file mode) of generated files: the same rule as `cpkgs init`."""
    from cpkgs_admin.tree import modes

    return modes(site.config)


def published(site: Site, records: list[EnvRecord]) -> list[EnvRecord]:
    """The record that speaks for each published name (see module doc), oldest first."""
    order = {p: i for i, p in enumerate(site.config.platforms)}
    by_name: dict[str, EnvRecord] = {}
    for r in sorted(records, key=lambda r: (order.get(r.platform, len(order)), r.platform)):
        if r.status == "removed" or not Path(r.prefix).is_dir():
            continue
        by_name.setdefault(r.name, r)
    return sorted(by_name.values(), key=lambda r: (r.created, r.name))


def env_outputs(site: Site, rec: EnvRecord) -> dict[Path, str]:
    """Kernelspecs and modulefiles of one env."""
    act = activation_of(Path(rec.prefix), rec.name)
    return {**kernel_files(site, rec, act), **module_files(site, rec, act)}


def family_outputs(site: Site, family: str, chosen: list[EnvRecord]) -> dict[Path, str]:
    return family_files(site, family, [r for r in chosen if r.family == family])


def write_outputs(site: Site, files: dict[Path, str]) -> list[str]:
    dmode, fmode = file_mode(site)
    changed = []
    for path, text in sorted(files.items()):
        _ensure_dir(path.parent, dmode)
        if write_if_changed(path, text, fmode):
            changed.append(str(path))
    return changed


def _ensure_dir(path: Path, mode: int) -> None:
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
            os.chmod(d, mode)  # explicit: an admin's umask 077 must not hide modules from users


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


def stops(site: Site) -> tuple[Path, ...]:
    return (site.kernels_dir, site.modulefiles_dir, site.modulefiles_tcl_dir, site.root)


def _sync_name(site: Site, rec: EnvRecord) -> tuple[list[str], list[str]]:
    """Bring the outside files of REC's name and family in line with the records; (written, removed)."""
    chosen = published(site, load_all(site.records_dir))
    target = next((r for r in chosen if r.name == rec.name), None)
    desired: dict[Path, str] = {}
    if target is not None:
        desired.update(env_outputs(site, target))
    desired.update(family_outputs(site, rec.family, chosen))
    written = write_outputs(site, desired)
    candidates = [
        site.module_file(rec.family, rec.version),
        site.module_file_tcl(rec.family, rec.version),
        site.module_rc(rec.family),
        site.module_rc_tcl(rec.family),
    ]
    stale = [p for p in candidates if p not in desired and p.is_file() and is_generated(p)]
    stale += [p for p in generated_kernel_files(site) if kernel_owner(p) == rec.name and p not in desired]
    return written, remove_outputs(stale, stops(site))


def publish_outside(site: Site, record: Any) -> list[str]:
    """Generated files outside the env for a newly published or changed env; returns paths written."""
    with site_locked(site):
        written, removed = _sync_name(site, record)
    return written + removed


def withdraw_outside(site: Site, record: Any) -> list[str]:
    """Remove generated files of a removed env (another platform's record of the name takes over if there is one);
    returns paths removed."""
    with site_locked(site):
        _written, removed = _sync_name(site, record)
    return removed
