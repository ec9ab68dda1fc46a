"""The catalog's usage panels (issue 18): a section per env page (runs, users, last use, weekly runs, its most used
packages) and one on the index (distinct users per package, top 30, and the retirement candidates), all inline SVG
and escaped HTML from outputs/usage/chart.py.

Reading the usage logs costs about 3 s per million records, so only a full render (`cpkgs catalog`, `cpkgs
refresh`) reads them; it keeps the panels it rendered in the catalog directory (PANELS), and the updates a publish,
retire or remove make use those: a publish's update stays a fraction of a second however large the logs are, and
the panels are as fresh as the last full render (run `cpkgs catalog` from cron to refresh them daily).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from markupsafe import Markup

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.outputs.catalog.sections import Section
from cpkgs_admin.outputs.usage.chart import usage_panels
from cpkgs_admin.outputs.usage.report import UsageReport, usage_report

if TYPE_CHECKING:
    from cpkgs_admin.outputs.catalog.model import EnvSummary
    from cpkgs_admin.site.paths import Site
    from cpkgs_admin.site.records import EnvRecord

PANELS = ".usage-panels.json"
KEY = "usage-records"  # "usage" is the page's own "How to use it" section


class UsageSections:
    """The panels of each platform's catalog, prepared by `begin` once per render."""

    def __init__(self) -> None:
        self._panels: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        self._reports: dict[str, UsageReport] = {}  # one read of the logs per process, for every platform

    def begin(self, site: Site, platform: str, full: bool) -> dict[str, str]:
        """Prepare PLATFORM's panels: read the logs on a FULL render (and return the panels file to write beside
        the pages), else the panels the last full render kept."""
        key = (str(site.root), platform)
        if not site.config.usage.logs:
            self._panels[key] = ("", {})
            return {}
        if not full:
            self._panels[key] = _kept(site, platform)
            return {}
        index, envs = usage_panels(site, platform, report=self._report(site))
        self._panels[key] = (index, envs)
        return {PANELS: json.dumps({"index": index, "envs": envs}, sort_keys=True)}

    def _report(self, site: Site) -> UsageReport | None:
        """The site's report, read once; None when the logs cannot be read (usage_panels then says why)."""
        root = str(site.root)
        if root not in self._reports:
            try:
                self._reports[root] = usage_report(site)
            except CpkgsError:
                return None
        return self._reports[root]

    def env_sections(self, site: Site, rec: EnvRecord) -> Sequence[Section]:
        html = self._panels.get((str(site.root), rec.platform), ("", {}))[1].get(rec.name)
        # The panel is built from escaped text and generated SVG (chart.py), never from raw log or record text.
        return [Section(KEY, "Usage", Markup(html))] if html else []

    def index_sections(self, site: Site, platform: str, envs: Sequence[EnvSummary]) -> Sequence[Section]:
        html = self._panels.get((str(site.root), platform), ("", {}))[0]
        return [Section(KEY, "Usage", Markup(html))] if html else []


def _kept(site: Site, platform: str) -> tuple[str, dict[str, str]]:
    """The panels the last full render wrote; none when it wrote none (or they cannot be read)."""
    try:
        data = json.loads((site.catalog_dir(platform) / PANELS).read_text(encoding="utf-8"))
        index, envs = data["index"], data["envs"]
    except (OSError, ValueError, KeyError, TypeError):
        return "", {}
    if not isinstance(index, str) or not isinstance(envs, dict):
        return "", {}
    return index, {str(k): v for k, v in envs.items() if isinstance(v, str)}
