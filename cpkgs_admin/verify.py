"""Step 5 of new-env and `cpkgs verify`: every file against conda-meta, and the seal's permissions.

Hashing runs on a thread pool: hashlib releases the GIL on large buffers, so two threads keep two cores busy
without the start-up cost of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.seal import EXEC_BITS

# Written by cpkgs after install (post-process) into conda-meta/cpkgs/, a directory conda and rattler ignore
# (they read conda-meta/*.json only); not part of any package, checked against our own manifest.
SITE_MANIFEST = "conda-meta/cpkgs/site-files.json"
EXECUTABLES_LIST = "conda-meta/cpkgs/executables.json"
_BUF = 1 << 20
# Small files are hashed in batches of about this many bytes (or _BATCH_FILES files): one pool task per file costs
# more in thread hand-offs (GIL convoy) than hashing the file.
_BATCH_BYTES = 4 << 20
_BATCH_FILES = 64
_local = threading.local()


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | modified | size | unexpected | writable | setuid | unsealed | executable
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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = not self.problems
        return d


@dataclass(frozen=True)
class Expected:
    rel: str
    sha256: str | None
    size: int | None
    executable: bool | None
    link: bool = False  # the package ships a symlink here (anything else must be a regular file)


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


def expected_files(prefix: Path) -> dict[str, Expected]:
    """What conda-meta says the prefix holds: path -> sha256 (after prefix replacement) and size."""
    meta = prefix / "conda-meta"
    out: dict[str, Expected] = {}
    try:
        entries = sorted(meta.glob("*.json"))
    except OSError as exc:
        raise CpkgsError(f"{meta}: cannot read: {exc.strerror}") from None
    for p in entries:
        try:
            data = json.loads(p.read_bytes())
        except (OSError, ValueError) as exc:
            raise CpkgsError(f"{p}: unreadable conda-meta record ({exc})") from None
        paths = (data.get("paths_data") or {}).get("paths") or []
        for e in paths:
            if e.get("path_type") == "directory":
                continue
            rel = e["_path"]
            sha = e.get("sha256_in_prefix") or e.get("sha256")
            size = e.get("size_in_bytes")
            if e.get("prefix_placeholder"):
                # The installer rewrote the prefix: size_in_bytes is the package's, not the patched file's.
                size = None
                if not e.get("sha256_in_prefix"):
                    sha = None  # patched file whose new hash nobody recorded: existence only
            link = e.get("path_type") == "softlink"
            if link:
                sha, size = None, None
            out[rel] = Expected(rel=rel, sha256=sha, size=size, executable=None, link=link)
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


def _check_one(prefix: str, exp: Expected) -> tuple[Problem | None, int]:
    path = os.path.join(prefix, exp.rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Problem("missing", exp.rel, "listed in conda-meta but not on disk"), 0
    except OSError as exc:
        return Problem("unreadable", exp.rel, exc.strerror or str(exc)), 0
    if stat.S_ISLNK(st.st_mode) != exp.link:
        # A file swapped for a symlink (or the reverse) would pass a content check through the link's target.
        what = "a symlink where the package has a file" if not exp.link else "not the symlink the package has"
        return Problem("replaced", exp.rel, what), 0
    if exp.link:
        return None, 0
    if not stat.S_ISREG(st.st_mode):
        return Problem("replaced", exp.rel, "not a regular file"), 0
    if exp.size is not None and st.st_size != exp.size:
        return Problem("modified", exp.rel, f"size {st.st_size}, expected {exp.size}"), st.st_size
    if exp.sha256 is not None:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            return Problem("unreadable", exp.rel, exc.strerror or str(exc)), 0
        if digest != exp.sha256:
            return Problem("modified", exp.rel, f"sha256 {digest[:16]}…, expected {exp.sha256[:16]}…"), st.st_size
    return None, st.st_size


def _check_batch(prefix: str, batch: list[Expected]) -> list[tuple[Problem | None, int]]:
    return [_check_one(prefix, e) for e in batch]


def _batches(order: list[Expected]) -> list[list[Expected]]:
    out: list[list[Expected]] = []
    cur: list[Expected] = []
    acc = 0
    for e in order:
        cur.append(e)
        acc += e.size or 0
        if acc >= _BATCH_BYTES or len(cur) >= _BATCH_FILES:
            out.append(cur)
            cur, acc = [], 0
    if cur:
        out.append(cur)
    return out


_PROCESS_MIN_FILES = 2000


def _run_batches(prefix: str, batches: list[list[Expected]], workers: int) -> list[list[tuple[Problem | None, int]]]:
    """Hash on every core. hashlib frees the GIL only inside each digest update, so with thousands of small files
    threads serialize on the per-file Python work; forked processes do not. Fork only from a single-threaded
    process (the `verify` command): forking next to live threads (a lock's heartbeat, rattler's runtime during
    new-env) can deadlock the child, so then threads."""
    import threading

    files = sum(len(b) for b in batches)
    if files >= _PROCESS_MIN_FILES and threading.active_count() == 1 and hasattr(os, "fork"):
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as procs:
            return procs.starmap(_check_batch, [(prefix, b) for b in batches], chunksize=1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda b: _check_batch(prefix, b), batches))


def check_integrity(prefix: Path, workers: int | None = None) -> tuple[list[Problem], int, int]:
    """(problems, files checked, bytes hashed). Also reports files on disk that no package lists."""
    expected = expected_files(prefix)
    problems: list[Problem] = []
    total = 0
    workers = workers or max(2, os.cpu_count() or 2)
    # Large files first, so the slowest hash does not start last; small files in batches (see _BATCH_BYTES).
    batches = _batches(sorted(expected.values(), key=lambda e: -(e.size or 0)))
    for batch in _run_batches(str(prefix), batches, workers):
        for problem, size in batch:
            total += size
            if problem:
                problems.append(problem)
    on_disk = set()
    for dirpath, dirnames, filenames in os.walk(prefix):
        rel_dir = os.path.relpath(dirpath, prefix)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if is_nfs_silly(name):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            on_disk.add(rel)
    for rel in sorted(on_disk - set(expected)):
        if rel.startswith("conda-meta/"):
            continue
        problems.append(Problem("unexpected", rel, "not listed by any package"))
    problems.sort(key=lambda p: (p.path, p.kind))
    return problems, len(expected), total


def check_permissions(prefix: Path, expect_sealed: bool, executables: set[str] | None = None) -> list[Problem]:
    problems: list[Problem] = []
    top = str(prefix)
    cut = len(os.path.join(top, ""))  # os.walk's paths all start with TOP + "/": slicing is os.path.relpath, cheaper
    for dirpath, dirnames, filenames in os.walk(prefix):
        for name in [*dirnames, *filenames, ""] if dirpath == top else [*dirnames, *filenames]:
            if name and is_nfs_silly(name):
                continue
            path = os.path.join(dirpath, name) if name else dirpath
            rel = path[cut:] if name else "."
            try:
                st = os.lstat(path)
            except OSError:
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


def census_at_publish(prefix: Path) -> tuple[int, int, list[str]]:
    """(file count, bytes, executable files) of a staged env, in one walk: the record needs the first two and
    verify's later permission check the last."""
    files = size = 0
    executables = []
    for dirpath, _dirnames, filenames in os.walk(prefix):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            files += 1
            size += st.st_size
            if stat.S_ISREG(st.st_mode) and st.st_mode & EXEC_BITS:
                executables.append(os.path.relpath(path, prefix))
    return files, size, sorted(executables)


