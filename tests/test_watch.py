"""integrity/watch.py on real files: what new-env checks while rattler installs stands for the final tree only as
long as nothing changed since; what changed is found and checked again.

The staged env here is made by hand (a conda-meta record and its files, one of them a hard link to a "cache" inode
the hash memo vouches for, as new-env's second build of a package sees it): the changes a build's later steps could
make are made between the package's check and the final check, which no real build lets a test do.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cpkgs_admin.integrity.checks import hash_items
from cpkgs_admin.integrity.content import path_problem
from cpkgs_admin.integrity.memo import HashMemo
from cpkgs_admin.integrity.owners import Owners
from cpkgs_admin.integrity.watch import Final, StagedCheck, check_final, first_path_problem

DIST = "pkg-1.0-0"
FILES = {"share/pkg/vouched.txt": b"cache inode\n", "share/pkg/copy.txt": b"a copy\n", "bin/tool": b"#!/bin/sh\n"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(files: dict[str, bytes]) -> bytes:
    paths = [{"_path": rel, "path_type": "hardlink", "sha256": _sha(data), "size_in_bytes": len(data)}
             for rel, data in files.items()]
    return json.dumps({"name": "pkg", "paths_data": {"paths": paths}}).encode()


@pytest.fixture
def staged(tmp_path: Path) -> StagedCheck:
    """A staged env with one package checked as the watcher checks it; share/pkg/vouched.txt is a hard link to a
    cache inode the memo remembers (so it is not hashed again), the other files are its own."""
    cache, prefix = tmp_path / "pkgs", tmp_path / "staging"
    (cache / DIST / "share" / "pkg").mkdir(parents=True)
    inode = cache / DIST / "share" / "pkg" / "vouched.txt"
    inode.write_bytes(FILES["share/pkg/vouched.txt"])
    inode.chmod(0o444)
    for rel, data in FILES.items():
        (prefix / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel == "share/pkg/vouched.txt":
            os.link(inode, prefix / rel)
        else:
            (prefix / rel).write_bytes(data)
    (prefix / "bin" / "tool").chmod(0o755)
    (prefix / "conda-meta").mkdir()
    (prefix / "conda-meta" / f"{DIST}.json").write_bytes(_record(FILES))
    st, top = inode.stat(), (cache / DIST).stat()
    memo_dir = cache / ".cpkgs-verified"
    memo_dir.mkdir()
    (memo_dir / f"{DIST}.json").write_text(json.dumps({
        "version": HashMemo.VERSION, "entry": [top.st_ino, top.st_ctime_ns], "hardened": True,
        "files": {"share/pkg/vouched.txt": [st.st_ino, st.st_size, st.st_mtime_ns,
                                            _sha(FILES["share/pkg/vouched.txt"])]}}))
    check = StagedCheck(prefix, HashMemo(memo_dir, cache), Owners(prefix.lstat().st_uid, cache), None)
    check.add(check.check_package(f"{DIST}.json", (prefix / "conda-meta" / f"{DIST}.json").read_bytes()))
    return check


def _final(staged: StagedCheck) -> Final:
    return check_final(staged, {}, lambda items: hash_items(staged.staging, items))


def _problems(fin: Final) -> list[tuple[str, str]]:
    return [(p.kind, p.path) for p in fin.problems]


def test_the_checked_tree_as_it_stands(staged: StagedCheck) -> None:
    """Unchanged since the check: no problem, the memo's inode not hashed, the census of the tree."""
    pkg = staged.packages[f"{DIST}.json"]
    assert [e.rel for e, _st in pkg.hash] == ["share/pkg/copy.txt", "bin/tool"]  # vouched.txt: the memo's
    fin = _final(staged)
    assert fin.problems == []
    tree = [p for p in staged.staging.rglob("*") if not p.is_dir()]
    assert fin.files == len(tree) and fin.size == sum(p.lstat().st_size for p in tree)
    assert fin.executables == ["bin/tool"]


def test_a_vouched_file_replaced_after_its_check_is_checked_again(staged: StagedCheck) -> None:
    """A file put in place of a checked one (a rename over it: another inode under the same name) is lstat-ed and
    hashed again, though the memo vouched for the one checked; the census counts the new one."""
    path = staged.staging / "share" / "pkg" / "vouched.txt"
    other = path.with_name("other")
    other.write_bytes(b"not the cache inode, longer\n")
    os.rename(other, path)
    fin = _final(staged)
    assert _problems(fin) == [("modified", "share/pkg/vouched.txt")]
    tree = [p for p in staged.staging.rglob("*") if not p.is_dir()]
    assert fin.files == len(tree) and fin.size == sum(p.lstat().st_size for p in tree)


def test_files_gone_or_added_after_the_check_are_found(staged: StagedCheck) -> None:
    (staged.staging / "bin" / "tool").unlink()
    (staged.staging / "share" / "pkg" / "planted").write_text("nobody lists me\n")
    fin = _final(staged)
    assert _problems(fin) == [("missing", "bin/tool"), ("unexpected", "share/pkg/planted")]
    assert fin.executables == []


def test_a_record_rewritten_after_its_check_is_checked_again(staged: StagedCheck) -> None:
    """rattler rewrites the records of clobbered paths after every package was linked: the record is read again
    and, changed, its package checked from scratch (here it now says another content for the vouched file)."""
    record = staged.staging / "conda-meta" / f"{DIST}.json"
    tmp = record.with_name("prefix_record_tmp")
    tmp.write_bytes(_record({**FILES, "share/pkg/vouched.txt": b"what the record says now\n"}))
    os.rename(tmp, record)
    assert _final(staged).problems == []  # the check as it was: the old record
    staged.sync_records()
    assert _problems(_final(staged)) == [("modified", "share/pkg/vouched.txt")]


@pytest.mark.parametrize("path", [
    "share/ok.py", "lib/python3.11/site-packages/a..b/x.py", "share/...", "conda-metadata/x", "x/conda-meta",
    "share/x.nfsy", "/abs", "", "share/../../up", "..", "conda-meta/cpkgs/layer", "conda-meta", "a/.nfs0001/x",
    ".nfs123", "bad\x1bname", "bidi\u202ename", "tab\there", "share/x\n",
])
def test_bulk_path_rules_agree_with_path_problem(path: str) -> None:
    """The bulk test of a package's paths refuses exactly what content.path_problem refuses, with its words."""
    problem = path_problem(path)
    assert first_path_problem(["share/fine", path, "bin/fine"]) == ((path, problem) if problem else None)
