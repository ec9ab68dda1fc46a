"""What an env must hold, as its packages' conda-meta records and cpkgs' own manifests say (SITE_MANIFEST for the
files cpkgs writes into an env, EXECUTABLES_LIST for the modes rattler does not record), and the hash they are
checked with."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.integrity.pipfiles import expected_pip_files, read_pip_manifest
from cpkgs_admin.integrity.tree import EXEC_BITS

# Written by cpkgs after install (post-process) into conda-meta/cpkgs/, a directory conda and rattler ignore
# (they read conda-meta/*.json only); not part of any package, checked against our own manifest.
SITE_MANIFEST = "conda-meta/cpkgs/site-files.json"


EXECUTABLES_LIST = "conda-meta/cpkgs/executables.json"
# The env's record as it was published: a build killed after the rename restores it (pipeline.leftovers), and an
# admin can copy it back over a damaged record. Not hashed into meta_digest (the digest is in it).
EMBEDDED_RECORD = "conda-meta/cpkgs/record.json"


_BUF = 1 << 20


_local = threading.local()


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


class Expected(NamedTuple):
    """What one path of an env must be (a tuple: envs have tens of thousands of them)."""

    rel: str
    sha256: str | None
    size: int | None
    executable: bool | None
    link: bool = False  # the package ships a symlink here (anything else must be a regular file)
    dist: str = ""  # the package (its conda-meta record's name) the file belongs to; "" for cpkgs' own files


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
    pip = read_pip_manifest(prefix)
    if pip is not None:
        out.update(expected_pip_files(prefix, pip, Expected))
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
        for p in sorted((meta_dir / "cpkgs").glob("*")) if p.name != Path(EMBEDDED_RECORD).name
    ]
    for rel, digest in digests:
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def package_executables(prefix: Path) -> set[str] | None:
    """Files that were executable when the env was published (rattler's conda-meta records no modes)."""
    try:
        return set(json.loads((prefix / EXECUTABLES_LIST).read_bytes()))
    except (OSError, ValueError, TypeError):
        return None
