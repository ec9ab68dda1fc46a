"""new-env's per-file checks of a staged env, run while rattler installs it: each package's files are checked as soon
as its conda-meta record appears, and after the build's last write into the env only what changed since is checked
again (check_final). The same properties as checks.check_integrity + content.check_installed over a fresh scan.

py-rattler links all of a package's files, then writes its `conda-meta/<dist>.json` (a temp file renamed into place);
after the last package it re-reads the records, resolves clobbered paths (renames into `__clobbers__/`, rewriting the
records of the packages involved, again by rename), removes empty directories, then runs post-link scripts.

Per package (StagedCheck.check_package, on the InstallWatcher thread): the record read and parsed once (kept for
the module index, the manifest, the digest), its paths against the content rules, each file lstat-ed relative to
its directory and checked against the record: type, size, then the hash memo's vouching for an unchanged cache inode
or an item to hash at the end; the owner rules; what the census and the seal need.

At the end: every record read again and compared byte for byte (StagedCheck.stands): one rewritten (rattler's
clobber resolution), new, gone or unreadable, or two listing one path, and the env is checked in full as before.
Otherwise (check_final, after the post-process) one listing of the tree lstat-s only what the watcher did not see:
an entry holding, under the same name, the inode the watcher lstat-ed is that file. Between the two nothing but the
build writes in the 0700 staging dir, and none of its writers changes a checked file in place: rattler renames, the
post-process refuses a package's path and writes its own files unlink-first, harden only drops write bits. Post-link
scripts can change anything in place: a build whose packages have one is checked in full afterwards (link_scripts),
as is one whose watcher failed (InstallWatcher.usable) or whose final check failed (pipeline.post). The pip step
only creates files (pypi.install refuses existing paths), all checked in full at the end against their RECORDs, but
it runs code that could write anywhere (the env's python with its packages' .pth files, sdists' build backends):
after it, the final listing lstat-s every checked entry again and checks one changed since in full (restat).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from cpkgs_admin.integrity.checks import Problem, is_nfs_silly
from cpkgs_admin.integrity.content import path_problem
from cpkgs_admin.integrity.manifest import CondaMeta, Expected, expected_files
from cpkgs_admin.integrity.memo import HashMemo
from cpkgs_admin.integrity.owners import Owners
from cpkgs_admin.integrity.tree import DIR_FLAGS, EXEC_BITS

# Seconds between two looks at conda-meta/ while rattler links: a listing of ~100 names, nothing to a 0.5 s install.
_POLL = 0.005
_OWNER = "not root, the env's builder or the admin whose package cache it is linked from"

Vouching = tuple[dict[str, list[Any]], tuple[int, ...]]


class Package:
    """One conda-meta record as read, and what its check found."""

    __slots__ = (
        "count",
        "data",
        "dirs",
        "execs",
        "files",
        "hash",
        "links",
        "malformed",
        "name",
        "problems",
        "raw",
        "refused",
        "size",
        "unhashed",
        "unsealed",
        "unseen",
    )

    def __init__(self, name: str, raw: bytes, data: Any) -> None:
        self.name = name  # the record's file name, <dist>.json
        self.raw = raw
        self.data = data
        self.files: list[str] = []  # every path that is not a directory
        self.unseen: list[str] = []  # those that could not be lstat-ed (missing, unreadable)
        self.links: list[str] = []
        self.dirs: set[str] = set()  # every directory its paths lie in
        self.hash: list[tuple[Expected, os.stat_result]] = []  # to hash at the end (the memo does not vouch)
        self.unhashed: list[str] = []  # patched files whose new hash nobody recorded: into cpkgs' manifest
        self.problems: list[Problem] = []
        self.refused: tuple[str, str] | None = None  # (path, why) of its first path no env may hold
        self.malformed = False  # not a package record as manifest.expected_files reads one
        # The census and the seal of what was lstat-ed: entries, bytes, executables, entries the seal must change.
        self.count = 0
        self.size = 0
        self.execs: list[str] = []
        self.unsealed: list[tuple[str, os.stat_result]] = []

    @property
    def dist(self) -> str:
        return self.name[:-5]


def first_path_problem(rels: list[str], joined: str | None = None) -> tuple[str, str] | None:
    """(path, problem) for the first of RELS that content.path_problem refuses, else None. In bulk first: a few
    substring searches over all paths at C speed (a regular expression over them took 50 ms on 45,000 paths, these
    take 1 ms); each path on its own only when they find something. JOINED: "\n" + "\n".join(RELS) + "\n"."""
    joined = joined or "\n" + "\n".join(rels) + "\n"
    if (joined.replace("\n", "").isprintable() and "\n\n" not in joined and "\n/" not in joined
            and "\nconda-meta" not in joined and ".." not in joined and ".nfs" not in joined):
        return None
    for rel in rels:
        problem = path_problem(rel)
        if problem:
            return rel, problem
    return None


def has_link_scripts(rels: list[str], joined: str | None = None) -> bool:
    """Whether a package runs a post-link script (`bin/.NAME-post-link.sh`, `Scripts/.NAME-post-link.bat`)."""
    if joined is not None and "-post-link." not in joined:
        return False
    return any(r.endswith(("-post-link.sh", "-post-link.bat")) and "/." in "/" + r for r in rels)


def _owner_problem(rel: str, uid: int) -> Problem:
    return Problem("owner", rel, f"owned by uid {uid}, {_OWNER}")


class StagedCheck:
    """The checks of one staged env: fed package by package during the install, finished by check_final."""

    def __init__(self, staging: Path, memo: HashMemo | None, owners: Owners, gid: int | None) -> None:
        self.staging = staging
        self.top = str(staging)
        self.memo = memo
        self.owners = owners
        self.gid = gid  # the group the seal gives everything (the site's admin group), or None
        self.packages: dict[str, Package] = {}
        # What was lstat-ed, by directory and name: the final listing matches entries without joining paths.
        self.by_dir: dict[str, dict[str, os.stat_result]] = {}
        # A vouched file's owner is root, this admin or the package's extractor: all allowed by Owners when this
        # admin is the staging dir's owner (Owners.base).
        self.vouch_owner = os.getuid() in owners.base
        self.link_scripts = False

    def check_package(self, name: str, raw: bytes) -> Package:
        """Check the package whose record NAME in conda-meta/ reads RAW."""
        pkg = Package(name, raw, json.loads(raw))
        try:
            paths = (pkg.data.get("paths_data") or {}).get("paths") or []
            rels = [e["_path"] for e in paths]
            joined = "\n" + "\n".join(rels) + "\n"
        except (TypeError, KeyError, AttributeError):
            pkg.malformed = True  # StagedCheck.stands: the full check reports it in its own words
            return pkg
        pkg.refused = first_path_problem(rels, joined)
        if pkg.refused is not None:
            return pkg
        self.link_scripts = self.link_scripts or has_link_scripts(rels, joined)
        vouching = self.memo.vouching(pkg.dist) if self.memo is not None else None
        fds: dict[str, int] = {}
        try:
            for e in paths:
                self._check_path(pkg, e, fds, vouching)
        finally:
            for fd in fds.values():
                os.close(fd)
        return pkg

    def _check_path(self, pkg: Package, e: dict[str, Any], fds: dict[str, int], vouching: Vouching | None) -> None:
        rel = e["_path"]
        d, _, base = rel.rpartition("/")
        parent = d
        while parent and parent not in pkg.dirs:
            pkg.dirs.add(parent)
            parent = parent.rpartition("/")[0]
        kind = e.get("path_type")
        if kind == "directory":
            return
        pkg.files.append(rel)
        try:  # relative to its directory, opened once per package without following a symlink there
            fd = fds.get(d)
            if fd is None:
                fd = fds[d] = os.open(f"{self.top}/{d}" if d else self.top, DIR_FLAGS)
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            pkg.problems.append(Problem("missing", rel, "listed in conda-meta but not on disk") if missing
                                else Problem("unreadable", rel, exc.strerror or str(exc)))
            pkg.unseen.append(rel)
            return
        here = self.by_dir.get(d)
        if here is None:
            here = self.by_dir[d] = {}
        here[base] = st
        self._tally(pkg, rel, st)
        if stat.S_ISLNK(st.st_mode) != (kind == "softlink"):
            what = "not the symlink the package has" if kind == "softlink" else "a symlink where the package has a file"
            pkg.problems.append(Problem("replaced", rel, what))
        elif kind == "softlink":
            pkg.links.append(rel)
        elif not stat.S_ISREG(st.st_mode):
            pkg.problems.append(Problem("replaced", rel, "not a regular file"))
        else:
            self._check_content(pkg, e, rel, st, vouching)

    def _tally(self, pkg: Package, rel: str, st: os.stat_result) -> None:
        """What the census and the seal need of REL."""
        pkg.count += 1
        pkg.size += st.st_size
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            sealed = True
        else:
            sealed = (mode & 0o7777) == (0o555 if mode & EXEC_BITS else 0o444)
            if mode & EXEC_BITS and stat.S_ISREG(mode):
                pkg.execs.append(rel)
        if not sealed or (self.gid is not None and st.st_gid != self.gid):
            pkg.unsealed.append((rel, st))

    def _check_content(self, pkg: Package, e: dict[str, Any], rel: str, st: os.stat_result,
                       vouching: Vouching | None) -> None:
        """A regular file's size and hash (vouched for by the memo, or an item to hash), and its owner."""
        sha = e.get("sha256_in_prefix") or e.get("sha256")
        size = e.get("size_in_bytes")
        if e.get("prefix_placeholder"):
            size = None  # the installer rewrote the prefix: size_in_bytes is the package's
            if not e.get("sha256_in_prefix"):
                pkg.unhashed.append(rel)  # patched, its new hash recorded by nobody: hashed into cpkgs' manifest
                return
        if size is not None and st.st_size != size:
            pkg.problems.append(Problem("modified", rel, f"size {st.st_size}, expected {size}"))
            return
        if sha is None:
            return
        if vouching is not None and st.st_nlink > 1 and not st.st_mode & 0o022 and st.st_uid in vouching[1]:
            m = vouching[0].get(rel)
            if m is not None and m[0] == st.st_ino and m[1] == st.st_size and m[2] == st.st_mtime_ns and m[3] == sha:
                # A cache inode hashed before and unchanged since.
                if not self.vouch_owner and not self.owners.allowed(pkg.dist, st.st_uid):
                    pkg.problems.append(_owner_problem(rel, st.st_uid))
                return
        pkg.hash.append((Expected(rel, sha, size, None, False, pkg.dist), st))
        if not self.owners.allowed(pkg.dist, st.st_uid):
            pkg.problems.append(_owner_problem(rel, st.st_uid))

    def add(self, pkg: Package) -> None:
        self.packages[pkg.name] = pkg

    def meta(self) -> CondaMeta:
        """conda-meta as manifest.read_conda_meta gives it (by name)."""
        base = self.staging / "conda-meta"
        return [(base / n, p.raw, p.data) for n, p in sorted(self.packages.items())]

    def stands(self) -> bool:
        """Whether the checks made during the install stand for the records as they are now: every record read
        again is byte for byte the one checked, none is new or gone, each was a package record and no two list one
        path. Otherwise (rattler rewrote the records of clobbered paths, a record appeared late or could not be read)
        the env is checked in full, by the rules of a record as checks.check_integrity reads it (which record of
        two listing one path counts, what an unreadable record is)."""
        base = self.staging / "conda-meta"
        try:
            names = sorted(n for n in os.listdir(base) if n.endswith(".json"))
        except OSError:
            return False
        if names != sorted(self.packages):
            return False
        for name in names:
            try:
                if (base / name).read_bytes() != self.packages[name].raw:
                    return False
            except OSError:
                return False
        if any(p.malformed for p in self.packages.values()):
            return False
        listed = sum(len(p.files) for p in self.packages.values())
        return listed == len({rel for p in self.packages.values() for rel in p.files})


