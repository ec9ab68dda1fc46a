"""`cpkgs refresh`: regenerates profiles, modulefiles and kernelspecs; idempotent; removes only its own orphans."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from conftest import ENVS, run_cpkgs, tree_hash


def _build(site: Path) -> None:
    for name, specs in (("a-1.0", ("cpkgs-test-app", "cpkgs-test-activate")), ("a-2.0", ("cpkgs-test-app",))):
        r = run_cpkgs("new-env", name, *specs, root=site)
        assert r.returncode == 0, r


def test_fresh_site_is_up_to_date_and_refresh_is_idempotent(site: Path) -> None:
    _build(site)
    r = run_cpkgs("refresh", root=site)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "everything is up to date"
    r = run_cpkgs("refresh", "--json", root=site)
    assert r.returncode == 0, r
    assert r.json() == {
        "changed": False, "envs": 2, "profiles": [], "written": [], "removed": [], "skipped": [], "warnings": [],
    }


def test_regenerates_damaged_files_and_profiles(site: Path) -> None:
    _build(site)
    lua = site / "modulefiles" / "a" / "1.0.lua"
    tcl = site / "modulefiles-tcl" / "a" / "2.0"
    rc = site / "modulefiles" / "a" / ".modulerc.lua"
    profile = site / "etc" / "profile.d" / "conda.sh"
    good = {p: p.read_text() for p in (lua, tcl, rc)}
    lua.unlink()
    tcl.write_text(tcl.read_text().replace("CPKGS", "XXXXX") + "\n# edited by hand\n")
    rc.unlink()
    profile.unlink()
    r = run_cpkgs("refresh", root=site)
    assert r.returncode == 0, r
    assert set(r.stdout.splitlines()) == {f"wrote {p}" for p in (lua, tcl, rc, profile)}
    assert {p: p.read_text() for p in good} == good
    assert "conda" in profile.read_text()  # its content is profiles.py's business (tests/test_profiles.py)
    assert (lua.stat().st_mode & 0o777) == 0o644
    r = run_cpkgs("refresh", root=site)
    assert r.stdout.strip() == "everything is up to date"


def test_removes_own_orphans_and_never_foreign_files(site: Path) -> None:
    _build(site)
    lua = site / "modulefiles" / "a" / "1.0.lua"
    # Orphans: files cpkgs generated for envs that are gone (e.g. a record deleted by hand).
    gone_lua = site / "modulefiles" / "gone" / "3.0.lua"
    gone_lua.parent.mkdir()
    gone_lua.write_text(lua.read_text().replace("a-1.0", "gone-3.0"))
    gone_rc = site / "modulefiles" / "gone" / ".modulerc.lua"
    gone_rc.write_text((site / "modulefiles" / "a" / ".modulerc.lua").read_text())
    gone_kernel = site / "share" / "jupyter" / "kernels" / "gone-3.0" / "kernel.json"
    gone_kernel.parent.mkdir()
    gone_kernel.write_text(json.dumps({"argv": ["/x/bin/python"], "display_name": "gone-3.0",
                                       "metadata": {"cpkgs": {"env": "gone-3.0"}}}))
    # Foreign: an admin's own modulefile and kernel, no cpkgs marker.
    own_lua = site / "modulefiles" / "a" / "local.lua"
    own_lua.write_text('-- my own module\nsetenv("X", "1")\n')
    own_kernel = site / "share" / "jupyter" / "kernels" / "ir" / "kernel.json"
    own_kernel.parent.mkdir()
    own_kernel.write_text('{"argv": ["R"], "display_name": "R", "language": "R"}')
    r = run_cpkgs("refresh", "--json", root=site)
    assert r.returncode == 0, r
    rep = r.json()
    assert rep["changed"] is True
    assert sorted(rep["removed"]) == sorted(str(p) for p in (gone_lua, gone_rc, gone_kernel))
    assert not gone_lua.parent.exists() and not gone_kernel.parent.exists()
    assert own_lua.exists() and own_kernel.exists()
    r = run_cpkgs("refresh", root=site)
    assert r.stdout.strip() == "everything is up to date"


def test_removed_env_files_are_gone_and_refresh_agrees(site: Path) -> None:
    _build(site)
    assert run_cpkgs("remove", "a-1.0", root=site).returncode == 0
    assert not (site / "modulefiles" / "a" / "1.0.lua").exists()
    assert (site / "modulefiles" / "a" / "2.0.lua").exists()
    assert 'module_version("a/2.0", "default")' in (site / "modulefiles" / "a" / ".modulerc.lua").read_text()
    r = run_cpkgs("refresh", root=site)
    assert r.stdout.strip() == "everything is up to date", r


def test_refresh_on_a_missing_site_is_one_line(tmp_path: Path) -> None:
    r = run_cpkgs("refresh", root=tmp_path / "nope")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr


def test_each_platform_tree_is_regenerated_and_cleaned_on_its_own(site: Path) -> None:
    mac = site / "anaconda3_macOS"
    _build(site)
    r = run_cpkgs("new-env", "m-1.0", "cpkgs-test-lib", "--platform", "osx-arm64", root=site)
    assert r.returncode == 0, r
    mac_lua = mac / "modulefiles" / "m" / "1.0.lua"
    good = mac_lua.read_text()
    assert not (site / "modulefiles" / "m").exists()
    # Where an older cpkgs put a macOS env's module: in the Linux (primary) tree. An orphan there now.
    legacy = site / "modulefiles" / "m" / "1.0.lua"
    legacy.parent.mkdir()
    legacy.write_text(good)
    # An orphan of the macOS tree, and an admin's own file there.
    gone = mac / "modulefiles" / "gone" / "3.0.lua"
    gone.parent.mkdir()
    gone.write_text(good.replace("m-1.0", "gone-3.0"))
    gone_kernel = mac / "share" / "jupyter" / "kernels" / "gone-3.0" / "kernel.json"
    gone_kernel.parent.mkdir(parents=True)
    gone_kernel.write_text(json.dumps({"argv": ["/x/bin/python"], "display_name": "gone-3.0",
                                       "metadata": {"cpkgs": {"env": "gone-3.0"}}}))
    own = mac / "modulefiles" / "m" / "local.lua"
    own.write_text('-- my own module\nsetenv("X", "1")\n')
    mac_lua.unlink()
    r = run_cpkgs("refresh", "--json", root=site)
    assert r.returncode == 0, r
    rep = r.json()
    assert rep["envs"] == 3 and rep["written"] == [str(mac_lua)]
    assert sorted(rep["removed"]) == sorted(str(p) for p in (legacy, gone, gone_kernel))
    assert mac_lua.read_text() == good and own.exists()
    assert not legacy.parent.exists() and not gone.parent.exists() and not gone_kernel.parent.exists()
    assert (site / "modulefiles" / "a" / "1.0.lua").is_file()
    r = run_cpkgs("refresh", root=site)
    assert r.stdout.strip() == "everything is up to date", r


def test_refresh_on_another_platforms_host_keeps_activate_d_variables(site: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A refresh on a macOS admin host rewrites the Linux envs' modulefiles from their records: what the activate.d
    scripts set, measured once at publish on Linux, stays in them. There is no macOS host here: refresh runs
    in-process with this host's platform reported as osx-arm64 (the only fake)."""
    import cpkgs_admin.site.paths as site_mod
    from cpkgs_admin.lifecycle.refresh import refresh_site

    _build(site)  # a-1.0 has cpkgs-test-activate
    record = json.loads((site / ".cpkgs" / "records" / "linux-64" / "a-1.0.json").read_text())
    assert record["activation"]["variables"]["CPKGS_TEST_ACTIVATED"] == "yes"
    lua = site / "modulefiles" / "a" / "1.0.lua"
    tcl = site / "modulefiles-tcl" / "a" / "1.0"
    good = {p: p.read_text() for p in (lua, tcl)}
    assert all('"CPKGS_TEST_ACTIVATED"' in text for text in good.values())
    lua.unlink()
    tcl.unlink()
    monkeypatch.setattr(site_mod, "native_subdir", lambda: "osx-arm64")
    rep = refresh_site(site_mod.open_site(site))
    assert sorted(rep.written) == sorted(str(p) for p in good)
    assert {p: p.read_text() for p in good} == good


