"""A user's real conda (26.7.1) and cpkgs agree (issue #16), for ordinary users (uid 65534) and for root.

Real conda (tests/conda_client/build_conda.py), real cpkgs sites built from the local test channel, real shells
(bash, zsh, tcsh) through conda's own hook and through the site's profile. Every test checks what the user sees
(conda's exit status and lines, files) and that the site is left as it was (nothing created at the root or in
`envs/`, `cpkgs verify` clean).

The conda behaviours these tests rely on (and that cpkgs' design leans on) are listed with the conda source file
showing each in README ("Your own conda").
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FULL_SPECS, Result, UserConda, make_site, run_cpkgs, tree_hash, world_traversable
from cpkgs_admin.site.text import csh_quote

LINUX = "anaconda3_linux"
ENVS = f"{LINUX}/envs"
PROFILE = {"CPKGS_INSTALLATION": LINUX}  # what the site's conda.sh / conda.csh export on this host
SPEC_VAR, SPEC_VALUE = "DEMO_DATA", "spec value"
REQUESTED = (*FULL_SPECS, "cpkgs-test-lib 1.1.*")

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------------------ fixtures


def _open_for_cleanup(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


@pytest.fixture(scope="module")
def agree_site(tmp_path_factory: pytest.TempPathFactory, conda_channel_url: str) -> Iterator[Path]:
    """demo-1.0 (python + every test package, lib 1.1, the spec variable) and tools-1.0 (no python), built from
    specs/ files. Read-only for the tests: the ones that change a site make their own (`victim`)."""
    root = make_site(tmp_path_factory.mktemp("agree") / "site", conda_channel_url)
    deps = "".join(f"  - {s}\n" for s in REQUESTED)
    (root / "specs" / "demo.yml").write_text(f"dependencies:\n{deps}variables:\n  {SPEC_VAR}: {SPEC_VALUE}\n")
    (root / "specs" / "tools.yml").write_text("dependencies:\n  - cpkgs-test-app\n")
    for name in ("demo-1.0", "tools-1.0"):
        r = run_cpkgs("new-env", name, root=root)
        assert r.returncode == 0, r
    world_traversable(root)
    yield root
    _open_for_cleanup(root)


@pytest.fixture
def victim(tmp_path: Path, conda_channel_url: str) -> Path:
    """A site of this test's own with one small sealed env, victim-1.0, for conda commands that would change it."""
    root = make_site(tmp_path / "site", conda_channel_url)
    r = run_cpkgs("new-env", "victim-1.0", "cpkgs-test-app", root=root)
    assert r.returncode == 0, r
    world_traversable(root)
    return root


def entry(root: Path) -> str:
    return f"{root}/${{CPKGS_INSTALLATION}}/envs"


def link(conda: UserConda, root: Path) -> Path:
    """`cpkgs link-user` run by the owner of CONDA's home on their ~/.condarc (which conda reads besides
    $CONDARC)."""
    rc = conda.home / ".condarc"
    r = run_cpkgs("link-user", "--condarc", str(rc), root=root, user=conda.user, env={"HOME": str(conda.home)})
    assert r.returncode == 0, r
    return rc


