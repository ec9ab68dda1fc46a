"""The catalog's files, as text by path relative to the catalog directory (one per platform, Site.catalog_dir):

    index.html                   families and their versions, the search box
    search.js                    the package search data (loaded on the first search)
    catalog.css, catalog.js      the only assets (package data; no external ones)
    envs/<name>/index.html       one env: status, how to use it, the spec, downloads, the package table
    envs/<name>/diff.html        its packages against the previous usable version of its family
    envs/<name>/<name>.lock      explicit lock (cpkgs export --format explicit)
    envs/<name>/<name>.yml       environment.yml (cpkgs export --format yaml)

Nothing here reads the clock: a page changes only when what it shows changes, so rewrites follow real changes.
"""

from __future__ import annotations

import json
import operator
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from markupsafe import Markup

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.outputs.catalog.model import EnvSummary, Families, package_kind, package_source
from cpkgs_admin.outputs.catalog.render import js_data, render, text, url_part
from cpkgs_admin.outputs.catalog.sections import Section, SectionProvider
from cpkgs_admin.outputs.kernels import wants_kernel
from cpkgs_admin.outputs.views import EnvDiff, diff_records, export_record
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, PackageEntry
from cpkgs_admin.site.specs import from_family

INDEX = "index.html"
SEARCH = "search.js"
ASSETS = ("catalog.css", "catalog.js")
ENVS = "envs"
SEARCH_GLOBAL = "CPKGS_SEARCH"


def env_files(name: str) -> dict[str, str]:
    """What each of NAME's files is, by relative path: "page", "diff", "lock", "yml"."""
    d = f"{ENVS}/{name}"
    return {f"{d}/index.html": "page", f"{d}/diff.html": "diff", f"{d}/{name}.lock": "lock", f"{d}/{name}.yml": "yml"}


def asset_files() -> dict[str, str]:
    pkg = resources.files("cpkgs_admin.outputs.catalog").joinpath("templates")
    return {a: pkg.joinpath(a).read_text(encoding="utf-8") for a in ASSETS}


# ----------------------------------------------------------------------------------------------------- context


@dataclass
class Catalog:
    """What every page of one platform's catalog needs besides its own env: the site, the summaries of every env
    of the platform, full records on demand (LOAD), the extension sections' providers."""

    site: Site
    platform: str
    summaries: dict[str, EnvSummary]
    load: Callable[[str], EnvRecord]
    providers: Sequence[SectionProvider] = ()
    families: Families = field(init=False)
    specs: dict[str, tuple[str | None, list[tuple[str, str]]]] = field(default_factory=dict, init=False)
    rows: dict[tuple[Any, ...], str] = field(default_factory=dict, init=False)  # package_rows' memo

    def __post_init__(self) -> None:
        self.families = Families.of(self.summaries.values())

    def neighbours(self, name: str) -> tuple[EnvSummary | None, EnvSummary | None]:
        return self.families.neighbours(self.summaries[name])

    def common(self, top: str) -> dict[str, Any]:
        return {"top": top, "platform": self.platform, "site_root": str(self.site.root)}


# ----------------------------------------------------------------------------------------------------- env pages


def usage(site: Site, rec: EnvRecord) -> list[tuple[str, str]]:
    """(what, commands) for an env users can use: the same commands README and `cpkgs --help` give."""
    if rec.status == "removed":
        return []
    sh = shlex.quote(str(site.profile_dir / "conda.sh"))
    csh = shlex.quote(str(site.profile_dir / "conda.csh"))
    out = [
        ("Shell (bash, zsh, ksh, dash)", f"source {sh}\nconda activate {rec.name}"),
        ("csh, tcsh", f"source {csh}\nconda activate {rec.name}"),
        ("Environment modules (after sourcing the profile above)", f"module load {rec.family}/{rec.version}"),
    ]
    if wants_kernel(rec.all_packages):
        out.append(("Jupyter kernels", f"{rec.name}\n{rec.name} (user site)"))
    out += [
        ("Your own packages on top of it",
         f"cpkgs extend {rec.name} ~/envs/mine\n~/envs/mine/bin/python -m pip install PACKAGE"),
        ("A copy for a machine without the drive", f"cpkgs pack {rec.name} -o {rec.name}.tar.gz"),
    ]
    return out


def spec_view(cat: Catalog, rec: EnvRecord) -> tuple[str | None, list[tuple[str, str]]]:
    """(a note on the spec, [(path, text)] of the spec files REC was built from). The site's spec files are shown
    only while they still hash to what REC was built from (spec.from_family's own digest, `extends:` included);
    files given with -f are not shown (they may live anywhere, e.g. an admin's home)."""
    family_file = str(cat.site.spec_file(rec.family))
    if rec.spec_source != family_file or not rec.spec_sha256:
        return None, []
    if rec.family not in cat.specs:
        cat.specs[rec.family] = _read_family_spec(cat.site, rec.family)
    sha, files = cat.specs[rec.family]
    if sha != rec.spec_sha256:
        return "changed since this version was built", []
    return None, files


def _read_family_spec(site: Site, family: str) -> tuple[str | None, list[tuple[str, str]]]:
    def texts(paths: list[Path]) -> list[tuple[str, str]]:
        return [(str(p), p.read_text(encoding="utf-8", errors="replace")) for p in paths]

    try:
        spec = from_family(site.specs_dir, family)
        paths = [site.spec_file(family), *(site.spec_file(p) for p in spec.extends)]
        shown = texts(paths)
        # Edited between the digest and the read: the digest may not be of the text shown.
        if from_family(site.specs_dir, family).sha256 != spec.sha256 or texts(paths) != shown:
            return None, []
        return spec.sha256, shown
    except (CpkgsError, OSError):
        return None, []


