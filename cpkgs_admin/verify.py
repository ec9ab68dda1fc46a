"""Step 5 of new-env and `cpkgs verify`: every file against conda-meta, and the seal's permissions.

Hashing runs on every core: threads taking files from both ends of a size-ordered list (hashlib releases the GIL
inside each digest update), forked processes for envs of thousands of files when the process has no other threads.
new-env checks its own staged tree, scanned once, and skips re-reading cache inodes it has hashed before
(HashMemo); `cpkgs verify` reads every byte.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.seal import EXEC_BITS, scan_tree

# Written by cpkgs after install (post-process) into conda-meta/cpkgs/, a directory conda and rattler ignore
# (they read conda-meta/*.json only); not part of any package, checked against our own manifest.
SITE_MANIFEST = "conda-meta/cpkgs/site-files.json"
EXECUTABLES_LIST = "conda-meta/cpkgs/executables.json"
_BUF = 1 << 20
# Worker processes get files in batches of about this many bytes (or _BATCH_FILES files): one task per file costs
# more in hand-offs than hashing a small file.
_BATCH_BYTES = 4 << 20
_BATCH_FILES = 64
_local = threading.local()


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | modified | size | unexpected | writable | setuid | unsealed | executable | symlink
    path: str
    detail: str


@dataclass
class VerifyReport:
    name: str
    platform: str
    prefix: str
    files: int = 0
    bytes: int = 0
    unsealed: bool = False
    problems: list[Problem] = field(default_factory=list)
    status: str = "active"  # the record's
    # Why the env was not checked (removed, and moved away by `purge` before or during the walk), or None.
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = not self.problems
        return d


class Expected(NamedTuple):
    """What one path of an env must be (a tuple: envs have tens of thousands of them)."""

    rel: str
    sha256: str | None
    size: int | None
    executable: bool | None
    link: bool = False  # the package ships a symlink here (anything else must be a regular file)
    dist: str = ""  # the package (its conda-meta record's name) the file belongs to; "" for cpkgs' own files


def is_nfs_silly(name: str) -> bool:
    return name.startswith(".nfs")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    # One read buffer per thread, reused: allocating (and zeroing) 1 MiB per file dominated small files.
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(_BUF)
        _local.view = memoryview(buf)
    view = _local.view
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


# conda-meta/*.json of a prefix: (path, its bytes, parsed). new-env reads it once for its post-process and verify.
CondaMeta = list[tuple[Path, bytes, Any]]


def read_conda_meta(prefix: Path) -> CondaMeta:
    meta = prefix / "conda-meta"
    out: CondaMeta = []
    try:
        entries = sorted(meta.glob("*.json"))
    except OSError as exc:
        raise CpkgsError(f"{meta}: cannot read: {exc.strerror}") from None
    for p in entries:
        try:
            raw = p.read_bytes()
            out.append((p, raw, json.loads(raw)))
        except (OSError, ValueError) as exc:
            raise CpkgsError(f"{p}: unreadable conda-meta record ({exc})") from None
    return out


def expected_files(prefix: Path, meta: CondaMeta | None = None) -> dict[str, Expected]:
    """What conda-meta says the prefix holds: path -> sha256 (after prefix replacement) and size."""
    out: dict[str, Expected] = {}
    for p, _raw, data in read_conda_meta(prefix) if meta is None else meta:
        if not isinstance(data, dict):
            raise CpkgsError(f"{p}: unreadable conda-meta record (not a JSON object)")
        dist = p.stem
        paths = (data.get("paths_data") or {}).get("paths") or []
        for e in paths:
            path_type = e.get("path_type")
            if path_type == "directory":
                continue
            rel = e["_path"]
            sha = e.get("sha256_in_prefix") or e.get("sha256")
            size = e.get("size_in_bytes")
            if e.get("prefix_placeholder"):
                # The installer rewrote the prefix: size_in_bytes is the package's, not the patched file's.
                size = None
                if not e.get("sha256_in_prefix"):
                    sha = None  # patched file whose new hash nobody recorded: existence only
            link = path_type == "softlink"
            if link:
                sha, size = None, None
            out[rel] = Expected(rel, sha, size, None, link, dist)
    manifest = prefix / SITE_MANIFEST
    if manifest.exists():
        try:
            for rel, info in json.loads(manifest.read_bytes()).items():
                out[rel] = Expected(
                    rel=rel, sha256=info["sha256"], size=info["size"], executable=info.get("executable")
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CpkgsError(f"{manifest}: unreadable ({exc})") from None
    # The record files themselves change when packages are added; they are checked as JSON above.
    return out


# One file's check: (problem or None, bytes checked, a memo entry to remember or None).
_Result = tuple[Problem | None, int, "tuple[str, str, int, int, int, int, str] | None"]
def _check_one(prefix: str, exp: Expected, seen: os.stat_result | None, trust_before: float) -> _Result:
    """SEEN: the file's lstat from a scan the caller already made (new-env's private staging dir), else None."""
    path = prefix + "/" + exp.rel
    try:
        st = seen if seen is not None else os.lstat(path)
    except FileNotFoundError:
        return Problem("missing", exp.rel, "listed in conda-meta but not on disk"), 0, None
    except OSError as exc:
        return Problem("unreadable", exp.rel, exc.strerror or str(exc)), 0, None
    if stat.S_ISLNK(st.st_mode) != exp.link:
        # A file swapped for a symlink (or the reverse) would pass a content check through the link's target.
        what = "a symlink where the package has a file" if not exp.link else "not the symlink the package has"
        return Problem("replaced", exp.rel, what), 0, None
    if exp.link:
        return None, 0, None
    if not stat.S_ISREG(st.st_mode):
        return Problem("replaced", exp.rel, "not a regular file"), 0, None
    if exp.size is not None and st.st_size != exp.size:
        return Problem("modified", exp.rel, f"size {st.st_size}, expected {exp.size}"), st.st_size, None
    if exp.sha256 is None:
        return None, st.st_size, None
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return Problem("unreadable", exp.rel, exc.strerror or str(exc)), 0, None
    if digest != exp.sha256:
        return Problem("modified", exp.rel, f"sha256 {digest[:16]}…, expected {exp.sha256[:16]}…"), st.st_size, None
    remember = None
    if st.st_nlink > 1 and exp.dist and st.st_mtime < trust_before and not st.st_mode & 0o022:
        remember = (exp.dist, exp.rel, st.st_uid, st.st_ino, st.st_size, st.st_mtime_ns, digest)
    return None, st.st_size, remember


_Item = tuple[Expected, "os.stat_result | None"]


def _check_batch(prefix: str, batch: list[_Item], trust_before: float) -> list[_Result]:
    return [_check_one(prefix, e, seen, trust_before) for e, seen in batch]


def _batches(order: list[_Item]) -> list[list[_Item]]:
    out: list[list[_Item]] = []
    cur: list[_Item] = []
    acc = 0
    for item in order:
        cur.append(item)
        acc += item[0].size or 0
        if acc >= _BATCH_BYTES or len(cur) >= _BATCH_FILES:
            out.append(cur)
            cur, acc = [], 0
    if cur:
        out.append(cur)
    return out


_PROCESS_MIN_FILES = 2000
# Below this many bytes to hash, one thread finishes before a pool has started.
_THREAD_MIN_BYTES = 1 << 20


class _TwoEnds:
    """Checks ordered large to small, taken from both ends: big-file workers take one from the front, the
    small-file worker a handful from the back, until they meet.

    hashlib frees the GIL only inside a digest update: a thread hashing big files spends its time there, a thread
    on small files mostly in Python (open, lstat, bookkeeping). Two threads both on small files only take turns on
    the GIL; one on each end keeps both cores busy and balances itself (benchmark env, 1,280 files / 55 MiB: 55 ms
    in mixed batches, 42 ms from two ends, 55 ms in one thread)."""

    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.lo = 0
        self.hi = len(items)
        self.lock = threading.Lock()

    def front(self) -> list[_Item]:
        with self.lock:
            if self.lo >= self.hi:
                return []
            self.lo += 1
            return [self.items[self.lo - 1]]

    def back(self, n: int = 32) -> list[_Item]:
        with self.lock:
            if self.lo >= self.hi:
                return []
            start = max(self.lo, self.hi - n)
            got, self.hi = self.items[start:self.hi], start
            return got


def _drain(prefix: str, take: Callable[[], list[_Item]], trust_before: float) -> list[_Result]:
    out: list[_Result] = []
    while chunk := take():
        out += _check_batch(prefix, chunk, trust_before)
    return out


def _run_checks(
    prefix: str, items: list[_Item], workers: int, trust_before: float, meanwhile: Callable[[], None]
) -> list[_Result]:
    """Check ITEMS (ordered large to small) on every core; run MEANWHILE (a walk of the tree) in this thread while
    the workers hash.

    Many small files (a big env): forked processes, in batches, where no GIL is shared. Fork only from a
    single-threaded process (the `verify` command): forking next to live threads (a lock's heartbeat, rattler's
    runtime during new-env) can deadlock the child. Otherwise threads working from both ends (_TwoEnds)."""
    if sum(e.size or 0 for e, _seen in items) < _THREAD_MIN_BYTES:
        meanwhile()
        return _check_batch(prefix, items, trust_before)
    if len(items) >= _PROCESS_MIN_FILES and threading.active_count() == 1 and hasattr(os, "fork"):
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as procs:
            args = [(prefix, b, trust_before) for b in _batches(items)]
            pending = procs.starmap_async(_check_batch, args, chunksize=1)
            meanwhile()
            return [r for batch in pending.get() for r in batch]
    ends = _TwoEnds(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        big = [pool.submit(_drain, prefix, ends.front, trust_before) for _ in range(max(1, workers - 1))]
        small = pool.submit(_drain, prefix, ends.back, trust_before)
        meanwhile()
        return [r for f in [*big, small] for r in f.result()]


def _drop_group_other_write(fd: int) -> bool:
    """fchmod g-w,o-w of a regular file or directory open as FD; False when that failed."""
    try:
        st = os.fstat(fd)
        if (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) and st.st_mode & 0o022:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o022)
    except OSError:
        return False
    return True


class HashMemo:
    """The sha256 of package-cache inodes that new-env has already read and found right, so that the next build
    linking the same unchanged inode need not read it again.

    Env files hard-linked from the admin-only site cache are the cache's own inodes (build.cache_is_admin_only).
    An inode's entry is (inode number, size, mtime in ns, sha256), stored per package in the directory DIRECTORY;
    a file is taken as checked only when it is still a hard link with exactly that inode, size and mtime, owned by
    root or this admin and writable by nobody else. Any write to the inode moves its mtime, the rule git's index
    relies on; as in git, an inode whose mtime was less than RACY_SECONDS old when it was hashed is never
    remembered (a write in the same clock tick would not show). rattler gives extracted files their archive's
    mtime, so cache maintenance must remove whole entries, never rewrite files in place keeping their mtime
    (`rsync --inplace`, `cp -p` over a file): `cpkgs verify` after any such work.
    Each package's entries also name its extracted directory in the cache (CACHE/<package>: inode and ctime): when
    that directory is replaced (cache cleaned, package extracted again, inode numbers perhaps reused) the entries
    are dropped; a package with no such directory gets none. `harden` makes sure, once per extracted directory,
    that nobody else can replace files in it.
    The memo is a cache: lost or unreadable files are re-hashed, never trusted. `cpkgs verify` does not use it and
    reads every byte, so bit rot under an unchanged mtime is found there."""

    RACY_SECONDS = 2.0
    VERSION = 2

    def __init__(self, directory: Path, cache: Path) -> None:
        self.dir = directory
        self.cache = cache
        self._owners: dict[str, int] = {}
        self._me = os.getuid()
        self._entries: dict[str, dict[str, list[Any]] | None] = {}  # None: this package is not remembered
        self._idents: dict[str, list[int]] = {}
        self._hardened: dict[str, bool] = {}
        self._dirty: set[str] = set()

    def _ident(self, dist: str) -> list[int] | None:
        try:
            st = os.stat(self.cache / dist)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        self._owners[dist] = st.st_uid
        return [st.st_ino, st.st_ctime_ns]

    def trusted(self, dist: str, uid: int) -> bool:
        """Whether a file of DIST owned by UID may be vouched for: root, this admin, or who extracted the entry."""
        return self._load(dist) is not None and uid in (0, self._me, self._owners.get(dist))

    def _load(self, dist: str) -> dict[str, list[Any]] | None:
        if dist in self._entries:
            return self._entries[dist]
        got: dict[str, list[Any]] | None = None
        ident = self._ident(dist)
        if ident is not None:
            self._idents[dist] = ident
            self._hardened[dist] = False
            got = {}
            try:
                data = json.loads((self.dir / f"{dist}.json").read_bytes())
                if isinstance(data, dict) and data.get("version") == self.VERSION and data.get("entry") == ident:
                    files = data.get("files")
                    if isinstance(files, dict):
                        got = files
                    self._hardened[dist] = data.get("hardened") is True
            except (OSError, ValueError):
                pass
        self._entries[dist] = got
        return got

    def harden(self, dist: str) -> None:
        """Drop group and other write permission from DIST's extracted directory in the cache, once per extraction:
        a package may ship a directory mode 0777, and rattler keeps it in the cache, where anyone could then put
        their own file in place of one that envs are hard-linked to. Walks by directory descriptors and changes
        modes through descriptors opened without following symlinks: whoever can write there cannot redirect the
        change to another file. Marked done only when every change succeeded."""
        if self._load(dist) is None or self._hardened.get(dist):
            return
        ok = True
        try:
            for _dirpath, _dirnames, filenames, dirfd in os.fwalk(self.cache / dist, follow_symlinks=False):
                ok = _drop_group_other_write(dirfd) and ok
                for name in filenames:
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
                    except OSError as exc:
                        if exc.errno != errno.ELOOP:  # a symlink: nothing to change
                            ok = False
                        continue
                    try:
                        ok = _drop_group_other_write(fd) and ok
                    finally:
                        os.close(fd)
        except OSError:
            ok = False
        ident = self._ident(dist)  # chmod of the top directory moved its ctime
        if not ok or ident is None:
            return
        self._idents[dist] = ident
        self._hardened[dist] = True
        self._dirty.add(dist)

    def vouching(self, dist: str) -> tuple[dict[str, list[Any]], tuple[int, ...]] | None:
        """DIST's remembered inodes and the owners whose inodes they may vouch for (root, this admin, who extracted
        the package), or None when nothing of DIST is remembered. check_integrity vouches with them for the
        unchanged cache inodes of a new env's scanned tree, which then need no check item."""
        files = self._load(dist) if dist else None
        if not files:
            return None
        return files, (0, self._me, self._owners.get(dist, 0))

    def remember(self, dist: str, rel: str, uid: int, ino: int, size: int, mtime_ns: int, sha256: str) -> None:
        files = self._load(dist)
        if files is not None and self.trusted(dist, uid):
            files[rel] = [ino, size, mtime_ns, sha256]
            self._dirty.add(dist)

    def save(self) -> None:
        """Best effort and without fsync (a memo lost in a crash only costs a re-hash); a private temp file renamed
        into place, so nobody reads half a file or writes into it."""
        if not self._dirty:
            return
        from cpkgs_admin.site.files import atomic_write

        try:
            self.dir.mkdir(mode=0o775, exist_ok=True)  # the umask decides: 002 where admins share a group
        except OSError:
            return
        for dist in sorted(self._dirty):
            doc = {"version": self.VERSION, "entry": self._idents[dist], "hardened": self._hardened.get(dist, False),
                   "files": self._entries[dist] or {}}
            with contextlib.suppress(OSError):
                atomic_write(self.dir / f"{dist}.json", json.dumps(doc), 0o644, durable=False)
        self._dirty.clear()


