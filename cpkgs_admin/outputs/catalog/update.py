"""Rendering a platform's catalog in full (`cpkgs catalog`, `cpkgs refresh`) or after one change (publish, retire,
remove), writing only the files whose text changed, with the modes of every generated file.

An update re-reads the records whose file changed since the last render (state.py) plus those it is told about,
and renders their pages, their family neighbours' pages (the next version's diff is against them; removing a
version makes its neighbours each other's) and the index; every other page is left as it is. The result is the
same as a full render (tests/test_catalog.py checks it file by file).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.outputs.catalog import pages, workers
from cpkgs_admin.outputs.catalog.model import EnvSummary, Families, summarize
from cpkgs_admin.outputs.catalog.providers import PROVIDERS
from cpkgs_admin.outputs.catalog.render import fingerprint
from cpkgs_admin.outputs.catalog.sections import SectionProvider
from cpkgs_admin.outputs.catalog.state import STATE, Key, State, load_state, stat_key
from cpkgs_admin.site.files import atomic_write, make_dirs_exact, write_if_changed
from cpkgs_admin.site.locks import site_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, iter_record_files, load_record_file


@dataclass
class CatalogReport:
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    indexes: dict[str, str] = field(default_factory=dict)  # platform -> its index.html
    envs: int = 0
    # Records that could not be read, as (path, error line) (load_all's shape): their pages stay as they were.
    damaged: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, other: CatalogReport) -> None:
        self.written += other.written
        self.removed += other.removed
        self.indexes.update(other.indexes)
        self.envs += other.envs
        self.damaged += other.damaged

    def to_json(self) -> dict[str, Any]:
        return {"indexes": self.indexes, "envs": self.envs, "written": self.written, "removed": self.removed,
                "damaged": [msg for _p, msg in self.damaged]}


def index_file(site: Site, platform: str) -> Path:
    return site.catalog_dir(platform) / pages.INDEX


def catalog_platforms(site: Site, *, existing: bool = False) -> list[str]:
    """The site's platforms, and any other that has records (envs of a platform no longer served). EXISTING: only
    those with records or a catalog already (`refresh` does not create empty catalogs nobody asked for)."""
    with_records = {plat for plat, _p in iter_record_files(site.records_dir)}
    platforms = site.output_platforms(tuple(sorted(with_records)))
    if existing:
        platforms = [p for p in platforms if p in with_records or site.catalog_dir(p).is_dir()]
    return platforms


# ----------------------------------------------------------------------------------------------------- records


def _listing(site: Site, platform: str) -> dict[str, tuple[Path, Key]]:
    """PLATFORM's record files with their keys, stat-ed before any is read: a record replaced after its stat is
    seen as changed by the next update, never as unchanged with old content."""
    out: dict[str, tuple[Path, Key]] = {}
    for plat, path in iter_record_files(site.records_dir):
        key = stat_key(path) if plat == platform else None
        if key is not None:
            out[path.stem] = (path, key)
    return out


class _Records:
    """Full records of one platform, read on demand and once; those that cannot be read are kept in FAILED."""

    def __init__(self, listing: dict[str, tuple[Path, Key]]) -> None:
        self.listing = listing
        self.loaded: dict[str, EnvRecord] = {}
        self.failed: dict[str, tuple[Path, str]] = {}

    def __call__(self, name: str) -> EnvRecord:
        if name not in self.loaded:
            try:
                self.loaded[name] = load_record_file(self.listing[name][0])
            except CpkgsError as exc:
                self.failed[name] = (self.listing[name][0], str(exc))
                raise
        return self.loaded[name]


def _read(records: _Records, names: Iterable[str], summaries: dict[str, EnvSummary]) -> set[str]:
    """Summaries of NAMES into SUMMARIES; the names read. A record that cannot be read keeps the summary it had
    (or none): its pages stay as they are, and `cpkgs list`/`verify` name it."""
    done = set()
    for name in sorted(names):
        with contextlib.suppress(CpkgsError):  # in records.failed
            summaries[name] = summarize(records(name))
            done.add(name)
    return done


# ----------------------------------------------------------------------------------------------------- rendering


def render_catalog(site: Site, platforms: Sequence[str] | None = None,
                   providers: Sequence[SectionProvider] = PROVIDERS) -> CatalogReport:
    """Every page of PLATFORMS' catalogs (default: catalog_platforms), from every record."""
    report = CatalogReport()
    with site_locked(site):
        for plat in platforms if platforms is not None else catalog_platforms(site):
            report.add(_render(site, plat, None, (), providers))
    return report


def update_catalog(site: Site, platform: str, names: Iterable[str] = (),
                   providers: Sequence[SectionProvider] = PROVIDERS) -> CatalogReport:
    """PLATFORM's catalog after a change to NAMES (and to any record changed since the last render); a full render
    when there is no usable state."""
    with site_locked(site):
        cdir = site.catalog_dir(platform)
        state = load_state(cdir, str(site.root), platform, fingerprint())
        return _render(site, platform, state, tuple(names), providers)


