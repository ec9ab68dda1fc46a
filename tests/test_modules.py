"""Modulefiles under real Lmod (bash sourcing Lmod's init): the Lua files and the Tcl variant."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import ENVS, run_cpkgs

LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")
TREES = ["modulefiles", "modulefiles-tcl"]

pytestmark = pytest.mark.skipif(not LMOD_INIT.is_file(), reason="Lmod is not installed (make sysdeps installs it)")


def lmod(root: Path, tree: str, script: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "MODULEPATH": str(root / tree),
        "LANG": "C",
        "TERM": "dumb",
        "CONDA_PREFIX": "/before/prefix",  # what `module unload` must restore (Lua: pushenv)
        # This runs the env's python as root, and root writes through the seal: no byte code into the shared env.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(["bash", "-c", f"source {LMOD_INIT}\n{script}"], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.mark.parametrize("tree", TREES)
def test_avail_hides_retired_and_default_is_newest(built_site: Path, tmp_path: Path, tree: str) -> None:
    r = lmod(built_site, tree, "module -t avail 2>&1", tmp_path)
    shown = {line.strip() for line in r.stdout.splitlines()}
    assert {"demo/1.0", "demo/2.0", "tools/1.0"} <= shown, r.stdout
    assert not any(s.startswith("old/") and s != "old/" for s in shown), r.stdout
    r = lmod(built_site, tree, 'module load demo && echo "P=$CONDA_PREFIX"', tmp_path)
    assert f"P={built_site / ENVS / 'demo-2.0'}" in r.stdout, r


@pytest.mark.parametrize("tree", TREES)
def test_load_run_activate_d_and_unload(built_site: Path, tmp_path: Path, tree: str) -> None:
    prefix = built_site / ENVS / "demo-1.0"
    script = """