def site_entries(root: Path) -> set[str]:
    """Every path at the site outside `.cpkgs/` and outside the envs themselves: what a conda could have added."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".cpkgs" or rel.startswith(".cpkgs/"):
            dirnames[:] = []
            continue
        if os.path.basename(os.path.dirname(dirpath)) == "envs" and (Path(dirpath) / "conda-meta").is_dir():
            dirnames[:] = []  # an env: its files are verify's business
        out.update(os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames)
    return out


def verify_clean(root: Path, *names: str) -> None:
    r = run_cpkgs("verify", *names, root=root)
    assert r.returncode == 0, r


def conda_json(conda: UserConda, *args: str, env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    r = conda.conda(*args, "--json", env=env)
    assert r.returncode == 0, r
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def create_args(conda: UserConda, name: str = "x", *extra: str) -> tuple[str, ...]:
    return ("create", "-y", "-n", name, "--offline", "--override-channels", "-c", conda.channel_url, *extra,
            "cpkgs-test-app")


def blocks(out: str) -> dict[str, list[str]]:
    """Output split at lines `==NAME` into NAME -> its lines."""
    got: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in out.splitlines():
        if line.startswith("=="):
            cur = got.setdefault(line[2:], [])
        else:
            cur.append(line)
    return got


def values(lines: list[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if "=" in line)


# ------------------------------------------------------------------------------------------------------ item 1


@pytest.mark.parametrize("who", ["user", "root"])
def test_link_user_shows_the_shared_envs_to_conda(who: str, request: pytest.FixtureRequest, agree_site: Path) -> None:
    """With the profile's CPKGS_INSTALLATION conda lists the site's envs (`env list`, `info --envs`); without it,
    none of them (the item stays literal)."""
    conda: UserConda = request.getfixturevalue(f"{who}_conda")
    link(conda, agree_site)
    envs = conda_json(conda, "info", "--envs", env=PROFILE)["envs"]
    assert {str(agree_site / ENVS / n) for n in ("demo-1.0", "tools-1.0")} <= set(envs), envs
    rows = [line.split() for line in conda.conda("env", "list", env=PROFILE).stdout.splitlines()]
    assert any(row[0] == "demo-1.0" and row[-1] == str(agree_site / ENVS / "demo-1.0") for row in rows if row), rows
    envs = conda_json(conda, "info", "--envs")["envs"]
    assert not any(e.startswith(str(agree_site)) for e in envs), envs


@pytest.mark.parametrize("who", ["user", "root"])
def test_link_user_keeps_your_own_envs_first(who: str, request: pytest.FixtureRequest, agree_site: Path) -> None:
    """A new envs_dirs key starts with the user's own default (~/.conda/envs, where conda puts a user's envs),
    then the site's item: conda creates new envs in the first writable entry."""
    conda: UserConda = request.getfixturevalue(f"{who}_conda")
    rc = link(conda, agree_site)
    from ruamel.yaml import YAML

    assert YAML(typ="safe").load(rc.read_text())["envs_dirs"] == ["~/.conda/envs", entry(agree_site)]
    dirs = conda_json(conda, "config", "--show", "envs_dirs", env=PROFILE)["envs_dirs"]
    assert dirs[:2] == [str(conda.home / ".conda" / "envs"), str(agree_site / ENVS)], dirs


@pytest.mark.parametrize("profile", [True, False], ids=["profile", "no-profile"])
@pytest.mark.parametrize("who", ["user", "root"])
def test_conda_create_lands_in_your_home(who: str, profile: bool, request: pytest.FixtureRequest,
                                         victim: Path) -> None:
    """After link-user, `conda create -n x` (and its --dry-run) by a user or root puts nothing at the site: the env
    goes to ~/.conda/envs, with or without the profile."""
    conda: UserConda = request.getfixturevalue(f"{who}_conda")
    link(conda, victim)
    before = site_entries(victim)
    env = PROFILE if profile else None
    r = conda.conda(*create_args(conda, "dry", "--dry-run"), env=env)
    assert r.returncode == 0, r
    r = conda.conda(*create_args(conda), env=env)
    assert r.returncode == 0, r
    assert (conda.home / ".conda" / "envs" / "x" / "conda-meta" / "history").is_file()
    assert site_entries(victim) == before
    verify_clean(victim)


@pytest.mark.parametrize("who", ["user", "root"])
def test_the_literal_installation_dir_is_never_created(who: str, request: pytest.FixtureRequest,
                                                       victim: Path) -> None:
    """A condarc whose first envs_dirs item is the site's (as link-user wrote it before), in a shell without the
    profile: conda reaches `<root>/${CPKGS_INSTALLATION}/envs` literally. A user's conda skips it and creates in
    the home; root's must not create it either (it may refuse the create: conda's first writable envs dir fails)."""
    conda: UserConda = request.getfixturevalue(f"{who}_conda")
    rc = conda.home / ".condarc"
    rc.write_text(f"envs_dirs:\n  - {entry(victim)}\n")
    before = site_entries(victim)
    r = conda.conda(*create_args(conda))
    if who == "user":
        assert r.returncode == 0, r
        assert (conda.home / ".conda" / "envs" / "x" / "conda-meta" / "history").is_file()
    assert site_entries(victim) == before, r
    assert not (victim / "${CPKGS_INSTALLATION}" / "envs").is_dir()
    verify_clean(victim)


