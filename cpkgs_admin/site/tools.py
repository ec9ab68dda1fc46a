"""The cpkgs tool of each installation (`cpkgs install-tool`): its builds, their records, which one is current.

<installation>/cpkgs-tool/bin/cpkgs is a symlink to ../<build>/bin/cpkgs (the one entry users' PATH gets); each build
is a sealed env whose record (the env record's fields, "kind": "tool") is .cpkgs/tools/<platform>/<build>.json.
A build runs from its own python, names its site in conda-meta/cpkgs/tool.json (read by `--version` and for the
default root). Build names: the version, then VERSION-2, -3... for later builds of one version (PEP 440 versions
never hold '-').
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.site.paths import STAGING_PREFIX, Site
from cpkgs_admin.site.records import EnvRecord, load_record_file, save_record

TOOL_INFO = "conda-meta/cpkgs/tool.json"
TOOL_SCHEMA = 1
BUILD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_LINK = re.compile(r"\.\./(?P<build>[^/]+)/bin/cpkgs\Z")


def current_build(site: Site, subdir: str) -> str | None:
    """The build bin/cpkgs points to (None: no tool, or a link cpkgs did not make)."""
    try:
        m = _LINK.match(os.readlink(site.tool_bin(subdir)))
    except OSError:
        return None
    return m.group("build") if m and BUILD_NAME.match(m.group("build")) else None


def build_dirs(site: Site, subdir: str) -> list[str]:
    """The published builds present in the tool dir (staging dirs and bin/ aside)."""
    try:
        names = os.listdir(site.tool_dir(subdir))
    except OSError:
        return []
    return sorted(n for n in names if n != "bin" and not n.startswith((STAGING_PREFIX, "."))
                  and BUILD_NAME.match(n) and (site.tool_dir(subdir) / n).is_dir())


def tool_records(site: Site, subdir: str) -> list[EnvRecord]:
    """Every build's record of SUBDIR's tool, oldest first."""
    d = site.tool_records_dir(subdir)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
    except OSError:
        return []
    out = []
    for n in names:
        try:
            out.append(load_record_file(d / n))
        except CpkgsError:  # a damaged record is verify's to report; here it is no build
            continue
    return sorted(out, key=lambda r: r.created)


def tool_platforms(site: Site) -> list[str]:
    """The platforms with tool records, in the site's order."""
    return [p for p in site.config.platforms if site.tool_records_dir(p).is_dir()]


def build_of(record: EnvRecord) -> str:
    return str(record.extra.get("build") or Path(record.prefix).name)


def save_tool_record(site: Site, record: EnvRecord) -> None:
    path = site.tool_record_path(build_of(record), record.platform)
    dmode, _fmode = site.shared_modes()  # world-readable like records/: doctor and --version read them
    for d in (path.parent.parent, path.parent):
        d.mkdir(exist_ok=True)
        os.chmod(d, dmode)
    save_record(path, record)


def tool_info(prefix: Path | str) -> dict[str, Any] | None:
    """A build's tool.json (None: not a tool build, or gone)."""
    try:
        with open(os.path.join(prefix, TOOL_INFO), "rb") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == TOOL_SCHEMA else None


def running_tool() -> dict[str, Any] | None:
    """tool.json of the build this process runs from (sys.prefix), None when cpkgs runs from anything else."""
    return tool_info(sys.prefix)
