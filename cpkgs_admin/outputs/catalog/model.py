"""What the catalog knows of each env without its full record: the summary the index and the package search are
made from, kept between runs (state.py) so one publish does not parse every record; and the order of a family's
versions, which decides each env's previous and next version (the diff pages, the prev/next links).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cpkgs_admin.site.records import EnvRecord, PackageEntry

REMOVED = "removed"


def package_kind(p: PackageEntry) -> str:
    """'conda', or what the entry says it is ('pypi' for the spec's pip: part): entries written before kinds existed
    are conda packages; a `kind` key a newer cpkgs wrote arrives in PackageEntry.extra."""
    kind = getattr(p, "kind", None) or p.extra.get("kind")
    return kind if isinstance(kind, str) and kind else "conda"


def package_source(p: PackageEntry) -> str:
    """Where the package came from: its channel; for PyPI entries, the index (or the URL) they were locked from."""
    if package_kind(p) == "conda":
        return p.channel
    index = p.extra.get("index")
    return index if isinstance(index, str) and index else (p.channel or p.url)


@dataclass(frozen=True)
class EnvSummary:
    """One env's line in the index and its packages in the search."""

    name: str
    family: str
    version: str
    platform: str
    status: str
    created: str
    size: int
    python: str | None
    successor: str | None
    message: str | None
    count: int  # packages
    # "name\tversion\tkind\n" per package, as the record lists them: what the index's search looks through, kept
    # as one string so that an update reads and writes 500 of them without making 150,000 small objects.
    packages: str

    @property
    def live(self) -> bool:
        return self.status != REMOVED

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "version": self.version, "platform": self.platform,
            "status": self.status, "created": self.created, "size": self.size, "python": self.python,
            "successor": self.successor, "message": self.message, "count": self.count, "packages": self.packages,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EnvSummary:
        return cls(
            name=str(d["name"]), family=str(d["family"]), version=str(d["version"]), platform=str(d["platform"]),
            status=str(d["status"]), created=str(d["created"]), size=int(d["size"]), python=d.get("python"),
            successor=d.get("successor"), message=d.get("message"), count=int(d["count"]),
            packages=str(d["packages"]),
        )


def summarize(rec: EnvRecord) -> EnvSummary:
    retired = rec.retired or {}
    successor, message = retired.get("successor"), retired.get("message")
    return EnvSummary(
        name=rec.name, family=rec.family, version=rec.version, platform=rec.platform, status=rec.status,
        created=rec.created, size=rec.size, python=rec.python_version,
        successor=successor if isinstance(successor, str) else None,
        message=message if isinstance(message, str) else None,
        count=len(rec.packages),
        packages=search_lines(rec.packages),
    )


def search_lines(packages: list[PackageEntry]) -> str:
    """"name\tversion\tkind\n" per package; a tab or line break inside channel metadata becomes a space (it would
    split a line). Checked on the whole text: they are rare, and per-field checks cost as much as the rest."""
    text = "".join(f"{p.name}\t{p.version}\t{package_kind(p)}\n" for p in packages)
    n = len(packages)
    if text.count("\t") == 2 * n and text.count("\n") == n and "\r" not in text:
        return text
    return "".join(f"{_field(p.name)}\t{_field(p.version)}\t{_field(package_kind(p))}\n" for p in packages)


def _field(text: str) -> str:
    """TEXT as one field of the search lines: a tab or line break in channel metadata must not split it."""
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


# ----------------------------------------------------------------------------------------------------- version order


def _compare(a: tuple[Any, str, str], b: tuple[Any, str, str]) -> int:
    """conda's version order (modules.newest's rule: text that is not a conda version ranks below all others), then
    the text, then the name (`a-1.0` removed and `a_1.0` built later share a version)."""
    (pa, va, na), (pb, vb, nb) = a, b
    if pa is not None and pb is not None:
        if pa != pb:
            return -1 if pa < pb else 1
    elif pa is not None or pb is not None:
        return 1 if pa is not None else -1
    return (va > vb) - (va < vb) or (na > nb) - (na < nb)


def by_version(envs: Iterable[EnvSummary]) -> list[EnvSummary]:
    """ENVS, oldest version first."""
    # rattler: 33 ms to import; `cpkgs catalog --path` imports the catalog and never orders versions.
    from rattler import Version  # noqa: PLC0415

    parsed: list[tuple[Any, str, str]] = []
    named: dict[str, EnvSummary] = {}
    for e in envs:
        version = None
        with contextlib.suppress(Exception):
            version = Version(e.version)
        parsed.append((version, e.version, e.name))
        named[e.name] = e
    parsed.sort(key=functools.cmp_to_key(_compare))
    return [named[n] for _p, _v, n in parsed]


@dataclass(frozen=True)
class Families:
    """The envs of one platform by family, each family's members oldest first."""

    members: dict[str, list[EnvSummary]]

    @classmethod
    def of(cls, summaries: Iterable[EnvSummary]) -> Families:
        by_family: dict[str, list[EnvSummary]] = {}
        for s in summaries:
            by_family.setdefault(s.family, []).append(s)
        return cls({f: by_version(by_family[f]) for f in sorted(by_family, key=lambda f: (f.casefold(), f))})

    def neighbours(self, env: EnvSummary) -> tuple[EnvSummary | None, EnvSummary | None]:
        """(previous, next) usable version of ENV's family around ENV's version: removed versions are skipped, so
        a removal makes its neighbours each other's."""
        members = self.members.get(env.family, [])
        at = next((i for i, m in enumerate(members) if m.name == env.name), None)
        if at is None:
            return None, None
        before = next((m for m in reversed(members[:at]) if m.live), None)
        after = next((m for m in members[at + 1:] if m.live), None)
        return before, after
