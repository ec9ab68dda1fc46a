"""`cpkgs write-profiles` and the rendered conda.sh / conda.csh, sourced in the real bash, zsh, dash, ksh and tcsh.

Every shell test runs the real shell in a subprocess with a scrubbed environment and prints KEY=VALUE lines
that the test parses.  Boundaries faked here, because they cannot run on this machine: a macOS host (a fake
`uname` first on PATH), a real conda in the installation (a stub etc/profile.d/conda.sh) and a personal
layer (made by hand: `cpkgs extend` is a later issue).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LINUX, REPO, make_site, run_cpkgs, world_traversable
from cpkgs_admin.outputs.profiles import PROFILE_TEMPLATES, render_profiles
from cpkgs_admin.site.config import SiteConfig
from cpkgs_admin.site.paths import Site

SH_SHELLS = ["bash", "zsh", "dash", "ksh"]

# ------------------------------------------------------------------------------------------------- helpers
def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a login shell would have, minus anything from this test runner's own environment."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ["HOME"],
        "TMPDIR": str(tmp_path / "localtmp"),
        "LC_ALL": "C",
    }
    (tmp_path / "localtmp").mkdir(exist_ok=True)
    env.update(extra)
    return env


def run_sh(shell: str, script: str, env: dict[str, str], strict: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `script` in a real shell; strict = `set -eu` (zsh: errexit nounset), as a careful user would."""
    prelude = ""
    if strict:
        prelude = "setopt errexit nounset\n" if shell == "zsh" else "set -eu\n"
    return subprocess.run([shell, "-c", prelude + script], capture_output=True, text=True, env=env, timeout=60)


