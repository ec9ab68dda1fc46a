"""`cpkgs init`: the tree, idempotence, config validation, permissions seen by an ordinary user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import ENVS, as_nobody, make_site, run_cpkgs, tree_hash, world_traversable
from cpkgs_admin.site.config import load_config_file


def test_init_builds_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "x"
    r = run_cpkgs("init", "-c", "https://conda.example.org/site", root=root)
    assert r.returncode == 0, r
    for rel in (
        "cpkgs.yaml",
        "etc/profile.d/conda.sh",
        "etc/profile.d/conda.csh",
        "anaconda3_linux/envs",
        "anaconda3_macOS/envs",
        "specs",
        "modulefiles",
        "share/jupyter/kernels",
        ".cpkgs/records",
        ".cpkgs/locks",
        ".cpkgs/trash",
    ):
        assert (root / rel).exists(), rel
    assert "created cpkgs.yaml" in r.stdout
    text = (root / "cpkgs.yaml").read_text()
    assert "schema: 1" in text and "https://conda.example.org/site" in text


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "x"
    assert run_cpkgs("init", root=root).returncode == 0
    before = tree_hash(root)
    r = run_cpkgs("init", root=root)
    assert r.returncode == 0
    assert "nothing changed" in r.stdout
    assert tree_hash(root) == before


def test_admins_comments_in_cpkgs_yaml_survive_init(tmp_path: Path) -> None:
    """init on an existing site leaves cpkgs.yaml alone unless an option changes it, and then changes only that
    key: the admin's comments and layout stay."""
    root = tmp_path / "x"
    assert run_cpkgs("init", root=root).returncode == 0
    cfg = root / "cpkgs.yaml"
    text = cfg.read_text().replace("trash_grace: 7d", "trash_grace: 14d  # site policy, ticket 4711")
    text += "# reviewed by the storage team\n"
    cfg.write_text(text)
    r = run_cpkgs("init", root=root)
    assert r.returncode == 0 and "nothing changed" in r.stdout, r
    assert cfg.read_text() == text
    r = run_cpkgs("init", "-c", "file:///srv/mirror/conda-forge", root=root)
    assert r.returncode == 0, r
    after = cfg.read_text()
    assert "trash_grace: 14d  # site policy, ticket 4711" in after and "# reviewed by the storage team" in after
    assert "file:///srv/mirror/conda-forge" in after
    assert run_cpkgs("init", "--json", root=root).json()["changed"] is False
    # Channel names YAML 1.1 reads as booleans or numbers are written quoted: the site keeps loading.
    r = run_cpkgs("init", "-c", "yes", "-c", "off", "-c", "1_000", root=root)
    assert r.returncode == 0, r
    assert "# reviewed by the storage team" in cfg.read_text()
    r = run_cpkgs("list", root=root)
    assert r.returncode == 0, r
    assert load_config_file(cfg).channels == ("yes", "off", "1_000")


def test_changed_option_updates_config_and_reports(tmp_path: Path) -> None:
    root = tmp_path / "x"
    assert run_cpkgs("init", root=root).returncode == 0
    r = run_cpkgs("init", "--platform", "linux-64", "--platform", "osx-64", root=root)
    assert r.returncode == 0, r
    assert "platforms:" in r.stdout and "osx-64" in r.stdout
    assert (root / "anaconda3_macOS_x86_64" / "envs").is_dir()
    r = run_cpkgs("init", "--json", root=root)
    assert r.json()["changed"] is False


def test_platform_adds_and_never_drops_a_served_platform(tmp_path: Path) -> None:
    root = tmp_path / "x"
    assert run_cpkgs("init", root=root).returncode == 0
    r = run_cpkgs("init", "--platform", "linux-aarch64", root=root)
    assert r.returncode == 0, r
    import yaml

    assert yaml.safe_load((root / "cpkgs.yaml").read_text())["platforms"] == ["linux-64", "osx-arm64", "linux-aarch64"]
    fresh = tmp_path / "y"
    assert run_cpkgs("init", "--platform", "linux-64", root=fresh).returncode == 0
    assert yaml.safe_load((fresh / "cpkgs.yaml").read_text())["platforms"] == ["linux-64"]


def test_unrenderable_root_is_refused_before_any_file(tmp_path: Path) -> None:
    root = tmp_path / "it's"
    r = run_cpkgs("init", root=root)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not root.exists()


def test_admin_group_makes_tree_group_writable(tmp_path: Path) -> None:
    root = tmp_path / "x"
    r = run_cpkgs("init", "--admin-group", "staff", root=root)
    assert r.returncode == 0, r
    import grp

    gid = grp.getgrnam("staff").gr_gid
    st = (root / ENVS).stat()
    assert st.st_gid == gid
    assert stat.S_IMODE(st.st_mode) == 0o2775
    assert stat.S_IMODE((root / "cpkgs.yaml").stat().st_mode) == 0o664