def test_stray_entries_at_the_root_and_in_envs_are_reported(victim: Path) -> None:
    """What a conda leaves in a site where it was allowed to: its write probe and an env in envs/, and the literal
    installation dir at the root (an older site without the guard). `verify` and an admin's `doctor` name each."""
    envs = victim / ENVS
    (envs / ".conda_envs_dir_test").write_text("")
    (envs / "x" / "conda-meta").mkdir(parents=True)
    (envs / "x" / "conda-meta" / "history").write_text("")
    literal = victim / "${CPKGS_INSTALLATION}"
    if literal.exists():
        os.chmod(literal, 0o755)
        shutil.rmtree(literal)
    (literal / "envs" / "y" / "conda-meta").mkdir(parents=True)
    r = run_cpkgs("verify", root=victim)
    assert r.returncode == 4, r
    for path in (envs / ".conda_envs_dir_test", envs / "x", literal):
        assert str(path) in r.stdout, (path, r)
    r = run_cpkgs("doctor", root=victim, env=PROFILE)
    assert r.returncode == 4, r
    for path in (envs / ".conda_envs_dir_test", envs / "x", literal):
        assert str(path) in r.stdout, (path, r)


# ------------------------------------------------------------------------------------------------------ item 3


@pytest.mark.parametrize("who", ["user", "root"])
def test_env_create_naming_a_shared_env_is_refused(who: str, request: pytest.FixtureRequest, victim: Path,
                                                  tmp_path: Path) -> None:
    """`conda env create -f x.yml` with `name: <shared env>` (what `cpkgs export --format yaml` and `conda env
    export` write): refused before anything is deleted, for root too (conda answers yes by default there)."""
    conda: UserConda = request.getfixturevalue(f"{who}_conda")
    link(conda, victim)
    exported = run_cpkgs("export", "victim-1.0", "--format", "yaml", root=victim)
    assert exported.returncode == 0 and "name: victim-1.0" in exported.stdout, exported
    yml = conda.base / "victim.yml"
    yml.write_text(exported.stdout)  # its channels: the site's, here the local test channel
    os.chmod(yml, 0o644)
    prefix = victim / ENVS / "victim-1.0"
    before, entries = tree_hash(prefix), site_entries(victim)
    r = conda.conda("env", "create", "-f", str(yml), env=PROFILE)
    assert r.returncode != 0, r
    assert "Could not remove" not in r.stderr, r  # refused before it tries to delete anything
    assert tree_hash(prefix) == before
    assert site_entries(victim) == entries
    verify_clean(victim)
    # what the export's header says to do instead works
    assert "conda env create -n NEWNAME -f FILE" in exported.stdout
    r = conda.conda("env", "create", "-n", "copy", "-f", str(yml), "--dry-run", "--offline", env=PROFILE)
    assert r.returncode == 0 and "cpkgs-test-app" in r.stdout, r
    assert site_entries(victim) == entries


@pytest.mark.parametrize("who", ["user", "root"])
def test_install_into_a_shared_env_is_refused(who: str, request: pytest.FixtureRequest, victim: Path) -> None:
    """A user's conda cannot write the sealed env (EnvironmentNotWritableError); root's is stopped by the frozen
    marker, whose message says what to do instead."""
    conda: UserConda = request.getfixturevalue(f"{who}_conda")
    link(conda, victim)
    prefix = victim / ENVS / "victim-1.0"
    before = tree_hash(prefix)
    r = conda.conda("install", "-y", "-n", "victim-1.0", "--offline", "--override-channels", "-c", conda.channel_url,
                    "cpkgs-test-lib=1.1", env=PROFILE)
    assert r.returncode != 0, r
    if who == "user":
        assert "EnvironmentNotWritableError" in r.stderr or "not writable" in r.stderr, r
    else:
        assert "marked as frozen" in r.stderr and "cpkgs extend victim-1.0" in r.stderr, r
    assert tree_hash(prefix) == before
    verify_clean(victim)


def test_root_cannot_remove_or_update_a_shared_env(root_conda: UserConda, victim: Path) -> None:
    """`conda env remove` and `conda env update` (and `conda remove --all`) check the frozen marker first."""
    link(root_conda, victim)
    prefix = victim / ENVS / "victim-1.0"
    before = tree_hash(prefix)
    yml = root_conda.base / "update.yml"
    yml.write_text(f"channels: [{root_conda.channel_url}]\ndependencies: [cpkgs-test-lib=1.1]\n")
    for args in (("env", "remove", "-y", "-n", "victim-1.0"), ("remove", "-y", "--all", "-n", "victim-1.0"),
                 ("env", "update", "-n", "victim-1.0", "-f", str(yml))):
        r = root_conda.conda(*args, env=PROFILE)
        assert r.returncode != 0 and "marked as frozen" in r.stderr, (args, r)
        assert tree_hash(prefix) == before, args
    verify_clean(victim)