def run_csh(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tcsh", "-f", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def kv(out: str) -> dict[str, str]:
    d: dict[str, str] = {}
    for line in out.splitlines():
        if "=" in line:
            k, _, v = line.partition("=")
            d[k] = v
    return d


def sq(path: Path | str) -> str:
    """Single-quote for sh."""
    return "'" + str(path).replace("'", "'\\''") + "'"


SHOW = r"""
show() {
  echo "$1.PATH=$PATH"
  echo "$1.CONDA_PREFIX=${CONDA_PREFIX-<unset>}"
  echo "$1.CONDA_DEFAULT_ENV=${CONDA_DEFAULT_ENV-<unset>}"
  echo "$1.CONDA_SHLVL=${CONDA_SHLVL-<unset>}"
  echo "$1.CONDA_PREFIX_1=${CONDA_PREFIX_1-<unset>}"
  echo "$1.PS1=${PS1-<unset>}"
  echo "$1.ACT=${CPKGS_TEST_ACTIVATED-<unset>}"
  echo "$1.ACT_PREFIX=${CPKGS_TEST_ACT_PREFIX-<unset>}"
}
"""


def fake_root(root: Path, platforms: tuple[str, ...], envs: dict[str, list[str]] | None = None) -> Path:
    """A site tree with rendered profiles and empty env dirs (no packages): enough for detection tests."""
    site = Site(root=root, config=SiteConfig(platforms=platforms))
    for path, text in render_profiles(site).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for sub in platforms:
        site.envs_dir(sub).mkdir(parents=True, exist_ok=True)
        for name in (envs or {}).get(sub, []):
            (site.env_prefix(name, sub) / "conda-meta").mkdir(parents=True)
            (site.env_prefix(name, sub) / "bin").mkdir()
    return root


def fake_uname(tmp_path: Path, system: str, machine: str) -> Path:
    d = tmp_path / f"fakebin-{system}-{machine}"
    d.mkdir(exist_ok=True)
    u = d / "uname"
    u.write_text(f"#!/bin/sh\necho '{system} {machine}'\n")
    u.chmod(0o755)
    return d


@pytest.fixture(scope="module")
def own_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Path:
    """A site this module may change: act-1.0 (activate.d scripts), gone-1.0 (removed, for a stale layer),
    mac-1.0 (osx-arm64 only) and a hidden staging dir."""
    root = tmp_path_factory.mktemp("prof") / "site"
    make_site(root, channel_url)
    for args in (("act-1.0", "cpkgs-test-activate", "cpkgs-test-app"), ("gone-1.0", "cpkgs-test-app"),
                 ("mac-1.0", "cpkgs-test-lib", "--platform", "osx-arm64")):
        r = run_cpkgs("new-env", *args, root=root)
        assert r.returncode == 0, r
    (root / LINUX / "envs" / ".staging-x-1.0-abc" / "conda-meta").mkdir(parents=True)
    world_traversable(root)
    return root


def make_layer(where: Path, base: Path, base_name: str, inst: str = LINUX) -> Path:
    """A personal layer as `cpkgs extend` will make it (written by hand until that issue lands)."""
    (where / "bin").mkdir(parents=True)
    (where / "conda-meta" / "cpkgs").mkdir(parents=True)
    (where / "conda-meta" / "cpkgs" / "layer").write_text(f"{base}\n{base_name}\n{inst}\n")
    tool = where / "bin" / "layer-tool"
    tool.write_text("#!/bin/sh\necho layer ok\n")
    tool.chmod(0o755)
    return where


# ------------------------------------------------------------------------------------------------- rendering
def test_repo_profiles_are_the_default_rendering() -> None:
    rendered = render_profiles(Site(root=Path("/nfs/cpkgs")))
    assert {p.name for p in rendered} == set(PROFILE_TEMPLATES)
    for path, text in rendered.items():
        repo_file = REPO / "etc" / "profile.d" / path.name
        assert repo_file.read_text() == text, f"{repo_file} is stale: render it for /nfs/cpkgs again"
    assert "@" not in "".join(t for t in rendered.values() if "@ROOT" in t or "@INSTALL" in t)


def test_write_profiles_writes_then_is_idempotent(site: Path) -> None:
    for name in PROFILE_TEMPLATES:
        (site / "etc" / "profile.d" / name).unlink(missing_ok=True)
    r = run_cpkgs("write-profiles", root=site)
    assert r.returncode == 0, r
    assert r.stdout.count("wrote ") == len(PROFILE_TEMPLATES)
    text = (site / "etc" / "profile.d" / "conda.sh").read_text()
    assert "linux-64=anaconda3_linux osx-arm64=anaconda3_macOS" in text and "@ROOT" not in text
    r = run_cpkgs("write-profiles", root=site)
    assert r.returncode == 0 and "up to date" in r.stdout, r


def test_root_csh_cannot_quote_is_refused(tmp_path: Path) -> None:
    from cpkgs_admin.errors import UsageError

    with pytest.raises(UsageError, match="csh"):
        render_profiles(Site(root=tmp_path / "a$b"))


# ------------------------------------------------------------------------------------------------- sh family
@pytest.mark.parametrize("shell", SH_SHELLS)
def test_round_trip_nested_and_exact_path(shell: str, built_site: Path, tmp_path: Path) -> None:
    prof = built_site / "etc" / "profile.d" / "conda.sh"
    d1, d2 = built_site / LINUX / "envs" / "demo-1.0", built_site / LINUX / "envs" / "demo-2.0"
    script = SHOW + f"""
PS1='my prompt$ '
before_vars=$(set | grep '^[A-Za-z_][A-Za-z_0-9]*=' | sed 's/=.*//' | sort | tr '\\n' ' ')
. {sq(prof)}
. {sq(prof)}
show a
conda activate demo-1.0
show b
echo "b.lib=$(cpkgs-test-lib-version)"
conda activate demo-2.0
show c
echo "c.lib=$(cpkgs-test-lib-version)"
conda deactivate
show d
conda deactivate
show e
conda deactivate
after_vars=$(set | grep '^[A-Za-z_][A-Za-z_0-9]*=' | sed 's/=.*//' | sort | tr '\\n' ' ')
echo "before=$before_vars"
echo "after=$after_vars"
echo "leak=$(set | grep '^_cpkgs' || :)"
"""
    r = run_sh(shell, script, base_env(tmp_path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    v = kv(r.stdout)
    path0 = v["a.PATH"]
    assert v["b.PATH"] == f"{d1}/bin:{path0}"
    assert (v["b.CONDA_PREFIX"], v["b.CONDA_DEFAULT_ENV"], v["b.CONDA_SHLVL"]) == (str(d1), "demo-1.0", "1")
    assert v["b.PS1"] == "(demo-1.0) my prompt$ "
    assert (v["b.ACT"], v["b.ACT_PREFIX"]) == ("yes", str(d1))
    assert v["b.lib"].startswith("1.1"), v["b.lib"]
    # nested: demo-1.0's bin replaced by demo-2.0's, the stack remembers demo-1.0
    assert v["c.PATH"] == f"{d2}/bin:{path0}"
    assert (v["c.CONDA_PREFIX"], v["c.CONDA_SHLVL"], v["c.CONDA_PREFIX_1"]) == (str(d2), "2", str(d1))
    assert v["c.PS1"] == "(demo-2.0) my prompt$ " and v["c.ACT_PREFIX"] == str(d2)
    assert v["c.lib"].startswith("2.0"), v["c.lib"]
    # back to demo-1.0, its activate.d scripts run again
    assert v["d.PATH"] == f"{d1}/bin:{path0}"
    assert (v["d.CONDA_PREFIX"], v["d.CONDA_SHLVL"], v["d.CONDA_PREFIX_1"]) == (str(d1), "1", "<unset>")
    assert (v["d.ACT"], v["d.ACT_PREFIX"], v["d.PS1"]) == ("yes", str(d1), "(demo-1.0) my prompt$ ")
    # all the way out: PATH and prompt exactly as before, deactivate.d ran
    assert v["e.PATH"] == path0
    assert (v["e.CONDA_PREFIX"], v["e.CONDA_DEFAULT_ENV"], v["e.CONDA_SHLVL"]) == ("<unset>", "<unset>", "0")
    assert (v["e.ACT"], v["e.ACT_PREFIX"], v["e.PS1"]) == ("<unset>", "<unset>", "my prompt$ ")
    new_vars = set(v["after"].split()) - set(v["before"].split())
    assert new_vars - {"before_vars", "CPKGS_ROOT", "CPKGS_INSTALLATION", "CONDA_PKGS_DIRS", "JUPYTER_PATH",
                       "CONDA_SHLVL", "_", "OLDPWD", "_AST_FEATURES"} == set()
    assert v["leak"] == ""


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_env_list_errors_retired(shell: str, built_site: Path, tmp_path: Path) -> None:
    prof = built_site / "etc" / "profile.d" / "conda.sh"
    script = f"""
. {sq(prof)}
conda activate demo-2.0
conda env list
p=$PATH
conda activate no-such-1.0 || echo "rc.unknown=$?"
[ "$p" = "$PATH" ] && [ "$CONDA_PREFIX" = {sq(built_site / LINUX / "envs" / "demo-2.0")} ] && echo unchanged=yes
conda install numpy || echo "rc.install=$?"
conda activate .staging || echo "rc.hidden=$?"
conda activate old-1.0
echo "old.SHLVL=$CONDA_SHLVL"
"""
    r = run_sh(shell, script, base_env(tmp_path))
    assert r.returncode == 0, r
    v = kv(r.stdout)
    assert (v["rc.unknown"], v["rc.install"], v["rc.hidden"], v["unchanged"]) == ("1", "1", "1", "yes")
    lines = r.stdout.splitlines()
    rows = {ln.split()[0]: ln for ln in lines if ln and not ln.startswith("#") and "=" not in ln}
    assert set(rows) == {"demo-1.0", "demo-2.0", "old-1.0", "tools-1.0"}
    assert rows["demo-2.0"].split()[1] == "*" and "*" not in rows["demo-1.0"]
    assert rows["old-1.0"].endswith("(retired)")
    err = r.stderr.splitlines()
    assert err[0].startswith("cpkgs: no environment named 'no-such-1.0'")
    assert "no conda of its own" in err[1]
    assert err[3] == "cpkgs: old-1.0 is retired; use demo-2.0 (moved to 2.0)"
    assert len(err) == 4 and v["old.SHLVL"] == "2"


def removing_site(tmp_path: Path, channel_url: str) -> Path:
    """rm-1.0 (retired, successor rm-2.0; a shell removes it), rm-2.0, lone-1.0 (removed, no successor)."""
    root = make_site(tmp_path / "site", channel_url)
    for name in ("rm-1.0", "rm-2.0", "lone-1.0"):
        assert run_cpkgs("new-env", name, "cpkgs-test-app", root=root).returncode == 0
    assert run_cpkgs("retire", "rm-1.0", "--successor", "rm-2.0", root=root).returncode == 0
    assert run_cpkgs("remove", "lone-1.0", root=root).returncode == 0
    return root


def env_rows(out: str) -> dict[str, str]:
    return {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith("#") and "=" not in ln}


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_removed_env_is_hidden_and_refused_while_a_shell_using_it_goes_on(
    shell: str, channel_url: str, tmp_path: Path
) -> None:
    """`cpkgs remove` keeps the env at its path for whoever uses it already (this shell's PATH still works,
    `conda env list` shows it there as active and removed); anyone else's `conda env list` hides it and
    `conda activate` (by name or path) refuses it with one line naming the successor, changing nothing."""
    root = removing_site(tmp_path, channel_url)
    prefix = root / LINUX / "envs" / "rm-1.0"
    layer = make_layer(tmp_path / "layer", prefix, "rm-1.0")
    script = f"""
. {sq(root / "etc/profile.d/conda.sh")}
conda activate rm-1.0 2>/dev/null
{sq(sys.executable)} -m cpkgs_admin --root {sq(root)} -q remove rm-1.0
echo "app=$(cpkgs-test-app)"
conda env list
echo "----"
conda deactivate
conda env list
p=$PATH
conda activate rm-1.0 || echo "rc.name=$?"
conda activate {sq(prefix)}/ || echo "rc.path=$?"
conda activate lone-1.0 || echo "rc.lone=$?"
conda activate {sq(layer)} || echo "rc.layer=$?"
[ "$p" = "$PATH" ] && echo "unchanged=${{CONDA_PREFIX-none}} ${{CONDA_SHLVL}}"
conda activate rm-2.0 && echo "ok=$CONDA_DEFAULT_ENV"
"""
    r = run_sh(shell, script, base_env(tmp_path))
    assert r.returncode == 0, r
    before, after = r.stdout.split("----\n")
    assert kv(before)["app"] == "app ok"
    rows = env_rows(before)
    assert set(rows) == {"rm-1.0", "rm-2.0"} and rows["rm-1.0"].split()[1] == "*", before
    assert rows["rm-1.0"].endswith(f"{prefix}  (removed)"), before
    assert set(env_rows(after)) == {"rm-2.0"}, after
    v = kv(after)
    assert (v["rc.name"], v["rc.path"], v["rc.lone"], v["rc.layer"]) == ("1", "1", "1", "1")
    assert (v["unchanged"], v["ok"]) == ("none 0", "rm-2.0")
    assert r.stderr.splitlines() == ["cpkgs: rm-1.0 was removed; use rm-2.0"] * 2 + [
        "cpkgs: lone-1.0 was removed", "cpkgs: rm-1.0 was removed; use rm-2.0"]


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_layer_activation_and_stale_layer(shell: str, own_site: Path, tmp_path: Path) -> None:
    # HOME with a space and a quote: the layer lives there, as `cpkgs extend` would put it.
    home = tmp_path / "it's my home"
    home.mkdir()
    base = own_site / LINUX / "envs" / "act-1.0"
    layer = make_layer(home / "envs" / "mine", base, "act-1.0")
    stale = make_layer(home / "envs" / "stale", own_site / LINUX / "envs" / "vanished-1.0", "vanished-1.0")
    prof = own_site / "etc" / "profile.d" / "conda.sh"
    script = SHOW + f"""
. {sq(prof)}
cd "$HOME"
show a
conda activate ./envs/mine/
show b
echo "b.tool=$(layer-tool) $(cpkgs-test-app)"
conda deactivate
show c
conda activate "$HOME/envs/stale" || echo "rc.stale=$?"
show d
"""
    r = run_sh(shell, script, base_env(tmp_path, HOME=str(home)))
    assert r.returncode == 0, r
    v = kv(r.stdout)
    assert v["b.PATH"] == f"{layer}/bin:{base}/bin:{v['a.PATH']}"
    assert (v["b.CONDA_PREFIX"], v["b.CONDA_DEFAULT_ENV"]) == (str(layer), str(layer))
    assert (v["b.ACT"], v["b.ACT_PREFIX"]) == ("yes", str(layer))  # the base's script, CONDA_PREFIX = layer
    assert v["b.tool"] == "layer ok app ok"
    assert v["c.PATH"] == v["a.PATH"] and v["c.ACT"] == "<unset>"
    assert v["rc.stale"] == "1"
    assert all(v[f"d.{k}"] == v[f"c.{k}"] for k in ("PATH", "CONDA_PREFIX", "CONDA_SHLVL"))
    assert r.stderr.count("\n") == 1 and str(stale) in r.stderr and "no longer exists" in r.stderr, r.stderr


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_layer_on_retired_base_says_so(shell: str, channel_url: str, tmp_path: Path) -> None:
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "ret-1.0", "cpkgs-test-app", root=root).returncode == 0
    assert run_cpkgs("retire", "ret-1.0", "--message", "bye", root=root).returncode == 0
    layer = make_layer(tmp_path / "layer", root / LINUX / "envs" / "ret-1.0", "ret-1.0")
    r = run_sh(shell, f". {sq(root / 'etc/profile.d/conda.sh')}; conda activate {sq(layer)}; cpkgs-test-app",
               base_env(tmp_path))
    assert r.returncode == 0 and r.stdout == "app ok\n", r
    assert r.stderr.startswith("cpkgs: ret-1.0 is retired") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_darwin_arm64_sees_only_the_macos_installation(shell: str, own_site: Path, tmp_path: Path) -> None:
    fake = fake_uname(tmp_path, "Darwin", "arm64")
    env = base_env(tmp_path, PATH=f"{fake}:/usr/bin:/bin")
    r = run_sh(shell, f". {sq(own_site / 'etc/profile.d/conda.sh')}; echo \"inst=$CPKGS_INSTALLATION\"; "
               "conda env list; conda activate act-1.0 || echo rc=$?", env)
    assert r.returncode == 0, r
    assert "inst=anaconda3_macOS\n" in r.stdout
    names = [ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith(("mac-", "act-", "gone-"))]
    assert names == ["mac-1.0"] and "rc=1" in r.stdout


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_platform_detection_fallbacks_and_missing(shell: str, tmp_path: Path) -> None:
    # arm64 Mac, site serving only osx-64: Rosetta fallback.
    x86 = fake_root(tmp_path / "x86", ("linux-64", "osx-64"))
    env = base_env(tmp_path, PATH=f"{fake_uname(tmp_path, 'Darwin', 'arm64')}:/usr/bin:/bin")
    r = run_sh(shell, f'. {sq(x86 / "etc/profile.d/conda.sh")}; echo "inst=$CPKGS_INSTALLATION"', env)
    assert r.stdout == "inst=anaconda3_macOS_x86_64\n", r
    # unknown platform, and a site with no installation for this host: silent, status 0, nothing defined.
    mac_only = fake_root(tmp_path / "maconly", ("osx-arm64",))
    script = (f'. {sq(mac_only / "etc/profile.d/conda.sh")}; echo "rc=$? '
              '${CPKGS_ROOT-unset} ${CONDA_PKGS_DIRS-unset} ${JUPYTER_PATH-unset}"; '
              'command -v conda >/dev/null || echo noconda')
    for p in (f"{fake_uname(tmp_path, 'SunOS', 'sparc')}:/usr/bin:/bin", "/usr/bin:/bin"):
        r = run_sh(shell, script, base_env(tmp_path, PATH=p))
        assert (r.returncode, r.stdout, r.stderr) == (0, "rc=0 unset unset unset\nnoconda\n", ""), r
        r = run_sh(shell, script, base_env(tmp_path, PATH=p, CPKGS_VERBOSE="1"))
        assert r.returncode == 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("cpkgs: not set up"), r
    # the drive is not mounted: installation dir missing
    shutil.rmtree(mac_only / "anaconda3_macOS")
    r = run_sh(shell, script, base_env(tmp_path, PATH=f"{fake_uname(tmp_path, 'Darwin', 'arm64')}:/usr/bin:/bin"))
    assert (r.returncode, r.stderr) == (0, "") and "noconda" in r.stdout, r


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_real_conda_is_sourced_when_present(shell: str, tmp_path: Path) -> None:
    # No real conda can run here: a stub conda.sh in the installation stands for conda's own hook.
    root = fake_root(tmp_path / "site", ("linux-64",))
    hook = root / LINUX / "etc" / "profile.d" / "conda.sh"
    hook.parent.mkdir(parents=True)
    hook.write_text('conda() { echo "real conda $*"; }\n')
    r = run_sh(shell, f'. {sq(root / "etc/profile.d/conda.sh")}; conda activate x; echo "$CPKGS_INSTALLATION"',
               base_env(tmp_path))
    assert r.stdout == f"real conda activate x\n{LINUX}\n", r


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_modulepath_jupyter_and_double_source(shell: str, tmp_path: Path) -> None:
    root = fake_root(tmp_path / "site", ("linux-64",))
    prof = sq(root / "etc/profile.d/conda.sh")
    script = f'. {prof}; . {prof}; echo "MP=${{MODULEPATH-unset}}"; echo "JP=$JUPYTER_PATH"'
    r = run_sh(shell, script, base_env(tmp_path, MODULESHOME="/usr/share/lmod", MODULEPATH="/etc/mods",
                                       JUPYTER_PATH="/j"))
    assert kv(r.stdout) == {"MP": f"/etc/mods:{root}/modulefiles", "JP": f"/j:{root}/share/jupyter"}, r
    r = run_sh(shell, script, base_env(tmp_path))
    assert kv(r.stdout) == {"MP": "unset", "JP": f"{root}/share/jupyter"}, r


def _os_paths(tmp_path: Path) -> dict[str, str]:
    """PATH with a fake `uname` for each OS (this machine is Linux; the Linux one is faked too, for x86_64)."""
    return {
        "darwin": f"{fake_uname(tmp_path, 'Darwin', 'arm64')}:/usr/bin:/bin",
        "linux": f"{fake_uname(tmp_path, 'Linux', 'x86_64')}:/usr/bin:/bin",
    }


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_modulepath_and_jupyter_path_are_this_platforms_own(shell: str, tmp_path: Path) -> None:
    """The primary (first) platform's modules and kernels are at the root; every other platform's under its
    installation. Each host gets its own platform's dirs and never the other OS's, once however often sourced."""
    env = {"MODULESHOME": "/usr/share/lmod", "MODULEPATH": "/etc/mods", "JUPYTER_PATH": "/j"}
    paths = _os_paths(tmp_path)
    for platforms, dirs in (
        (("linux-64", "osx-arm64"), {"linux": "", "darwin": "/anaconda3_macOS"}),
        (("osx-arm64", "linux-64"), {"linux": "/anaconda3_linux", "darwin": ""}),
    ):
        root = fake_root(tmp_path / "-".join(platforms), platforms)
        prof = sq(root / "etc/profile.d/conda.sh")
        script = f'. {prof}; . {prof}; echo "MP=${{MODULEPATH-unset}}"; echo "JP=$JUPYTER_PATH"'
        for host, sub in dirs.items():
            r = run_sh(shell, script, base_env(tmp_path, PATH=paths[host], **env))
            assert r.returncode == 0 and r.stderr == "", r
            assert kv(r.stdout) == {"MP": f"/etc/mods:{root}{sub}/modulefiles",
                                    "JP": f"/j:{root}{sub}/share/jupyter"}, (platforms, host, r)


def test_csh_modulepath_and_jupyter_path_are_this_platforms_own(tmp_path: Path) -> None:
    paths = _os_paths(tmp_path)
    root = fake_root(tmp_path / "site", ("linux-64", "osx-arm64"))
    prof = root / "etc" / "profile.d" / "conda.csh"
    script = f"source '{prof}'\nsource '{prof}'\necho MP=$MODULEPATH\necho JP=$JUPYTER_PATH"
    for host, sub in (("linux", ""), ("darwin", "/anaconda3_macOS")):
        r = run_csh(script, csh_env(tmp_path, PATH=paths[host], MODULESHOME="/usr/share/lmod",
                                    MODULEPATH="/etc/mods", JUPYTER_PATH="/j"))
        assert r.returncode == 0 and r.stderr == "", r
        assert kv(r.stdout) == {"MP": f"/etc/mods:{root}{sub}/modulefiles", "JP": f"/j:{root}{sub}/share/jupyter"}, r
        # No module system and no JUPYTER_PATH yet: MODULEPATH stays unset, JUPYTER_PATH is just this platform's.
        r = run_csh(f"source '{prof}'\necho MP=$?MODULEPATH\necho JP=$JUPYTER_PATH", csh_env(tmp_path, PATH=paths[host]))
        assert (r.stdout, r.stderr) == (f"MP=0\nJP={root}{sub}/share/jupyter\n", ""), r


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_package_cache_is_private_and_hostile_paths_are_refused(shell: str, tmp_path: Path) -> None:
    root = fake_root(tmp_path / "site", ("linux-64",))
    script = f'. {sq(root / "etc/profile.d/conda.sh")}; echo "P=${{CONDA_PKGS_DIRS-unset}}"'
    uid = os.getuid()
    env = base_env(tmp_path)
    cache = Path(env["TMPDIR"]) / f"cpkgs-pkgs-{uid}"
    # created 0700 on first use, reused afterwards
    for _ in range(2):
        r = run_sh(shell, script, env)
        assert r.stdout == f"P={cache}\n", r
        assert cache.stat().st_mode & 0o777 == 0o700 and cache.stat().st_uid == uid
    # not XDG_RUNTIME_DIR: a small tmpfs emptied at logout is no place for a package cache
    xdg = tmp_path / "run-user"
    xdg.mkdir(mode=0o700)
    r = run_sh(shell, script, {**env, "XDG_RUNTIME_DIR": str(xdg)})
    assert r.stdout == f"P={cache}\n", r
    assert not (xdg / "cpkgs-pkgs").exists()
    # a user's own CONDA_PKGS_DIRS is left alone
    r = run_sh(shell, script, {**env, "CONDA_PKGS_DIRS": "/my/own"})
    assert r.stdout == "P=/my/own\n", r
    # hostile pre-created paths: another uid's dir, a symlink to a dir of ours, our dir left open to others
    other = tmp_path / "other"
    other.mkdir()
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    hostile = {
        "other-uid": lambda p: (p.mkdir(mode=0o700), os.chown(p, 65534, 65534)),
        "symlink": lambda p: p.symlink_to(mine),
        "open-mode": lambda p: (p.mkdir(), p.chmod(0o777)),
    }
    for i, (what, make) in enumerate(hostile.items()):
        tmpdir = tmp_path / f"tmp-{i}"
        tmpdir.mkdir()
        make(tmpdir / f"cpkgs-pkgs-{uid}")
        henv = {**env, "TMPDIR": str(tmpdir), "CONDA_PKGS_DIRS": f"{tmpdir}/cpkgs-pkgs-{uid}"}
        r = run_sh(shell, script, henv)
        assert (r.returncode, r.stdout, r.stderr) == (0, "P=unset\n", ""), (what, r)
        r = run_sh(shell, script, {**henv, "CPKGS_VERBOSE": "1"})
        assert r.stdout == "P=unset\n" and "not using" in r.stderr, (what, r)
        assert not (tmpdir / f"cpkgs-pkgs-{uid}" / ".cpkgs-ok").exists()
        assert not (mine / ".cpkgs-ok").exists()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_one_fork_per_source(own_site: Path, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    prof = own_site / "etc" / "profile.d" / "conda.sh"

    def forks(cmd: str) -> int:
        out = tmp_path / "trace"
        subprocess.run(["strace", "-f", "-qq", "-e", "trace=fork,vfork,clone,clone3", "-o", str(out),
                        "bash", "-c", cmd], env=env, check=True, capture_output=True)
        return sum(1 for ln in out.read_text().splitlines() if "clone" in ln or "fork" in ln)

    forks(f". {sq(prof)}")  # first source creates the cache dir
    assert forks(f". {sq(prof)}") - forks(":") == 1


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_removed_envs_cost_the_shell_no_fork_and_no_extra_lookup(channel_url: str, tmp_path: Path) -> None:
    """Activating a current env looks at the marker path once, as before removed envs had markers (one lookup on
    NFS); the marker is read only for envs that have one, and nothing forks."""
    root = removing_site(tmp_path, channel_url)
    out = tmp_path / "trace"
    steps = {"active": "conda activate rm-2.0", "list": "conda env list >/dev/null",
             "removed": "conda activate lone-1.0 2>/dev/null || :"}
    script = f". {sq(root / 'etc/profile.d/conda.sh')}\n" + "".join(
        f"[ -e /cpkgs-step-{k} ] || :\n{cmd}\n" for k, cmd in steps.items())
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,%process", "-o", str(out), "bash", "-c", script],
                   env=base_env(tmp_path), check=True, capture_output=True)
    trace = out.read_text().split("/cpkgs-step-")[1:]
    seen = {part.split('"', 1)[0]: part.splitlines()[1:] for part in trace}
    markers = root / ".cpkgs" / "retired" / LINUX
    for step, lines in seen.items():
        assert not [ln for ln in lines if "clone" in ln or "fork" in ln or "execve" in ln], (step, lines)
    calls = [ln.split("(", 1)[0].split()[-1] for ln in seen["active"] if str(markers) in ln]
    assert len(calls) == 1 and "stat" in calls[0], seen["active"]  # [ -f MARKER ]: not there, nothing read
    # conda env list: one lookup per env, and a read of the markers that exist (rm-1.0 retired, lone-1.0 removed)
    reads = sorted(ln.split('"')[1].rsplit("/", 1)[1] for ln in seen["list"] if "openat" in ln and str(markers) in ln)
    assert reads == ["lone-1.0", "rm-1.0"], seen["list"]


# ------------------------------------------------------------------------------------------------- csh
def csh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(tmp_path, **extra)


CSH_SHOW = r"""
alias show 'echo "\!:1.PATH=$PATH"; env | grep -E "^(CONDA_PREFIX|CONDA_SHLVL|CPKGS_TEST_ACT_PREFIX)=" | sed "s/^/\!:1./"'
"""


def test_csh_round_trip_nested_retired(built_site: Path, tmp_path: Path) -> None:
    prof = built_site / "etc" / "profile.d" / "conda.csh"
    d1, d2 = built_site / LINUX / "envs" / "demo-1.0", built_site / LINUX / "envs" / "demo-2.0"
    script = CSH_SHOW + f"""
set prompt = "my prompt> "
source '{prof}'
source '{prof}'
set p0 = "$PATH"
conda env list
conda activate demo-1.0
show b
echo "b.prompt=$prompt"
conda activate old-1.0
show c
conda deactivate
show d
echo "d.prompt=$prompt"
conda deactivate
echo "e.PATHSAME=`if ("$PATH" == "$p0") echo yes`"
echo "e.prompt=$prompt"
echo "e.vars=$?CONDA_PREFIX $?CPKGS_TEST_ACTIVATED $CONDA_SHLVL"
conda activate nope
echo "f.PATHSAME=`if ("$PATH" == "$p0") echo yes`"
echo "inst=$CPKGS_INSTALLATION"
set | grep '^_cpkgs' || echo noleak
"""
    r = run_csh(script, csh_env(tmp_path))
    v = kv(r.stdout)
    assert v["b.PATH"].startswith(f"{d1}/bin:") and v["b.CONDA_PREFIX"] == str(d1) and v["b.CONDA_SHLVL"] == "1", r
    assert v["b.prompt"] == "(demo-1.0) my prompt> " and v["b.CPKGS_TEST_ACT_PREFIX"] == str(d1)
    assert v["c.PATH"].startswith(f"{built_site / LINUX / 'envs/old-1.0'}/bin:") and v["c.CONDA_SHLVL"] == "2"
    assert v["c.CPKGS_TEST_ACT_PREFIX"] == str(built_site / LINUX / "envs/old-1.0")
    assert v["d.CONDA_PREFIX"] == str(d1) and v["d.CPKGS_TEST_ACT_PREFIX"] == str(d1) and v["d.prompt"] == "(demo-1.0) my prompt> "
    assert v["e.PATHSAME"] == "yes" and v["e.prompt"] == "my prompt> " and v["e.vars"] == "0 0 0"
    assert v["f.PATHSAME"] == "yes" and v["inst"] == LINUX and "noleak" in r.stdout
    assert "demo-2.0" in r.stdout and "(retired)" in r.stdout and str(d2) in r.stdout
    err = r.stderr.splitlines()
    assert err == ["cpkgs: old-1.0 is retired; use demo-2.0 (moved to 2.0)",
                   f"cpkgs: no environment named 'nope' in {built_site / LINUX}/envs (see 'conda env list')"], r


def test_csh_removed_env_is_hidden_and_refused_while_a_shell_using_it_goes_on(
    channel_url: str, tmp_path: Path
) -> None:
    root = removing_site(tmp_path, channel_url)
    prefix = root / LINUX / "envs" / "rm-1.0"
    script = f"""
source '{root / "etc/profile.d/conda.csh"}'
conda activate rm-1.0 >& /dev/null
'{sys.executable}' -m cpkgs_admin --root '{root}' -q remove rm-1.0
echo "app=`cpkgs-test-app`"
conda env list
echo "----"
conda deactivate
conda env list
set p = "$PATH"
conda activate rm-1.0
echo "rc.name=$status"
conda activate '{prefix}'
echo "rc.path=$status"
conda activate lone-1.0
echo "rc.lone=$status"
echo "unchanged=`if ("$PATH" == "$p") echo yes` $?CONDA_PREFIX $CONDA_SHLVL"
"""
    r = run_csh(script, csh_env(tmp_path))
    before, after = r.stdout.split("----\n")
    assert kv(before)["app"] == "app ok", r
    rows = env_rows(before)
    assert set(rows) == {"rm-1.0", "rm-2.0"} and rows["rm-1.0"].endswith(f"{prefix}  (removed)"), before
    assert set(env_rows(after)) == {"rm-2.0"}, after
    v = kv(after)
    assert (v["rc.name"], v["rc.path"], v["rc.lone"], v["unchanged"]) == ("1", "1", "1", "yes 0 0"), r
    assert r.stderr.splitlines() == ["cpkgs: rm-1.0 was removed; use rm-2.0"] * 2 + ["cpkgs: lone-1.0 was removed"]


def test_csh_layer_path_with_spaces_darwin_and_cache(own_site: Path, tmp_path: Path) -> None:
    home = tmp_path / "my home"
    home.mkdir()
    base = own_site / LINUX / "envs" / "act-1.0"
    layer = make_layer(home / "my layer", base, "act-1.0")
    prof = own_site / "etc" / "profile.d" / "conda.csh"
    script = CSH_SHOW + f"""
source '{prof}'
show a
conda activate "$HOME/my layer"
show b
layer-tool
conda deactivate
show c
echo "P=$CONDA_PKGS_DIRS"
"""
    r = run_csh(script, csh_env(tmp_path, HOME=str(home)))
    v = kv(r.stdout)
    assert v["b.PATH"] == f"{layer}/bin:{base}/bin:{v['a.PATH']}" and v.get("b.CPKGS_TEST_ACT_PREFIX") == str(layer), r
    assert "layer ok" in r.stdout and v["c.PATH"] == v["a.PATH"] and "c.CPKGS_TEST_ACT_PREFIX" not in v
    assert v["P"] == f"{tmp_path}/localtmp/cpkgs-pkgs-{os.getuid()}" and r.stderr == "", r
    # arm64 Mac: only the macOS installation
    fake = fake_uname(tmp_path, "Darwin", "arm64")
    r = run_csh(f"source '{prof}'\necho inst=$CPKGS_INSTALLATION\nconda env list",
                csh_env(tmp_path, PATH=f"{fake}:/usr/bin:/bin"))
    assert "inst=anaconda3_macOS" in r.stdout and "mac-1.0" in r.stdout and "act-1.0" not in r.stdout, r
    # hostile cache path: another uid's dir is refused
    tmpdir = tmp_path / "hostile"
    tmpdir.mkdir()
    (tmpdir / f"cpkgs-pkgs-{os.getuid()}").mkdir(mode=0o700)
    os.chown(tmpdir / f"cpkgs-pkgs-{os.getuid()}", 65534, 65534)
    r = run_csh(f"source '{prof}'\necho P=$?CONDA_PKGS_DIRS", csh_env(tmp_path, TMPDIR=str(tmpdir)))
    assert r.stdout == "P=0\n" and r.stderr == "", r
    # not mounted / unknown platform: silent
    sun = fake_uname(tmp_path, "SunOS", "sparc")
    r = run_csh(f"source '{prof}'\necho $?CPKGS_ROOT\nalias conda", csh_env(tmp_path, PATH=f"{sun}:/usr/bin:/bin"))
    assert (r.stdout, r.stderr) == ("0\n", ""), r


# The user's glob and word-splitting options: the activate.d scripts still run, nothing is left behind, and the
# options are theirs again afterwards.
GLOB_OPTIONS = {
    "bash": ["shopt -s failglob", "set -f", "IFS=:"],
    "zsh": ["setopt noglob", "setopt warncreateglobal", "setopt nullglob", "setopt cshnullglob", "setopt markdirs",
            "IFS=:"],
    "dash": ["set -f", "IFS=:"],
    "ksh": ["set -f", "set -o markdirs", "IFS=:"],
}


@pytest.mark.parametrize(("shell", "option"), [(s, o) for s, opts in GLOB_OPTIONS.items() for o in opts])
def test_users_glob_and_ifs_options(shell: str, option: str, built_site: Path, tmp_path: Path) -> None:
    prof = built_site / "etc" / "profile.d" / "conda.sh"
    script = f"""
{option}
. {sq(prof)}
conda activate tools-1.0
conda activate demo-1.0
echo "act=${{CPKGS_TEST_ACTIVATED-not run}}"
conda env list > {sq(tmp_path / "list.txt")}
conda deactivate
conda deactivate
echo "prefix=${{CONDA_PREFIX-none}} shlvl=$CONDA_SHLVL"
set | grep -c '^_cpkgs' || :
"""
    if shell == "bash":
        script += "shopt -q failglob && echo failglob=on; case $- in *f*) echo noglob=on;; esac\n"
    elif shell == "zsh":
        script += "[[ -o noglob ]] && echo noglob=on; [[ -o warncreateglobal ]] && echo warn=on; :\n"
    else:
        script += "case $- in *f*) echo noglob=on;; esac\n"
    r = run_sh(shell, script, base_env(tmp_path), strict=False)
    assert r.returncode == 0 and r.stderr == "", (option, r)
    v = kv(r.stdout)
    assert v["act"] == "yes" and v["prefix"] == "none shlvl=0", (option, r.stdout)
    assert r.stdout.splitlines()[2] == "0"  # no _cpkgs_* variable left
    listed = [ln.split()[0] for ln in (tmp_path / "list.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert listed == ["demo-1.0", "demo-2.0", "old-1.0", "tools-1.0"]
    kept = {"shopt -s failglob": "failglob", "set -f": "noglob", "setopt noglob": "noglob",
            "setopt warncreateglobal": "warn"}.get(option)
    if kept:
        assert v[kept] == "on", r.stdout


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_users_own_conda_hook_sourced_first_stays(shell: str, built_site: Path, tmp_path: Path) -> None:
    """A user whose own conda's hook runs before this profile keeps their conda (a stand-in for conda's hook:
    CONDA_EXE plus the __conda_exe and conda functions it defines; no real conda can be installed here)."""
    prof = built_site / "etc" / "profile.d" / "conda.sh"
    script = f"""
CONDA_EXE=/bin/true; export CONDA_EXE
__conda_exe() {{ :; }}
conda() {{ echo "own conda: $*"; }}
. {sq(prof)}
conda create -n foo numpy
echo "root=$CPKGS_ROOT"
"""
    r = run_sh(shell, script, base_env(tmp_path))
    assert r.returncode == 0 and r.stderr == "", r
    assert r.stdout.splitlines() == ["own conda: create -n foo numpy", f"root={built_site}"]
    # Without the hook in this shell (CONDA_EXE inherited from a parent shell only) the light conda is defined.
    r = run_sh(shell, f"CONDA_EXE=/bin/true; export CONDA_EXE; . {sq(prof)}; conda activate tools-1.0; "
                      'echo "prefix=$CONDA_PREFIX"', base_env(tmp_path))
    assert r.returncode == 0 and kv(r.stdout)["prefix"] == str(built_site / LINUX / "envs" / "tools-1.0"), r


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_activate_and_deactivate_refuse_extra_words(shell: str, built_site: Path, tmp_path: Path) -> None:
    prof = built_site / "etc" / "profile.d" / "conda.sh"
    r = run_sh(shell, f". {sq(prof)}; conda activate demo-1.0 extra || echo rc=$?; "
                      'echo "prefix=${CONDA_PREFIX-none}"; conda deactivate now || echo rc2=$?', base_env(tmp_path))
    assert r.returncode == 0, r
    v = kv(r.stdout)
    assert (v["rc"], v["prefix"], v["rc2"]) == ("1", "none", "1"), r.stdout
    assert r.stderr.splitlines() == [
        "cpkgs: usage: conda activate NAME|PATH (this site's conda has no base env and no options)",
        "cpkgs: usage: conda deactivate (it takes no arguments)",
    ]


def test_csh_users_own_conda_alias_stays(built_site: Path, tmp_path: Path) -> None:
    """conda's csh hook sets _CONDA_EXE and aliases conda: sourced before this profile, that alias stays (a
    stand-in alias; no real conda here). Without it, the light conda's alias is defined."""
    prof = built_site / "etc" / "profile.d" / "conda.csh"
    own = f"""
setenv _CONDA_EXE /bin/true
alias conda 'echo own conda: \\!*'
source '{prof}'
conda create -n foo
"""
    r = run_csh(own, csh_env(tmp_path))
    assert r.returncode == 0 and r.stdout == "own conda: create -n foo\n", r
    light = f"""
setenv _CONDA_EXE /bin/true
source '{prof}'
source '{prof}'
conda activate tools-1.0
echo "prefix=$CONDA_PREFIX"
"""
    r = run_csh(light, csh_env(tmp_path))
    assert r.returncode == 0 and kv(r.stdout)["prefix"] == str(built_site / LINUX / "envs" / "tools-1.0"), r


def test_csh_conda_returns_a_failing_status(built_site: Path, tmp_path: Path) -> None:
    """Scripts test `conda activate X` in csh too: a failing status on errors, 0 on success, nothing left."""
    prof = built_site / "etc" / "profile.d" / "conda.csh"
    script = f"""
source '{prof}'
conda activate no-such-1.0
echo "rc.unknown=$status"
conda activate no-such-1.0 && echo "chain=ran"
conda frobnicate
echo "rc.other=$status"
conda activate tools-1.0 extra
echo "rc.extra=$status"
conda activate tools-1.0
echo "rc.ok=$status"
conda deactivate
echo "rc.deact=$status"
echo "left=$?_cpkgs_rc"
"""
    r = run_csh(script, csh_env(tmp_path))
    v = kv(r.stdout)
    assert "chain" not in v, r.stdout
    assert (v["rc.unknown"], v["rc.other"], v["rc.extra"], v["rc.ok"], v["rc.deact"], v["left"]) == (
        "1", "1", "1", "0", "0", "0"), r
    assert len(r.stderr.splitlines()) == 4, r.stderr


def test_csh_verbose_line_reaches_a_socket_stderr(tmp_path: Path) -> None:
    """Under a service manager stderr is a socket, where csh's `> /dev/stderr` fails: the line still arrives."""
    import socket

    a, b = socket.socketpair()
    with a, b:
        env = base_env(tmp_path, CPKGS_VERBOSE="1")
        r = subprocess.run(["tcsh", "-f", "-c", f"source '{REPO / 'etc' / 'profile.d' / 'conda.csh'}'"], stdout=subprocess.PIPE,
                           stderr=b.fileno(), env=env, timeout=60, text=True)
        b.close()
        got = a.recv(4096).decode()
    assert r.returncode == 0, r
    assert got.startswith("cpkgs: not set up: /nfs/cpkgs/") and got.endswith("\n") and got.count("\n") == 1, got


@pytest.mark.parametrize("shell", SH_SHELLS)
def test_conda_called_from_an_activate_script(shell: str, built_site: Path, tmp_path: Path) -> None:
    """An activate.d script that runs `conda` itself: its `conda env list` works, an activation from there is
    refused with a line (it could not take effect), and the running activation, its exit status and the user's
    options are untouched."""
    prof = built_site / "etc" / "profile.d" / "conda.sh"
    env_dir = tmp_path / "odd env"
    (env_dir / "conda-meta").mkdir(parents=True)
    (env_dir / "bin").mkdir()
    scripts = env_dir / "etc" / "conda" / "activate.d"
    scripts.mkdir(parents=True)
    (scripts / "a.sh").write_text('conda env list > /dev/null && NESTED_LIST=ok\n')
    (scripts / "b.sh").write_text("conda activate tools-1.0 || NESTED_ACT=refused\n")
    option = "setopt noglob" if shell == "zsh" else "set -f"
    check = "[[ -o noglob ]] && echo kept=yes" if shell == "zsh" else 'case $- in *f*) echo kept=yes;; esac'
    script = f"""
{option}
. {sq(prof)}
conda activate {sq(env_dir)}
echo "rc=$? list=${{NESTED_LIST-}} act=${{NESTED_ACT-}} prefix=$CONDA_PREFIX"
{check}
set | grep -c '^_cpkgs' || :
"""
    r = run_sh(shell, script, base_env(tmp_path), strict=False)
    v = kv(r.stdout)
    assert v["rc"] == f"0 list=ok act=refused prefix={env_dir}" and v["kept"] == "yes", r
    assert r.stdout.splitlines()[-1] == "0", r.stdout
    assert r.stderr == (f"cpkgs: conda activate from {scripts / 'b.sh'} is ignored (an activation is running; if "
                        "none is, one was interrupted: start a new shell)\n"), r.stderr


def test_csh_conda_called_from_an_activate_script(built_site: Path, tmp_path: Path) -> None:
    prof = built_site / "etc" / "profile.d" / "conda.csh"
    env_dir = tmp_path / "odd"
    (env_dir / "conda-meta").mkdir(parents=True)
    (env_dir / "bin").mkdir()
    scripts = env_dir / "etc" / "conda" / "activate.d"
    scripts.mkdir(parents=True)
    (scripts / "a.csh").write_text("conda env list > /dev/null\nsetenv NESTED_LIST $status\n")
    script = f"""
source '{prof}'
conda activate '{env_dir}'
echo "rc=$status"
echo "list=$NESTED_LIST"
echo "prefix=$CONDA_PREFIX"
echo "left=$?_cpkgs_rc"
"""
    r = run_csh(script, csh_env(tmp_path))
    v = kv(r.stdout)
    assert (v["rc"], v["list"], v["prefix"], v["left"]) == ("0", "0", str(env_dir), "0"), r
