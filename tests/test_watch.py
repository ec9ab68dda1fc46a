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
from cpkgs_admin.integrity.watch import Final, InstallWatcher, StagedCheck, check_final, first_path_problem
from cpkgs_admin.pipeline.post import _final_check

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


def _rename_into(path: Path, data: bytes) -> None:
    """As rattler writes a record: a temp file renamed over it."""
    tmp = path.with_name("prefix_record_tmp")
    tmp.write_bytes(data)
    os.rename(tmp, path)


def test_the_checks_stand_only_for_the_records_they_read(staged: StagedCheck) -> None:
    """rattler rewrites the records of clobbered paths after every package was linked: a record rewritten since its
    check (here to say another content for the vouched file) means the checks made during the install no longer
    stand, and the env is checked in full (pipeline.post)."""
    record = staged.staging / "conda-meta" / f"{DIST}.json"
    assert staged.stands()
    _rename_into(record, _record({**FILES, "share/pkg/vouched.txt": b"what the record says now\n"}))
    assert not staged.stands()
    _rename_into(record, staged.packages[f"{DIST}.json"].raw)
    assert staged.stands()


@pytest.mark.parametrize("change", ["new", "gone", "unreadable", "not a record", "one path twice"])
def test_records_not_as_checked_mean_a_full_check(staged: StagedCheck, change: str) -> None:
    """A record that appeared after the watcher's last look, one gone, one the watcher could not parse, one that is
    no package record, or two packages listing one path (which of two expectations counts is the full check's
    rule): the install's checks do not stand."""
    meta = staged.staging / "conda-meta"
    other = meta / "other-1.0-0.json"
    if change == "new":
        other.write_bytes(_record({"share/other.txt": b"x\n"}))
    elif change == "gone":
        (meta / f"{DIST}.json").unlink()
    elif change == "unreadable":
        other.write_bytes(b'{"paths_data": ')
        with pytest.raises(ValueError):
            staged.check_package(other.name, other.read_bytes())  # what the watcher skips, to read again later
    else:
        other.write_bytes(b"[1, 2]" if change == "not a record" else _record({"bin/tool": FILES["bin/tool"]}))
        staged.add(staged.check_package(other.name, other.read_bytes()))
    assert not staged.stands()


def test_a_file_not_there_at_its_check_but_there_at_the_end_is_checked_then(staged: StagedCheck) -> None:
    """Seen missing by the watcher, put in place later: checked at the end against its record (not "missing")."""
    tool = staged.staging / "bin" / "tool"
    tool.unlink()
    record = staged.staging / "conda-meta" / f"{DIST}.json"
    staged = StagedCheck(staged.staging, staged.memo, staged.owners, None)
    staged.add(staged.check_package(record.name, record.read_bytes()))
    assert _problems(_final(staged)) == [("missing", "bin/tool")]
    tool.write_bytes(FILES["bin/tool"])
    assert _final(staged).problems == []
    tool.write_bytes(b"#!/bin/sh\nrm -rf ~\n")
    assert _problems(_final(staged)) == [("modified", "bin/tool")]


def test_a_defect_of_the_final_check_means_the_full_check(staged: StagedCheck) -> None:
    """The shortcut's safety net: whatever goes wrong in the final check, post falls back to the full check of the
    whole tree (here what the watcher lstat-ed was lost, and a symlink of the package cannot be looked up)."""
    link = staged.staging / "share" / "pkg" / "link"
    link.symlink_to("vouched.txt")
    record = staged.staging / "conda-meta" / f"{DIST}.json"
    data = json.loads(record.read_bytes())
    data["paths_data"]["paths"].append({"_path": "share/pkg/link", "path_type": "softlink"})
    _rename_into(record, json.dumps(data).encode())
    staged.add(staged.check_package(record.name, record.read_bytes()))
    assert _final_check(staged, {}, None, ran_code=False) is not None
    staged.by_dir.clear()
    assert _final_check(staged, {}, None, ran_code=False) is None


# ------------------------------------------------------------------------------------------------ the watcher thread


