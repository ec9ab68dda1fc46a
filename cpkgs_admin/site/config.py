"""cpkgs.yaml: the site's configuration, loaded and validated (every problem one line naming the file and the key)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import ConfigError, SiteError, SpecError, UsageError
from cpkgs_admin.site.channels import CHANNEL_NAME, DEFAULT_CHANNEL_ALIAS, NODEFAULTS, ChannelMap
from cpkgs_admin.site.files import read_text_file
from cpkgs_admin.site.pypi_config import PypiConfig, pypi_config_from_mapping
from cpkgs_admin.site.usage_config import UsageConfig, usage_from_mapping
from cpkgs_admin.site.yamlio import parse_yaml

SCHEMA_VERSION = 1
CONFIG_NAME = "cpkgs.yaml"

DEFAULT_INSTALLATIONS: dict[str, str] = {
    "linux-64": "anaconda3_linux",
    "osx-arm64": "anaconda3_macOS",
    "osx-64": "anaconda3_macOS_x86_64",
    "linux-aarch64": "anaconda3_linux_aarch64",
}
DEFAULT_PLATFORMS: tuple[str, ...] = ("linux-64", "osx-arm64")
# Top-level names the site tree itself uses: no installation may take one.
RESERVED_TOP_LEVEL = frozenset({"etc", "specs", "modulefiles", "modulefiles-tcl", "share", "cpkgs.yaml", ".cpkgs"})
KNOWN_SUBDIRS = frozenset(
    {"linux-64", "linux-aarch64", "linux-ppc64le", "linux-s390x", "osx-64", "osx-arm64", "win-64", "win-arm64"}
)

_DURATION = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>s|m|h|d|w)?\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """'30d', '12h', '90m', '45s' or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"{what} must not be negative: {text}")
        return float(text)
    m = _DURATION.match(str(text).strip())
    if not m:
        raise UsageError(f"{what} {text!r} is not a duration (e.g. 30d, 12h, 90m, 45s)")
    return float(m.group("n")) * _UNITS[m.group("unit") or "s"]


def normalize_channel(value: str) -> str:
    """A channel as cpkgs.yaml stores it: a URL or a bare channel name; an absolute path becomes file://."""
    value = value.strip()
    if value.startswith("/"):
        return Path(value).resolve().as_uri()
    return value.rstrip("/") if "://" in value else value


def channel_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if "://" in value:
        scheme, _, rest = value.partition("://")
        if scheme not in ("file", "http", "https"):
            return f"has unsupported scheme {scheme!r} (use file://, http:// or https://)"
        if scheme == "file" and not rest.startswith("/"):
            return "is a file:// URL without an absolute path"
        if scheme != "file" and (not rest or rest.startswith("/") or " " in rest):
            return "is not a valid URL"
        return None
    if not CHANNEL_NAME.match(value):
        return "is neither a URL nor a channel name"
    if value == NODEFAULTS:
        return "is not a channel: environment files use it to drop the site's channels"
    return None


@dataclass(frozen=True)
class SiteConfig:
    schema: int = SCHEMA_VERSION
    admin_group: str | None = None
    channels: tuple[str, ...] = ()
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    installations: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_INSTALLATIONS))
    trash_grace: str = "7d"
    lease_seconds: float = 60.0
    lock_timeout: float = 600.0
    virtual_packages: dict[str, str] = field(default_factory=dict)
    # channel name (or URL prefix) -> the URL(s) this site serves it from: mirrors, air-gapped copies. A name maps
    # to one URL, or to several (a multichannel, as conda's `defaults`).
    channel_map: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Where names channel_map does not hold live (conda's channel_alias); None: such names are refused.
    channel_alias: str | None = DEFAULT_CHANNEL_ALIAS

    @property
    def channel_resolver(self) -> ChannelMap:
        return ChannelMap(entries=self.channel_map, alias=self.channel_alias)
    usage: UsageConfig = field(default_factory=UsageConfig)
    # Where the pip part of a spec finds its packages, and whether a spec may have one (site/pypi_config.py).
    pypi: PypiConfig = field(default_factory=PypiConfig)

    def to_yaml_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "admin_group": self.admin_group,
            "channels": list(self.channels),
            "platforms": list(self.platforms),
            "installations": dict(self.installations),
            "trash_grace": self.trash_grace,
            "lease_seconds": self.lease_seconds,
            "lock_timeout": self.lock_timeout,
            "virtual_packages": dict(self.virtual_packages),
            "channel_map": {k: v[0] if len(v) == 1 else list(v) for k, v in self.channel_map.items()},
            "channel_alias": self.channel_alias,
            "usage": self.usage.to_yaml_dict(),
            "pypi": self.pypi.to_yaml_dict(),
        }


