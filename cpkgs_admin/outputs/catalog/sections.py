"""The catalog's extension point: extra sections on each env's page and on the index.

A provider is one object per feature (the usage panel and the site-wide usage chart of a later issue are the first
planned): `env_sections` gives the sections of one env's page, `index_sections` those of one platform's index.
Each Section's html is Markup built with render.render_html (or render.render), so what it embeds is escaped
like everything else; an SVG chart goes inline in it (no external assets). Pages are rewritten only when their
text changes, and an env's page is rendered when its record, or a neighbour's, changes, or by a full render
(`cpkgs catalog`, `cpkgs refresh`): a provider whose data changes on its own asks for a full render.

Providers are registered in providers.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from markupsafe import Markup

if TYPE_CHECKING:
    from cpkgs_admin.outputs.catalog.model import EnvSummary
    from cpkgs_admin.site.paths import Site
    from cpkgs_admin.site.records import EnvRecord


@dataclass(frozen=True)
class Section:
    key: str  # the section's id on the page ([a-z0-9-]): anchors and tests find it by it
    title: str
    html: Markup


class SectionProvider(Protocol):
    """`begin(site, platform, full) -> {file: text}` may also be defined: called once per render before any page
    (FULL: every page is rendered), it prepares the provider's data and returns files to write into the catalog
    directory (e.g. what a full render read, for the updates after it)."""

    def env_sections(self, site: Site, rec: EnvRecord) -> Sequence[Section]: ...

    def index_sections(self, site: Site, platform: str, envs: Sequence[EnvSummary]) -> Sequence[Section]: ...

