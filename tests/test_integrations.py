"""Files cpkgs writes inside envs: SQLite databases off NFS (real IPython), the PEP 668 guard (real pip), and
`preflight`'s refusal of colliding module and kernel names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ENVS, as_nobody, make_site, run_cpkgs, world_traversable

# A uid with no passwd entry and nothing of its own on this machine: its /tmp/cpkgs-<uid> is ours to stage.
STRANGER = 54321


@pytest.fixture(scope="module")
def nb_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Path:
    """One site with an env that has python, pip, ipykernel (+IPython) and an activate.d script."""
    root = make_site(tmp_path_factory.mktemp("integrations") / "site", channel_url)
    r = run_cpkgs("new-env", "nb-1.0", "python", "pip", "ipykernel", "cpkgs-test-activate", root=root)
    assert r.returncode == 0, r
    world_traversable(root)
    return root


def _ipython(prefix: Path, code: str, *, uid: int | None = None, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(prefix / "bin" / "python"), "-m", "IPython", "--no-banner", "-c", code]
    if uid is not None:
        cmd = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", *cmd]
    base = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(cmd, capture_output=True, text=True, env={**base, **(env or {})}, timeout=120,
                          cwd=str(cwd or "/"))


HIST = "print('HIST=' + str(get_ipython().history_manager.hist_file))"


def _hist(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return next(line[5:] for line in proc.stdout.splitlines() if line.startswith("HIST="))


def test_ipython_history_is_local_private_and_off_the_site(nb_site: Path, tmp_path: Path) -> None:
    prefix = nb_site / ENVS / "nb-1.0"
    assert (prefix / "etc" / "ipython" / "ipython_config.py").is_file()
    home = tmp_path / "nobody-home"
    home.mkdir(mode=0o777)
    os.chmod(home, 0o777)
    hist = _hist(_ipython(prefix, HIST, uid=65534, env={"HOME": str(home)}))
    assert hist == "/tmp/cpkgs-65534/ipython/history.sqlite"
    assert not hist.startswith(str(nb_site)) and not hist.startswith(str(home))
    st = os.lstat("/tmp/cpkgs-65534")
    assert st.st_uid == 65534 and (st.st_mode & 0o777) == 0o700
    # $XDG_RUNTIME_DIR (private, local, per login) wins when the user has one.
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    hist = _hist(_ipython(prefix, HIST, env={"HOME": str(home), "XDG_RUNTIME_DIR": str(xdg)}))
    assert hist == f"{xdg}/cpkgs/ipython/history.sqlite"
    assert (xdg / "cpkgs").stat().st_mode & 0o777 == 0o700


def test_two_ipython_sessions_in_parallel(nb_site: Path, tmp_path: Path) -> None:
    prefix = nb_site / ENVS / "nb-1.0"
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(xdg)}
    code = "import time\nfor i in range(5):\n    get_ipython().run_cell(f'x = {i}', store_history=True); time.sleep(0.1)\n" + HIST
    cmd = [str(prefix / "bin" / "python"), "-m", "IPython", "--no-banner", "-c", code]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={"PATH": "/usr/bin:/bin", **env}) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "database is locked" not in err and "Error" not in err, err
    db = xdg / "cpkgs" / "ipython" / "history.sqlite"
    import sqlite3

    with sqlite3.connect(db) as con:
        sessions = con.execute("select count(*) from sessions").fetchone()[0]
        cells = con.execute("select count(*) from history where source like 'x = %'").fetchone()[0]
    assert sessions >= 2 and cells == 10


@pytest.mark.parametrize("kind", ["foreign-dir", "symlink"])
def test_foreign_or_symlinked_local_dir_falls_back_to_memory(nb_site: Path, tmp_path: Path, kind: str) -> None:
    prefix = nb_site / ENVS / "nb-1.0"
    trap = Path(f"/tmp/cpkgs-{STRANGER}")
    if trap.is_symlink() or trap.is_file():
        trap.unlink()
    elif trap.exists():
        shutil.rmtree(trap)
    try:
        if kind == "foreign-dir":
            trap.mkdir(mode=0o777)  # pre-created by root (another user), even world-writable
            os.chmod(trap, 0o777)
        else:
            target = tmp_path / "elsewhere"
            target.mkdir(mode=0o777)
            os.chmod(target, 0o777)
            trap.symlink_to(target)
        hist = _hist(_ipython(prefix, HIST, uid=STRANGER, env={"HOME": "/nonexistent"}))
        assert hist == ":memory:"
        if kind == "symlink":
            assert not list((tmp_path / "elsewhere").iterdir())
    finally:
        if trap.is_symlink():
            trap.unlink()
        else:
            shutil.rmtree(trap, ignore_errors=True)


def test_jupyter_notary_database_is_local(nb_site: Path, tmp_path: Path) -> None:
    """jupyter_server is not in the test channel: load the env's config files with the env's own traitlets, as
    jupyter_server/notebook would, and check the values."""
    prefix = nb_site / ENVS / "nb-1.0"
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    code = (
        "import sys\nfrom traitlets.config.loader import PyFileConfigLoader\n"
        "for name in sys.argv[2:]:\n"
        "    c = PyFileConfigLoader(name, path=sys.argv[1]).load_config()\n"
        "    print(name, c.NotebookNotary.db_file)\n"
    )
    r = subprocess.run([str(prefix / "bin" / "python"), "-c", code, str(prefix / "etc" / "jupyter"),
                        "jupyter_server_config.py", "jupyter_notebook_config.py"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(xdg)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"jupyter_server_config.py {xdg}/cpkgs/jupyter/nbsignatures.db",
        f"jupyter_notebook_config.py {xdg}/cpkgs/jupyter/nbsignatures.db",
    ]
    # jupyter_server_fileid is not in this env, so its database is not configured.
    assert "FileIdManager" not in (prefix / "etc" / "jupyter" / "jupyter_server_config.py").read_text().split(
        "_CPKGS_SETTINGS = ", 1)[1].splitlines()[0]


@pytest.mark.parametrize(
    ("who", "extra"),
    [("root", []), ("root", ["--user"]), ("nobody", ["--user"])],
)
def test_pip_refuses_to_install_into_a_shared_env(nb_site: Path, tmp_path: Path, who: str, extra: list[str]) -> None:
    prefix = nb_site / ENVS / "nb-1.0"
    marker = prefix / "lib" / "python3.11" / "EXTERNALLY-MANAGED"
    assert marker.is_file()
    cmd = [str(prefix / "bin" / "python"), "-m", "pip", "install", "--no-index", *extra, "somepkg"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": "/dev/null"}
    r = as_nobody(cmd, env=env, cwd="/") if who == "nobody" else subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd="/")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "externally-managed-environment" in out
    assert "cpkgs extend nb-1.0 DIR" in out
    assert not (tmp_path / ".local").exists()


def test_env_without_python_gets_no_marker_no_config_no_kernel(built_site: Path) -> None:
    tools = built_site / ENVS / "tools-1.0"
    assert not (tools / "etc" / "ipython").exists()
    assert not (tools / "etc" / "jupyter").exists()
    assert not list(tools.glob("lib/python*/EXTERNALLY-MANAGED"))
    assert not (built_site / "share" / "jupyter" / "kernels" / "tools-1.0").exists()
    assert (built_site / "modulefiles" / "tools" / "1.0.lua").is_file()


def test_integration_files_are_in_the_manifest_and_verified(built_site: Path) -> None:
    prefix = built_site / ENVS / "demo-1.0"
    manifest = json.loads((prefix / "conda-meta" / "cpkgs" / "site-files.json").read_text())
    for rel in ("lib/python3.11/EXTERNALLY-MANAGED", "etc/ipython/ipython_config.py",
                "etc/jupyter/jupyter_server_config.py", "etc/jupyter/jupyter_notebook_config.py"):
        assert rel in manifest
        assert (prefix / rel).stat().st_mode & 0o777 == 0o444
    r = run_cpkgs("verify", "demo-1.0", root=built_site)
    assert r.returncode == 0, r


# ----------------------------------------------------------------------------------------------------- preflight


@pytest.mark.parametrize(
    ("name", "specs", "message"),
    [
        ("nb_1.0", ("cpkgs-test-app",), "nb_1.0 and nb-1.0 would both be module nb/1.0"),
        ("NB-2.0", ("cpkgs-test-app",), "NB-2.0 would put modules in NB/, which differs only in case from nb/ of nb-1.0"),
        ("nb-1.0-usersite", ("python", "ipykernel"),
         "nb-1.0-usersite and nb-1.0 would both have the Jupyter kernel nb-1.0-usersite"),
    ],
)
def test_colliding_names_are_refused_before_install(nb_site: Path, name: str, specs: tuple[str, ...],
                                                   message: str) -> None:
    r = run_cpkgs("new-env", name, *specs, root=nb_site)
    assert r.returncode == 2, r
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (nb_site / ENVS / name).exists()
    assert not (nb_site / ".cpkgs" / "records" / "linux-64" / f"{name}.json").exists()


def test_foreign_kernel_is_never_replaced(nb_site: Path) -> None:
    mine = nb_site / "share" / "jupyter" / "kernels" / "admins-1.0"
    mine.mkdir(parents=True)
    (mine / "kernel.json").write_text('{"argv": ["/opt/py", "-m", "ipykernel_launcher"], "display_name": "x"}')
    try:
        r = run_cpkgs("new-env", "admins-1.0", "python", "ipykernel", root=nb_site)
        assert r.returncode == 2, r
        assert "would replace the Jupyter kernel" in r.stderr and "cpkgs did not write" in r.stderr
        assert not (nb_site / ENVS / "admins-1.0").exists()
    finally:
        shutil.rmtree(mine)


# ----------------------------------------------------------------------------------------------------- layers


def test_personal_layer_keeps_ipython_history_off_the_site_and_home(nb_site: Path, tmp_path: Path) -> None:
    """A layer's sys.prefix is the layer, so IPython reads the layer's etc/ipython, not the base's: `cpkgs extend`
    writes the same config there. Run as an unprivileged user, as a user would."""
    home = tmp_path / "nobody-home"
    home.mkdir()
    os.chown(home, 65534, 65534)  # the user's own (extend refuses a dir others can write)
    world_traversable(home)
    layer = home / "layer"
    r = run_cpkgs("extend", "nb-1.0", str(layer), root=nb_site, user=True)
    assert r.returncode == 0, r
    code = "import sys; print('PREFIX=' + sys.prefix)\n" + HIST
    proc = _ipython(layer, code, uid=65534, env={"HOME": str(home)})
    hist = _hist(proc)
    assert f"PREFIX={layer}\n" in proc.stdout  # IPython ran in the layer, not in the base
    assert hist == "/tmp/cpkgs-65534/ipython/history.sqlite"
    assert not hist.startswith(str(nb_site)) and not hist.startswith(str(home))
    assert not (home / ".ipython" / "profile_default" / "history.sqlite").exists()
    # Jupyter reads the layer's etc/jupyter too: the notebook-signature database is configured there.
    assert "NotebookNotary" in (layer / "etc" / "jupyter" / "jupyter_server_config.py").read_text()


# ----------------------------------------------------------------------------------------------------- per platform


def test_module_and_kernel_names_collide_only_within_one_platform(nb_site: Path) -> None:
    """Each platform has its own module and kernel trees: nb_1.0 for macOS does not clash with Linux's nb-1.0 (module
    nb/1.0), but two macOS envs that would share a module still do."""
    mac = nb_site / "anaconda3_macOS"
    linux_lua = (nb_site / "modulefiles" / "nb" / "1.0.lua").read_text()
    r = run_cpkgs("new-env", "nb_1.0", "cpkgs-test-lib", "--platform", "osx-arm64", root=nb_site)
    assert r.returncode == 0, r
    assert str(mac / "envs" / "nb_1.0") in (mac / "modulefiles" / "nb" / "1.0.lua").read_text()
    assert (nb_site / "modulefiles" / "nb" / "1.0.lua").read_text() == linux_lua
    r = run_cpkgs("new-env", "nb-1.0", "cpkgs-test-lib", "--platform", "osx-arm64", root=nb_site)
    assert r.returncode == 2, r
    assert "nb-1.0 and nb_1.0 would both be module nb/1.0" in r.stderr
    assert not (mac / "envs" / "nb-1.0").exists()


def test_activation_reads_what_scripts_set_not_what_they_print(tmp_path: Path) -> None:
    """activate.d scripts run in a real /bin/sh, one after another; what they print (even NUL-delimited text that
    looks like `env -0` output) is not taken for variables, and a failing script does not stop the next."""
    from cpkgs_admin.outputs.activation import activation_of

    prefix = tmp_path / "env"
    act = prefix / "etc" / "conda" / "activate.d"
    act.mkdir(parents=True)
    world_traversable(prefix)  # measured as uid 65534 when run by root, like a published env readable by all
    (act / "10-noisy.sh").write_text(
        "printf 'INJECTED=1\\0PATH=/evil\\0'\n"
        "echo hello\n"
        "export TOOL_HOME=\"$CONDA_PREFIX/share/tool\"\n"
        "export PATH=\"$CONDA_PREFIX/opt/bin:$PATH\"\n"
        "false\n"
    )
    (act / "20-next.sh").write_text('export SECOND="after $TOOL_HOME"\n')
    (act / "30-not-sh.csh").write_text("setenv CSH_ONLY 1\n")
    got = activation_of(prefix, "x-1.0")
    assert dict(got.variables) == {"TOOL_HOME": f"{prefix}/share/tool", "SECOND": f"after {prefix}/share/tool"}
    assert got.path_prepend == (f"{prefix}/opt/bin",)


def test_activate_d_script_that_exits_the_shell_is_an_error_not_an_empty_activation(tmp_path: Path) -> None:
    from cpkgs_admin.errors import CpkgsError
    from cpkgs_admin.outputs.activation import activation_of

    act = tmp_path / "env" / "etc" / "conda" / "activate.d"
    act.mkdir(parents=True)
    world_traversable(act)
    (act / "bad.sh").write_text("export A=1\nexit 0\n")
    with pytest.raises(CpkgsError, match="ended the shell"):
        activation_of(tmp_path / "env", "bad-1.0")


def test_activate_d_script_the_measuring_user_cannot_read_is_an_error(tmp_path: Path) -> None:
    """Measured as uid 65534 (run by root): a script that user cannot read is named, not silently left out of the
    activation kept for modulefiles and kernels."""
    from cpkgs_admin.errors import CpkgsError
    from cpkgs_admin.outputs.activation import activation_of

    act = tmp_path / "env" / "etc" / "conda" / "activate.d"
    act.mkdir(parents=True)
    world_traversable(act)
    (act / "10-open.sh").write_text("export OPEN=1\n")
    (act / "20-private.sh").write_text("export PRIVATE=1\n")
    (act / "20-private.sh").chmod(0o600)
    with pytest.raises(CpkgsError, match="uid 65534 cannot read 20-private.sh"):
        activation_of(tmp_path / "env", "priv-1.0")