def test_conda_env_list_marks_shared_envs_frozen(user_conda: UserConda, agree_site: Path) -> None:
    link(user_conda, agree_site)
    rows = [line.split() for line in user_conda.conda("env", "list", env=PROFILE).stdout.splitlines()]
    assert ["demo-1.0", "+", str(agree_site / ENVS / "demo-1.0")] in rows, rows


def test_frozen_marker_follows_the_seal(victim: Path) -> None:
    """conda-meta/frozen (CEP 22) names the env, the site and `cpkgs extend`; unseal removes it, seal restores it,
    and verify reports a sealed env without it."""
    frozen = victim / ENVS / "victim-1.0" / "conda-meta" / "frozen"
    message = json.loads(frozen.read_text())["message"]
    assert "victim-1.0" in message and str(victim) in message and "cpkgs extend victim-1.0" in message, message
    assert run_cpkgs("unseal", "victim-1.0", "--reason", "test", root=victim).returncode == 0
    assert not frozen.exists()
    assert run_cpkgs("seal", "victim-1.0", root=victim).returncode == 0
    assert json.loads(frozen.read_text())["message"] == message
    verify_clean(victim)
    frozen.unlink()  # root writes through the seal
    r = run_cpkgs("verify", "victim-1.0", root=victim)
    assert r.returncode == 4 and "conda-meta/frozen" in r.stdout, r
    frozen.write_text("frozen\n")  # not JSON: conda 26.7.1 fails on it (core/prefix_data.py is_frozen)
    r = run_cpkgs("verify", "victim-1.0", root=victim)
    assert r.returncode == 4 and "conda-meta/frozen: not conda's JSON marker" in r.stdout, r
    frozen.unlink()
    # an env built before the marker (sealed, without one): `seal` adds it
    assert run_cpkgs("seal", "victim-1.0", root=victim).returncode == 0
    assert json.loads(frozen.read_text())["message"] == message
    verify_clean(victim)


# ------------------------------------------------------------------------------------------------------ activation

SHOW_ENV = f"env | grep -E '^(CONDA_PREFIX|CPKGS_TEST_[A-Z_]*|{SPEC_VAR})=' | sort"
ACTIVATE = f"""echo "==before"
echo "PATH=$PATH"
conda activate demo-1.0
echo "==active"
echo "PATH=$PATH"
{SHOW_ENV}
cpkgs-test-app
conda deactivate
echo "==after"
echo "PATH=$PATH"
{SHOW_ENV}
echo "==end"
"""


def gone(after: dict[str, str], conda_posix: bool = False) -> bool:
    """Every variable the activation set is gone after deactivation. conda's own sh activator "unsets" by exporting
    an empty value (conda/activate.py PosixActivator.unset_var_tmpl = "export %s=''"), for every env's env_vars:
    under conda's bash/zsh hook the spec variable is left empty, as conda leaves its own; csh's unsetenv and cpkgs'
    conda remove it."""
    if any(k.startswith("CPKGS_TEST_") for k in after):
        return False
    return SPEC_VAR not in after or (conda_posix and after[SPEC_VAR] == "")


def profile_line(root: Path, shell: str) -> str:
    return f"source {root}/etc/profile.d/conda.csh\n" if shell == "tcsh" else f". {root}/etc/profile.d/conda.sh\n"


@pytest.mark.parametrize("order", ["profile-first", "hook-first"])
@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_activation_through_condas_hook(shell: str, order: str, user_conda: UserConda, agree_site: Path) -> None:
    """conda's own hook activates a shared env by name with the site profile sourced before or after it: its
    programs, its activate.d scripts (CONDA_PREFIX = the env), the spec variable; all undone on deactivate."""
    link(user_conda, agree_site)
    prof = profile_line(agree_site, shell)
    first, script = (prof, ACTIVATE) if order == "profile-first" else ("", prof + ACTIVATE)
    r = user_conda.shell(shell, script, before=first)
    assert r.returncode == 0, r
    got = blocks(r.stdout)
    prefix = agree_site / ENVS / "demo-1.0"
    active = values(got["active"])
    assert active["PATH"].startswith(f"{prefix}/bin:"), r
    assert active["CONDA_PREFIX"] == str(prefix)
    assert active["CPKGS_TEST_ACT_PREFIX"] == str(prefix) and active[SPEC_VAR] == SPEC_VALUE
    assert "app ok" in got["active"]
    after = values(got["after"])
    # conda's csh hook puts no condabin on PATH; conda's first activation adds it and deactivation keeps it
    # (activate.py _add_prefix_to_path)
    condabin = f"{user_conda.root}/condabin:"
    assert after["PATH"].replace(condabin, "") == values(got["before"])["PATH"].replace(condabin, "")
    assert gone(after, conda_posix=shell != "tcsh"), after
    assert "overwriting" not in r.stderr, r