module load demo/1.0 || exit 9
echo "P=$CONDA_PREFIX"; echo "E=$CONDA_DEFAULT_ENV"; echo "A=$CPKGS_TEST_ACTIVATED"; echo "AP=$CPKGS_TEST_ACT_PREFIX"
echo "APP=$(cpkgs-test-app)"; echo "PY=$(python -c 'import sys; print(sys.prefix)')"
module unload demo
echo "UP=$CONDA_PREFIX"; echo "UA=${CPKGS_TEST_ACTIVATED-unset}"; echo "UPATH=$PATH"
"""
    r = lmod(built_site, tree, script, tmp_path)
    out = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert out["P"] == str(prefix) and out["E"] == "demo-1.0", r
    assert out["A"] == "yes" and out["AP"] == str(prefix)
    assert out["APP"] == "app ok" and out["PY"] == str(prefix)
    assert out["UA"] == "unset" and out["UPATH"] == "/usr/bin:/bin"
    # Lua uses pushenv, so unload restores the earlier value; the Tcl variant (setenv) unsets it.
    assert out["UP"] == ("/before/prefix" if tree == "modulefiles" else "")


@pytest.mark.parametrize("tree", TREES)
def test_retired_still_loads_with_message_naming_successor(built_site: Path, tmp_path: Path, tree: str) -> None:
    r = lmod(built_site, tree, 'module load old/1.0 && echo "P=$CONDA_PREFIX"', tmp_path)
    assert f"P={built_site / ENVS / 'old-1.0'}" in r.stdout, r
    assert "old-1.0 is retired; use demo-2.0 (moved to 2.0)" in r.stderr


@pytest.mark.parametrize("tree", TREES)
def test_family_conda_swaps_envs_and_whatis_help(built_site: Path, tmp_path: Path, tree: str) -> None:
    r = lmod(built_site, tree, 'module load demo/1.0 tools/1.0 2>/dev/null; echo "P=$CONDA_PREFIX"; module -t list',
             tmp_path)
    assert f"P={built_site / ENVS / 'tools-1.0'}" in r.stdout, r
    assert "tools/1.0" in r.stderr and "demo/1.0" not in r.stderr, r
    r = lmod(built_site, tree, "module whatis demo/1.0; module help demo/1.0", tmp_path)
    assert "python 3.11.7" in r.stderr and "cpkgs-test-lib 1.1" in r.stderr, r
    assert "cpkgs extend demo-1.0 DIR" in r.stderr


def test_default_follows_retire_and_remove(site: Path, tmp_path: Path) -> None:
    for name in ("x-1.0", "x-2.0", "x-10.0"):
        assert run_cpkgs("new-env", name, "cpkgs-test-app", root=site).returncode == 0
    rc = site / "modulefiles" / "x" / ".modulerc.lua"
    assert 'module_version("x/10.0", "default")' in rc.read_text()  # version order, not text order
    assert run_cpkgs("retire", "x-10.0", "--successor", "x-2.0", root=site).returncode == 0
    assert 'module_version("x/2.0", "default")' in rc.read_text()
    assert 'hide_version("x/10.0")' in rc.read_text()
    r = lmod(site, "modulefiles", 'module load x && echo "P=$CONDA_PREFIX"', tmp_path)
    assert f"P={site / ENVS / 'x-2.0'}" in r.stdout, r
    assert run_cpkgs("remove", "x-10.0", root=site).returncode == 0
    assert not (site / "modulefiles" / "x" / "10.0.lua").exists()
    assert not (site / "modulefiles-tcl" / "x" / "10.0").exists()
    assert "10.0" not in rc.read_text()
    for name in ("x-1.0", "x-2.0"):
        assert run_cpkgs("remove", name, root=site).returncode == 0
    assert not (site / "modulefiles" / "x").exists() and not (site / "modulefiles-tcl" / "x").exists()


# ----------------------------------------------------------------------------------------------------- per platform
MAC = "anaconda3_macOS"


def _avail(root: Path, tree: str, home: Path) -> set[str]:
    r = lmod(root, tree, "module -t avail 2>&1", home)
    return {line.strip() for line in r.stdout.splitlines()}


def test_each_platform_has_its_own_module_trees(site: Path, tmp_path: Path) -> None:
    """Modulefiles of osx-arm64 envs live under anaconda3_macOS (a Linux host's MODULEPATH never lists them), and
    one name on both platforms has two independent modulefiles, defaults and lifecycles."""
    for args in (
        ("macapp-1.0", "cpkgs-test-lib", "--platform", "osx-arm64"),
        ("both-1.0", "cpkgs-test-lib", "cpkgs-test-activate"),
        ("both-1.0", "cpkgs-test-lib", "cpkgs-test-activate", "--platform", "osx-arm64"),
        ("both-2.0", "cpkgs-test-lib"),  # Linux only: the default is both/2.0 there and both/1.0 on macOS
    ):
        r = run_cpkgs("new-env", *args, root=site)
        assert r.returncode == 0, r
    mac = site / MAC
    assert (mac / "modulefiles" / "macapp" / "1.0.lua").is_file()
    assert (mac / "modulefiles-tcl" / "macapp" / "1.0").is_file()
    assert (mac / "modulefiles" / "macapp" / ".modulerc.lua").is_file()
    for tree in TREES:
        assert not (site / tree / "macapp").exists()
        linux_avail, mac_avail = _avail(site, tree, tmp_path), _avail(site, f"{MAC}/{tree}", tmp_path)
        assert {"both/1.0", "both/2.0"} <= linux_avail, linux_avail
        assert not any(s.startswith("macapp") for s in linux_avail), linux_avail
        assert {"macapp/1.0", "both/1.0"} <= mac_avail and "both/2.0" not in mac_avail, mac_avail
        r = lmod(site, tree, 'module load both && echo "P=$CONDA_PREFIX"', tmp_path)
        assert f"P={site / ENVS / 'both-2.0'}" in r.stdout, r
        r = lmod(site, f"{MAC}/{tree}", 'module load both && echo "P=$CONDA_PREFIX"', tmp_path)
        assert f"P={mac / 'envs' / 'both-1.0'}" in r.stdout, r
    linux_lua = (site / "modulefiles" / "both" / "1.0.lua").read_text()
    mac_lua = (mac / "modulefiles" / "both" / "1.0.lua").read_text()
    assert str(site / ENVS / "both-1.0") in linux_lua and str(mac / "envs" / "both-1.0") not in linux_lua
    assert str(mac / "envs" / "both-1.0") in mac_lua and str(site / ENVS / "both-1.0") not in mac_lua
    # activate.d scripts run at publish only for this host's platform; a macOS env gets conda's own variables only.
    assert "CPKGS_TEST_ACTIVATED" in linux_lua and "CPKGS_TEST_ACTIVATED" not in mac_lua
    # Removing the macOS env takes only the macOS files (and its family's rc there, now empty).
    r = run_cpkgs("remove", "both-1.0", "--platform", "osx-arm64", root=site)
    assert r.returncode == 0, r
    assert not (mac / "modulefiles" / "both").exists() and not (mac / "modulefiles-tcl" / "both").exists()
    assert (site / "modulefiles" / "both" / "1.0.lua").read_text() == linux_lua
    assert (site / "modulefiles-tcl" / "both" / "1.0").is_file()
    r = run_cpkgs("refresh", root=site)
    assert r.returncode == 0 and r.stdout.strip() == "everything is up to date", r