class Owners:
    """Who may own an env's files: root, the owner of the env's top directory (who built it), members of the site's
    admin group, and, for a package's files hard-linked from the site cache, whoever owns that package's extracted
    directory there (the admin who extracted it). Anyone else's file in a sealed env could be changed by its owner
    at will: a file replaced in a cache directory others could write."""

    def __init__(self, top_uid: int, cache: Path | None, admin_gid: int | None = None) -> None:
        self.base = {0, top_uid}
        self.cache = cache
        self.admin_gid = admin_gid
        self._entry: dict[str, int | None] = {}
        self._admin: dict[int, bool] = {}

    def allowed(self, dist: str, uid: int) -> bool:
        if uid in self.base:
            return True
        if self.admin_gid is not None:
            if uid not in self._admin:
                self._admin[uid] = _in_group(uid, self.admin_gid)
            if self._admin[uid]:
                return True
        if not dist or self.cache is None:
            return False
        if dist not in self._entry:
            try:
                self._entry[dist] = os.stat(self.cache / dist).st_uid
            except OSError:
                self._entry[dist] = None
        return uid == self._entry[dist]


def _in_group(uid: int, gid: int) -> bool:
    """Whether UID's account has GID as its primary group or is listed as a member of it."""
    import grp
    import pwd

    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return False
    if pw.pw_gid == gid:
        return True
    try:
        return pw.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def check_integrity(
    prefix: Path,
    workers: int | None = None,
    memo: HashMemo | None = None,
    tree: dict[str, os.stat_result] | None = None,
    meta: CondaMeta | None = None,
    owners: Owners | None = None,
) -> tuple[list[Problem], int, int, dict[str, os.stat_result]]:
    """(problems, files checked, bytes checked, the tree's scan). Also reports files on disk that no package lists.

    MEMO (new-env only, with TREE) skips re-reading cache inodes already hashed; TREE is a scan_tree of PREFIX the
    caller has already made (new-env's own staging dir, which nobody else can write), else the tree is scanned
    while the workers hash, and returned for the permission check."""
    expected = expected_files(prefix, meta)
    problems: list[Problem] = []
    total = 0
    workers = workers or max(2, os.cpu_count() or 2)
    trust_before = time.time() - HashMemo.RACY_SECONDS
    seen_of = tree.get if tree is not None else (lambda _rel: None)
    to_check: Iterable[Expected] = expected.values()
    owner_checks: Iterable[Expected] = expected.values()
    if memo is not None and tree is not None:
        # new-env: most files are cache inodes the memo vouches for; only the rest become check items.
        rest: list[Expected] = []
        cur: tuple[str, tuple[dict[str, list[Any]], tuple[int, ...]] | None] = ("", None)
        for e in expected.values():
            st = tree.get(e.rel)
            if (st is None or e.sha256 is None or e.link or st.st_nlink < 2 or st.st_mode & 0o022
                    or not stat.S_ISREG(st.st_mode) or (e.size is not None and e.size != st.st_size)):
                rest.append(e)
                continue
            if cur[0] != e.dist:  # expected_files lists each package's files together
                cur = (e.dist, memo.vouching(e.dist))
            got = cur[1]
            if got is not None and st.st_uid in got[1] and (
                got[0].get(e.rel) == [st.st_ino, st.st_size, st.st_mtime_ns, e.sha256]
            ):
                total += st.st_size  # a cache inode hashed before and unchanged since: no check item
            else:
                rest.append(e)
        to_check = rest
        if owners is not None and os.getuid() in owners.base:
            # A vouched file's owner is root, this admin or the package's extractor: all allowed by Owners too.
            owner_checks = rest
    items: list[_Item] = [(e, seen_of(e.rel)) for e in to_check]
    # Large to small: the big-file workers start on the slowest hash first, the small-file worker at the other end
    # (_TwoEnds).
    items.sort(key=lambda it: -(it[0].size or 0))
    scanned: dict[str, os.stat_result] = tree if tree is not None else {}
    unreadable: list[tuple[str, str]] = []

    def scan() -> None:
        if tree is None:
            scanned.update(scan_tree(prefix, unreadable))

    for problem, size, remember in _run_checks(str(prefix), items, workers, trust_before, scan):
        total += size
        if problem:
            problems.append(problem)
        elif remember and memo is not None:
            memo.remember(*remember)
    problems += [Problem("unreadable", rel, why) for rel, why in unreadable]
    if owners is not None:
        for e in owner_checks:
            st = scanned.get(e.rel)
            if st is not None and not stat.S_ISLNK(st.st_mode) and not owners.allowed(e.dist, st.st_uid):
                problems.append(Problem("owner", e.rel, f"owned by uid {st.st_uid}, not root, the env's builder "
                                        "or the admin whose package cache it is linked from"))
    for rel in sorted(rel for rel, st in scanned.items() if rel not in expected and not stat.S_ISDIR(st.st_mode)):
        if rel.startswith("conda-meta/") or is_nfs_silly(os.path.basename(rel)):
            continue
        problems.append(Problem("unexpected", rel, "not listed by any package"))
    problems.sort(key=lambda p: (p.path, p.kind))
    return problems, len(expected), total, scanned