@dataclass
class _Plan:
    """What one render does: the summaries after it, the envs whose pages it renders (TOUCHED), those whose record
    it read afresh (READ: their lock and yml are written too), those gone from the records."""

    summaries: dict[str, EnvSummary]
    touched: set[str]
    read: set[str]
    gone: set[str]
    keys: dict[str, Key]


def _plan(listing: dict[str, tuple[Path, Key]], records: _Records, state: State | None,
          names: tuple[str, ...]) -> _Plan:
    keys = {n: key for n, (_p, key) in listing.items()}
    if state is None:
        summaries: dict[str, EnvSummary] = {}
        read = _read(records, keys, summaries)
        return _Plan(summaries, set(read), read, set(), {n: keys[n] for n in read})
    summaries = {n: s for n, s in state.summaries.items() if n in keys}
    changed = {n for n in keys if n in names or state.keys.get(n) != keys[n]}
    gone = set(state.summaries) - set(keys)
    read = _read(records, changed, summaries)
    touched = changed | gone
    old, new = Families.of(state.summaries.values()), Families.of(summaries.values())
    for n in changed | gone:
        for families, env in ((old, state.summaries.get(n)), (new, summaries.get(n))):
            if env is not None:
                touched.update(e.name for e in families.neighbours(env) if e is not None)
    # A record that could not be read keeps the key it had: the next update tries it again.
    kept = {n: (state.keys[n] if n in changed - read else keys[n]) for n in summaries}
    return _Plan(summaries, touched, read, gone, kept)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The garbage collector paused: a render makes ~150,000 package entries (500 records x 300) that all live until
    it ends, and the collections their allocation triggers find nothing to free (they hold no cycles) but cost a
    quarter of the render. Everything is freed by reference counting as usual."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _render(site: Site, platform: str, state: State | None, names: tuple[str, ...],
            providers: Sequence[SectionProvider]) -> CatalogReport:
    with _no_gc():
        return _render_files(site, platform, state, names, providers)


def _render_files(site: Site, platform: str, state: State | None, names: tuple[str, ...],
                  providers: Sequence[SectionProvider]) -> CatalogReport:
    report = CatalogReport(indexes={platform: str(index_file(site, platform))})
    listing = _listing(site, platform)
    records = _Records(listing)
    files = _begin(site, platform, state is None, providers)
    cdir = site.catalog_dir(platform)
    forked = _forked(site, platform, listing, providers) if state is None else None
    if forked is None:
        plan = _plan(listing, records, state, names)
    else:
        plan = forked.plan(listing)
        records.failed.update(forked.failed)
    cat = pages.Catalog(site, platform, plan.summaries, records, providers)
    envs, stale = _env_pages(cat, plan.touched & set(plan.summaries), plan.read)
    files.update(envs)
    for n in plan.gone:
        stale += list(pages.env_files(n))
    files.update(pages.site_outputs(cat))
    written = write_files(site, cdir, files)
    if forked is not None:
        stale += forked.stale
        written = sorted(set(written) | set(forked.written))
    if state is None:
        stale += _orphans(cdir, set(listing))
    report.written = written
    report.removed = remove_files(cdir, [rel for rel in stale if rel not in files])
    _save_state(site, cdir, State(str(site.root), platform, fingerprint(), plan.keys, plan.summaries))
    report.envs = len(plan.summaries)
    report.damaged = [records.failed[n] for n in sorted(records.failed)]
    return report


def _begin(site: Site, platform: str, full: bool, providers: Sequence[SectionProvider]) -> dict[str, str]:
    files: dict[str, str] = {}
    for provider in providers:
        begin = getattr(provider, "begin", None)  # optional (sections.SectionProvider)
        if begin is not None:
            files.update(begin(site, platform, full))
    return files


def _env_pages(cat: pages.Catalog, names: Iterable[str], read: set[str]) -> tuple[dict[str, str], list[str]]:
    """The files of NAMES (their exports too for those in READ), and those of their files they no longer have."""
    files: dict[str, str] = {}
    stale: list[str] = []
    for n in sorted(names):
        try:
            mine = pages.env_outputs(cat, n, exports=n in read)
        except CpkgsError:  # its record, or its previous version's, cannot be read (records.failed): pages stay
            continue
        files.update(mine)
        kinds = ("page", "diff", "lock", "yml") if n in read else ("page", "diff")
        stale += [rel for rel, what in pages.env_files(n).items() if what in kinds and rel not in mine]
    return files, stale


# ----------------------------------------------------------------------------------------------------- workers