def _write_package(prefix: Path, dist: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (prefix / rel).parent.mkdir(parents=True, exist_ok=True)
        (prefix / rel).write_bytes(data)
    _rename_into(prefix / "conda-meta" / f"{dist}.json", _record(files))


def _empty_staging(tmp_path: Path) -> StagedCheck:
    prefix = tmp_path / "staging"
    (prefix / "conda-meta").mkdir(parents=True)
    return StagedCheck(prefix, None, Owners(prefix.lstat().st_uid, None), None)


def test_the_watcher_checks_each_record_as_it_appears(tmp_path: Path) -> None:
    """Records written while the watcher runs (as rattler writes them, by rename) are checked, each once, the last
    ones after the install returned; what it found is what the final check reports."""
    staged = _empty_staging(tmp_path)
    with InstallWatcher(staged) as watcher:
        _write_package(staged.staging, "a-1.0-0", {"share/a.txt": b"a\n"})
        _write_package(staged.staging, "b-1.0-0", {"share/b.txt": b"b\n", "bin/b": b"b\n"})
    assert watcher.usable and watcher.error is None
    assert sorted(staged.packages) == ["a-1.0-0.json", "b-1.0-0.json"]
    assert staged.packages["b-1.0-0.json"].files == ["share/b.txt", "bin/b"]
    assert staged.stands() and _final(staged).problems == []
    (staged.staging / "share" / "a.txt").write_bytes(b"A\n")  # in place, same inode and size: the hash finds it
    assert _problems(_final(staged)) == [("modified", "share/a.txt")]


def test_a_package_with_a_post_link_script_stops_the_watcher(tmp_path: Path) -> None:
    """A post-link script may change any file in place after the install: the watcher's checks would not stand, so
    it stops, and the env is checked in full (stage: job.staged None)."""
    staged = _empty_staging(tmp_path)
    with InstallWatcher(staged) as watcher:
        _write_package(staged.staging, "s-1.0-0", {"bin/.s-post-link.sh": b"#!/bin/sh\n"})
        _write_package(staged.staging, "t-1.0-0", {"share/t.txt": b"t\n"})
    assert watcher.error is None and not watcher.usable


def test_an_error_in_the_watcher_means_the_full_check(tmp_path: Path) -> None:
    """Anything going wrong in the watcher thread (here conda-meta/ is not a directory it can list): not usable,
    the env is checked in full after the install."""
    staged = _empty_staging(tmp_path)
    (staged.staging / "conda-meta").rmdir()
    (staged.staging / "conda-meta").write_text("not a directory\n")
    with InstallWatcher(staged) as watcher:
        pass
    assert isinstance(watcher.error, NotADirectoryError) and not watcher.usable


@pytest.mark.parametrize("path", [
    "share/ok.py", "lib/python3.11/site-packages/a..b/x.py", "share/...", "conda-metadata/x", "x/conda-meta",
    "share/x.nfsy", "/abs", "", "share/../../up", "..", "conda-meta/cpkgs/layer", "conda-meta", "a/.nfs0001/x",
    ".nfs123", "bad\x1bname", "bidi\u202ename", "tab\there", "share/x\n",
])
def test_bulk_path_rules_agree_with_path_problem(path: str) -> None:
    """The bulk test of a package's paths refuses exactly what content.path_problem refuses, with its words."""
    problem = path_problem(path)
    assert first_path_problem(["share/fine", path, "bin/fine"]) == ((path, problem) if problem else None)


# ------------------------------------------------------------------------------------------------ the pip part


def _pip_part(prefix: Path) -> dict[str, dict[str, str]]:
    """A pip distribution installed after the conda part, as the pip step leaves it (a module, its byte code and a
    console script with RECORD rows, the RECORD's own row empty), and its PIP_MANIFEST written (post does)."""
    from cpkgs_admin.integrity.pipfiles import PIP_MANIFEST, pip_manifest
    from cpkgs_admin.pipeline.pypi.wheelfile import format_record, record_hash

    site = prefix / "lib" / "python3.11" / "site-packages"
    files = {"tiny.py": b"X = 1\n", "__pycache__/tiny.cpython-311.pyc": b"\x00byte code\n",
             "../../../bin/tiny": b"#!/final/bin/python\nimport tiny\n", "tiny-1.0.dist-info/METADATA": b"Name: tiny\n"}
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    rows = [[rel, record_hash(data), str(len(data))] for rel, data in files.items()]
    (site / "tiny-1.0.dist-info" / "RECORD").write_text(format_record([*rows, ["tiny-1.0.dist-info/RECORD", "", ""]]))
    dists = [("tiny", "1.0", "lib/python3.11/site-packages/tiny-1.0.dist-info")]
    manifest = pip_manifest(prefix, dists)
    (prefix / PIP_MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    (prefix / PIP_MANIFEST).write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize("change", ["none", "tampered", "planted", "gone", "record"])
def test_the_pip_part_is_checked_at_the_end_as_verify_expects_it(staged: StagedCheck, change: str) -> None:
    """The pip step installs after the conda part was checked: the final check expects every file of its RECORDs
    (byte code and scripts included) and each RECORD at the hash PIP_MANIFEST keeps, all hashed, and finds what the
    full check finds: nothing unexpected in a clean part, and a changed, extra or missing file, or a RECORD that is
    not the one the manifest hashed."""
    from cpkgs_admin.integrity.checks import check_integrity

    manifest = _pip_part(staged.staging)
    site = staged.staging / "lib" / "python3.11" / "site-packages"
    if change == "tampered":
        (site / "tiny.py").write_bytes(b"X = 2\n")  # same size: only its hash tells
    elif change == "planted":
        (site / "__pycache__" / "planted.cpython-311.pyc").write_bytes(b"nobody lists me\n")
    elif change == "gone":
        (staged.staging / "bin" / "tiny").unlink()
    elif change == "record":
        with open(site / "tiny-1.0.dist-info" / "RECORD", "a") as fh:
            fh.write("extra.py,,\n")
    fin = _final_check(staged, {}, manifest, ran_code=True)
    assert fin is not None
    expected = {"none": [], "tampered": [("modified", "lib/python3.11/site-packages/tiny.py")],
                "planted": [("unexpected", "lib/python3.11/site-packages/__pycache__/planted.cpython-311.pyc")],
                "gone": [("missing", "bin/tiny")],
                "record": [("missing", "lib/python3.11/site-packages/extra.py"),
                           ("modified", "lib/python3.11/site-packages/tiny-1.0.dist-info/RECORD")]}[change]
    assert _problems(fin) == expected
    full = check_integrity(staged.staging, meta=staged.meta(), owners=staged.owners)[0]
    assert [(p.kind, p.path) for p in full] == expected  # the same as the full check's
    tree = [p for p in staged.staging.rglob("*") if not p.is_dir()]
    assert fin.files == len(tree) and fin.size == sum(p.lstat().st_size for p in tree)
    assert fin.executables == ["bin/tool"]


def test_a_checked_file_written_in_place_after_its_check_is_found_when_code_ran_since(staged: StagedCheck) -> None:
    """The pip step runs code that could write anywhere (the env's python with its .pth files, an sdist's build
    backend). A package file written in place keeps its inode, which is all the listing compares when only the
    build's own writers ran; after the pip step every checked entry is lstat-ed again, and one changed since (here
    the memo's cache inode, vouched for without hashing) is hashed again against its record."""
    path = staged.staging / "share" / "pkg" / "vouched.txt"
    ino = path.stat().st_ino
    with open(path, "ab") as fh:
        fh.write(b"appended by a build backend\n")
    assert path.stat().st_ino == ino
    fin = _final_check(staged, {}, None, ran_code=True)
    assert fin is not None and _problems(fin) == [("modified", "share/pkg/vouched.txt")]
    tree = [p for p in staged.staging.rglob("*") if not p.is_dir()]
    assert fin.files == len(tree) and fin.size == sum(p.lstat().st_size for p in tree)
    os.chmod(path, 0o4755)  # a mode changed in place: the seal sees the mode it has now
    fin = _final_check(staged, {}, None, ran_code=True)
    assert fin is not None and fin.seal["share/pkg/vouched.txt"].st_mode & 0o7777 == 0o4755
