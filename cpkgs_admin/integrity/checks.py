"""Every file of an env against what it must be (integrity.manifest), and the seal's permission rules.

Hashing runs on every core: threads taking files from both ends of a size-ordered list (hashlib releases the GIL
inside each digest update), forked processes for envs of thousands of files when the process has no other threads.
new-env checks its own staged tree, scanned once, and skips re-reading cache inodes it has hashed before
(integrity.memo); `cpkgs verify` reads every byte.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpkgs_admin.integrity.manifest import CondaMeta, Expected, expected_files, sha256_file
from cpkgs_admin.integrity.memo import HashMemo
from cpkgs_admin.integrity.owners import Owners
from cpkgs_admin.integrity.tree import EXEC_BITS, scan_tree

# Worker processes get files in batches of about this many bytes (or _BATCH_FILES files): one task per file costs
# more in hand-offs than hashing a small file.
_BATCH_BYTES = 4 << 20


_BATCH_FILES = 64


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | modified | size | unexpected | writable | setuid | unsealed | executable | symlink
    path: str
    detail: str


def is_nfs_silly(name: str) -> bool:
    return name.startswith(".nfs")


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
    workers = workers or max(2, os.cpu_count() or 2)
    trust_before = time.time() - HashMemo.RACY_SECONDS
    seen_of = tree.get if tree is not None else (lambda _rel: None)
    to_check: Iterable[Expected] = expected.values()
    owner_checks: Iterable[Expected] = expected.values()
    total = 0
    if memo is not None and tree is not None:
        to_check, total = _not_vouched(expected.values(), tree, memo)
        if owners is not None and os.getuid() in owners.base:
            # A vouched file's owner is root, this admin or the package's extractor: all allowed by Owners too.
            owner_checks = to_check
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
        problems += _owner_problems(owner_checks, scanned, owners)
    problems += _unexpected(scanned, expected)
    problems.sort(key=lambda p: (p.path, p.kind))
    return problems, len(expected), total, scanned


def _not_vouched(expected: Iterable[Expected], tree: dict[str, os.stat_result], memo: HashMemo
                 ) -> tuple[list[Expected], int]:
    """new-env: most files are cache inodes the memo vouches for; only the rest become check items. (The rest, the
    bytes of the files vouched for.)"""
    rest: list[Expected] = []
    vouched = 0
    cur: tuple[str, tuple[dict[str, list[Any]], tuple[int, ...]] | None] = ("", None)
    for e in expected:
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
            vouched += st.st_size  # a cache inode hashed before and unchanged since: no check item
        else:
            rest.append(e)
    return rest, vouched


def _owner_problems(checks: Iterable[Expected], scanned: dict[str, os.stat_result], owners: Owners) -> list[Problem]:
    out = []
    for e in checks:
        st = scanned.get(e.rel)
        if st is not None and not stat.S_ISLNK(st.st_mode) and not owners.allowed(e.dist, st.st_uid):
            out.append(Problem("owner", e.rel, f"owned by uid {st.st_uid}, not root, the env's builder or the admin "
                               "whose package cache it is linked from"))
    return out


def _unexpected(scanned: dict[str, os.stat_result], expected: dict[str, Expected]) -> list[Problem]:
    """Files on disk that no package lists (conda-meta's own files and NFS's silly-renames aside)."""
    out = []
    for rel in sorted(rel for rel, st in scanned.items() if rel not in expected and not stat.S_ISDIR(st.st_mode)):
        if rel.startswith("conda-meta/") or is_nfs_silly(os.path.basename(rel)):
            continue
        out.append(Problem("unexpected", rel, "not listed by any package"))
    return out


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