def check_permissions(
    prefix: Path, expect_sealed: bool, executables: set[str] | None = None,
    tree: dict[str, os.stat_result] | None = None,
) -> list[Problem]:
    """The seal's rules over PREFIX and everything in it; TREE: a scan_tree of PREFIX already made."""
    problems: list[Problem] = []
    if tree is None:
        tree = scan_tree(prefix, [])  # what cannot be read is check_integrity's to report
    try:
        entries = [(".", os.lstat(prefix)), *tree.items()]
    except OSError:
        entries = list(tree.items())
    for rel, st in entries:
        if is_nfs_silly(os.path.basename(rel)):
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = st.st_mode
        if mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(mode):
            problems.append(Problem("setuid", rel, f"mode {oct(mode & 0o7777)} has setuid/setgid"))
        if mode & stat.S_IWOTH:
            problems.append(Problem("writable", rel, f"mode {oct(mode & 0o7777)} is world-writable"))
        elif expect_sealed and mode & (stat.S_IWUSR | stat.S_IWGRP):
            problems.append(Problem("unsealed", rel, f"mode {oct(mode & 0o7777)} is writable"))
        if executables is not None and stat.S_ISREG(mode) and mode & EXEC_BITS and rel not in executables:
            detail = f"mode {oct(mode & 0o7777)}: was not executable when published"
            problems.append(Problem("executable", rel, detail))
    return problems