_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "admin_group": (str, type(None)),
    "channels": (list,),
    "platforms": (list,),
    "installations": (dict,),
    "trash_grace": (str, int),
    "lease_seconds": (int, float),
    "lock_timeout": (int, float),
    "virtual_packages": (dict,),
    "channel_map": (dict,),
    "channel_alias": (str, type(None)),
    "usage": (dict, type(None)),
    "pypi": (dict, type(None)),
}


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    # Schema 1 is the first; later versions add their migrations here, oldest first.
    return data


Bad = Callable[[str, str], ConfigError]


def config_from_mapping(data: Any, source: str) -> SiteConfig:
    """Validate a parsed cpkgs.yaml; every problem is one line naming the file and the key (checked in the order of
    the file's keys, the first problem found is the one reported)."""

    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}' {problem}")

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    _check_types(data, bad)
    schema = data.get("schema", SCHEMA_VERSION)
    if schema > SCHEMA_VERSION or schema < 1:
        raise bad("schema", f"is {schema}; this cpkgs understands schema {SCHEMA_VERSION} (upgrade cpkgs)")
    data = _migrate(dict(data))
    channels = data.get("channels", [])
    for i, ch in enumerate(channels):
        problem = channel_problem(ch)
        if problem:
            raise bad(f"channels[{i}]", f"{ch!r} {problem}")
    installations = _check_installations(data, bad)
    platforms = _check_platforms(data, installations, bad)
    admin_group = data.get("admin_group")
    if admin_group is not None and not re.match(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?\Z", admin_group):
        raise bad("admin_group", f"{admin_group!r} is not a group name")
    grace = data.get("trash_grace", "7d")
    try:
        parse_duration(grace)
    except UsageError as exc:
        raise bad("trash_grace", str(exc)) from None
    lease, lock_timeout = _check_times(data, bad)
    vps = data.get("virtual_packages", {})
    for k, v in vps.items():
        if not isinstance(k, str) or not k.startswith("__") or not isinstance(v, (str, int, float)):
            raise bad(f"virtual_packages.{k}", "must map a virtual package (e.g. __cuda) to a version")
    cmap = _check_channel_map(data, bad)
    for i, ch in enumerate(channels):
        try:
            cmap.urls(ch)
        except SpecError as exc:
            raise bad(f"channels[{i}]", str(exc)) from None
    return SiteConfig(
        schema=SCHEMA_VERSION, admin_group=admin_group, channels=tuple(channels), platforms=tuple(platforms),
        installations=installations, trash_grace=str(grace), lease_seconds=lease, lock_timeout=lock_timeout,
        virtual_packages={k: str(v) for k, v in vps.items()}, channel_map=dict(cmap.entries), channel_alias=cmap.alias,
        usage=usage_from_mapping(data.get("usage"), bad), pypi=pypi_config_from_mapping(data.get("pypi"), source),
    )


def _check_types(data: dict[Any, Any], bad: Bad) -> None:
    for key, value in data.items():
        if key not in _KEY_TYPES:
            raise bad(str(key), f"is unknown (known keys: {', '.join(sorted(_KEY_TYPES))})")
        types = _KEY_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise bad(key, f"must be {names}, got {type(value).__name__}")


def _check_installations(data: dict[str, Any], bad: Bad) -> dict[str, str]:
    installations = dict(DEFAULT_INSTALLATIONS)
    for sub, inst in data.get("installations", {}).items():
        if sub not in KNOWN_SUBDIRS:
            raise bad(f"installations.{sub}", "is not a known platform")
        if not isinstance(inst, str) or not re.match(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z", inst):
            raise bad(f"installations.{sub}", f"{inst!r} is not a valid directory name")
        if inst in RESERVED_TOP_LEVEL:
            raise bad(f"installations.{sub}", f"{inst!r} is a directory of the site itself")
        installations[sub] = inst
    return installations


def _check_platforms(data: dict[str, Any], installations: dict[str, str], bad: Bad) -> list[str]:
    platforms: list[str] = data.get("platforms", list(DEFAULT_PLATFORMS))
    for i, sub in enumerate(platforms):
        if not isinstance(sub, str) or sub not in installations:
            raise bad(f"platforms[{i}]", f"{sub!r} is not a platform with an installation")
    if len({installations[p] for p in platforms}) != len(platforms):
        raise bad("installations", "maps two platforms to one directory")
    return platforms


def _check_times(data: dict[str, Any], bad: Bad) -> tuple[float, float]:
    """(lease_seconds, lock_timeout)."""
    lease = float(data.get("lease_seconds", 60.0))
    # A lease shorter than a second gives up mutual exclusion on a slow NFS server; one longer than a day keeps a
    # dead host's lock for that long. NaN and infinity compare false with everything, hence the explicit check.
    if not math.isfinite(lease) or not 1 <= lease <= 86400:
        raise bad("lease_seconds", f"must be between 1 and 86400 seconds, got {lease}")
    lock_timeout = float(data.get("lock_timeout", 600.0))
    if not math.isfinite(lock_timeout) or not 0 <= lock_timeout <= 7 * 86400:
        raise bad("lock_timeout", f"must be between 0 and 604800 seconds, got {lock_timeout}")
    return lease, lock_timeout


def _url_problem(value: Any) -> str | None:
    if isinstance(value, str) and "://" not in value:
        return "must be a URL (file://, http:// or https://)"
    return channel_problem(value)


def _check_channel_map(data: dict[str, Any], bad: Bad) -> ChannelMap:
    """channel_map: {name or URL prefix: URL or [URL, ...]} and channel_alias: URL or null."""
    alias = data.get("channel_alias", DEFAULT_CHANNEL_ALIAS)
    problem = None if alias is None else _url_problem(alias)
    if problem:
        raise bad("channel_alias", f"{alias!r} {problem}")
    entries: dict[str, tuple[str, ...]] = {}
    for key, value in data.get("channel_map", {}).items():
        where = f"channel_map.{key}"
        problem = channel_problem(key) if isinstance(key, str) else "must be a channel name or URL"
        if problem:
            raise bad(where, f"{key!r} {problem}" if isinstance(key, str) else problem)
        urls = value if isinstance(value, list) else [value]
        if not urls:
            raise bad(where, "must name a URL or a list of URLs")
        if "://" in key and len(urls) > 1:
            raise bad(where, "maps a URL to one URL only (a list is for a channel name, as defaults)")
        for url in urls:
            problem = _url_problem(url)
            if problem:
                raise bad(where, f"{url!r} {problem}")
        entries[key.rstrip("/")] = tuple(u.rstrip("/") for u in urls)
    return ChannelMap(entries=entries, alias=alias.rstrip("/") if alias else None)


def load_config_file(path: Path) -> SiteConfig:
    try:
        text = read_text_file(path, str(path), SiteError)
    except FileNotFoundError:
        raise SiteError(f"{path} does not exist: not a cpkgs site (run 'cpkgs init')") from None
    return config_from_mapping(parse_yaml(text, str(path), ConfigError), str(path))
