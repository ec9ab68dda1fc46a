"""`cpkgs extend BASE DIR`: a personal layer on top of a shared env, in a handful of files.

The layer is a PEP 405 virtual environment whose interpreter is BASE's: `DIR/bin/python` is a symlink to BASE's
python and `DIR/pyvenv.cfg` says `home = BASE/bin` with `include-system-site-packages = true`. So
`DIR/bin/python -m pip install X` installs into `DIR/lib/pythonX.Y/site-packages`, which comes before BASE's
site-packages on sys.path (X shadows BASE's copy) while everything BASE ships stays importable. pip skips the PEP 668
`EXTERNALLY-MANAGED` marker of a sealed BASE inside a virtual environment (sys.prefix != sys.base_prefix), which is
exactly the place where installing is safe.

The layer records BASE for the shell in `DIR/conda-meta/cpkgs/layer` (three lines: BASE prefix, BASE name,
installation dir name); conda.sh reads it to put DIR/bin then BASE/bin on PATH and run BASE's activate.d scripts.

SQLite off NFS: IPython and Jupyter read `sys.prefix/etc/ipython` and `sys.prefix/etc/jupyter`, and a layer's
sys.prefix is DIR, not BASE, so the config cpkgs writes into BASE would not apply. The layer gets the same files
(`DIR/etc/ipython/ipython_config.py`, `DIR/etc/jupyter/jupyter_{server,notebook}_config.py`), rendered by the
same function (localdb.db_config_files) from BASE's site-packages.

Scripts: BASE's python scripts (pip, ipython, jupyter, ...) get a wrapper in DIR/bin that runs them with DIR's
python, so that on an activated layer `pip install X` installs into the layer and `ipython` sees X.

Speed: we read BASE's record (one small JSON), stat BASE's interpreter and list BASE/bin (reading the first line
of its small scripts); we never walk BASE's files, so the layer's creation time does not depend on BASE's size.
This module is on the `cpkgs extend` path: keep its imports light (no rattler, no yaml beyond what opening the
site costs).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError, EnvNotFound, PermissionProblem, UsageError
from cpkgs_admin.outputs.localdb import db_config_files
from cpkgs_admin.site.paths import Site, open_site
from cpkgs_admin.site.records import EnvRecord, get_record, retired_line
from cpkgs_admin.users.userfile import chain, group_label, others_can_write, private_group, user_label

LAYER_FILE = "conda-meta/cpkgs/layer"
@dataclass(frozen=True)
class Layer:
    directory: Path
    base: str
    base_prefix: Path
    python: str  # X.Y
    installation: str
    has_pip: bool
    notice: str | None = None  # e.g. BASE is retired

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "base": self.base,
            "base_prefix": str(self.base_prefix),
            "python": self.python,
            "installation": self.installation,
            "has_pip": self.has_pip,
            "notice": self.notice,
        }


def _check_target(directory: Path, force: bool) -> None:
    """DIR: absent (its parent writable), or an empty writable dir, or anything writable with --force."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        parent = directory.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UsageError(f"cannot create {directory}: {parent} is not a directory") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionProblem(f"cannot create {directory}: {parent} is not writable by you") from None
        return
    except NotADirectoryError:
        raise UsageError(f"{directory} exists and is not a directory") from None
    except PermissionError:
        raise PermissionProblem(f"{directory} is not readable by you") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionProblem(f"{directory} is not writable by you")
    if entries and not force:
        raise UsageError(f"{directory} exists and is not empty; choose a new directory or pass --force")