class InstallWatcher:
    """A thread checking each package of STAGED as its conda-meta record appears, while rattler installs; it stops
    early when a package has a post-link script (the env is then checked in full after the install)."""

    def __init__(self, staged: StagedCheck) -> None:
        self.staged = staged
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._run, name="cpkgs-install-watcher", daemon=True)

    def __enter__(self) -> InstallWatcher:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        # The install failed or was interrupted: stop at the next package, before the staging dir is discarded.
        self._abort = exc_type is not None
        self.done.set()
        self._thread.join()

    @property
    def usable(self) -> bool:
        """Whether its checks stand for the env after the install (no error, no post-link script)."""
        return self.error is None and not self.staged.link_scripts

    def _run(self) -> None:
        meta = self.staged.top + "/conda-meta"
        try:
            while not self.staged.link_scripts:
                finished = self.done.is_set()  # before the listing: the last records are read after the install
                try:
                    names = [n for n in os.listdir(meta) if n.endswith(".json") and n not in self.staged.packages]
                except FileNotFoundError:
                    names = []
                added = 0
                for name in names:
                    if self._abort:
                        return
                    try:
                        with open(f"{meta}/{name}", "rb") as fh:
                            raw = fh.read()
                        self.staged.add(self.staged.check_package(name, raw))
                        added += 1
                    except (OSError, ValueError):
                        # Gone, or not readable (yet): read again at the next look; one never checked here makes
                        # StagedCheck.stands false, and the env is checked in full.
                        continue
                if finished:
                    return
                if not added:
                    self.done.wait(_POLL)
        except Exception as exc:  # reported to the caller, which then checks the env in full
            self.error = exc