@pytest.mark.parametrize("shell", ["bash", "tcsh"])
def test_spec_variable_under_cpkgs_own_conda(shell: str, user_conda: UserConda, agree_site: Path) -> None:
    """The site profile's own `conda` (no conda hook): set once on activation, gone after deactivation."""
    r = user_conda.shell(shell, profile_line(agree_site, shell) + ACTIVATE, hook=False)
    assert r.returncode == 0, r
    got = blocks(r.stdout)
    active = values(got["active"])
    assert active[SPEC_VAR] == SPEC_VALUE and active["CPKGS_TEST_ACT_PREFIX"] == str(agree_site / ENVS / "demo-1.0")
    after = values(got["after"])
    assert after["PATH"] == values(got["before"])["PATH"]
    assert gone(after), after


def test_spec_variables_are_conda_env_vars_applied_once(user_conda: UserConda, agree_site: Path) -> None:
    """conda sees the spec variables as the env's env_vars (conda-meta/state): `conda env config vars list`,
    `conda env export`. They come from one mechanism per activation path: conda's activation applies the state,
    so the env's own variables script, sourced by anything but cpkgs' conda, sets nothing."""
    prefix = agree_site / ENVS / "demo-1.0"
    r = user_conda.conda("env", "config", "vars", "list", "-p", str(prefix))
    assert r.returncode == 0 and f"{SPEC_VAR} = {SPEC_VALUE}" in r.stdout.splitlines(), r
    r = user_conda.conda("env", "export", "-p", str(prefix))
    assert r.returncode == 0 and f"  {SPEC_VAR}: {SPEC_VALUE}" in r.stdout.splitlines(), r
    scripts = sorted((prefix / "etc" / "conda" / "activate.d").glob("*cpkgs-variables.sh"))
    assert scripts
    r = user_conda.shell("bash", "".join(f". {s}\n" for s in scripts) + f'echo "v=${{{SPEC_VAR}-unset}}"',
                         hook=False)
    assert r.stdout == "v=unset\n", r


# ------------------------------------------------------------------------------------------------------ item 4

LAYER_SCRIPT = f"""echo "==before"
echo "PATH=$PATH"
conda activate @LAYER@
echo "==active"
echo "PATH=$PATH"
{SHOW_ENV}
cpkgs-test-app
python -c 'import sys; print("PY=" + sys.prefix)'
conda deactivate
echo "==after"
echo "PATH=$PATH"
{SHOW_ENV}
echo "==end"
"""


def make_layer(conda: UserConda, root: Path) -> Path:
    layer = conda.home / "envs" / "mine"
    r = run_cpkgs("extend", "demo-1.0", str(layer), root=root, user=conda.user, env={"HOME": str(conda.home)})
    assert r.returncode == 0, r
    return layer


def check_layer_run(r: Result, root: Path, layer: Path, condabin: str = "", conda_posix: bool = False) -> None:
    assert r.returncode == 0, r
    got = blocks(r.stdout)
    base = root / ENVS / "demo-1.0"
    active = values(got["active"])
    assert active["PATH"].startswith(f"{layer}/bin:{base}/bin:"), (active["PATH"], r)
    assert active["CONDA_PREFIX"] == str(layer)
    # the base's activate.d script ran with CONDA_PREFIX = the base: X_HOME="${CONDA_PREFIX}/share/x" points there
    assert active["CPKGS_TEST_ACT_PREFIX"] == str(base), r
    assert active[SPEC_VAR] == SPEC_VALUE, r
    assert "app ok" in got["active"] and f"PY={layer}" in got["active"], r
    after = values(got["after"])
    if condabin:  # see test_activation_through_condas_hook
        after["PATH"] = after["PATH"].replace(condabin, "")
    assert after["PATH"] == values(got["before"])["PATH"].replace(condabin or ":::", ""), r
    assert gone(after, conda_posix), after


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_layer_under_condas_hook(shell: str, user_conda: UserConda, agree_site: Path) -> None:
    layer = make_layer(user_conda, agree_site)
    script = profile_line(agree_site, shell) + LAYER_SCRIPT.replace("@LAYER@", str(layer))
    check_layer_run(user_conda.shell(shell, script), agree_site, layer, f"{user_conda.root}/condabin:",
                    conda_posix=shell != "tcsh")


