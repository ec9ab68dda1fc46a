"""What `cpkgs list`, `diff` and `export` read: the records only, never the envs (500 records on NFS cost 500 small
reads)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.outputs.views import EnvDiff, diff_records, export_record
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import get_record, iter_record_files, record_problem


@dataclass(frozen=True)
class ListRow:
    name: str
    platform: str
    status: str
    created: str
    size: int
    successor: str | None
    spec: str | None
    # A removed env still at its path (running jobs use it): when `purge` may move it away. None otherwise.
    purge_after: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "platform": self.platform,
            "status": self.status,
            "created": self.created,
            "size": self.size,
            "successor": self.successor,
            "spec": self.spec,
            "purge_after": self.purge_after,
        }


def list_envs(site: Site, show_all: bool = False, damaged: list[tuple[Path, str]] | None = None) -> list[ListRow]:
    """Reads records only. json.loads of the whole record is the cost; 500 records take a few ms. A record that
    cannot be read raises CpkgsError, or with DAMAGED goes there as (path, error line) while the others are listed."""
    rows = []
    for _plat, path in iter_record_files(site.records_dir):
        try:
            row = _list_row(path)
        except CpkgsError as exc:
            if damaged is None:
                raise
            damaged.append((path, str(exc)))
            continue
        if row is not None and (show_all or row.status not in ("retired", "removed")):
            rows.append(row)
    rows.sort(key=lambda r: (r.name, r.platform))
    return rows


def _list_row(path: Path) -> ListRow | None:
    try:
        d = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None  # removed since the listing
    except (OSError, ValueError) as exc:
        raise CpkgsError(f"{path}: unreadable record ({exc})") from None
    # record_from_json's own checks, without building every package entry: list agrees with verify and refresh.
    problem = record_problem(d, path)
    if problem:
        raise CpkgsError(f"{path}: damaged record ({problem})")
    removed = d.get("removed") or {}
    return ListRow(
        name=d["name"],
        platform=d["platform"],
        status=d.get("status", "active"),
        created=d["created"],
        size=d["size"],
        successor=(d.get("retired") or {}).get("successor"),
        spec=d.get("spec_source"),
        # (an older cpkgs moved removed envs into the trash at once and wrote "trash" then; purge writes it too)
        purge_after=None if "trash" in removed else removed.get("purge_after"),
    )


def diff_envs(site: Site, old: str, new: str) -> EnvDiff:
    return diff_records(get_record(site, old, None), get_record(site, new, None))


def export_env(site: Site, name: str, fmt: str, platform: str | None) -> str:
    return export_record(get_record(site, name, platform), fmt)
