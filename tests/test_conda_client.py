"""The test fixture of a real user's own conda (tests/conda_client/build_conda.py) is real conda 26.7.1.

Smoke tests: what a user does with their own Miniforge-like conda works here as uid 65534, offline, against the
local test channel's py-rattler-build packages; and the conda behaviours cpkgs' integration relies on (envs_dirs
order, CEP 22 frozen marker) hold in this version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import NOBODY_UID, UserConda

APP = ("cpkgs-test-app", "cpkgs-test-textprefix")


def create_env(conda: UserConda, name: str = "x") -> Path:
    r = conda.conda("create", "-y", "-n", name, "--offline", "-c", conda.channel_url, "--override-channels", *APP)
    assert r.returncode == 0, r
    return conda.home / ".conda" / "envs" / name


def test_conda_version(user_conda: UserConda) -> None:
    r = user_conda.conda("--version")
    assert r.returncode == 0, r
    assert r.stdout.strip() == "conda 26.7.1"


def test_root_prefix_looks_installed(conda_root: Path) -> None:
    """What a conda installer leaves: the magic history file, the entry points and both shell profiles,
    python as a conda package, and the classic solver configured (libmamba is not installed)."""
    for rel in ("conda-meta/history", "bin/conda", "condabin/conda", "etc/profile.d/conda.sh",
                "etc/profile.d/conda.csh"):
        assert (conda_root / rel).is_file(), rel
    assert list((conda_root / "conda-meta").glob("python-3.*.json"))
    assert (conda_root / "bin" / "conda").read_text().startswith(f"#!{conda_root}/bin/python")
    assert "solver: classic" in (conda_root / ".condarc").read_text()


def test_user_conda_defaults(user_conda: UserConda, root_conda: UserConda, conda_root: Path) -> None:
    """The root prefix is not writable by the user: conda puts the user's envs first in ~/.conda/envs; for root
    (who can write it) the prefix's envs/ comes first. A condarc's envs_dirs go before both."""
    mine = user_conda.home / "my-envs"
    for conda, writable, first in ((user_conda, False, user_conda.home / ".conda" / "envs"),
                                   (root_conda, True, conda_root / "envs")):
        info = conda.conda("info", "--json")
        assert info.returncode == 0, info
        data = json.loads(info.stdout)
        assert data["root_prefix"] == str(conda_root)
        assert data["root_writable"] is writable
        assert data["solver"]["name"] == "classic"
        assert data["envs_dirs"][0] == str(first)
    user_conda.condarc.write_text(f"envs_dirs:\n  - {mine}\n")
    info = user_conda.conda("info", "--json")
    assert info.returncode == 0, info
    data = json.loads(info.stdout)
    assert data["envs_dirs"] == [str(mine), str(user_conda.home / ".conda" / "envs"), str(conda_root / "envs")]


def test_create_and_list_as_user(user_conda: UserConda, conda_root: Path) -> None:
    prefix = create_env(user_conda)
    assert (prefix / "conda-meta" / "history").is_file()
    assert prefix.stat().st_uid == NOBODY_UID
    assert (prefix / "bin" / "cpkgs-test-app").is_file()
    # conda replaced the package's text placeholder with the env's prefix.
    assert str(prefix) in (prefix / "bin" / "cpkgs-test-textprefix").read_text()
    assert any(p.name.startswith("cpkgs-test-app-1.0") for p in user_conda.pkgs.iterdir())
    assert (user_conda.home / ".conda" / "environments.txt").read_text().split() == [str(prefix)]
    r = user_conda.conda("env", "list")
    assert r.returncode == 0, r
    rows = [line.split() for line in r.stdout.splitlines() if line and not line.startswith("#")]
    assert ["x", str(prefix)] in rows
    assert ["base", str(conda_root)] in rows


# One command per line: csh expands the `conda` alias line by line.
ACTIVATE_SCRIPT = (
    'conda activate x\n'
    'echo "prefix=$CONDA_PREFIX env=$CONDA_DEFAULT_ENV"\n'
    'cpkgs-test-app\n'
    'cpkgs-test-textprefix\n'
    'conda deactivate\n'
    'echo "after=$CONDA_SHLVL path=$PATH"\n'
)


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_activate_in_shell(user_conda: UserConda, conda_root: Path, shell: str) -> None:
    """`conda activate` through conda's own shell hook, as a user whose rc file `conda init` wrote."""
    prefix = create_env(user_conda)
    r = user_conda.shell(shell, ACTIVATE_SCRIPT)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0] == f"prefix={prefix} env=x"
    assert lines[1:3] == ["app ok", str(prefix)]
    # `conda shell.bash/zsh hook` activates base (auto_activate); the csh profile that `conda init tcsh` sources
    # does not: deactivating x returns to base, or to no env at all.
    assert lines[3].startswith("after=0 path=" if shell == "tcsh" else "after=1 path=")
    path = lines[3].split("path=", 1)[1].split(":")
    assert str(prefix / "bin") not in path
    assert f"{conda_root}/condabin" in path


def test_frozen_env_refused(user_conda: UserConda) -> None:
    """CEP 22: conda 26.7.1 refuses to change an env holding conda-meta/frozen and shows its message."""
    prefix = create_env(user_conda)
    frozen = prefix / "conda-meta" / "frozen"
    frozen.write_text(json.dumps({"message": "shared env: use cpkgs extend"}))
    os.chown(frozen, NOBODY_UID, NOBODY_UID)
    r = user_conda.conda("install", "-y", "-n", "x", "cpkgs-test-lib=1.1")
    assert r.returncode != 0
    assert "marked as frozen" in r.stderr
    assert "shared env: use cpkgs extend" in r.stderr
    rows = [line.split() for line in user_conda.conda("env", "list").stdout.splitlines()]
    assert ["x", "+", str(prefix)] in rows
