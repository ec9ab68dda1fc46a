"""`cpkgs init`: create or upgrade the site tree. Idempotent: a second identical run changes no file."""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cpkgs_admin.errors import ConfigError, PermissionProblem, SiteError, UsageError
from cpkgs_admin.outputs.profiles import render_profiles
from cpkgs_admin.pipeline.cache import secure_cache
from cpkgs_admin.site.audit import audit
from cpkgs_admin.site.config import (
    CONFIG_NAME,
    KNOWN_SUBDIRS,
    SiteConfig,
    channel_problem,
    config_from_mapping,
    load_config_file,
    normalize_channel,
)
from cpkgs_admin.site.files import read_text_file, write_if_changed
from cpkgs_admin.site.locks import site_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.pypi_config import PypiConfig, pypi_config_from_mapping
from cpkgs_admin.site.yamlio import load_yaml

CONFIG_HEADER = """\
# cpkgs site configuration. Edit with care: every cpkgs command validates this file.
# schema: format version of this file (cpkgs migrates older ones)
# admin_group: group that may change the site (files are group-writable for it), or null
# channels: conda channels environments are solved against, by URL or by name (file:// mirrors work offline)
# platforms: platforms with an installation here; installations: platform -> directory under the root
# trash_grace: how long a removed env stays at its path for running jobs before 'cpkgs purge' deletes it
# lease_seconds: lock lease; a lock held by a host that stopped refreshing it is taken over after this
# lock_timeout: how long commands wait for a busy lock before giving up (exit 3)
# virtual_packages: overrides for the solver, e.g. {__cuda: "12.4"} to build GPU envs on a host without a GPU
# channel_map: channel name (conda-forge, defaults, nvidia/label/...) or URL prefix -> the URL (or list of URLs)
#   this site reads it from; applied to these channels, spec files' channels and channel::pkg, -c and lock files
# channel_alias: where channel names channel_map does not hold live (as conda's channel_alias); null: refused
# pypi: the pip part of specs: enabled (false refuses pip: sections), index_url (a site mirror of PyPI; null: none),
#   extra_index_urls, find_links (wheelhouse dirs or URLs), spec_indexes (may specs name their own), build_from_source
# usage: opt-in usage records (README "Usage records"): enabled, collector (udp://IP:PORT or syslog), logs (the
#   collector's files 'cpkgs usage' reads), sample (0-1), user_names (plain or hashed); 'cpkgs refresh' applies it
"""


@dataclass
class InitReport:
    root: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.config_changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "changed": self.changed,
            "created": self.created,
            "updated": self.updated,
            "config_changes": self.config_changes,
            "warnings": self.warnings,
        }


def render_config(config: SiteConfig) -> str:
    return CONFIG_HEADER + yaml.safe_dump(config.to_yaml_dict(), sort_keys=False, default_flow_style=False)