@dataclass
class _Share:
    """What one worker of a full render did: its families' summaries, the files it wrote, those it found stale,
    the records it could not read."""

    summaries: dict[str, EnvSummary]
    written: list[str]
    stale: list[str]
    failed: dict[str, tuple[Path, str]]


@dataclass
class _Forked:
    """The workers' shares together; REDO: envs whose family the shares split (a record whose family is not the one
    its name gives), rendered again by the caller with every summary."""

    summaries: dict[str, EnvSummary]
    written: list[str]
    stale: list[str]
    failed: dict[str, tuple[Path, str]]
    redo: set[str]

    def plan(self, listing: dict[str, tuple[Path, Key]]) -> _Plan:
        read = set(self.summaries)
        return _Plan(self.summaries, set(self.redo), read, set(), {n: listing[n][1] for n in read})


def _forked(site: Site, platform: str, listing: dict[str, tuple[Path, Key]],
            providers: Sequence[SectionProvider]) -> _Forked | None:
    """A full render's env pages by worker processes (workers.py), or None: render them here."""
    count = workers.worker_count(len(listing))
    if count < 2:
        return None
    cdir = site.catalog_dir(platform)
    dmode, _fmode, gid = _modes(site)
    make_dirs_exact(cdir / pages.ENVS, dmode, gid)  # before the workers, who each make only their envs' dirs

    def share(names: list[str]) -> _Share:
        return _render_share(site, platform, {n: listing[n] for n in names}, providers)

    shares = workers.map_forked(share, workers.family_shares(listing, count))
    if shares is None:
        return None
    out = _Forked({}, [], [], {}, set())
    where: dict[str, set[int]] = {}
    for i, sh in enumerate(shares):
        out.summaries.update(sh.summaries)
        out.written += sh.written
        out.stale += sh.stale
        out.failed.update(sh.failed)
        for s in sh.summaries.values():
            where.setdefault(s.family, set()).add(i)
    split = {family for family, idx in where.items() if len(idx) > 1}
    out.redo = {n for n, s in out.summaries.items() if s.family in split}
    return out


def _render_share(site: Site, platform: str, listing: dict[str, tuple[Path, Key]],
                  providers: Sequence[SectionProvider]) -> _Share:
    """In a worker: LISTING's envs (whole families) read, summarized, their files rendered and written."""
    records = _Records(listing)
    summaries: dict[str, EnvSummary] = {}
    read = _read(records, listing, summaries)
    cat = pages.Catalog(site, platform, summaries, records, providers)
    files, stale = _env_pages(cat, read, read)
    written = write_files(site, site.catalog_dir(platform), files)
    return _Share(summaries, written, stale, dict(records.failed))


def _orphans(cdir: Path, names: set[str]) -> list[str]:
    """Files of envs/<name>/ for names that have no record (deleted by hand): a full render removes them. Only the
    files the catalog writes there; a record that exists but cannot be read keeps its pages."""
    try:
        entries = [e.name for e in os.scandir(cdir / pages.ENVS) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return [rel for n in sorted(set(entries) - names) for rel in pages.env_files(n)]


# ----------------------------------------------------------------------------------------------------- files


def _modes(site: Site) -> tuple[int, int, int | None]:
    """(dir mode, file mode, group): those of everything the site shows users (Site.shared_modes)."""
    dmode, fmode = site.shared_modes()
    return dmode, fmode, site.admin_gid()


def write_files(site: Site, cdir: Path, files: dict[str, str]) -> list[str]:
    """Write FILES (relative to CDIR) whose text changed; the paths written."""
    dmode, fmode, gid = _modes(site)
    written = []
    made: set[Path] = set()
    for rel, text in sorted(files.items()):
        path = cdir / rel
        if path.parent not in made:
            make_dirs_exact(path.parent, dmode, gid)  # an admin's umask 077 must not hide the catalog from users
            made.add(path.parent)
        # Not durable: 2000 fsyncs would cost seconds, and a page a crash of this host loses or empties is
        # rewritten by the next `cpkgs refresh` or `cpkgs catalog` (the catalog is derived from the records).
        if write_if_changed(path, text, fmode, gid, durable=False):
            written.append(str(path))
    return written


def remove_files(cdir: Path, rels: Iterable[str]) -> list[str]:
    """Unlink the catalog's files RELS, then their env directories while empty (a reader on another host that has
    one open keeps it through NFS's silly-rename)."""
    removed = []
    for rel in sorted(set(rels)):
        path = cdir / rel
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path))
        with contextlib.suppress(OSError):  # not empty: another file, or a .nfsXXXX of an open one
            path.parent.rmdir()
    return removed


def _save_state(site: Site, cdir: Path, state: State) -> None:
    _dmode, fmode, gid = _modes(site)
    text = state.to_text()
    path = cdir / STATE
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return
    # Not durable: a state lost in a crash only costs the next update a full render.
    atomic_write(path, text, fmode, durable=False, gid=gid)
