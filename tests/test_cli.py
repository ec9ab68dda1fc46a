"""The command-line contract: every command listed, exit codes, one-line errors, names validated first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cpkgs_env, run_cpkgs, tree_hash

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



def test_help_lists_each_command_as_its_own_help_says_without_importing_it() -> None:
    """`cpkgs --help` shows each command's summary from cli.SUMMARIES, importing no command module (they pull in
    the pip machinery, the catalog, conda-pack...: 5 s of `--help` in a TCG guest over NFS); each summary is the
    first sentence of that command's own help, so the listing is what click would print with them all imported."""
    import click

    from cpkgs_admin.cli import COMMANDS, SUMMARIES, cli

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cpkgs_admin", "--help"], capture_output=True,
                          text=True, env=cpkgs_env(None), cwd=str(REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert {f"cpkgs_admin.cli.{m.split(':')[0]}" for m in COMMANDS.values()} & imported == set()
    ctx = click.Context(cli)
    assert set(SUMMARIES) == set(COMMANDS)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None and cmd.get_short_help_str(10**6) == SUMMARIES[name], name
        shown = [line.split(None, 1)[1] for line in proc.stdout.splitlines() if line.split(None, 1)[:1] == [name]]
        assert len(shown) == 1 and SUMMARIES[name].startswith(shown[0].removesuffix("...")), (name, shown)

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