@pytest.mark.parametrize("shell", ["bash", "tcsh"])
def test_layer_under_cpkgs_own_conda(shell: str, user_conda: UserConda, agree_site: Path) -> None:
    layer = make_layer(user_conda, agree_site)
    script = profile_line(agree_site, shell) + LAYER_SCRIPT.replace("@LAYER@", str(layer))
    check_layer_run(user_conda.shell(shell, script, hook=False), agree_site, layer)


# ------------------------------------------------------------------------------------------------------ items 5, 6


def test_conda_doctor_finds_nothing_wrong_in_a_fresh_env(user_conda: UserConda, agree_site: Path) -> None:
    """Every health check passes but one: a shared env is not in the user's own ~/.conda/environments.txt (conda
    lists it through envs_dirs; registering every site env in every user's file is not cpkgs' job)."""
    r = user_conda.conda("doctor", "-v", "-p", str(agree_site / ENVS / "demo-1.0"))
    assert r.returncode == 0, r
    assert "There are no packages with altered files." in r.stdout, r
    assert "There are no packages with missing files." in r.stdout, r
    assert "The environment is consistent." in r.stdout, r
    failed = [line for line in r.stdout.splitlines() if line.startswith("\u274c")]
    assert failed == ["\u274c The environment is not listed in the environments.txt file."], r.stdout


@pytest.mark.parametrize("name", ["demo-1.0", "tools-1.0"])
def test_conda_explicit_list_is_cpkgs_lock(name: str, user_conda: UserConda, agree_site: Path) -> None:
    """`conda list --explicit --sha256` and `cpkgs export --format explicit` hold the same package lines (conda
    orders them by dependency, cpkgs by name)."""
    r = user_conda.conda("list", "--explicit", "--sha256", "-p", str(agree_site / ENVS / name))
    assert r.returncode == 0, r
    ours = run_cpkgs("export", name, "--format", "explicit", root=agree_site)
    assert ours.returncode == 0, ours

    def packages(text: str) -> list[str]:
        return sorted(line for line in text.split("@EXPLICIT\n", 1)[1].splitlines() if line)

    assert packages(r.stdout) == packages(ours.stdout)
    assert len(packages(ours.stdout)) == len(run_cpkgs("info", name, "--json", root=agree_site).json()["packages"])


def test_conda_env_export_from_history_lists_the_requested_specs(user_conda: UserConda, agree_site: Path) -> None:
    r = user_conda.conda("env", "export", "--from-history", "--json", "-p", str(agree_site / ENVS / "demo-1.0"))
    assert r.returncode == 0, r
    deps = json.loads(r.stdout)["dependencies"]
    assert sorted(deps) == sorted([*FULL_SPECS, "cpkgs-test-lib=1.1"]), deps


# ------------------------------------------------------------------------------------------------------ condarc


def test_unlink_user_removes_exactly_what_link_user_added(user_conda: UserConda, agree_site: Path) -> None:
    rc = user_conda.home / ".condarc"
    link(user_conda, agree_site)
    assert rc.read_text().splitlines()[1:] == ["  - ~/.conda/envs", f"  - {entry(agree_site)}"], rc.read_text()
    r = run_cpkgs("unlink-user", "--condarc", str(rc), root=agree_site, user=True,
                  env={"HOME": str(user_conda.home)})
    assert r.returncode == 0, r
    assert rc.read_text() == ""


def test_doctor_flags_a_condarc_where_the_share_comes_first(user_conda: UserConda, agree_site: Path) -> None:
    rc = user_conda.home / ".condarc"
    rc.write_text(f"envs_dirs:\n  - {entry(agree_site)}\n  - ~/my-envs\n")
    os.chown(rc, 65534, 65534)
    r = run_cpkgs("doctor", "--json", root=agree_site, user=True,
                  env={"HOME": str(user_conda.home), "CONDARC": "", **PROFILE})
    findings = [f for f in r.json()["findings"] if f["check"] == "condarc"]
    assert any(f["status"] != "ok" and "first" in f["message"] for f in findings), findings


