"""Environment records: one JSON file per published env under .cpkgs/records/<platform>/<name>.json.

Written atomically; each carries a schema version and `load_record` migrates older ones. `list` reads only these
files, never the environments themselves, so listing 500 envs on NFS costs 500 small reads.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError, EnvNotFound, UsageError
from cpkgs_admin.site.files import atomic_write_json
from cpkgs_admin.site.names import parse_name
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.text import printable

# 2: `activation` (what activate.d scripts set, kept at publish). A cpkgs that knows only schema 1 stops with
# "upgrade cpkgs" instead of misreading; from 2 on, keys a newer cpkgs adds are kept (EnvRecord.extra).
RECORD_SCHEMA = 2
STATUSES = ("active", "retired", "unsealed", "removed")
# Every time stamp in a record (and the audit log): local time with its UTC offset, as `date +%Y-%m-%dT%H:%M:%S%z`
# prints it.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def timestamp(epoch: float | None = None) -> str:
    """EPOCH (default: now) as a record writes it (TIME_FORMAT)."""
    return time.strftime(TIME_FORMAT, time.localtime(epoch))


def epoch_of(when: Any) -> float | None:
    """A record's time stamp (see timestamp) as seconds, or None when it is not one."""
    try:
        return datetime.strptime(str(when), TIME_FORMAT).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class PackageEntry:
    name: str
    version: str
    build: str
    channel: str
    sha256: str
    url: str = ""
    md5: str = ""
    subdir: str = ""
    filename: str = ""
    depends: tuple[str, ...] = ()
    # "conda", or "pypi" for the pip part: build "pypi", channel where it came from (its index, git URL at the
    # commit, or wheel URL), sha256 the wheel's; `extra` holds index, requested, requirement, source, dist_info.
    kind: str = "conda"
    # Keys a newer cpkgs wrote into this package's entry: kept as they are and written back.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class EnvRecord:
    name: str
    family: str
    version: str
    platform: str
    prefix: str
    requested_specs: list[str]
    channels: list[str]
    packages: list[PackageEntry]
    creator: str
    host: str
    created: str
    cpkgs_version: str
    size: int
    file_count: int
    status: str = "active"
    spec_source: str | None = None
    spec_sha256: str | None = None
    extends: list[str] = field(default_factory=list)
    virtual_packages: dict[str, str] = field(default_factory=dict)
    retired: dict[str, Any] | None = None  # {"successor":..., "message":..., "at":..., "by":...}
    # {"at":..., "by":..., "purge_after":...}; purge adds "trash" and "moved" when it moves the tree away (an older
    # cpkgs moved it at once and wrote only "trash").
    removed: dict[str, Any] | None = None
    unsealed: dict[str, Any] | None = None  # {"at":..., "by":..., "reason":...}
    history: list[dict[str, Any]] = field(default_factory=list)
    meta_sha256: str | None = None  # verify.meta_digest at publish (conda-meta + cpkgs manifests)
    # What the env's activate.d scripts set, run once at publish on a host of the env's platform:
    # {"path_prepend": [...], "variables": {NAME: value}}; None when they could not run there (another platform).
    # Modulefiles and kernels are written from it on any host, so a `refresh` on a Mac keeps Linux envs' variables.
    activation: dict[str, Any] | None = None
    # environment.yml `variables:` (spec files and --from carry them): written into the env as activate.d and
    # deactivate.d scripts (etc/conda/*/cpkgs-variables.*) at publish.
    variables: dict[str, str] = field(default_factory=dict)
    # `channels` names the channels as the request did (conda-forge, defaults, a URL); this gives the URLs each
    # was read from on this site (cpkgs.yaml channel_map / channel_alias). Packages: `channel` the name, `url` the
    # file's URL. Empty in records of cpkgs versions before channel maps (their `channels` are the URLs).
    channel_urls: dict[str, list[str]] = field(default_factory=dict)
    # The pip part (pipeline/pip.py): its packages (PackageEntry, kind "pypi"), and {"requested": [lines],
    # "options": {...}, "platform": uv's platform, "bytecode": bool} or None for an env without one.
    pypi_packages: list[PackageEntry] = field(default_factory=list)
    pip: dict[str, Any] | None = None
    # Top-level modules of interest the env could import at publish (IPython, ipykernel, pip), from either part:
    # kernels and layers decide on them; None in records of a cpkgs before the pip part (package names decide).
    imports: list[str] | None = None
    schema: int = RECORD_SCHEMA
    # Keys a newer cpkgs wrote (same schema): kept as they are and written back, never dropped by an older cpkgs.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d["packages"] = [{**p.extra, **_package_json(p)} for p in self.packages]
        d["pypi_packages"] = [{**p.extra, **_package_json(p)} for p in self.pypi_packages]
        return {**extra, **d}

    @property
    def all_packages(self) -> list[PackageEntry]:
        """Both parts: the conda packages, then the pip part's."""
        return [*self.packages, *self.pypi_packages]

    def can_import(self, module: str) -> bool:
        """Whether the env could import MODULE at publish (older records: a package of that name, either kind)."""
        if self.imports is not None:
            return module in self.imports
        return any(p.name == module.lower() for p in self.all_packages)

    @property
    def python_version(self) -> str | None:
        for p in self.packages:
            if p.name == "python":
                return p.version
        return None

    def package(self, name: str) -> PackageEntry | None:
        return next((p for p in self.packages if p.name == name), None)


