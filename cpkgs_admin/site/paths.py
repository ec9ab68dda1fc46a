"""The site tree: every path under the root, the installations, and which of them this host uses.

No other module joins path strings for site locations; they ask a `Site`. The modes of what admins share or keep to
themselves, the names of staging dirs and trash entries, and the table of platforms by `uname` live here too: every
module (and the rendered shell profiles) takes them from here.
"""

from __future__ import annotations

import grp
import os
import platform as _platform
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from cpkgs_admin.errors import ConfigError, SiteError, UsageError
from cpkgs_admin.site.config import CONFIG_NAME, DEFAULT_PLATFORMS, SiteConfig, load_config_file

DEFAULT_ROOT = "/nfs/cpkgs"

# This host's platform by `uname -s` and `uname -m`: the one table. native_subdir reads it through Python's platform
# module; the shell profiles get it rendered in (profiles.substitutions), as they must not start Python.
UNAME_PLATFORMS: dict[tuple[str, str], str] = {
    ("Linux", "x86_64"): "linux-64",
    ("Linux", "amd64"): "linux-64",
    ("Linux", "aarch64"): "linux-aarch64",
    ("Linux", "arm64"): "linux-aarch64",
    ("Linux", "ppc64le"): "linux-ppc64le",
    ("Darwin", "arm64"): "osx-arm64",
    ("Darwin", "x86_64"): "osx-64",
}
# A host of the key's platform runs the value's envs where the site has no installation for its own: an arm64 Mac
# runs x86_64 envs under Rosetta 2.
FALLBACK_PLATFORMS: dict[str, str] = {"osx-arm64": "osx-64"}

# Staging dirs of builds under an installation's envs/: `.staging-NAME@ID`. '@' cannot occur in a name:
# `.staging-rr-1@<id>` can never be mistaken for a staging dir of `rr-1-2`.
STAGING_PREFIX = ".staging-"
STAGING_SEP = "@"
# The cpkgs tool's place in an installation, and the one entry of it on users' PATH (rendered into the profiles).
# Not <installation>/bin: that is a real conda's base env's bin (python, pip, ...) where one is installed there.
TOOL_DIR = "cpkgs-tool"
TOOL_BIN = f"{TOOL_DIR}/bin"
# Trash entries: `NAME@PLATFORM@STAMP` (STAMP: when the env was removed, in seconds since the epoch).
_TRASH_NAME = re.compile(r".+@[a-z0-9-]+@(?P<stamp>[0-9]+)\Z")
# The variable the site's profiles export with this host's installation dir (`anaconda3_linux`): link-user's
# envs_dirs item names `<root>/${CPKGS_INSTALLATION}/envs`, which conda expands per host.
INSTALLATION_VAR = "CPKGS_INSTALLATION"
# What makes conda refuse to create an env inside an installation's envs/ (see Site.envs_guard).
ENVS_GUARD = "conda-meta"
# In the package cache: digests of cache inodes new-env has already hashed (integrity.memo), rattler's repodata cache.
HASH_MEMO_DIR = ".cpkgs-verified"
REPODATA_DIR = "repodata"


def native_subdir() -> str:
    system = _platform.system()
    machine = _platform.machine().lower()
    known = UNAME_PLATFORMS.get((system, machine))
    if known is not None:
        return known
    # A host the table does not name: conda's spelling of it (os-arch).
    arch = {"x86_64": "64", "amd64": "64"}.get(machine, machine)
    if system == "Darwin":
        return "osx-" + ("arm64" if arch in ("arm64", "aarch64") else "64")
    return f"{system.lower()}-{arch}"


def staging_owner(dirname: str) -> str | None:
    """The env name a staging dir (see STAGING_PREFIX) was made for; None when DIRNAME is not one."""
    if not dirname.startswith(STAGING_PREFIX) or STAGING_SEP not in dirname:
        return None
    return dirname[len(STAGING_PREFIX):].rpartition(STAGING_SEP)[0]