def _check_control(directory: Path) -> None:
    """No other user can change what the layer runs (ssh's StrictModes, for a directory the shell later activates):
    DIR, if it exists, is ours and writable by nobody else (a sticky bit does not help: others could still add
    activate scripts); every directory above it, as named and as resolved, belongs to us or root and no one else
    can swap its entries (a sticky directory like /tmp is fine: only we can rename what we own there); no symlink
    on the way belongs to anyone else."""
    me = os.geteuid()
    real = Path(os.path.realpath(directory))
    for c in chain(directory) + chain(real):
        if c.path in (str(directory), str(real)) and stat.S_ISDIR(c.st.st_mode):
            if c.st.st_uid != me:
                raise PermissionProblem(f"{directory} belongs to {user_label(c.st.st_uid)}, not to you; "
                                        "choose a directory of your own")
            open_to = "everyone" if c.st.st_mode & stat.S_IWOTH else None
            if c.st.st_mode & stat.S_IWGRP and not private_group(c.st.st_gid, me):
                open_to = open_to or f"group {group_label(c.st.st_gid)}"
            if open_to:
                raise PermissionProblem(f"{directory} is writable by {open_to}: they could change what the layer "
                                        f"runs; 'chmod go-w {directory}' or choose another directory")
            continue
        if c.st.st_uid not in (0, me):
            raise PermissionProblem(f"{directory}: {c.path} belongs to {user_label(c.st.st_uid)}, who could change "
                                    "what the layer runs; choose a directory of your own")
        who = others_can_write(c.st)
        if who:
            raise PermissionProblem(f"{directory}: {c.path} is writable by {who}, who could swap the layer; choose "
                                    "a directory of your own")


def _mkdirs(directory: Path) -> None:
    """DIR and missing parents, 0755 whatever the umask (never writable by others)."""
    missing: list[Path] = []
    p = directory
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # someone else made it meanwhile: _check_control, run again next, judges it
        os.chmod(d, 0o755)


