"""The pip part's files as verify expects them: every file a pip distribution's dist-info RECORD lists (sha256,
size), and each RECORD at the hash `conda-meta/cpkgs/pypi.json` kept at publish. That manifest lies in cpkgs' own
conda-meta dir, which the record's meta digest covers: a RECORD rewritten to agree with a changed file is caught."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import posixpath
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError

PIP_MANIFEST = "conda-meta/cpkgs/pypi.json"
PIP_LOCK = "conda-meta/cpkgs/pip-lock.txt"  # the pip part's pins (`cpkgs export NAME --format pip`)
PIP_DIST_PREFIX = "pypi:"


def read_record(path: Path) -> list[list[str]]:
    """RECORD rows [path, hash, size] (csv, as pip and uv write it)."""
    text = path.read_text(encoding="utf-8")
    return [row for row in csv.reader(io.StringIO(text)) if row]


def record_hex(value: str) -> str | None:
    """The sha256 hex digest of a RECORD hash field, None when it is empty or another algorithm."""
    algo, _, digest = value.partition("=")
    if algo != "sha256" or not digest:
        return None
    try:
        return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    except ValueError:
        return None


def read_pip_manifest(prefix: Path) -> dict[str, dict[str, str]] | None:
    """PIP_MANIFEST of PREFIX: dist-info dir -> {name, version, record_sha256}; None when the env has no pip part."""
    path = prefix / PIP_MANIFEST
    try:
        data: Any = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CpkgsError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CpkgsError(f"{path}: unreadable (not a mapping of dist-info directories)")
    return data


def expected_pip_files(prefix: Path, manifest: dict[str, dict[str, str]], expected_cls: Any) -> dict[str, Any]:
    """rel -> EXPECTED_CLS(rel, sha256, size, None, False, 'pypi:NAME-VERSION') for the pip part; a RECORD that
    cannot be read expects nothing more (its own entry reports it)."""
    out: dict[str, Any] = {}
    for dist_info, info in sorted(manifest.items()):
        tag = f"{PIP_DIST_PREFIX}{info.get('name', '?')}-{info.get('version', '?')}"
        site = posixpath.dirname(dist_info)
        record_rel = f"{dist_info}/RECORD"
        try:
            rows = read_record(prefix / record_rel)
        except (OSError, UnicodeDecodeError):
            rows = []
        for row in rows:
            rel = posixpath.normpath(posixpath.join(site, row[0]))
            if rel == ".." or rel.startswith(("../", "/")):
                continue  # nothing outside the env is the env's (the install refused such wheels)
            sha = record_hex(row[1]) if len(row) > 1 else None
            size = int(row[2]) if len(row) > 2 and row[2].isdigit() else None
            out[rel] = expected_cls(rel, sha, size, None, False, tag)
        out[record_rel] = expected_cls(record_rel, info.get("record_sha256"), None, None, False, tag)
    return out


def pip_manifest(prefix: Path, dist_infos: list[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    """PIP_MANIFEST's content for the pip part just installed: dist-info dir -> {name, version, record sha256};
    DIST_INFOS: (canonical name, version, prefix-relative dist-info dir) of each package."""
    return {d: {"name": n, "version": v, "record_sha256": hashlib.sha256((prefix / d / "RECORD").read_bytes())
                .hexdigest()} for n, v, d in sorted(dist_infos, key=lambda t: t[2])}
