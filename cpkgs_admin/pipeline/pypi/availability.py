"""Which requirements no package location has at all: what a failed resolution names first.

uv stops at the first requirement it cannot satisfy and words it as a proof; an admin with 30 pip lines wants every
name the site's indexes lack, in one line, as the spec writes them (as a failed conda solve names every package no
channel has). Asked only after uv failed: a find-links listing per location and one PEP 503 project page per name.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from cpkgs_admin.pipeline.pypi.requirements import SDIST_EXTS, WHEEL_EXT, IndexOptions, PipRequirement, canonical

SHOWN = 20
_TIMEOUT = 20


def _name_of_file(filename: str) -> str | None:
    """The project a distribution file belongs to, by its name (wheel: up to the first '-'; sdist: before the
    version)."""
    if filename.endswith(WHEEL_EXT):
        return canonical(filename.split("-", 1)[0])
    for ext in SDIST_EXTS:
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            m = re.match(r"(.+?)-\d", stem)
            return canonical(m.group(1)) if m else None
    return None


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def _get(url: str) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Accept": "text/html"})
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT) as resp:
            return resp.status, resp.read(4 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def find_links_names(location: str) -> set[str] | None:
    """Projects a find-links location offers (a directory or a page of links); None when it cannot be read."""
    path = unquote(urlsplit(location).path) if location.startswith("file://") else location
    if "://" not in path:
        try:
            names = os.listdir(path)
        except OSError:
            return None
        return {n for f in names if (n := _name_of_file(f))}
    try:
        status, text = _get(location)
    except (OSError, ValueError):
        return None
    if status != 200:
        return None
    parser = _Links()
    parser.feed(text)
    return {n for h in parser.hrefs if (n := _name_of_file(unquote(urlsplit(urljoin(location, h)).path)
                                                            .rsplit("/", 1)[-1]))}


def index_has(index_url: str, name: str) -> bool | None:
    """Whether the PEP 503 index has a project page for NAME: True, False (404 / no directory), None (unknown)."""
    if index_url.startswith("file://"):
        base = Path(unquote(urlsplit(index_url).path))
        return (base / name).is_dir()
    try:
        status, _text = _get(f"{index_url.rstrip('/')}/{name}/")
    except (OSError, ValueError):
        return None
    if status == 200:
        return True
    return False if status in (404, 410) else None


def missing_requirements(reqs: Iterable[PipRequirement], opts: IndexOptions) -> list[PipRequirement]:
    """The name-and-version requirements whose project no location lists (unknown answers count as listed)."""
    wanted = [r for r in reqs if r.kind == "index" and r.name]
    if not wanted:
        return []
    offered: set[str] = set()
    unknown = False
    for loc in opts.find_links:
        names = find_links_names(loc)
        if names is None:
            unknown = True
        else:
            offered |= names
    indexes = [] if opts.no_index else [*opts.extra_index_urls, *([opts.index_url] if opts.index_url else [])]
    out = []
    for r in wanted:
        assert r.name is not None
        if r.name in offered or unknown:
            continue
        if any(index_has(url, r.name) is not False for url in indexes):
            continue
        out.append(r)
    return out


def missing_message(missing: list[PipRequirement], opts: IndexOptions) -> str:
    shown = ", ".join(repr(r.text.strip()) for r in missing[:SHOWN])
    more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
    indexes = [] if opts.no_index else [*opts.extra_index_urls, *([opts.index_url] if opts.index_url else [])]
    where = f"indexes: {', '.join(indexes) or 'none'}"
    if opts.find_links:
        where += f"; find-links: {', '.join(opts.find_links)}"
    return f"pip: no index has {shown}{more} ({where})"
