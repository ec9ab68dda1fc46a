"""The command-line contract: every command listed, exit codes, one-line errors, names validated first."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cpkgs, tree_hash

CONTRACT = [
    "init", "new-env", "list", "info", "diff", "export", "verify", "seal", "unseal", "retire", "remove", "purge",
    "locks", "write-profiles", "refresh", "pack", "mirror", "link-user", "unlink-user", "doctor", "extend",
]


def test_help_lists_the_whole_contract() -> None:
    r = run_cpkgs("--help")
    assert r.returncode == 0
    listed = {line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(CONTRACT) <= listed
    for opt in ("--root", "-v", "-q"):
        assert opt in r.stdout
    r = run_cpkgs("locks", "--help")
    assert "break" in r.stdout


def test_python_dash_m_and_version() -> None:
    r = run_cpkgs("--version")
    assert r.returncode == 0 and "cpkgs" in r.stdout


def test_usage_error_exit_2() -> None:
    r = run_cpkgs("no-such-command")
    assert r.returncode == 2
    r = run_cpkgs("new-env")
    assert r.returncode == 2 and "Missing argument" in r.stderr


BAD_NAMES = [
    "../etc", "a/b", "with space", "new\nline", "x;rm -rf", "x$(id)", "x`id`", "-dash1", ".hidden1",
    "base", "root", "noversion", "", "a" * 65 + "1", "x|y1", "x&1", "ünïcode1", "x>1",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_rejected_before_any_file(site: Path, name: str) -> None:
    before = tree_hash(site)
    r = run_cpkgs("new-env", "--", name, "python", root=site)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and "environment name" in r.stderr
    assert "Traceback" not in r.stderr
    assert tree_hash(site) == before


def test_internal_errors_have_no_traceback_unless_verbose(tmp_path: Path) -> None:
    root = tmp_path / "x"
    assert run_cpkgs("init", root=root).returncode == 0
    (root / ".cpkgs" / "records" / "linux-64" / "broken-1.0.json").write_text("{not json")
    r = run_cpkgs("info", "broken-1.0", root=root)
    assert r.returncode == 1 and "broken-1.0.json" in r.stderr and "Traceback" not in r.stderr
    r = run_cpkgs("-v", "info", "broken-1.0", root=root)
    assert "Traceback" in r.stderr


def test_shell_completion_script_and_bare_command() -> None:
    r = run_cpkgs(env={"_CPKGS_COMPLETE": "bash_source"})
    assert r.returncode == 0 and "_cpkgs_completion()" in r.stdout, r
    r = run_cpkgs()
    assert r.returncode == 2 and r.stderr.startswith("Usage: cpkgs [OPTIONS] COMMAND"), r
