"""`cpkgs pack NAME -o FILE`: real conda-pack on a sealed, rattler-installed env; unpacked elsewhere as a plain user."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from conftest import as_nobody, run_cpkgs, world_traversable

CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}


def nobody_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 65534, 65534)
    world_traversable(path)
    return path


def test_pack_unpack_elsewhere_relocates_text_and_binary_prefixes(built_site: Path, tmp_path: Path) -> None:
    work = nobody_dir(tmp_path / "laptop")
    archive = work / "demo-1.0.tar.gz"
    # Packing needs read access only: an ordinary user can do it.
    r = run_cpkgs("pack", "demo-1.0", "-o", str(archive), root=built_site, user=True)
    assert r.returncode == 0, r
    assert "conda-unpack" in r.stdout
    assert archive.stat().st_uid == 65534 and archive.stat().st_mode & 0o444 == 0o444
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
    names = {m.name for m in members}
    assert {"bin/python3.11", "bin/conda-unpack", "bin/cpkgs-test-textprefix", "conda-meta/cpkgs/record.json"} <= names
    # The env is sealed (0444/0555) but conda-unpack rewrites files in place: every member is owner-writable.
    assert all(m.mode & 0o200 for m in members if m.isfile() or m.isdir())

    new = work / "somewhere" / "else"
    steps = f"mkdir -p {new} && tar -xf {archive} -C {new} && {new}/bin/python {new}/bin/conda-unpack"
    out = as_nobody(["sh", "-c", steps], env=CLEAN_ENV)
    assert out.returncode == 0, out.stderr
    for prog in ("cpkgs-test-textprefix", "cpkgs-test-binprefix"):
        res = as_nobody([str(new / "bin" / prog)], env=CLEAN_ENV)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == str(new), prog
    res = as_nobody([str(new / "bin" / "python"), "-c", "import sys; print(sys.prefix)"], env=CLEAN_ENV)
    assert res.stdout.strip() == str(new)
    # conda's own way works too: activate, then the programs are on PATH and run from the new place.
    res = as_nobody(["bash", "-c", f". {new}/bin/activate && cpkgs-test-textprefix && python -c 'import sys; print(sys.prefix)'"],
                    env=CLEAN_ENV)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(new), str(new)]


@pytest.mark.parametrize(
    ("name", "out_name", "words"),
    [
        ("tools-1.0", "t.tar.gz", ["tools-1.0", "no python"]),
        ("nope-1.0", "n.tar.gz", ["nope-1.0"]),
        ("demo-1.0", "d.zip", ["d.zip", "tar"]),
        ("demo-1.0", "exists.tar.gz", ["exists.tar.gz", "already exists"]),
    ],
)
def test_pack_bad_input_is_one_line(built_site: Path, tmp_path: Path, name: str, out_name: str, words: list[str]) -> None:
    (tmp_path / "exists.tar.gz").write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_cpkgs("pack", name, "-o", str(tmp_path / out_name), root=built_site)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("cpkgs: "), r
    for w in words:
        assert w in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "exists.tar.gz").read_text() == "keep me"


def test_pack_into_unwritable_dir_is_one_line(built_site: Path, tmp_path: Path) -> None:
    locked = tmp_path / "root-owned"
    locked.mkdir(mode=0o755)
    world_traversable(locked)
    r = run_cpkgs("pack", "demo-1.0", "-o", str(locked / "d.tar.gz"), root=built_site, user=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not writable" in r.stderr, r
    assert list(locked.iterdir()) == []