def test_unknown_admin_group_is_refused_before_writing(tmp_path: Path) -> None:
    root = tmp_path / "x"
    r = run_cpkgs("init", "--admin-group", "no-such-group-xyz", root=root)
    assert r.returncode == 1
    assert "no-such-group-xyz" in r.stderr and r.stderr.count("\n") == 1
    assert not (root / "cpkgs.yaml").exists()


def test_refuses_non_empty_foreign_root(tmp_path: Path) -> None:
    root = tmp_path / "x"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    r = run_cpkgs("init", root=root)
    assert r.returncode == 1
    assert "not a cpkgs site" in r.stderr and "--force" in r.stderr
    assert sorted(os.listdir(root)) == ["precious.txt"]
    assert run_cpkgs("init", "--force", root=root).returncode == 0
    assert (root / "precious.txt").read_text() == "keep me"


BAD_CONFIGS = [
    ("unknown: 1\n", "key 'unknown' is unknown"),
    ("channels: notalist\n", "key 'channels' must be list"),
    ("channels: ['ftp://x/y']\n", "unsupported scheme 'ftp'"),
    ("channels: ['file://relative/path']\n", "without an absolute path"),
    ("channels: ['has space']\n", "neither a URL nor a channel name"),
    ("lease_seconds: -1\n", "key 'lease_seconds' must be between 1 and 86400"),
    ("lease_seconds: .nan\n", "key 'lease_seconds' must be between 1 and 86400"),
    ("lock_timeout: 100000000000\n", "key 'lock_timeout' must be between 0 and 604800"),
    ("schema: 99\n", "key 'schema' is 99"),
    ("trash_grace: soon\n", "trash_grace"),
    ("platforms: [linux-128]\n", "platforms[0]"),
    ("admin_group: 5\n", "key 'admin_group' must be str or null"),
    ("installations: {linux-64: modulefiles}\n", "is a directory of the site itself"),
    ("channels: [\n", "invalid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("trash_grace: 7d\ntrash_grace: 1d\n", "line 2 invalid YAML: duplicate key 'trash_grace'"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS)
def test_bad_config_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    root = tmp_path / "x"
    assert run_cpkgs("init", root=root).returncode == 0
    (root / "cpkgs.yaml").write_text(text)
    before = tree_hash(root)
    for args in (("list",), ("init",), ("locks",)):
        r = run_cpkgs(*args, root=root)
        assert r.returncode == 1, (args, r)
        assert r.stderr.count("\n") == 1, r.stderr
        assert "cpkgs.yaml" in r.stderr and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert tree_hash(root) == before


def test_missing_root_is_one_clear_line(tmp_path: Path) -> None:
    r = run_cpkgs("list", root=tmp_path / "not-mounted")
    assert r.returncode == 1
    assert "does not exist (is the drive mounted?" in r.stderr and r.stderr.count("\n") == 1
    r = run_cpkgs("list", env={"CPKGS_ROOT": str(tmp_path / "nope")})
    assert str(tmp_path / "nope") in r.stderr


def test_ordinary_user_reads_but_cannot_write(tmp_path: Path) -> None:
    root = make_site(tmp_path / "x", None)
    world_traversable(root)
    assert as_nobody(["cat", str(root / "cpkgs.yaml")]).returncode == 0
    assert as_nobody(["ls", str(root / ENVS)]).returncode == 0
    assert as_nobody(["sh", "-c", f". {root}/etc/profile.d/conda.sh"]).returncode == 0
    for target in (root / "new-file", root / ENVS / "x", root / ".cpkgs" / "locks" / "x"):
        r = as_nobody(["touch", str(target)])
        assert r.returncode != 0 and not target.exists()
    assert as_nobody(["rm", "-f", str(root / "cpkgs.yaml")]).returncode != 0
    assert (root / "cpkgs.yaml").exists()
    # cpkgs itself, as that user: reading works, changing says why it cannot.
    r = run_cpkgs("list", root=root, user=True)
    assert r.returncode == 0, r
    r = run_cpkgs("init", "-c", "file:///tmp", root=root, user=True)
    assert r.returncode == 1 and "permission denied" in r.stderr and "Traceback" not in r.stderr


def test_profiles_source_cleanly_in_bash_and_tcsh(tmp_path: Path) -> None:
    import subprocess

    root = make_site(tmp_path / "x", None)
    r = subprocess.run(["bash", "-c", f"set -eu; . {root}/etc/profile.d/conda.sh; echo ok"], capture_output=True, text=True)
    assert r.stdout.strip().endswith("ok"), r
    r = subprocess.run(["tcsh", "-c", f"source {root}/etc/profile.d/conda.csh; echo ok"], capture_output=True, text=True)
    assert r.stdout.strip().endswith("ok"), r
