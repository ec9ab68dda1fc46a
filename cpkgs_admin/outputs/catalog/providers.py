"""The catalog's registered section providers (sections.SectionProvider): the usage panels of issue 18."""

from __future__ import annotations

from cpkgs_admin.outputs.catalog.sections import SectionProvider
from cpkgs_admin.outputs.catalog.usage_sections import UsageSections

PROVIDERS: tuple[SectionProvider, ...] = (UsageSections(),)
