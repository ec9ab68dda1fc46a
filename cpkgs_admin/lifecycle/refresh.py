"""`cpkgs refresh`: regenerate everything that lives outside envs from the records.

Profiles (etc/profile.d), kernelspecs and modulefiles (Lua and Tcl) for every published env, each in its platform's
trees (`Site.outputs_root`); files cpkgs generated that no env of that tree's platform wants any more (a removed
env, or one now published elsewhere) are removed, files cpkgs did not generate are never touched. Then every page of
the catalogs (catalog/). Idempotent: a second run changes nothing and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.outputs.catalog import CatalogReport, catalog_platforms, render_catalog
from cpkgs_admin.outputs.kernels import generated_kernel_files
from cpkgs_admin.outputs.modules import generated_module_files
from cpkgs_admin.outputs.profiles import write_profiles
from cpkgs_admin.outputs.sync import env_outputs, family_outputs, published, remove_outputs, stops, write_outputs
from cpkgs_admin.site.locks import site_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import load_all


@dataclass(frozen=True)
class RefreshReport:
    profiles: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "NAME: why", for envs whose names collide with an older one
    envs: int = 0
    warnings: list[str] = field(default_factory=list)  # "NAME: ...", e.g. activate.d scripts that failed here

    @property
    def changed(self) -> bool:
        return bool(self.profiles or self.written or self.removed)

    def lines(self) -> list[str]:
        return (
            [f"wrote {p}" for p in self.profiles + self.written]
            + [f"removed {p}" for p in self.removed]
            + [f"skipped {s}" for s in self.skipped]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "envs": self.envs,
            "profiles": self.profiles,
            "written": self.written,
            "removed": self.removed,
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


def refresh_site(site: Site) -> RefreshReport:
    with site_locked(site):
        profiles = write_profiles(site)
        records = load_all(site.records_dir)
        chosen = published(site, records)
        desired: dict[Path, str] = {}
        owner: dict[Path, str] = {}
        skipped: list[str] = []
        warnings: list[str] = []
        kept = []
        for rec in chosen:  # oldest first: on a collision (records older than preflight) the older env keeps it
            files = env_outputs(site, rec, warnings)
            clash = next((p for p in files if p in owner), None)
            if clash is not None:
                skipped.append(f"{rec.name}: {clash} already belongs to {owner[clash]}")
                continue
            kept.append(rec)
            for p in files:
                owner[p] = rec.name
            desired.update(files)
        for plat, family in sorted({(r.platform, r.family) for r in kept}):
            desired.update(family_outputs(site, family, plat, kept))
        written = write_outputs(site, desired)
        # Every platform's trees, including those of a platform no longer served that still has records.
        platforms = site.output_platforms(tuple(sorted({r.platform for r in records})))
        existing = [f for p in platforms for f in generated_kernel_files(site, p) + generated_module_files(site, p)]
        removed = remove_outputs([p for p in existing if p not in desired], stops(site, platforms))
        catalog = _catalog(site, warnings)
    return RefreshReport(profiles=profiles, written=written + catalog.written, removed=removed + catalog.removed,
                         skipped=skipped, envs=len(kept), warnings=warnings)


def _catalog(site: Site, warnings: list[str]) -> CatalogReport:
    """Every page of the catalogs that exist or have envs, rewriting those whose text changed; best effort, as
    after a publish."""
    try:
        rep = render_catalog(site, catalog_platforms(site, existing=True))
    except (CpkgsError, OSError) as exc:
        warnings.append(f"the catalog was not rendered: {exc}; run 'cpkgs catalog'")
        return CatalogReport()
    warnings += [f"catalog: {msg}" for _path, msg in rep.damaged]
    return rep