def _symlink(target: str, link: Path) -> None:
    """Create or replace LINK -> TARGET atomically (a temp link renamed over, so --force never leaves a gap)."""
    tmp = link.with_name(f".{link.name}.cpkgs-tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.cpkgs-tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        os.fchmod(fh.fileno(), mode)  # explicit, whatever the umask
    os.replace(tmp, path)


WRAPPER_MARK = "# cpkgs extend: BASE's script, run by this layer's python"


def _base_python_scripts(base_bin: Path) -> list[str]:
    """Names of BASE's bin/ scripts that BASE's python runs (their '#!' line, or the '#!/bin/sh' + exec form used
    for long paths, names it): pip, ipython, jupyter, ... One listing; only small regular files are opened (the
    listing's types and sizes come with it on NFS, READDIRPLUS), never the binaries."""
    marker = f"{base_bin}/python".encode()
    out: list[str] = []
    try:
        entries = list(os.scandir(base_bin))
    except OSError:
        return out
    for e in entries:
        if e.name.startswith(("python", ".")):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_size > 64 * 1024 or not st.st_mode & 0o111:
                continue
            with open(e.path, "rb") as fh:
                head = fh.read(512)
        except OSError:
            continue
        lines = head.split(b"\n", 2)
        if head.startswith(b"#!") and (marker in lines[0] or (len(lines) > 1 and b"exec" in lines[1]
                                                              and marker in lines[1])):
            out.append(e.name)
    return sorted(out)


def _write_wrappers(directory: Path, base_bin: Path) -> None:
    """DIR/bin/NAME for each of BASE's python scripts: BASE's script run by DIR's python, which sees the layer's
    packages (and pip installs into the layer). BASE/bin comes after DIR/bin on an activated layer's PATH, so
    without these `pip install X` would run BASE's python and hit BASE's PEP 668 marker, and `ipython` would not
    see what was installed. A wrapper from an earlier base (--force) that BASE no longer has goes; a script pip
    put into the layer (the user installed their own ipython) stays."""
    bin_dir = directory / "bin"
    python = bin_dir / "python"
    wanted = _base_python_scripts(base_bin)
    for name in os.listdir(bin_dir):
        path = bin_dir / name
        if name not in wanted and _is_wrapper(path):
            path.unlink()
    for name in wanted:
        path = bin_dir / name
        if path.exists() and not _is_wrapper(path):
            continue  # the layer's own (pip installed it): it wins, as DIR/bin comes first
        _write(path, f"#!/bin/sh\n{WRAPPER_MARK}\nexec {shlex.quote(str(python))} {shlex.quote(str(base_bin / name))} "
                     '"$@"\n', 0o755)


def _is_wrapper(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(WRAPPER_MARK) + 64).split(b"\n")[1] == WRAPPER_MARK.encode()
    except (OSError, IndexError):
        return False


def extend_env(root: Path, base: str, directory: Path, *, force: bool = False) -> Layer:
    """Create (or with force, re-point) the layer DIR on shared env BASE. Nothing is written before every check."""
    site = open_site(root)
    directory = Path(os.path.abspath(os.path.expanduser(str(directory))))
    rec = _base_record(site, base)
    prefix = Path(rec.prefix)
    version = rec.python_version
    if not version:
        raise UsageError(f"{base} has no python; a layer needs a base with python (pip installs go through it)")
    xy = ".".join(version.split(".")[:2])
    interpreter = prefix / "bin" / f"python{xy}"
    if not os.path.isfile(interpreter):
        raise CpkgsError(f"{base}: {interpreter} is missing (is the drive mounted? try 'cpkgs verify {base}')")
    if directory == prefix or prefix in directory.parents:
        raise UsageError(f"{directory} is inside the shared environment {base}")
    _check_target(directory, force)
    _check_control(directory)

    installation = site.installation_name(rec.platform)
    try:
        _write_layer(directory, rec, interpreter, installation)
    except PermissionError as exc:
        raise PermissionProblem(f"cannot write the layer in {directory}: {exc.strerror} ({exc.filename})") from None
    except OSError as exc:
        raise CpkgsError(f"cannot write the layer in {directory}: {exc.strerror} ({exc.filename})") from None

    notice = retired_line(rec) if rec.retired else None
    return Layer(
        directory=directory,
        base=rec.name,
        base_prefix=prefix,
        python=xy,
        installation=installation,
        has_pip=rec.can_import("pip"),
        notice=notice,
    )


def _base_record(site: Site, base: str) -> EnvRecord:
    """BASE's record: a shared env of this host's platform that was not removed."""
    try:
        rec = get_record(site, base, None)
    except EnvNotFound:
        raise EnvNotFound(f"no shared environment named {base} in {site.root} (see 'cpkgs list')") from None
    if rec.status == "removed":
        raise CpkgsError(f"shared environment {base} was removed; choose another base (see 'cpkgs list')")
    if rec.platform != site.native_subdir:
        raise UsageError(f"{base} is built for {rec.platform}, not for this host ({site.native_subdir})")
    return rec


def _write_layer(directory: Path, rec: EnvRecord, interpreter: Path, installation: str) -> None:
    """The layer's files in DIRECTORY, the layer file last."""
    prefix, version = Path(rec.prefix), rec.python_version
    xy = interpreter.name.removeprefix("python")
    _mkdirs(directory)
    _check_control(directory)  # again, now that DIR exists: nobody slipped a directory of theirs in meanwhile
    for sub in ("bin", f"lib/python{xy}/site-packages", "conda-meta/cpkgs"):
        _mkdirs(directory / sub)
    # The names python/python3/pythonX.Y all point at BASE's real interpreter file: Python finds pyvenv.cfg
    # next to (or one above) the path it was started as, without resolving the link, so it runs as the layer.
    for name in ("python", "python3", f"python{xy}"):
        _symlink(str(interpreter), directory / "bin" / name)
    _write(
        directory / "pyvenv.cfg",
        f"home = {prefix / 'bin'}\n"
        "include-system-site-packages = true\n"
        f"version = {version}\n"
        f"executable = {interpreter}\n"
        f"command = cpkgs extend {rec.name} {directory}\n",
    )
    # IPython history, notebook signatures, ...: on local disk, as in BASE (see the module doc). BASE's stdlib
    # dir is known from its python version: a few stats, no listing.
    for rel, text in db_config_files(prefix / "lib" / f"python{xy}").items():
        _mkdirs((directory / rel).parent)
        _write(directory / rel, text)
    _write_wrappers(directory, prefix / "bin")
    # Written last: the shell treats DIR as a layer only once everything above is in place.
    _write(directory / LAYER_FILE, f"{prefix}\n{rec.name}\n{installation}\n")