def test_one_envs_broken_activate_script_does_not_stop_refresh_or_retire(site: Path) -> None:
    _build(site)  # a-1.0 has activate.d scripts
    lua = site / "modulefiles" / "a" / "1.0.lua"
    good = lua.read_text()
    assert run_cpkgs("unseal", "a-1.0", "--reason", "test", root=site).returncode == 0
    act = site / ENVS / "a-1.0" / "etc" / "conda" / "activate.d"
    (act / "zz-bad.sh").write_text("exit 0\n")
    assert run_cpkgs("seal", "a-1.0", root=site).returncode == 0
    r = run_cpkgs("refresh", root=site)
    assert r.returncode == 0, r
    assert "cpkgs: warning: a-1.0:" in r.stderr and "ended the shell" in r.stderr
    assert lua.read_text() == good  # the variables kept at publish
    r = run_cpkgs("retire", "a-1.0", "--successor", "a-2.0", root=site)
    assert r.returncode == 0, r
    assert "a-2.0" in lua.read_text()  # the retired modulefile names its successor


def test_admin_group_unknown_here_writes_nothing_group_writable(site: Path) -> None:
    """cpkgs.yaml names an admin group this host does not know (a typo, or a host without it): refresh and
    write-profiles refuse, as new-env does, instead of making the profiles and modulefiles group-writable for
    whatever group they have."""
    _build(site)
    (site / "etc" / "profile.d" / "conda.sh").unlink()  # something for refresh to write
    cfg = site / "cpkgs.yaml"
    cfg.write_text(cfg.read_text().replace("admin_group: null", "admin_group: no-such-group-xyz"))
    before = tree_hash(site)
    for cmd in (("refresh",), ("write-profiles",), ("retire", "a-1.0"), ("remove", "a-1.0")):
        r = run_cpkgs(*cmd, root=site)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (cmd, r)
        assert "admin_group 'no-such-group-xyz' is not a group on this host" in r.stderr
        assert tree_hash(site) == before, cmd


def test_admin_group_files_get_that_group_whatever_they_had(site: Path) -> None:
    """Generated files made group-writable are given the admin group; a file that had another group (copied in,
    chgrp-ed) is never left group-writable for it."""
    import grp

    _build(site)
    staff = grp.getgrnam("staff").gr_gid
    users = grp.getgrnam("users").gr_gid
    assert run_cpkgs("init", "--admin-group", "staff", root=site).returncode == 0
    generated = [site / "etc" / "profile.d" / "conda.sh", site / "modulefiles" / "a" / "1.0.lua"]
    for p in generated:
        os.chown(p, -1, users)
        os.chmod(p, 0o644)
    assert run_cpkgs("refresh", root=site).returncode == 0
    for p in generated:
        st = p.stat()
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (staff, 0o664), p