def updated_config_text(path: Path, config: SiteConfig, keys: list[str]) -> str:
    """The admin's cpkgs.yaml with only KEYS set to CONFIG's values: comments, order and everything else kept
    (ruamel.yaml's round trip). A file ruamel cannot take back gets the rendered config whole."""
    # ruamel.yaml: 20 ms to import, only when options change an existing cpkgs.yaml.
    from ruamel.yaml import YAML  # noqa: PLC0415

    yaml = YAML()
    yaml.preserve_quotes = True
    # null as cpkgs writes it (ruamel's round trip leaves the value empty)
    yaml.representer.add_representer(type(None), lambda r, _d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    try:
        doc = yaml.load(read_text_file(path, str(path), ConfigError))
    except Exception:  # load_config_file has just read it; on any surprise, write it whole
        doc = None
    if not hasattr(doc, "keys"):
        return render_config(config)
    values = config.to_yaml_dict()
    for key in keys:
        doc[key] = _quoted_for_yaml11(values[key])
    buf = io.StringIO()
    yaml.dump(doc, buf)
    text = buf.getvalue()
    # cpkgs reads the file with PyYAML (YAML 1.1); ruamel writes YAML 1.2, where `yes` or `1:30` are plain strings.
    # Whatever was written must read back as exactly this config, or the admin's site would stop working.
    try:
        back = config_from_mapping(load_yaml(text), str(path))
    except Exception:  # any doubt: the rendered config, whole
        back = None
    return text if back == config else render_config(config)


def _quoted_for_yaml11(value: Any) -> Any:
    """VALUE with every string PyYAML would not read back as that string (yes, on, 1_000, 1:30, null, ...)
    double-quoted for ruamel's dump."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString  # noqa: PLC0415  (as above)

    if isinstance(value, str):
        try:
            plain = load_yaml(f"x: {value}\n")
        except Exception:  # not even a plain scalar: quote it
            plain = None
        return value if isinstance(plain, dict) and plain.get("x") == value else DoubleQuotedScalarString(value)
    if isinstance(value, list):
        return [_quoted_for_yaml11(v) for v in value]
    if isinstance(value, dict):
        return {k: _quoted_for_yaml11(v) for k, v in value.items()}
    return value


def _is_site_or_empty(root: Path) -> bool:
    if not root.exists():
        return True
    if (root / CONFIG_NAME).exists():
        return True
    return not any(e for e in os.listdir(root) if not e.startswith(".nfs"))


def merge_channel_map(current: dict[str, tuple[str, ...]], items: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """--channel-map NAME=URL: NAME's entry becomes the URLs given for it (several: a multichannel, as
    `defaults`); NAME= drops the entry. Other entries stay."""
    given: dict[str, list[str]] = {}
    for item in items:
        name, sep, url = item.partition("=")
        name = name.strip().rstrip("/")
        if not sep or not name:
            raise UsageError(f"--channel-map {item!r}: expected NAME=URL, e.g. conda-forge=file:///mirror/conda-forge")
        urls = given.setdefault(name, [])
        if url.strip():
            urls.append(normalize_channel(url))
    out = dict(current)
    for name, urls in given.items():
        if urls:
            out[name] = tuple(urls)
        else:
            out.pop(name, None)
    return out


def pypi_changed(current: PypiConfig, options: dict[str, Any]) -> PypiConfig:
    """The `pypi:` section with init's options applied: index_url 'none' is null; a list option given as the one
    value '' empties the list. Validated as cpkgs.yaml is (one line naming pypi.KEY)."""
    data = current.to_yaml_dict()
    for key, value in options.items():
        if key == "index_url" and isinstance(value, str) and value.strip().lower() == "none":
            value = None
        elif isinstance(value, tuple):
            value = [v for v in value if v != ""]
        data[key] = value
    return pypi_config_from_mapping(data, "cpkgs init options")


def _merge_config(
    old: SiteConfig | None,
    admin_group: str | None,
    channels: tuple[str, ...],
    platforms: tuple[str, ...],
    channel_map: tuple[str, ...] = (),
    channel_alias: str | None = None,
    pypi: dict[str, Any] | None = None,
) -> tuple[SiteConfig, list[str]]:
    base = old or SiteConfig()
    new = base
    if pypi:
        new = replace(new, pypi=pypi_changed(new.pypi, pypi))
    if admin_group is not None:
        new = replace(new, admin_group=admin_group or None)
    if channel_map:
        new = replace(new, channel_map=merge_channel_map(new.channel_map, channel_map))
    if channel_alias is not None:
        alias = None if channel_alias.strip().lower() == "none" else normalize_channel(channel_alias)
        new = replace(new, channel_alias=alias)
    if channels:
        normalized = tuple(normalize_channel(c) for c in channels)
        for c in normalized:
            problem = channel_problem(c)
            if problem:
                raise UsageError(f"channel {c!r} {problem}")
        new = replace(new, channels=normalized)
    if platforms:
        for p in platforms:
            if p not in KNOWN_SUBDIRS or p not in new.installations:
                raise UsageError(f"platform {p!r} is not known (known: {', '.join(sorted(new.installations))})")
        # On an existing site --platform adds: dropping a platform would hide its envs from every user of that OS
        # (edit cpkgs.yaml to drop one on purpose). A new site serves exactly the platforms given.
        wanted = (*base.platforms, *platforms) if old is not None else platforms
        new = replace(new, platforms=tuple(dict.fromkeys(wanted)))
    # Round-trip through the validator so init never writes a config that later loads would refuse.
    new = config_from_mapping(new.to_yaml_dict(), "cpkgs init options")
    changes: list[str] = []
    if old is not None:
        a, b = old.to_yaml_dict(), new.to_yaml_dict()
        for key in b:
            if a.get(key) != b[key]:
                changes.append(f"{key}: {a.get(key)!r} -> {b[key]!r}")
    return new, changes


def init_site(
    root: Path,
    *,
    admin_group: str | None = None,
    channels: tuple[str, ...] = (),
    platforms: tuple[str, ...] = (),
    force: bool = False,
    channel_map: tuple[str, ...] = (),
    channel_alias: str | None = None,
    pypi: dict[str, Any] | None = None,
) -> InitReport:
    if root.exists() and not root.is_dir():
        raise SiteError(f"site root {root} exists and is not a directory")
    if not _is_site_or_empty(root) and not force:
        raise SiteError(f"{root} is not empty and is not a cpkgs site (no {CONFIG_NAME}); use --force to use it anyway")
    old: SiteConfig | None = None
    if (root / CONFIG_NAME).exists():
        old = load_config_file(root / CONFIG_NAME)
    config, changes = _merge_config(old, admin_group, channels, platforms, channel_map, channel_alias, pypi)
    site = Site(root=root, config=config)
    gid = site.admin_gid()  # validates the group exists before anything is written
    render_profiles(site)  # and that the root can be rendered into the profiles (quoting), before any mkdir
    tree = _Tree(site, gid, InitReport(root=str(root)))
    private_dmode, private_fmode = site.private_modes()
    tree.ensure_dir(root)
    tree.ensure_dir(site.state_dir)
    # The lock directory and the config must exist before the site lock can be taken. Only admins use the locks,
    # the trash and the package cache: closed to everyone else (an ordinary user's flock in the cache could hang
    # every build).
    tree.ensure_dir(site.locks_dir, private_dmode)
    with site_locked(site):
        tree.ensure_dir(site.trash_dir, private_dmode)
        _secure_cache(site, tree.report)
        if site.audit_log.exists():
            tree.fix(site.audit_log, private_fmode)
        _make_tree(tree)
        _write_files(tree, old, changes)
        report = tree.report
        if old is not None:
            report.config_changes = changes
            if changes and "cpkgs.yaml" in report.updated:
                report.updated.remove("cpkgs.yaml")
        if report.changed:
            audit(site, {"action": "init", "created": len(report.created), "updated": len(report.updated),
                         "config_changes": report.config_changes})
    return report


@dataclass
class _Tree:
    """init's work on SITE: what it creates or changes goes into REPORT; group GID (the admin group's) or None."""

    site: Site
    gid: int | None
    report: InitReport

    def ensure_dir(self, path: Path, mode: int | None = None) -> None:
        """PATH with MODE (default: the site's shared directory mode) and the group."""
        root = self.site.root
        try:
            if not os.path.lexists(path):
                # Created closed (0700 at most, whatever the umask), opened to its mode by _fix_perms.
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.report.created.append(str(path.relative_to(root)) + "/" if path != root else str(root))
        except PermissionError:
            raise PermissionProblem(f"cannot create {path}: permission denied") from None
        self.fix(path, self.site.shared_modes()[0] if mode is None else mode)

    def fix(self, path: Path, mode: int) -> None:
        try:
            _fix_perms(path, mode, self.gid, self.report, self.site.root)
        except PermissionError:
            raise PermissionProblem(f"cannot change the group or mode of {path}: permission denied (only its owner "
                                    "or root can)") from None


def _make_tree(tree: _Tree) -> None:
    """The site's directories, and each platform's installation with its envs, records and retired markers."""
    site = tree.site
    for d in (
        site.records_dir,
        site.retired_dir,
        site.profile_dir.parent,
        site.profile_dir,
        site.specs_dir,
        site.modulefiles_dir(site.primary_platform),
        site.root / "share",
        site.jupyter_dir(site.primary_platform),
        site.kernels_dir(site.primary_platform),
    ):
        tree.ensure_dir(d)
    for sub in site.config.platforms:
        tree.ensure_dir(site.installation(sub))
        tree.ensure_dir(site.envs_dir(sub))
        tree.ensure_dir(site.records_dir / sub)
        tree.ensure_dir(site.retired_dir / site.installation_name(sub))


def _write_files(tree: _Tree, old: SiteConfig | None, changes: list[str]) -> None:
    """cpkgs.yaml (whole for a new site; on an existing one only what the options change, the admin's comments and
    layout kept) and the profiles."""
    site, report = tree.site, tree.report
    fmode = site.shared_modes()[1]
    files: dict[Path, tuple[str, int]] = {}
    if old is None:
        files[site.config_file] = (render_config(site.config), fmode)
    elif changes:
        keys = [c.split(":", 1)[0] for c in changes]
        files[site.config_file] = (updated_config_text(site.config_file, site.config, keys), fmode)
    else:
        tree.fix(site.config_file, fmode)
    for path, text in render_profiles(site).items():
        files[path] = (text, fmode)
    for path, (text, mode) in files.items():
        existed = path.exists()
        try:
            if write_if_changed(path, text, mode, tree.gid):
                rel = str(path.relative_to(site.root))
                (report.updated if existed else report.created).append(rel)
        except PermissionError:
            raise PermissionProblem(f"cannot write {path}: permission denied") from None


def _secure_cache(site: Site, report: InitReport) -> None:
    """The package cache closed to everyone but the admins, and cleaned of what others could write while it was open
    (pipeline.cache.secure_cache)."""
    existed = site.pkgs_cache_dir.exists()
    fix = secure_cache(site)
    rel = str(site.pkgs_cache_dir.relative_to(site.root)) + "/"
    if not existed:
        report.created.append(rel)
    elif fix.changed:
        report.updated.append(rel + " (permissions)")
    report.warnings += fix.warnings


def _fix_perms(path: Path, mode: int, gid: int | None, report: InitReport, root: Path) -> None:
    """Give PATH exactly MODE and GID, through a descriptor. A symlink is followed only when root or this admin made
    it (an installation dir kept on another volume): the site's dirs are the admin group's to write, and a member's
    symlink must not turn root's chmod and chown on a directory of their choosing."""
    lst = os.lstat(path)
    if stat.S_ISLNK(lst.st_mode) and lst.st_uid not in (0, os.geteuid()):
        raise SiteError(f"{path} is a symlink made by uid {lst.st_uid}: cpkgs does not follow it (remove it, or make "
                        "it as root)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if stat.S_ISLNK(lst.st_mode) else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise SiteError(f"{path} became a symlink while cpkgs looked at it: cpkgs does not follow it") from None
    try:
        st = os.fstat(fd)
        changed = False
        if gid is not None and st.st_gid != gid:
            os.fchown(fd, -1, gid)
            changed = True
        if (st.st_mode & 0o7777) != mode:
            os.fchmod(fd, mode)
            changed = True
    finally:
        os.close(fd)
    if changed:
        rel = (str(path.relative_to(root)) + ("/" if path.is_dir() else "")) if path != root else str(root)
        if rel not in report.created:
            report.updated.append(rel + " (permissions)")