# ------------------------------------------------------------------------------------------------------ more

@pytest.mark.parametrize("shell", ["bash", "tcsh"])
def test_layer_scripts_quote_what_they_embed(shell: str, user_conda: UserConda, agree_site: Path) -> None:
    """The layer's scripts embed its path for sh and csh: a quote, a space, `$` and `!` (which csh expands even
    inside single quotes) stay literal. Sourced as conda sources them (CONDA_PREFIX = the layer, its bin first on
    PATH); conda's own hooks cannot activate such a path at all (conda 26.7.1 writes the prompt `PS1='(...)'`
    unquoted), so through a hook the layer lives in a path with a space."""
    layer = user_conda.home / "it's $my layer!"
    r = run_cpkgs("extend", "demo-1.0", str(layer), root=agree_site, user=True, env={"HOME": str(user_conda.home)})
    assert r.returncode == 0, r
    base = agree_site / ENVS / "demo-1.0"
    act, deact = (layer / "etc" / "conda" / f"{k}.d" / f"00-cpkgs-layer.{'csh' if shell == 'tcsh' else 'sh'}"
                  for k in ("activate", "deactivate"))
    quote, source = (csh_quote, "source") if shell == "tcsh" else (shlex.quote, ".")
    show = 'echo "PATH=$PATH"\necho "CONDA_PREFIX=$CONDA_PREFIX"\necho "ACT=$CPKGS_TEST_ACT_PREFIX"\n'
    script = f"{source} {quote(str(act))}\n{show}{source} {quote(str(deact))}\necho \"AFTER=$PATH\"\n"
    env = {"CONDA_PREFIX": str(layer), "PATH": f"{layer}/bin:/usr/bin:/bin"}
    r = user_conda.shell(shell, script, env=env, hook=False)
    assert r.returncode == 0, r
    got = values(r.stdout.splitlines())
    assert got["PATH"] == f"{layer}/bin:{base}/bin:/usr/bin:/bin", r
    assert (got["CONDA_PREFIX"], got["ACT"]) == (str(layer), str(base)), r
    assert got["AFTER"] == f"{layer}/bin:/usr/bin:/bin", r  # (conda itself takes the layer's bin off)
    spaced = user_conda.home / "my layer"
    r = run_cpkgs("extend", "demo-1.0", str(spaced), root=agree_site, user=True, env={"HOME": str(user_conda.home)})
    assert r.returncode == 0, r
    script = profile_line(agree_site, shell) + LAYER_SCRIPT.replace("@LAYER@", f'"{spaced}"')
    check_layer_run(user_conda.shell(shell, script), agree_site, spaced, f"{user_conda.root}/condabin:",
                    conda_posix=shell != "tcsh")


def test_conda_meta_records_are_condas(agree_site: Path) -> None:
    """After new-env's normalisation: no symlink carries a sha256_in_prefix (conda records none), and every
    sha256_in_prefix is the hash of the file conda's doctor reads there."""
    import hashlib

    prefix = agree_site / ENVS / "demo-1.0"
    links = 0
    for record in (prefix / "conda-meta").glob("*.json"):
        for e in json.loads(record.read_text())["paths_data"]["paths"]:
            if e.get("path_type") == "softlink":
                links += 1
                assert "sha256_in_prefix" not in e, (record.name, e)
            elif e.get("sha256_in_prefix"):
                assert hashlib.sha256((prefix / e["_path"]).read_bytes()).hexdigest() == e["sha256_in_prefix"], e
    assert links >= 3  # python's bin/python, bin/python3, lib/libpython3.11.so


@pytest.mark.parametrize("shell", ["bash", "tcsh"])
def test_cpkgs_conda_neither_lists_nor_activates_the_guard(shell: str, user_conda: UserConda,
                                                          agree_site: Path) -> None:
    status = "$status" if shell == "tcsh" else "$?"
    script = profile_line(agree_site, shell) + f"conda env list\nconda activate conda-meta || echo refused={status}\n"
    r = user_conda.shell(shell, script, hook=False)
    assert r.returncode == 0, r
    rows = [line.split()[0] for line in r.stdout.splitlines() if line and not line.startswith(("#", "refused"))]
    assert rows == ["demo-1.0", "tools-1.0"], r
    assert "refused=1" in r.stdout and "no environment named 'conda-meta'" in r.stderr, r