def package_executables(prefix: Path) -> set[str] | None:
    """Files that were executable when the env was published (rattler's conda-meta records no modes)."""
    try:
        return set(json.loads((prefix / EXECUTABLES_LIST).read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def census_at_publish(tree: dict[str, os.stat_result]) -> tuple[int, int, list[str]]:
    """(file count, bytes, executable files) of a staged env from its scan_tree: the record needs the first two and
    verify's later permission check the last. Symlinks count as files, directories do not."""
    files = size = 0
    executables = []
    for rel, st in tree.items():
        if stat.S_ISDIR(st.st_mode):
            continue
        files += 1
        size += st.st_size
        if stat.S_ISREG(st.st_mode) and st.st_mode & EXEC_BITS:
            executables.append(rel)
    return files, size, sorted(executables)


def meta_digest(prefix: Path, meta: CondaMeta | None = None) -> str:
    """One hash over the env's package metadata (conda-meta/*.json) and cpkgs' own manifests, kept in the record
    outside the env: verify's expected hashes come from these files, so they must not be editable unnoticed.
    META: the package records as new-env already read them."""
    h = hashlib.sha256()
    meta_dir = prefix / "conda-meta"
    if meta is None:
        digests = [(p.name, sha256_file(str(p))) for p in sorted(meta_dir.glob("*.json"))]
    else:
        digests = [(p.name, hashlib.sha256(raw).hexdigest()) for p, raw, _data in meta]
    digests += [
        ("cpkgs/" + p.name, sha256_file(str(p)))
        for p in sorted((meta_dir / "cpkgs").glob("*")) if p.name != "record.json"
    ]
    for rel, digest in digests:
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def verify_prefix(
    prefix: Path, *, expect_sealed: bool, name: str = "", platform: str = "", meta_sha256: str | None = None,
    cache: Path | None = None,
    admin_gid: int | None = None,
) -> VerifyReport:
    rep = VerifyReport(name=name or prefix.name, platform=platform, prefix=str(prefix))
    if not prefix.is_dir():
        rep.problems.append(Problem("missing", str(prefix), "environment directory does not exist"))
        return rep
    meta = read_conda_meta(prefix)  # once, for the digest and the expected files
    if meta_sha256 is not None:
        try:
            if meta_digest(prefix, meta) != meta_sha256:
                rep.problems.append(Problem("modified", "conda-meta", "package metadata changed since publish"))
        except OSError as exc:
            rep.problems.append(Problem("unreadable", "conda-meta", exc.strerror or str(exc)))
    owners = Owners(prefix.lstat().st_uid, cache, admin_gid)
    problems, files, nbytes, tree = check_integrity(prefix, meta=meta, owners=owners)
    rep.files, rep.bytes = files, nbytes
    rep.problems += problems + check_permissions(prefix, expect_sealed, package_executables(prefix), tree)
    # A package's symlink has no content hash: where it points is checked here (published at PREFIX, which may
    # also be reached through a symlinked site root).
    from cpkgs_admin.content import escaping_symlinks

    roots = tuple(dict.fromkeys([str(prefix), os.path.realpath(prefix)]))
    rep.problems += [Problem("symlink", rel, f"points outside the environment ({target})")
                     for rel, target in escaping_symlinks(prefix, tree, roots)]
    rep.unsealed = not expect_sealed
    return rep


def verify_envs(site: Any, names: Iterable[str]) -> list[VerifyReport]:
    """Every env named, or every recorded env still at its path (removed ones too: running jobs use them until
    `purge` moves them away). A removed env that is gone, or goes during its walk, is skipped with a note."""
    from cpkgs_admin.site.records import get_record, load_all

    names = list(names)
    reports = []
    if names:
        records = [get_record(site, n, None) for n in names]
    else:
        damaged: list[tuple[Path, str]] = []
        records = load_all(site.records_dir, damaged=damaged)
        records = [r for r in records if r.status != "removed" or os.path.lexists(r.prefix)]
        from cpkgs_admin.site.records import DAMAGED_RECORD_HINT

        # Its env cannot be checked without the record (the expected hashes' digest is in it): a problem to report,
        # not a reason to leave the other envs unchecked.
        for path, msg in damaged:
            try:
                where = str(site.env_prefix(path.stem, path.parent.name))
            except CpkgsError:
                where = ""
            rep = VerifyReport(name=path.stem, platform=path.parent.name, prefix=where)
            rep.problems.append(Problem("record", str(path), f"{msg.removeprefix(f'{path}: ')}; {DAMAGED_RECORD_HINT}"))
            reports.append(rep)
    reports += [_verify_record(site, rec) for rec in records]
    _name_sharing_envs(site, reports)
    return reports


def _verify_record(site: Any, rec: Any) -> VerifyReport:
    prefix = Path(rec.prefix)
    failure: CpkgsError | OSError | None = None
    try:
        rep = verify_prefix(
            prefix,
            expect_sealed=rec.status != "unsealed" and not rec.unsealed,  # (removed during an unseal: as it was)
            name=rec.name,
            platform=rec.platform,
            meta_sha256=rec.meta_sha256,
            cache=site.pkgs_cache_dir,
            admin_gid=site.admin_gid(),
        )
    except (CpkgsError, OSError) as exc:  # e.g. conda-meta gone in the middle
        rep, failure = VerifyReport(name=rec.name, platform=rec.platform, prefix=str(prefix)), exc
    rep.status = rec.status
    if failure is not None or not os.path.lexists(prefix):
        # The tree went during the walk: `purge` moved a removed env away (rename first, then delete: its files
        # vanish under the walk). Only its record can tell that from damage; it is read again now.
        gone = _removed_meanwhile(site, rec)
        if gone is not None:
            return VerifyReport(name=rec.name, platform=rec.platform, prefix=str(prefix), status="removed",
                                skipped=gone)
    if failure is not None:
        why = failure.strerror if isinstance(failure, OSError) and failure.strerror else str(failure)
        rep.problems.append(Problem("unreadable", str(prefix), why))
    return rep


def _removed_meanwhile(site: Any, rec: Any) -> str | None:
    """The note for REC's env when its record now says removed and its tree is no longer at its path."""
    from cpkgs_admin.site.records import load_record_file

    if os.path.lexists(rec.prefix):
        return None
    try:
        now = load_record_file(site.record_path(rec.name, rec.platform))
    except CpkgsError:  # its record deleted or damaged by hand: not a removal, a problem to report
        return None
    if now.status != "removed":
        return None
    return "removed, and moved away by 'cpkgs purge' (before or during this check): nothing to verify"


def _name_sharing_envs(site: Any, reports: list[VerifyReport]) -> None:
    """A modified file that is a hard link (into the package cache, shared with other envs built from it) is damaged
    in every env linking the inode: its problem names them ("also in: A, B"). Found by inode at the same path in
    the other recorded envs of the platform: one lstat per env and damaged linked file."""
    from cpkgs_admin.site.records import load_all

    others: list[Any] | None = None
    for rep in reports:
        for i, problem in enumerate(rep.problems):
            if problem.kind != "modified" or not rep.prefix:
                continue
            try:
                st = os.lstat(os.path.join(rep.prefix, problem.path))
            except OSError:
                continue
            if st.st_nlink < 2 or not stat.S_ISREG(st.st_mode):
                continue
            if others is None:
                others = load_all(site.records_dir)  # removed envs too: still at their path until purged
            sharing = [r.name for r in others
                       if r.platform == rep.platform and r.prefix != rep.prefix and _same_inode(r.prefix, problem, st)]
            if sharing:
                detail = f"{problem.detail}; also in: {', '.join(sharing)}"
                rep.problems[i] = Problem(problem.kind, problem.path, detail)


def _same_inode(prefix: str, problem: Problem, st: os.stat_result) -> bool:
    try:
        other = os.lstat(os.path.join(prefix, problem.path))
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def unhashed_patched_files(prefix: Path, meta: CondaMeta | None = None) -> list[str]:
    """Files whose prefix the installer patched without recording the patched hash (py-rattler 0.28 does this for
    binary placeholders). cpkgs hashes them at publish into its own manifest, so verify checks every byte."""
    out = []
    for _p, _raw, data in read_conda_meta(prefix) if meta is None else meta:
        if not isinstance(data, dict):
            continue  # expected_files reports it
        for e in (data.get("paths_data") or {}).get("paths") or []:
            if e.get("prefix_placeholder") and not e.get("sha256_in_prefix") and e.get("path_type") != "softlink":
                out.append(e["_path"])
    return out


def site_manifest(prefix: Path, rels: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Hashes of the files cpkgs itself writes into an env, so verify can check them like package files."""
    out: dict[str, dict[str, Any]] = {}
    for rel in rels:
        path = prefix / rel
        st = path.stat()
        out[rel] = {"sha256": sha256_file(str(path)), "size": st.st_size, "executable": bool(st.st_mode & EXEC_BITS)}
    return out