_RECORD_FIELDS = frozenset(f.name for f in fields(EnvRecord))
_PACKAGE_FIELDS = frozenset(f.name for f in fields(PackageEntry))


def _package_json(p: PackageEntry) -> dict[str, Any]:
    d = asdict(p)
    d.pop("extra")
    d["depends"] = list(d["depends"])
    return d


_PLAIN_PACKAGE_FIELDS = _PACKAGE_FIELDS - {"extra"}


def _package_from_json(p: Any) -> PackageEntry:
    if isinstance(p, dict) and _PLAIN_PACKAGE_FIELDS.issuperset(p):
        # The usual entry, no keys of a newer cpkgs: a third faster for 150,000 entries (500 records, the catalog).
        return PackageEntry(**{**p, "depends": tuple(p.get("depends", ()))})
    known = {k: v for k, v in p.items() if k in _PACKAGE_FIELDS and k != "extra"}
    extra = {k: v for k, v in p.items() if k not in known}
    return PackageEntry(**{**known, "depends": tuple(p.get("depends", ()))}, extra=extra)


def _migrate(data: dict[str, Any], path: Path) -> dict[str, Any]:
    schema = data.get("schema", 1)
    if schema > RECORD_SCHEMA:
        raise CpkgsError(f"{path}: record schema {schema} is newer than this cpkgs understands; upgrade cpkgs")
    # 1 -> 2: no activation kept (None: measured on a host of the env's platform when needed).
    data["schema"] = RECORD_SCHEMA
    return data


def record_problem(data: Any, path: Path | None = None) -> str | None:
    """Why DATA is no environment record cpkgs can use, or None: what record_from_json checks before building one,
    also for `list`, which builds no package entries. With PATH (records/<platform>/<name>.json), also that the
    file describes its own name and platform: a record copied or renamed to another name would describe another env."""
    if not isinstance(data, dict) or not isinstance(data.get("schema", 1), int):
        return "not a cpkgs environment record"
    missing = sorted(_REQUIRED_FIELDS - data.keys())
    if missing:
        return f"{', '.join(missing)} missing"
    if not all(isinstance(v, str) and v for v in (data["name"], data["platform"], data["prefix"],
                                                  data.get("status", "active"))):
        return "name, platform, prefix or status missing"
    for key, kinds in _FIELD_TYPES.items():
        if key in data and not isinstance(data[key], kinds):
            return f"{key} is a {type(data[key]).__name__}"
    if path is not None and (data["name"], data["platform"]) != (path.stem, path.parent.name):
        return f"it describes {data['name']} for {data['platform']}"
    return None


def record_from_json(data: Any, path: Path, *, filed: bool = False) -> EnvRecord:
    """FILED: PATH is the record's place under records/ (see record_problem)."""
    problem = record_problem(data, path if filed else None)
    if problem:
        raise CpkgsError(f"{path}: damaged record ({problem})")
    data = _migrate(dict(data), path)
    extra = {k: data.pop(k) for k in list(data) if k not in _RECORD_FIELDS or k == "extra"}
    try:
        pkgs = [_package_from_json(p) for p in data.pop("packages")]
        pypi = [_package_from_json(p) for p in data.pop("pypi_packages", None) or []]
        return EnvRecord(packages=pkgs, pypi_packages=pypi, extra=extra, **data)
    except (TypeError, KeyError, AttributeError) as exc:  # a package entry that is not one
        raise CpkgsError(f"{path}: damaged record ({type(exc).__name__}: {exc})") from None


_REQUIRED_FIELDS = frozenset(f.name for f in fields(EnvRecord) if f.default is MISSING and f.default_factory is MISSING)
# Fields whose type the code relies on (a record edited by hand: "retired": "x" must be "damaged", not a crash).
_FIELD_TYPES: dict[str, Any] = {
    "requested_specs": list, "channels": list, "packages": list, "extends": list, "history": list,
    "virtual_packages": dict, "retired": (dict, type(None)), "removed": (dict, type(None)),
    "unsealed": (dict, type(None)), "activation": (dict, type(None)), "size": int, "file_count": int,
    "created": str, "variables": dict, "family": str, "version": str, "channel_urls": dict,
    "pypi_packages": list, "pip": (dict, type(None)), "imports": (list, type(None)),
}