def test_verify_checks_condas_files_and_doctor_the_guards(victim: Path) -> None:
    """conda-meta/history is in cpkgs' manifest (root writes through a seal: verify names the change); a site
    without the guards gets a doctor warning naming the fix."""
    history = victim / ENVS / "victim-1.0" / "conda-meta" / "history"
    assert "# update specs: ['cpkgs-test-app']" in history.read_text()
    history.write_text(history.read_text() + "# update specs: ['cpkgs-test-lib']\n")
    r = run_cpkgs("verify", "victim-1.0", root=victim)
    assert r.returncode == 4 and "victim-1.0: modified: conda-meta/history" in r.stdout, r
    guard = victim / ENVS / "conda-meta"
    os.chmod(guard, 0o755)
    shutil.rmtree(guard)
    r = run_cpkgs("doctor", "--json", root=victim, env=PROFILE)
    guards = [f for f in r.json()["findings"] if f["check"] == "guards"]
    assert guards and str(guard) in guards[0]["message"] and guards[0]["fix"] == "cpkgs init", r
    assert run_cpkgs("init", root=victim).returncode == 0
    assert (guard / "history").is_file()


def test_a_repointed_layer_takes_its_new_bases_variables(user_conda: UserConda, tmp_path: Path,
                                                         conda_channel_url: str) -> None:
    """The layer's conda-meta/state: the base's spec variables over the user's own (`conda env config vars set`);
    `extend --force` onto another base drops the old base's and keeps the user's."""
    root = make_site(tmp_path / "site", conda_channel_url)
    (root / "specs" / "a.yml").write_text(f"dependencies:\n  - python\nvariables:\n  {SPEC_VAR}: {SPEC_VALUE}\n")
    (root / "specs" / "b.yml").write_text("dependencies:\n  - python\n")
    for name in ("a-1.0", "b-1.0"):
        assert run_cpkgs("new-env", name, root=root).returncode == 0
    world_traversable(root)
    layer, home = user_conda.home / "mine", {"HOME": str(user_conda.home)}

    def extend(base: str, *force: str) -> dict[str, str]:
        r = run_cpkgs("extend", base, str(layer), *force, root=root, user=True, env=home)
        assert r.returncode == 0, r
        r = user_conda.conda("env", "config", "vars", "list", "--json", "-p", str(layer))
        assert r.returncode == 0, r
        return dict(r.json())

    assert extend("a-1.0") == {SPEC_VAR: SPEC_VALUE}
    assert user_conda.conda("env", "config", "vars", "set", "MINE=x", "-p", str(layer)).returncode == 0
    assert extend("b-1.0", "--force") == {"MINE": "x"}
    assert extend("a-1.0", "--force") == {"MINE": "x", SPEC_VAR: SPEC_VALUE}
    _open_for_cleanup(root)


@pytest.mark.parametrize("shell", ["bash", "tcsh"])
def test_a_layer_on_a_base_gone_says_so_under_condas_hook(shell: str, user_conda: UserConda, tmp_path: Path,
                                                          conda_channel_url: str) -> None:
    """Purge moved the base away: conda still activates the layer (its scripts cannot stop it), and they say why
    the base's programs are missing, as cpkgs' own conda does when it refuses such a layer."""
    root = make_site(tmp_path / "site", conda_channel_url)
    assert run_cpkgs("new-env", "gone-1.0", "python", root=root).returncode == 0
    world_traversable(root)
    layer = user_conda.home / "mine"
    r = run_cpkgs("extend", "gone-1.0", str(layer), root=root, user=True, env={"HOME": str(user_conda.home)})
    assert r.returncode == 0, r
    _open_for_cleanup(root)
    shutil.rmtree(root / ENVS / "gone-1.0")
    script = f"conda activate {layer}\necho PATH=$PATH\nconda deactivate\necho done\n"
    r = user_conda.shell(shell, script)
    assert r.returncode == 0 and "done" in r.stdout, r
    assert f"cpkgs: {layer} is a personal layer on gone-1.0 ({root / ENVS / 'gone-1.0'}), which no longer exists" \
        in r.stderr, r
    assert f"{root / ENVS / 'gone-1.0'}/bin" not in r.stdout, r