def _row(p: PackageEntry, summaries: bool) -> str:
    """One package's row of the table: every value through render.text, as `{{ }}` would."""
    name, kind = text(p.name), text(package_kind(p))
    cells = [f'<a href="../../index.html?q={text(url_part(p.name))}" title="Environments with {name}">{name}</a>',
             text(p.version), text(p.build), kind, text(package_source(p))]
    if summaries:
        summary = p.extra.get("summary")
        cells.append(text(summary) if isinstance(summary, str) else "")
    return f'<tr data-name="{name}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>\n"


def package_rows(cat: Catalog, rec: EnvRecord) -> tuple[Markup, bool]:
    """(the package table's rows, whether it has a summary column). Rows are memoized per render: the versions of a
    family share most packages, and 500 envs x 300 packages is the size a full render must manage in ~2 s."""
    summaries = any(p.extra and isinstance(p.extra.get("summary"), str) for p in rec.packages)
    memo = cat.rows
    rows = []
    for p in sorted(rec.packages, key=_by_name):
        key: tuple[Any, ...] = (p.name, p.version, p.build, p.channel, summaries)
        if p.extra:
            key += (json.dumps(p.extra, sort_keys=True, default=str),)
        row = memo.get(key)
        if row is None:
            row = memo[key] = _row(p, summaries)
        rows.append(row)
    return Markup("".join(rows)), summaries


_by_name = operator.attrgetter("name")


def env_page(cat: Catalog, rec: EnvRecord, prev: EnvRecord | None, nxt: EnvSummary | None,
             diff: EnvDiff | None) -> str:
    spec_note, spec_files = spec_view(cat, rec)
    rows, summaries = package_rows(cat, rec)
    sections: list[Section] = [s for p in cat.providers for s in p.env_sections(cat.site, rec)]
    return render(
        "env.html", **cat.common("../../"), rec=rec, summary=cat.summaries[rec.name],
        prev=cat.summaries[prev.name] if prev else None, next=nxt, usage=usage(cat.site, rec),
        spec_note=spec_note, spec_files=spec_files, diff=diff,
        package_count=len(rec.packages), package_rows=rows, summaries=summaries, sections=sections,
    )


def diff_rows(diff: EnvDiff) -> Markup:
    """The diff table's rows: changed, added, removed (built like package_rows, for the same reason)."""
    def row(cls: str, sign: str, p: PackageEntry, old: PackageEntry | None, new: PackageEntry | None) -> str:
        cells = [sign, text(p.name), text(package_kind(p)),
                 text(f"{old.version} {old.build}") if old else "", text(f"{new.version} {new.build}") if new else ""]
        return f'<tr class="{cls}" data-name="{text(p.name)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>\n"

    rows = [row("changed", "~", b, a, b) for a, b in diff.changed]
    rows += [row("added", "+", p, None, p) for p in diff.added]
    rows += [row("removed", "-", p, p, None) for p in diff.removed]
    return Markup("".join(rows))


def diff_page(cat: Catalog, rec: EnvRecord, prev: EnvRecord, diff: EnvDiff) -> str:
    same = len(rec.packages) - len(diff.added) - len(diff.changed)
    return render("diff.html", **cat.common("../../"), rec=rec, prev=prev, diff=diff, same=same,
                  rows=diff_rows(diff))


def env_outputs(cat: Catalog, name: str, *, exports: bool = True) -> dict[str, str]:
    """NAME's files: its page, its diff page when it has a previous version, and with EXPORTS its lock and yml
    (they never change for a record: an update leaves the neighbours' alone)."""
    rec = cat.load(name)
    before, after = cat.neighbours(name)
    prev = cat.load(before.name) if before else None
    diff = diff_records(prev, rec) if prev else None
    out: dict[str, str] = {}
    for rel, what in env_files(name).items():
        if what == "page":
            out[rel] = env_page(cat, rec, prev, after, diff)
        elif what == "diff" and prev is not None and diff is not None:
            out[rel] = diff_page(cat, rec, prev, diff)
        elif what in ("lock", "yml") and exports:
            out[rel] = export_record(rec, "explicit" if what == "lock" else "yaml")
    return out


# ----------------------------------------------------------------------------------------------------- index


def index_page(cat: Catalog) -> str:
    families = []
    for family, members in cat.families.members.items():
        rows = [(m, cat.families.neighbours(m)[0]) for m in reversed(members)]  # newest first
        families.append((family, rows))
    envs = list(cat.summaries.values())
    counts = {"total": len(envs), **{st: sum(e.status == st for e in envs) for st in ("active", "retired", "removed")}}
    sections = [s for p in cat.providers for s in p.index_sections(cat.site, cat.platform, envs)]
    return render("index.html", **cat.common(""), families=families, counts=counts,
                  conda_sh=shlex.quote(str(cat.site.profile_dir / "conda.sh")), sections=sections)


def search_js(cat: Catalog) -> str:
    """The package search data: [[env, "name\tversion\tkind\n..."], ...] (catalog.js matches lines of it)."""
    return js_data(SEARCH_GLOBAL, {"envs": [[n, cat.summaries[n].packages] for n in sorted(cat.summaries)]})


def site_outputs(cat: Catalog) -> dict[str, str]:
    """The files every change rewrites (when their text changed): the index, the search data, the assets."""
    return {INDEX: index_page(cat), SEARCH: search_js(cat), **asset_files()}


def relative(catalog_dir: Path, files: dict[str, str]) -> dict[Path, str]:
    return {catalog_dir / rel: text for rel, text in files.items()}