def meta_digest(prefix: Path) -> str:
    """One hash over the env's package metadata (conda-meta/*.json) and cpkgs' own manifests, kept in the record
    outside the env: verify's expected hashes come from these files, so they must not be editable unnoticed."""
    h = hashlib.sha256()
    meta = prefix / "conda-meta"
    names = sorted(p.name for p in meta.glob("*.json")) + sorted(
        "cpkgs/" + p.name for p in (meta / "cpkgs").glob("*") if p.name != "record.json"
    )
    for rel in names:
        h.update(rel.encode() + b"\0" + sha256_file(str(meta / rel)).encode() + b"\n")
    return h.hexdigest()


def verify_prefix(
    prefix: Path, *, expect_sealed: bool, name: str = "", platform: str = "", meta_sha256: str | None = None
) -> VerifyReport:
    rep = VerifyReport(name=name or prefix.name, platform=platform, prefix=str(prefix))
    if not prefix.is_dir():
        rep.problems.append(Problem("missing", str(prefix), "environment directory does not exist"))
        return rep
    if meta_sha256 is not None:
        try:
            if meta_digest(prefix) != meta_sha256:
                rep.problems.append(Problem("modified", "conda-meta", "package metadata changed since publish"))
        except OSError as exc:
            rep.problems.append(Problem("unreadable", "conda-meta", exc.strerror or str(exc)))
    problems, files, nbytes = check_integrity(prefix)
    rep.files, rep.bytes = files, nbytes
    rep.problems += problems + check_permissions(prefix, expect_sealed, package_executables(prefix))
    rep.unsealed = not expect_sealed
    return rep


def verify_envs(site: Any, names: Iterable[str]) -> list[VerifyReport]:
    from cpkgs_admin.envs import get_record
    from cpkgs_admin.records import load_all

    names = list(names)
    if names:
        records = [get_record(site, n, None) for n in names]
    else:
        records = [r for r in load_all(site.records_dir) if r.status != "removed"]
    reports = []
    for rec in records:
        if rec.status == "removed":
            raise CpkgsError(f"environment {rec.name} was removed; nothing to verify")
        rep = verify_prefix(
            Path(rec.prefix),
            expect_sealed=rec.status != "unsealed",
            name=rec.name,
            platform=rec.platform,
            meta_sha256=rec.meta_sha256,
        )
        reports.append(rep)
    return reports


def unhashed_patched_files(prefix: Path) -> list[str]:
    """Files whose prefix the installer patched without recording the patched hash (py-rattler 0.28 does this for
    binary placeholders). cpkgs hashes them at publish into its own manifest, so verify checks every byte."""
    out = []
    for p in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            data = json.loads(p.read_bytes())
        except (OSError, ValueError):
            continue
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