# ----------------------------------------------------------------------------------------------- the final check


class Listing:
    """The final tree as one listing found it, against what the watcher lstat-ed: MATCHED entries still hold the
    inode checked under their name (counted only); the rest were lstat-ed by the listing: FRESH files and symlinks,
    DIRS; GONE: checked names no longer there, or holding another inode now."""

    def __init__(self) -> None:
        self.matched = 0
        self.fresh: dict[str, os.stat_result] = {}
        self.dirs: dict[str, os.stat_result] = {}
        self.gone: dict[str, os.stat_result] = {}
        self.unreadable: list[tuple[str, str]] = []


def list_tree(top: Path, by_dir: dict[str, dict[str, os.stat_result]], restat: bool = False) -> Listing:
    """One walk of TOP with getdents only for the entries BY_DIR holds (name and inode number compared); every other
    entry is lstat-ed relative to its directory (as tree.scan_tree). RESTAT: BY_DIR's entries are lstat-ed too, and
    one whose inode, size, times, mode or owner differ from BY_DIR's is not that file any more (fresh and gone)."""
    out = Listing()
    visited: set[str] = set()
    pending = [("", str(top))]
    while pending:
        rel_dir, path = pending.pop()
        visited.add(rel_dir[:-1])
        try:
            fd = os.open(path, DIR_FLAGS if rel_dir else DIR_FLAGS & ~os.O_NOFOLLOW)  # TOP itself may be a link
        except OSError as exc:
            if not (isinstance(exc, FileNotFoundError) or (exc.errno in (errno.ENOTDIR, errno.ELOOP) and rel_dir)):
                out.unreadable.append((rel_dir[:-1] or ".", exc.strerror or str(exc)))
            continue
        try:
            _list_dir(fd, rel_dir, path, by_dir.get(rel_dir[:-1], {}), out, pending, restat)
        except OSError as exc:
            out.unreadable.append((rel_dir[:-1] or ".", exc.strerror or str(exc)))
        finally:
            os.close(fd)
    for d, known in by_dir.items():
        if d not in visited:
            out.gone.update({f"{d}/{name}" if d else name: st for name, st in known.items()})
    return out


