"""What keeps a user's (or an admin's, or root's) own conda from creating anything at the site, and what finds what a
conda left there before.

Two guards, kept by `cpkgs init` (README "Your own conda"; the conda 26.x source files named are in the tarball under
tests/thirdparty):
- `<root>/${CPKGS_INSTALLATION}/`, mode 0500, holding a read-only file `envs`. link-user's envs_dirs item names
  `<root>/${CPKGS_INSTALLATION}/envs`; where the profile was not sourced conda keeps the variable as it is, and its
  write probe makes that directory (conda/gateways/disk/create.py create_envs_directory: `os.makedirs`). Others
  cannot enter the guard: EACCES, which conda takes for "not writable" and skips. Its owner and root find the file
  `envs`: EEXIST, which conda raises instead of creating a tree at the root. (A plain file in the guard's place
  would fail everyone with ENOTDIR, which conda raises too: a user's `conda create` would stop.)
- `<installation>/envs/conda-meta/history` (empty): conda then takes envs/ for an environment and refuses to create
  one directly inside it (conda/core/prefix_data.py validate_path, "cannot be immediately nested"), which
  `conda create`/`conda env create` check before they delete an existing env of that name (conda/cli/main_create.py):
  no conda, not even root's, replaces a shared env (the frozen marker does not cover create).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cpkgs_admin.site.paths import INSTALLATION_VAR, STAGING_PREFIX, Site

UNSET_GUARD_FILE = "envs"
UNSET_GUARD_TEXT = (f"cpkgs: conda must never create envs here: this is where an envs_dirs item "
                    f"<root>/${{{INSTALLATION_VAR}}}/envs points where {INSTALLATION_VAR} is not set.\n")
ENVS_GUARD_FILE = "history"
# conda's own write probe (conda/gateways/disk/create.py first_writable_envs_dir).
CONDA_PROBE = ".conda_envs_dir_test"


class GuardError(Exception):
    """A guard's place holds something else (what a conda made there before): named in the message."""


def make_guard(directory: Path, filename: str, text: str, mode: int) -> bool:
    """DIRECTORY, mode MODE, holding the read-only regular file FILENAME with TEXT; True when something was made or
    mended. Never follows a symlink; GuardError when the place holds something else."""
    made = False
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        os.mkdir(directory, 0o700)
        st, made = os.lstat(directory), True
    if not stat.S_ISDIR(st.st_mode):
        raise GuardError(f"{directory} exists and is not cpkgs' guard directory: remove it and run 'cpkgs init' again")
    path = directory / filename
    try:
        fst = os.lstat(path)
    except FileNotFoundError:
        os.chmod(directory, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        fst, made = os.lstat(path), True
    except PermissionError:
        return False  # another admin's guard, closed to us as to everyone: theirs to keep
    if not stat.S_ISREG(fst.st_mode):
        raise GuardError(f"{path} exists and is not cpkgs' guard file (a conda created it?): remove {directory} and "
                         "run 'cpkgs init' again")
    if stat.S_IMODE(fst.st_mode) != 0o444:
        os.chmod(path, 0o444)
        made = True
    if made or stat.S_IMODE(st.st_mode) != mode:
        os.chmod(directory, mode)
        made = True
    return made


def guards(site: Site) -> list[tuple[Path, str, str, int]]:
    """(directory, file, text, mode) of every guard the site should hold: the root's, each installation's envs'."""
    out = [(site.unset_installation_dir, UNSET_GUARD_FILE, UNSET_GUARD_TEXT, 0o500)]
    out += [(site.envs_guard(sub), ENVS_GUARD_FILE, "", 0o555) for sub in site.config.platforms]
    return out


def _intact(directory: Path, filename: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(directory).st_mode) and stat.S_ISREG(os.lstat(directory / filename).st_mode)
    except OSError as exc:
        # The root's guard cannot be entered by anyone but its owner: intact as far as others can tell.
        return exc.errno == errno.EACCES


def missing_guards(site: Site) -> list[Path]:
    """Guards that are not there (a site made before cpkgs kept them: `cpkgs init` adds them)."""
    return [d for d, _f, _t, _m in guards(site) if not os.path.lexists(d)]


@dataclass(frozen=True)
class Stray:
    path: str
    why: str


def stray_entries(site: Site) -> list[Stray]:
    """What a conda (or anyone) left where only cpkgs creates things: names holding `$` at the root (a conda's
    unexpanded envs_dirs item) other than the intact guard, and in each installation's envs/ conda's write probe,
    directories no record claims, files and symlinks. Staging dirs of builds and NFS's .nfs files are cpkgs' and
    NFS's own."""
    out: list[Stray] = []
    try:
        top = sorted(os.scandir(site.root), key=lambda e: e.name)
    except OSError:
        top = []
    guard = site.unset_installation_dir
    for e in top:
        if "$" not in e.name or (e.path == str(guard) and _intact(guard, UNSET_GUARD_FILE)):
            continue
        out.append(Stray(e.path, f"made by a conda where an envs_dirs item's variable was not set (the site's "
                                 f"profile exports {INSTALLATION_VAR}); remove it, then run 'cpkgs init'"))
    for sub in site.config.platforms:
        out += _envs_strays(site, sub)
    return out


def _envs_strays(site: Site, sub: str) -> list[Stray]:
    try:
        entries = sorted(os.scandir(site.envs_dir(sub)), key=lambda e: e.name)
    except OSError:
        return []
    out: list[Stray] = []
    for e in entries:
        if e.name.startswith((STAGING_PREFIX, ".nfs")):
            continue
        if e.name == CONDA_PROBE:
            out.append(Stray(e.path, "conda's write probe: a conda run by an admin or root took this envs dir for its "
                                     "own (its envs_dirs listed the share first); remove it"))
        elif e.path == str(site.envs_guard(sub)):
            if not _intact(Path(e.path), ENVS_GUARD_FILE):
                out.append(Stray(e.path, "not cpkgs' guard (conda-meta/history); remove it and run 'cpkgs init'"))
        elif not e.is_dir(follow_symlinks=False):
            out.append(Stray(e.path, "not an environment cpkgs built; remove it"))
        elif not site.record_path(e.name, sub).exists():
            out.append(Stray(e.path, "a directory no cpkgs record claims (a conda created it?); remove it"))
    return out