def trash_stamp(entry: os.DirEntry[str]) -> int:
    """When a trash entry's env was removed: the stamp in its name, else (not a name purge gives) its mtime."""
    m = _TRASH_NAME.match(entry.name)
    return int(m.group("stamp")) if m else int(entry.stat(follow_symlinks=False).st_mtime)


@dataclass(frozen=True)
class Site:
    """The tree under one root. Paths only; nothing here writes."""

    root: Path
    config: SiteConfig = field(default_factory=SiteConfig)

    # --- top level
    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def profile_dir(self) -> Path:
        return self.root / "etc" / "profile.d"

    @property
    def specs_dir(self) -> Path:
        return self.root / "specs"

    # --- generated modulefiles and kernelspecs: one tree per platform (see outputs_root)
    @property
    def primary_platform(self) -> str:
        """The first platform in cpkgs.yaml's `platforms`: its modulefiles and kernels live at the root."""
        return self.config.platforms[0] if self.config.platforms else DEFAULT_PLATFORMS[0]

    def outputs_root(self, platform: str) -> Path:
        """Where PLATFORM's generated modulefiles and kernelspecs live: the root for the primary platform
        (`<root>/modulefiles`, `<root>/share/jupyter`), else that platform's installation
        (`<root>/<installation>/modulefiles`, ...), so hosts of one OS never see another OS's envs."""
        return self.root if platform == self.primary_platform else self.installation(platform)

    def modulefiles_dir(self, platform: str) -> Path:
        return self.outputs_root(platform) / "modulefiles"

    def modulefiles_tcl_dir(self, platform: str) -> Path:
        """Tcl modulefiles for sites on environment-modules (Lmod reads them too)."""
        return self.outputs_root(platform) / "modulefiles-tcl"

    def jupyter_dir(self, platform: str) -> Path:
        return self.outputs_root(platform) / "share" / "jupyter"

    def kernels_dir(self, platform: str) -> Path:
        return self.jupyter_dir(platform) / "kernels"

    def catalog_dir(self, platform: str) -> Path:
        """PLATFORM's static catalog web page (`cpkgs catalog`): index.html and a page per env, beside its kernels."""
        return self.outputs_root(platform) / "share" / "cpkgs-catalog"

    def output_platforms(self, extra: tuple[str, ...] = ()) -> list[str]:
        """The site's platforms, then EXTRA ones (e.g. from records of a platform no longer served), each once."""
        out: list[str] = []
        for p in (*self.config.platforms, *extra):
            if p not in out and p in self.config.installations:
                out.append(p)
        return out

    # --- state
    @property
    def state_dir(self) -> Path:
        return self.root / ".cpkgs"

    @property
    def records_dir(self) -> Path:
        return self.state_dir / "records"

    @property
    def locks_dir(self) -> Path:
        return self.state_dir / "locks"

    @property
    def trash_dir(self) -> Path:
        return self.state_dir / "trash"

    @property
    def pkgs_cache_dir(self) -> Path:
        return self.state_dir / "pkgs"

    @property
    def uv_cache_dir(self) -> Path:
        """uv's cache for the pip part of builds (admin-only, as the package cache's private parts)."""
        return self.state_dir / "uv-cache"

    @property
    def wheel_store_dir(self) -> Path:
        """Every wheel an env's pip part was built with, by sha256 (pipeline/pypi/store.py)."""
        return self.state_dir / "wheels"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"

    @property
    def retired_dir(self) -> Path:
        """Retirement markers the shell reads without forking: retired/<installation>/<name>."""
        return self.state_dir / "retired"

    # --- installations
    def installation_name(self, subdir: str) -> str:
        try:
            return self.config.installations[subdir]
        except KeyError:
            raise UsageError(f"platform {subdir!r} has no installation in {self.config_file}") from None

    def installation(self, subdir: str) -> Path:
        return self.root / self.installation_name(subdir)

    def envs_dir(self, subdir: str) -> Path:
        return self.installation(subdir) / "envs"

    # --- the cpkgs tool of an installation (cpkgs install-tool): builds beside one bin/ holding only `cpkgs`
    def tool_dir(self, subdir: str) -> Path:
        return self.installation(subdir) / TOOL_DIR

    def tool_bin(self, subdir: str) -> Path:
        """What users' PATH gets (the profiles append <installation>/TOOL_BIN): a link to the current build's."""
        return self.tool_dir(subdir) / "bin" / "cpkgs"

    def tool_build(self, build: str, subdir: str) -> Path:
        return self.tool_dir(subdir) / build

    def tool_staging(self, build: str, subdir: str, token: str) -> Path:
        return self.tool_dir(subdir) / f"{STAGING_PREFIX}{build}{STAGING_SEP}{token}"

    def tool_records_dir(self, subdir: str) -> Path:
        return self.state_dir / "tools" / subdir

    def tool_record_path(self, build: str, subdir: str) -> Path:
        """Named as the record names itself (cpkgs-<build>), as records/<platform>/<name>.json."""
        return self.tool_records_dir(subdir) / f"cpkgs-{build}.json"

    def tool_lock(self, subdir: str) -> Path:
        return self.locks_dir / f"tool-{subdir}.lock"

    def env_prefix(self, name: str, subdir: str) -> Path:
        return self.envs_dir(subdir) / name

    # --- what a user's own conda must never create at the site (README: "Your own conda")
    @property
    def unset_installation_dir(self) -> Path:
        """`<root>/${CPKGS_INSTALLATION}`: where link-user's envs_dirs item points while the profile is not sourced
        (conda leaves an unset variable as it is). `init` keeps a guard there: a directory only its owner may enter,
        holding a file named `envs`, so conda can never create that envs dir (lifecycle.init)."""
        return self.root / ("${" + INSTALLATION_VAR + "}")

    def envs_guard(self, subdir: str) -> Path:
        """`envs/conda-meta/` holding an empty `history`: conda takes envs/ for an environment and refuses every
        env it would create directly inside one ("cannot be immediately nested"), before it deletes an existing env
        of that name (conda/core/prefix_data.py validate_path, conda/cli/main_create.py)."""
        return self.envs_dir(subdir) / ENVS_GUARD

    def record_path(self, name: str, subdir: str) -> Path:
        return self.records_dir / subdir / f"{name}.json"

    def retired_marker(self, name: str, subdir: str) -> Path:
        return self.retired_dir / self.installation_name(subdir) / name

    def spec_file(self, family: str) -> Path:
        return self.specs_dir / f"{family}.yml"

    def module_file(self, family: str, version: str, platform: str) -> Path:
        return self.modulefiles_dir(platform) / family / f"{version}.lua"

    def kernel_dir(self, kernel: str, platform: str) -> Path:
        return self.kernels_dir(platform) / kernel

    def module_file_tcl(self, family: str, version: str, platform: str) -> Path:
        return self.modulefiles_tcl_dir(platform) / family / version

    def module_rc(self, family: str, platform: str) -> Path:
        """Lmod's per-family rc: default version, hidden (retired) versions."""
        return self.modulefiles_dir(platform) / family / ".modulerc.lua"

    def module_rc_tcl(self, family: str, platform: str) -> Path:
        return self.modulefiles_tcl_dir(platform) / family / ".modulerc"

    def staging_dir(self, name: str, subdir: str, token: str) -> Path:
        """A build's private staging dir for NAME, beside where it is published (rename is atomic there)."""
        return self.envs_dir(subdir) / f"{STAGING_PREFIX}{name}{STAGING_SEP}{token}"

    def trash_entry(self, name: str, subdir: str, stamp: int) -> Path:
        return self.trash_dir / f"{name}@{subdir}@{stamp}"

    @property
    def hash_memo_dir(self) -> Path:
        return self.pkgs_cache_dir / HASH_MEMO_DIR

    @property
    def repodata_cache_dir(self) -> Path:
        return self.pkgs_cache_dir / REPODATA_DIR

    def env_lock(self, name: str, subdir: str) -> Path:
        return self.locks_dir / f"env-{subdir}-{name}.lock"

    @property
    def site_lock(self) -> Path:
        return self.locks_dir / "site.lock"

    @property
    def native_subdir(self) -> str:
        return native_subdir()

    def host_platform(self) -> str | None:
        """The platform whose installation this host uses (conda.sh exports its name as CPKGS_INSTALLATION): its
        own, else its fallback (FALLBACK_PLATFORMS). None when the site serves no installation this host can run."""
        sub = native_subdir()
        if sub in self.config.platforms:
            return sub
        fallback = FALLBACK_PLATFORMS.get(sub)
        return fallback if fallback in self.config.platforms else None

    def default_subdir(self) -> str:
        """The platform this host builds for when no --platform is given."""
        return native_subdir()

    # --- permissions
    def admin_gid(self) -> int | None:
        if self.config.admin_group is None:
            return None
        try:
            return grp.getgrnam(self.config.admin_group).gr_gid
        except KeyError:
            group = self.config.admin_group
            raise ConfigError(f"{self.config_file}: admin_group {group!r} is not a group on this host") from None

    def shared_modes(self) -> tuple[int, int]:
        """(dir mode, file mode) of what the site shows everyone (its tree, profiles, modulefiles, kernels, the
        catalog): readable by all, writable by the owner and, when there is one, the admin group (setgid dirs:
        files created later inherit the group)."""
        return (0o2775, 0o664) if self.config.admin_group else (0o755, 0o644)

    def build_umask(self) -> int:
        """The umask a build runs under: what rattler creates (cache entries, its lock files) gets its modes from the
        umask, so it is set, not inherited: with an admin group, group-writable for the other admins (the site's
        setgid dirs give it the group); never writable by anyone else, whatever this admin's umask (000 let a user
        replace cached files)."""
        return 0o002 if self.config.admin_group else 0o022

    def private_modes(self) -> tuple[int, int]:
        """(dir mode, file mode) of the state only admins use: the locks, the trash, the audit log, and in the package
        cache py-rattler's lock files, its repodata cache and cpkgs' hash memo. Closed to everyone else (an ordinary
        user holding a flock there could hang every build); the admin group's where the site has one. What users
        read (records, retired markers) keeps the site's usual modes."""
        return (0o2770, 0o660) if self.config.admin_group else (0o700, 0o600)

    def cache_dir_mode(self) -> int:
        """The package cache itself: others may only pass through it to a path they already know, never list it.
        `cpkgs pack` (conda-pack, run by any user) reads each package's own `info/paths.json` there, under the name
        the env's conda-meta gives; rattler's lock files in it are closed (private_modes)."""
        return 0o2771 if self.config.admin_group else 0o711

    def with_config(self, config: SiteConfig) -> Site:
        return replace(self, config=config)


def resolve_root(option: str | None) -> Path:
    """--root, else $CPKGS_ROOT, else /nfs/cpkgs."""
    raw = option or os.environ.get("CPKGS_ROOT") or DEFAULT_ROOT
    return Path(os.path.abspath(os.path.expanduser(raw)))


def open_site(root: Path) -> Site:
    """Load an existing site, with one clear line when the drive is missing or the tree is not a site."""
    try:
        root.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise SiteError(f"site root {root} does not exist (is the drive mounted? run 'cpkgs init' to create a site)"
                        ) from None
    except PermissionError:
        raise SiteError(f"site root {root} is not reachable by this user: a directory above it is not searchable"
                        ) from None
    except OSError as exc:
        raise SiteError(f"site root {root}: {exc.strerror}") from None
    if not root.is_dir():
        raise SiteError(f"site root {root} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SiteError(f"site root {root} is not readable by this user")
    config = load_config_file(root / CONFIG_NAME)
    return Site(root=root, config=config)