def _list_dir(fd: int, rel_dir: str, path: str, known: dict[str, os.stat_result], out: Listing,
              pending: list[tuple[str, str]], restat: bool) -> None:
    matched = 0
    with os.scandir(fd) as it:
        for entry in it:
            old = known.get(entry.name)
            if old is not None and old.st_ino == entry.inode() and (not restat or _unchanged(entry, old)):
                matched += 1
                continue
            rel = rel_dir + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # an NFS silly-rename file being deleted
            except OSError as exc:
                out.unreadable.append((rel, exc.strerror or str(exc)))
                continue
            if stat.S_ISDIR(st.st_mode):
                out.dirs[rel] = st
                pending.append((rel + "/", f"{path}/{entry.name}"))
            else:
                out.fresh[rel] = st
    if matched < len(known):
        listed = set(os.listdir(fd))
        out.gone.update({rel_dir + name: st for name, st in known.items()
                         if name not in listed or rel_dir + name in out.fresh or rel_dir + name in out.dirs})
    out.matched += matched


def _unchanged(entry: os.DirEntry[str], old: os.stat_result) -> bool:
    """Whether ENTRY's lstat is OLD's in all a write, chmod or chown changes: any of them sets the ctime, which no
    caller can set back (utime sets the mtime only); the size and mtime catch one in the same clock tick."""
    try:
        st = entry.stat(follow_symlinks=False)  # cached by the entry: the caller's lstat when it differs
    except OSError:
        return False
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid) == (
        old.st_ino, old.st_size, old.st_mtime_ns, old.st_ctime_ns, old.st_mode, old.st_uid, old.st_gid)


class Final(NamedTuple):
    """What check_final found: the problems, the census, and what the seal and the symlink rule must look at."""

    problems: list[Problem]
    files: int
    size: int
    executables: list[str]
    seal: dict[str, os.stat_result]  # directories and the entries not sealed yet (for tree.seal_tree)
    links: dict[str, tuple[str, os.stat_result]]  # the packages' symlinks: path -> (package, lstat)


