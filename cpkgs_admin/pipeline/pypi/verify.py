"""Step 6 for the pip part: every file a pip-installed distribution's RECORD lists, checked like a conda file.

`pip_expected_files` gives verify.Expected entries (verify.check_integrity can merge them with conda-meta's, so its
"unexpected file" check accepts the pip part's files); `check_pip_integrity` runs the check on its own. A RECORD
cannot vouch for itself: at publish the pipeline writes `conda-meta/cpkgs/pypi.json` (`pip_manifest`: every pip
distribution's dist-info dir and its RECORD's sha256), which lies inside the sealed metadata verify.meta_digest
covers; `expected_from_manifest` then expects each RECORD at that hash and every file at its RECORD's.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from pathlib import Path

from cpkgs_admin.integrity.checks import Problem
from cpkgs_admin.integrity.manifest import Expected, sha256_file
from cpkgs_admin.integrity.pipfiles import PIP_DIST_PREFIX, expected_pip_files, read_record, record_hex
from cpkgs_admin.pipeline.pypi.inventory import EnvInventory


def pip_expected_files(prefix: Path, inventory: EnvInventory | None = None) -> dict[str, Expected]:
    """prefix-relative path -> Expected, for the files of every distribution no conda package installed. Entries
    name their distribution as 'pypi:<name>-<version>' (never a conda package cache directory)."""
    inv = inventory or EnvInventory(prefix)
    out: dict[str, Expected] = {}
    for dist in inv.pip_distributions():
        if not dist.metadata_dir.endswith(".dist-info"):
            continue
        record = prefix / dist.metadata_dir / "RECORD"
        tag = f"{PIP_DIST_PREFIX}{dist.name}-{dist.version}"
        site = posixpath.dirname(dist.metadata_dir)
        try:
            rows = read_record(record)
        except (OSError, UnicodeDecodeError):
            out[f"{dist.metadata_dir}/RECORD"] = Expected(f"{dist.metadata_dir}/RECORD", None, None, None, False, tag)
            continue
        for row in rows:
            rel = posixpath.normpath(posixpath.join(site, row[0]))
            sha = record_hex(row[1]) if len(row) > 1 else None
            size = int(row[2]) if len(row) > 2 and row[2].isdigit() else None
            out[rel] = Expected(rel, sha, size, None, False, tag)
    return out


def check_pip_integrity(prefix: Path, inventory: EnvInventory | None = None) -> list[Problem]:
    """The pip part's files against their RECORDs (missing, changed, replaced by a symlink, outside the env)."""
    problems: list[Problem] = []
    for rel, exp in sorted(pip_expected_files(prefix, inventory).items()):
        if rel.startswith("../") or rel == "..":
            problems.append(Problem("outside", rel, f"{exp.dist} lists a file outside the env"))
            continue
        path = prefix / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            problems.append(Problem("missing", rel, f"listed in the RECORD of {exp.dist} but not on disk"))
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem("replaced", rel, "not a regular file"))
            continue
        if exp.size is not None and st.st_size != exp.size:
            problems.append(Problem("modified", rel, f"size {st.st_size}, expected {exp.size}"))
            continue
        if exp.sha256 is not None:
            digest = sha256_file(str(path))
            if digest != exp.sha256:
                problems.append(Problem("modified", rel, f"sha256 {digest[:16]}…, expected {exp.sha256[:16]}…"))
    return problems


def records_digest(prefix: Path, inventory: EnvInventory | None = None) -> str:
    """One hash over the RECORD files of the pip part (they hold the expected hashes, so they must not change
    unnoticed: keep it in the env record, as verify.meta_digest for conda-meta)."""
    inv = inventory or EnvInventory(prefix)
    h = hashlib.sha256()
    for dist in sorted(inv.pip_distributions(), key=lambda d: d.metadata_dir):
        record = prefix / dist.metadata_dir / "RECORD"
        digest = sha256_file(str(record)) if record.is_file() else "-"
        h.update(f"{dist.metadata_dir}/RECORD".encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()



def expected_from_manifest(prefix: Path, manifest: dict[str, dict[str, str]]) -> dict[str, Expected]:
    """What the pip part must hold (integrity.pipfiles, which verify.expected_files merges)."""
    return expected_pip_files(prefix, manifest, Expected)
