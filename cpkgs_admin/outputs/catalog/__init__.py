"""The catalog: a static web page per installation (`Site.catalog_dir`) listing every env of its platform.

Families and their versions with status, each env's page (how to use it, the spec, the package table with a filter,
the lock and environment.yml to download), a diff page against the previous version, and a search over every env's
packages on the index. Plain files: opens from file:// and from any static web server, no external assets.

Interface (the rest of cpkgs uses only these):
    render_catalog(site)                  every page of every platform's catalog (`cpkgs catalog`, `cpkgs refresh`)
    update_catalog(site, platform, names) after a change to NAMES: their pages, their family neighbours', the index
    after_change(site, record, warnings)  the hook publish/retire/remove call: update_catalog, a failure a warning
    index_file(site, platform)            the index.html users open
Extra sections (the usage panel): sections.py. A full render of a big site runs its env pages in forked workers
(workers.py), whole families each.
"""

from __future__ import annotations

from typing import Any

from cpkgs_admin.outputs.catalog.update import (
    CatalogReport,
    catalog_platforms,
    index_file,
    render_catalog,
    update_catalog,
)


def after_change(site: Any, record: Any, warnings: list[str] | None = None) -> list[str]:
    """Update RECORD's platform's catalog after RECORD was published, retired or removed; the paths written or
    removed. Best effort, like the modulefiles after the publish point: the change is done whatever happens here, so
    a failure is a line in WARNINGS naming the repair, never an error."""
    try:
        rep = update_catalog(site, record.platform, (record.name,))
    except Exception as exc:  # a bug here must not fail a publish that already happened
        if warnings is not None:
            warnings.append(f"{record.name}: the catalog was not updated: {exc or type(exc).__name__}; "
                            "run 'cpkgs catalog'")
        return []
    # Other records that cannot be read are `list`'s and `verify`'s to report; their pages stay as they were.
    if warnings is not None:
        warnings += [f"catalog: {msg}" for path, msg in rep.damaged if path.stem == record.name]
    return rep.written + rep.removed


__all__ = ["CatalogReport", "after_change", "catalog_platforms", "index_file", "render_catalog", "update_catalog"]