def check_final(staged: StagedCheck, extra: dict[str, Expected],
                run_checks: Callable[[list[tuple[Expected, os.stat_result | None]]], list[Any]],
                restat: bool = False) -> Final:
    """After the build's last write into the env, before the seal: its problems, census, seal work and symlinks.

    EXTRA: what the files written after the install must be (cpkgs' manifest, the pip part's files), checked in
    full. RUN_CHECKS hashes (expected, lstat) items as checks.check_integrity does and returns its results.
    RESTAT: code other than the build's own writers ran since the install (the pip step's): every checked entry is
    lstat-ed again, and one changed since its check is checked again in full against its record."""
    listing = list_tree(staged.staging, staged.by_dir, restat)
    fin = _from_packages(staged, listing)
    gone, fresh = listing.gone, listing.fresh
    unseen = {rel for pkg in staged.packages.values() for rel in pkg.unseen}
    items: list[tuple[Expected, os.stat_result | None]] = [
        (exp, st) for pkg in staged.packages.values() for exp, st in pkg.hash if exp.rel not in gone]
    again = [rel for rel in fresh if (rel in gone or rel in unseen) and rel not in extra]
    if again:
        fin.problems.extend(_recheck(staged, again, fresh, items, fin.links))
    for rel, exp in extra.items():
        st = fresh.get(rel)
        if st is None:  # a package's file cpkgs' manifest covers (a patched copy), matched by the listing
            with contextlib.suppress(OSError):  # (_check_one reports a file gone or unreadable)
                st = os.lstat(f"{staged.top}/{rel}")
        items.append((exp, st))
        if st is not None and not stat.S_ISLNK(st.st_mode) and not staged.owners.allowed(exp.dist, st.st_uid):
            fin.problems.append(_owner_problem(rel, st.st_uid))
    for problem, _size, remember in run_checks(items):
        if problem:
            fin.problems.append(problem)
        elif remember and staged.memo is not None:
            staged.memo.remember(*remember)
    files, size, execs = fin.files, fin.size, fin.executables
    for rel, st in fresh.items():
        files, size = files + 1, size + st.st_size
        fin.seal[rel] = st
        if stat.S_ISREG(st.st_mode) and st.st_mode & EXEC_BITS:
            execs.append(rel)
        if not (rel in gone or rel in unseen or rel in extra or rel.startswith("conda-meta/")
                or is_nfs_silly(os.path.basename(rel))):
            fin.problems.append(Problem("unexpected", rel, "not listed by any package"))
    problems = sorted(set(fin.problems), key=lambda p: (p.path, p.kind))
    return Final(problems, files, size, sorted(execs), fin.seal, fin.links)


def _from_packages(staged: StagedCheck, listing: Listing) -> Final:
    """The watcher's findings, less what the listing found gone (the census, the seal and the symlinks count the
    final tree)."""
    problems = [Problem("unreadable", rel, why) for rel, why in listing.unreadable]
    files = size = 0
    execs: list[str] = []
    seal: dict[str, os.stat_result] = dict(listing.dirs)
    links: dict[str, tuple[str, os.stat_result]] = {}
    # A file not there when its package was checked and there now: checked afresh by check_final (_recheck).
    back = {rel for pkg in staged.packages.values() for rel in pkg.unseen if rel in listing.fresh}
    for pkg in staged.packages.values():
        problems += [p for p in pkg.problems if p.path not in back] if back else pkg.problems
        files, size = files + pkg.count, size + pkg.size
        execs += pkg.execs
        seal.update(pkg.unsealed)
        for rel in pkg.links:
            d, _, base = rel.rpartition("/")
            links[rel] = (pkg.dist, staged.by_dir[d][base])
    for rel, st in listing.gone.items():
        files, size = files - 1, size - st.st_size
        seal.pop(rel, None)
        links.pop(rel, None)
        if rel not in listing.fresh:
            problems.append(Problem("missing", rel, "listed in conda-meta but not on disk"))
    if listing.gone:
        execs = [rel for rel in execs if rel not in listing.gone]
    return Final(problems, files, size, execs, seal, links)


def _recheck(staged: StagedCheck, rels: list[str], fresh: dict[str, os.stat_result],
             items: list[tuple[Expected, os.stat_result | None]],
             links: dict[str, tuple[str, os.stat_result]]) -> list[Problem]:
    """Package files whose inode changed since their check (a later step replaced them), or that were not there
    then: checked in full against their records (ITEMS gets what to hash, LINKS the symlinks)."""
    want = set(rels)
    exp = {rel: e for rel, e in expected_files(staged.staging, staged.meta()).items() if rel in want}
    problems: list[Problem] = []
    for rel in rels:
        e, st = exp.get(rel), fresh[rel]
        if e is None:
            continue
        if stat.S_ISLNK(st.st_mode) != e.link:
            what = "a symlink where the package has a file" if not e.link else "not the symlink the package has"
            problems.append(Problem("replaced", rel, what))
        elif e.link:
            links[rel] = (e.dist, st)
        else:
            items.append((e, st))
            if not staged.owners.allowed(e.dist, st.st_uid):
                problems.append(_owner_problem(rel, st.st_uid))
    return problems