def load_record_file(path: Path) -> EnvRecord:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise EnvNotFound(f"no environment record {path}") from None
    except (OSError, ValueError) as exc:
        raise CpkgsError(f"{path}: unreadable record ({exc})") from None
    return record_from_json(data, path, filed=True)


def save_record(path: Path, record: EnvRecord) -> None:
    atomic_write_json(path, record.to_json())


def iter_record_files(records_dir: Path) -> list[tuple[str, Path]]:
    """(platform, path) of every record, without stat-ing env trees. Skips temp files and NFS silly-renames."""
    out: list[tuple[str, Path]] = []
    try:
        platforms = sorted(os.scandir(records_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for pe in platforms:
        if pe.name.startswith(".") or not pe.is_dir():
            continue
        for fe in sorted(os.scandir(pe.path), key=lambda e: e.name):
            if fe.name.endswith(".json") and not fe.name.startswith("."):
                out.append((pe.name, Path(fe.path)))
    return out


# What to do about a record load_all or list reports as damaged.
DAMAGED_RECORD_HINT = ("restore it from a backup, or copy the env's own conda-meta/cpkgs/record.json over it "
                       "(its state at publish)")

# path -> ((inode, size, mtime_ns, ctime_ns), record): records this process parsed before; see load_all(shared=True).
_parsed: dict[Path, tuple[tuple[int, int, int, int], EnvRecord]] = {}


def load_all(
    records_dir: Path, *, shared: bool = False, damaged: list[tuple[Path, str]] | None = None
) -> list[EnvRecord]:
    """Every record. With SHARED, a record file unchanged since this process last parsed it (same inode, size and
    mtime: records are only ever replaced by rename, so a new version is a new inode) comes back as the same
    object, not parsed again: new-env looks at every record three times (name checks before and under the site
    lock, then the modulefiles). Only for callers that do not modify what they get.

    A record that cannot be read raises CpkgsError naming it; with DAMAGED, it goes there as (path, the error
    line) and the others are returned: for callers that can work on without it (list, verify, name checks),
    never for those that would delete what a damaged record's env owns (refresh)."""
    out = []
    for _, p in iter_record_files(records_dir):
        try:
            if not shared:
                out.append(load_record_file(p))
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # removed since the listing (a rename in flight): as if listed a moment later
            except OSError as exc:
                raise CpkgsError(f"{p}: unreadable record ({exc.strerror})") from None
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            hit = _parsed.get(p)
            if hit is None or hit[0] != key:
                hit = _parsed[p] = (key, load_record_file(p))
            out.append(hit[1])
        except EnvNotFound:
            continue  # removed since the listing
        except CpkgsError as exc:
            if damaged is None:
                raise
            damaged.append((p, str(exc)))
    return out


def find_records(records_dir: Path, name: str) -> list[EnvRecord]:
    """Records of NAME on every platform (a name may exist for linux-64 and osx-arm64)."""
    out = []
    for _plat, p in iter_record_files(records_dir):
        if p.stem == name:
            out.append(load_record_file(p))
    return out


def get_record(site: Site, name: str, platform: str | None) -> EnvRecord:
    """NAME's record for PLATFORM; without one, the only platform NAME has, else this host's."""
    parse_name(name)
    if platform:
        path = site.record_path(name, platform)
        if not path.exists():
            raise EnvNotFound(f"no environment named {name} for {platform} in {site.root} (see 'cpkgs list --all')")
        return load_record_file(path)
    recs = find_records(site.records_dir, name)
    if not recs:
        raise EnvNotFound(f"no environment named {name} in {site.root} (see 'cpkgs list --all')")
    if len(recs) == 1:
        return recs[0]
    native = [r for r in recs if r.platform == site.native_subdir]
    if native:
        return native[0]
    raise UsageError(f"{name} exists for {', '.join(r.platform for r in recs)}: pass --platform")


def retired_line(rec: EnvRecord) -> str:
    """The line users see on activation and `module load`. The message was checked when it was given; a record
    written before that check (or edited) still gets no control character through to a terminal."""
    r = rec.retired or {}
    text = f"cpkgs: {rec.name} is retired"
    if r.get("successor"):
        text += f"; use {r['successor']}"
    if r.get("message"):
        text += f" ({r['message']})"
    return printable(text)


def removed_line(rec: EnvRecord) -> str:
    """The one line a removed env's marker holds: the shell refuses the activation with it. conda.sh recognises it
    by its start, "cpkgs: NAME was removed" (a retired env's line starts "cpkgs: NAME is retired")."""
    successor = (rec.retired or {}).get("successor")
    return f"cpkgs: {rec.name} was removed" + (f"; use {successor}" if successor else "")
