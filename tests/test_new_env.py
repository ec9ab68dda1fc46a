"""`cpkgs new-env`: real py-rattler solves and installs from the local test channel."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENVS, FULL_SPECS, as_nobody, make_site, run_cpkgs, tree_hash, world_traversable


def test_published_env_runs_and_embeds_final_prefix(built_site: Path) -> None:
    prefix = built_site / ENVS / "demo-1.0"
    assert (prefix / "bin" / "python").exists()
    out = as_nobody([str(prefix / "bin" / "python"), "-c", "import sys; print(sys.prefix)"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(prefix)
    # text and binary prefix placeholders point at the final path, not at the staging dir
    assert as_nobody([str(prefix / "bin" / "cpkgs-test-textprefix")]).stdout.strip() == str(prefix)
    assert as_nobody([str(prefix / "bin" / "cpkgs-test-binprefix")]).stdout.strip() == str(prefix)
    assert as_nobody([str(prefix / "bin" / "cpkgs-test-app")]).stdout.strip() == "app ok"
    assert not list((built_site / ENVS).glob(".staging-*"))


def test_list_of_pkgs_inside_and_explicit_lock(built_site: Path) -> None:
    prefix = built_site / ENVS / "demo-1.0"
    listing = (prefix / "list-of-pkgs-inside.txt").read_text()
    assert "cpkgs-test-lib" in listing and "1.1" in listing and "python" in listing
    explicit = (prefix / "conda-meta" / "cpkgs" / "explicit.txt").read_text()
    assert "@EXPLICIT" in explicit and "# platform: linux-64" in explicit
    assert all("#" in line for line in explicit.splitlines() if line.startswith("file://"))


def test_sealed_against_an_ordinary_user(built_site: Path) -> None:
    prefix = built_site / ENVS / "demo-1.0"
    py = prefix / "bin" / "python3.11"
    for cmd in (
        ["touch", str(prefix / "new")],
        ["touch", str(prefix / "bin" / "new")],
        ["sh", "-c", f"echo x >> {prefix}/list-of-pkgs-inside.txt"],
        ["rm", "-f", str(prefix / "list-of-pkgs-inside.txt")],
        ["chmod", "777", str(py)],
        ["mv", str(prefix), str(prefix) + "-moved"],
        ["mkdir", str(prefix / "lib" / "x")],
    ):
        r = as_nobody(cmd)
        assert r.returncode != 0, cmd
    assert (prefix / "list-of-pkgs-inside.txt").exists()
    for dirpath, dirnames, filenames in os.walk(prefix):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISLNK(st.st_mode):
                continue
            assert not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH | stat.S_ISUID | stat.S_ISGID), n


def test_record_list_info_json(built_site: Path) -> None:
    r = run_cpkgs("list", "--json", root=built_site)
    assert r.returncode == 0, r
    names = {e["name"]: e for e in r.json()}
    assert set(names) == {"demo-1.0", "demo-2.0", "tools-1.0"}  # retired old-1.0 hidden
    assert names["demo-1.0"]["platform"] == "linux-64" and names["demo-1.0"]["status"] == "active"
    assert names["demo-1.0"]["created"] and names["demo-1.0"]["size"] > 0
    every = {e["name"]: e for e in run_cpkgs("list", "--all", "--json", root=built_site).json()}
    assert every["old-1.0"]["status"] == "retired" and every["old-1.0"]["successor"] == "demo-2.0"
    info = run_cpkgs("info", "demo-1.0", "--json", root=built_site).json()
    pk = {p["name"]: p for p in info["packages"]}
    assert pk["cpkgs-test-lib"]["version"] == "1.1"
    assert set(pk["python"]) >= {"name", "version", "build", "channel", "sha256"}
    assert len(pk["python"]["sha256"]) == 64
    assert info["requested_specs"][0] == "python" and info["creator"] and info["host"]
    assert info["file_count"] > 100 and info["status"] == "active"
    human = run_cpkgs("info", "demo-1.0", root=built_site)
    assert "cpkgs-test-lib" in human.stdout and "1.1" in human.stdout


def test_diff(built_site: Path) -> None:
    d = run_cpkgs("diff", "demo-1.0", "demo-2.0", "--json", root=built_site).json()
    assert d["added"] == [] and d["removed"] == []
    changed = {c["name"]: c for c in d["changed"]}
    assert changed["cpkgs-test-lib"]["old"]["version"] == "1.1"
    assert changed["cpkgs-test-lib"]["new"]["version"] == "2.0"
    d = run_cpkgs("diff", "tools-1.0", "demo-1.0", "--json", root=built_site).json()
    assert "python" in {a["name"] for a in d["added"]}
    human = run_cpkgs("diff", "demo-1.0", "demo-2.0", root=built_site)
    assert "cpkgs-test-lib" in human.stdout and "2.0" in human.stdout


def test_export_formats(built_site: Path) -> None:
    e = run_cpkgs("export", "demo-1.0", "--format", "explicit", root=built_site)
    assert e.returncode == 0 and "@EXPLICIT" in e.stdout
    y = run_cpkgs("export", "demo-1.0", "--format", "yaml", root=built_site)
    import yaml

    doc = yaml.safe_load(y.stdout)
    assert doc["name"] == "demo-1.0" and any(d.startswith("cpkgs-test-lib==1.1=") for d in doc["dependencies"])


def test_existing_name_fails_and_changes_nothing(built_site: Path) -> None:
    before = tree_hash(built_site / ".cpkgs" / "records")
    r = run_cpkgs("new-env", "demo-1.0", "python", root=built_site)
    assert r.returncode == 1
    assert "already exists" in r.stderr and r.stderr.count("\n") == 1
    assert tree_hash(built_site / ".cpkgs" / "records") == before


def test_quiet_build_prints_nothing(site: Path) -> None:
    r = run_cpkgs("new-env", "q-1.0", "cpkgs-test-app", "-q", root=site)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
    assert (site / ENVS / "q-1.0" / "bin" / "cpkgs-test-app").is_file()


def test_dry_run_writes_nothing(site: Path) -> None:
    before = tree_hash(site)
    r = run_cpkgs("new-env", "dry-1.0", "cpkgs-test-app", "--dry-run", root=site)
    assert r.returncode == 0, r
    assert "cpkgs-test-mid" in r.stdout and "cpkgs-test-lib" in r.stdout and "2.0" in r.stdout
    assert tree_hash(site) == before


def test_family_spec_file_with_extends(site: Path) -> None:
    (site / "specs" / "ml-base.yml").write_text("dependencies:\n  - python\n  - cpkgs-test-lib 1.0.*\n")
    (site / "specs" / "ml-pyroot.yml").write_text(
        "# ROOT on top of ml-base, like the ATLAS images\nextends: ml-base\ndependencies:\n  - cpkgs-test-textprefix\n"
    )
    r = run_cpkgs("new-env", "ml-pyroot-2024.1", root=site)
    assert r.returncode == 0, r
    info = run_cpkgs("info", "ml-pyroot-2024.1", "--json", root=site).json()
    assert info["family"] == "ml-pyroot" and info["version"] == "2024.1"
    assert info["spec_source"].endswith("specs/ml-pyroot.yml") and len(info["spec_sha256"]) == 64
    assert info["extends"] == ["ml-base"]
    pk = {p["name"]: p["version"] for p in info["packages"]}
    assert pk["cpkgs-test-lib"] == "1.0" and "cpkgs-test-textprefix" in pk and "python" in pk


def test_environment_file_and_from_with_add_remove(site: Path, tmp_path: Path) -> None:
    envfile = tmp_path / "environment.yml"
    envfile.write_text("name: ignored\ndependencies:\n  - cpkgs-test-app\n  - cpkgs-test-lib 1.1.*\n  - cpkgs-test-textprefix\n")
    assert run_cpkgs("new-env", "app-1.0", "-f", str(envfile), root=site).returncode == 0
    r = run_cpkgs("new-env", "app-1.1", "--from", "app-1.0", "--add", "cpkgs-test-activate",
                  "--remove", "cpkgs-test-textprefix", root=site)
    assert r.returncode == 0, r
    d = run_cpkgs("diff", "app-1.0", "app-1.1", "--json", root=site).json()
    assert [a["name"] for a in d["added"]] == ["cpkgs-test-activate"]
    assert [a["name"] for a in d["removed"]] == ["cpkgs-test-textprefix"]
    assert d["changed"] == []  # OLD's exact versions kept: lib stays 1.1 although 2.0 exists
    r = run_cpkgs("new-env", "app-2.0", "--from", "app-1.1", "--add", "cpkgs-test-lib >=2", root=site)
    assert r.returncode == 0, r
    d = run_cpkgs("diff", "app-1.1", "app-2.0", "--json", root=site).json()
    assert [c["name"] for c in d["changed"]] == ["cpkgs-test-lib"]


def test_override_virtual_package(site: Path, channel_url: str) -> None:
    r = run_cpkgs("new-env", "gpu-1.0", "cpkgs-test-app", "--override-virtual", "__cuda=12.4", "--dry-run", root=site)
    assert r.returncode == 0, r
    r = run_cpkgs("new-env", "gpu-1.0", "cpkgs-test-app", "--override-virtual", "cuda", root=site)
    assert r.returncode == 2 and "PKG=VERSION" in r.stderr


def test_other_platform_installation(site: Path) -> None:
    r = run_cpkgs("new-env", "mac-1.0", "cpkgs-test-lib", "--platform", "osx-arm64", root=site)
    assert r.returncode == 0, r
    assert (site / "anaconda3_macOS" / "envs" / "mac-1.0" / "share" / "cpkgs-test-lib" / "VERSION").exists()
    listing = run_cpkgs("list", "--json", root=site).json()
    assert [(e["name"], e["platform"]) for e in listing] == [("mac-1.0", "osx-arm64")]
    r = run_cpkgs("new-env", "mac-2.0", "cpkgs-test-lib", "--platform", "win-64", root=site)
    assert r.returncode == 2 and "not served" in r.stderr


BAD_INPUTS = [
    (["nothing-1.0"], "no spec file"),
    (["x-1.0", "cpkgs-test-app", "cpkgs-test-lib 1.0.*"], "cannot solve"),
    (["x-1.0", "no-such-package-anywhere"], "cannot solve"),
    (["x-1.0", "python >>= 3"], "invalid match spec"),
    (["x-1.0", "cpkgs-test-app", "-c", "file:///does/not/exist"], "does not exist"),
    (["x-1.0", "cpkgs-test-app", "-c", "ftp://x/y"], "unsupported scheme"),
    (["x-1.0", "--lock", "/does/not/exist.txt"], "does not exist"),
    (["x-1.0", "--from", "nope-1.0"], "no environment named nope-1.0"),
    (["x-1.0", "--add", "python"], "--add and --remove go with --from"),
    (["x-1.0", "--platform", "", "cpkgs-test-app"], "--platform needs a platform name"),
    (["x-1.0", "cpkgs-test-app", "--override-virtual", "__=1"], "'__' is not a virtual package name"),
    (["x-1.0", "cpkgs-test-app", "--override-virtual", "__a b=1"], "'__a b' is not a virtual package name"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_one_line_nothing_created(site: Path, args: list[str], message: str) -> None:
    before = tree_hash(site)
    r = run_cpkgs("new-env", *args, root=site)
    assert r.returncode in (1, 2), r
    assert message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert tree_hash(site) == before


BAD_YAML = [
    ("dependencies: [python\n", "invalid YAML"),
    ("- python\n", "expected a mapping"),
    ("dependencies: python\n", "must be a list"),
    ("dependencies:\n  - python\n  - pip:\n    - -e .\n", "pip[0]: -e .: an editable install"),
    ("dependencies:\n  - 'python >>= 3'\n", "invalid match spec"),
    ("channels: [5]\ndependencies: [python]\n", "'channels' must be a list"),
    ("dependencies: [python]\ndependencies: [cpkgs-test-app]\n", "line 2 invalid YAML: duplicate key 'dependencies'"),
    ("dependencies: [python]\nvariables: [A]\n", "'variables' must be a mapping of NAME: value"),
    ("dependencies: [python]\nvariables: {'A-B': x}\n", "variables: 'A-B' is not a variable name"),
    ("dependencies: [python]\nvariables: {PS1: x}\n", "variables: PS1 makes the users' shells run code"),
    ("dependencies: [python]\nvariables: {CONDA_PREFIX: /x}\n", "CONDA_PREFIX is set by the activation itself"),
    ("dependencies: [python]\nvariables: {A: [1]}\n", "variables: A must be a string or a number"),
    ("dependencies: [python]\nvariables: {A: \"x\\ny\"}\n", "variables: A must be one line of printable"),
    ("dependencies: [python]\nvariables: {A: \"x\\ty\"}\n", "variables: A must be one line of printable"),
    ("dependencies: [python]\nvariables: {SHLVL: 5}\n", "variables: SHLVL is set by the activation itself"),
]


@pytest.mark.parametrize("text,message", BAD_YAML)
def test_bad_environment_yml(site: Path, tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "environment.yml"
    f.write_text(text)
    before = tree_hash(site)
    r = run_cpkgs("new-env", "x-1.0", "-f", str(f), root=site)
    assert r.returncode == 1, r
    assert message in r.stderr and str(f) in r.stderr and r.stderr.count("\n") == 1
    assert tree_hash(site) == before


def test_extends_items_must_be_family_names(site: Path) -> None:
    for n, ext in enumerate(("[[base]]", "[1]", "{a: b}")):
        (site / "specs" / f"e{n}.yml").write_text(f"extends: {ext}\ndependencies: [python]\n")
        r = run_cpkgs("new-env", f"e{n}-1.0", "--dry-run", root=site)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r
        assert "'extends' must be a family name or a list of them" in r.stderr and "internal" not in r.stderr


def test_lock_file_naming_a_package_twice_is_refused(built_site: Path, tmp_path: Path, channel_dir: Path) -> None:
    """Two builds of one package (or one line twice) would install both into one prefix: refused, naming both."""
    lock = run_cpkgs("export", "demo-1.0", "--format", "explicit", root=built_site).stdout
    lib = next(line for line in lock.splitlines() if "/cpkgs-test-lib-" in line)
    other = next(p for p in (channel_dir / "noarch").glob("cpkgs-test-lib-*.conda") if p.name not in lib)
    for extra in (lib, other.as_uri()):
        f = tmp_path / "twice.txt"
        f.write_text(lock + extra + "\n")
        n = len((lock + extra).splitlines())
        before = tree_hash(built_site)
        r = run_cpkgs("new-env", "twice-1.0", "--lock", str(f), root=built_site)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r
        assert f"line {n}: cpkgs-test-lib again (line " in r.stderr and "one build of each package" in r.stderr
        assert tree_hash(built_site) == before
    f.write_text(lock.replace(lib, lib.split("#")[0] + "#abc"))
    r = run_cpkgs("new-env", "twice-1.0", "--lock", str(f), root=built_site)
    assert r.returncode == 1 and "the hash after '#' must be an md5 (32 hex digits) or a sha256 (64): 'abc'" in r.stderr


def test_from_takes_no_positional_specs_and_removes_only_what_was_asked_for(site: Path) -> None:
    assert run_cpkgs("new-env", "base-1.0", "cpkgs-test-app", "cpkgs-test-activate", root=site).returncode == 0
    before = tree_hash(site)
    r = run_cpkgs("new-env", "base-1.1", "cpkgs-test-textprefix", "--from", "base-1.0", root=site)
    assert r.returncode == 2 and "give more with --add" in r.stderr and r.stderr.count("\n") == 1, r
    r = run_cpkgs("new-env", "base-1.1", "--from", "base-1.0", "--remove", "cpkgs-test-lib", root=site)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "--remove cpkgs-test-lib: base-1.0 did not ask for it, another package needs it" in r.stderr
    assert "(asked for: cpkgs-test-app, cpkgs-test-activate)" in r.stderr
    assert run_cpkgs("new-env", "both-1.0", "cpkgs-test-app", "cpkgs-test-lib", root=site).returncode == 0
    before = tree_hash(site)
    r = run_cpkgs("new-env", "both-1.1", "--from", "both-1.0", "--remove", "cpkgs-test-lib", root=site)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r  # asked for, but the solver must keep it
    assert "--remove cpkgs-test-lib: still needed by cpkgs-test-mid; remove what needs it too" in r.stderr
    assert tree_hash(site) == before


def test_from_an_env_built_from_a_lock_keeps_its_packages(site: Path, tmp_path: Path) -> None:
    """An env built with --lock asked for no specs: --from it starts from all its packages, at their versions."""
    assert run_cpkgs("new-env", "src-1.0", "cpkgs-test-app", "cpkgs-test-lib 1.1.*", root=site).returncode == 0
    lock = tmp_path / "src.lock"
    lock.write_text(run_cpkgs("export", "src-1.0", "--format", "explicit", root=site).stdout)
    assert run_cpkgs("new-env", "rt-1.0", "--lock", str(lock), root=site).returncode == 0
    r = run_cpkgs("new-env", "rt-2.0", "--from", "rt-1.0", "--add", "cpkgs-test-textprefix", root=site)
    assert r.returncode == 0, r
    d = run_cpkgs("diff", "rt-1.0", "rt-2.0", "--json", root=site).json()
    assert [a["name"] for a in d["added"]] == ["cpkgs-test-textprefix"] and d["removed"] == [] and d["changed"] == []


def test_extends_cycle_and_missing_parent(site: Path) -> None:
    (site / "specs" / "a.yml").write_text("extends: b\ndependencies: [python]\n")
    (site / "specs" / "b.yml").write_text("extends: a\ndependencies: [python]\n")
    r = run_cpkgs("new-env", "a-1.0", root=site)
    assert r.returncode == 1 and "cycle" in r.stderr
    (site / "specs" / "c.yml").write_text("extends: missing\ndependencies: [python]\n")
    r = run_cpkgs("new-env", "c-1.0", root=site)
    assert r.returncode == 1 and "missing.yml does not exist" in r.stderr


def test_ordinary_user_cannot_build(site: Path) -> None:
    r = run_cpkgs("new-env", "u-1.0", "cpkgs-test-app", root=site, user=True)
    assert r.returncode == 1 and "permission denied" in r.stderr and "Traceback" not in r.stderr
    assert not (site / ENVS / "u-1.0").exists()


@pytest.mark.slow
def test_four_parallel_same_name_exactly_one_wins(site: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-m", "cpkgs_admin", "--root", str(site), "new-env", "race-1.0", "cpkgs-test-app"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 1, 1, 1], results
    for code, err in results:
        if code:
            assert "already exists" in err and err.count("\n") == 1
    assert run_cpkgs("verify", "race-1.0", root=site).returncode == 0


@pytest.mark.slow
def test_four_parallel_different_names_all_succeed(site: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-m", "cpkgs_admin", "--root", str(site), "new-env", f"par-{i}.0", "cpkgs-test-app"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]
    assert len(run_cpkgs("list", "--json", root=site).json()) == 4


def _time_one_build(root: Path) -> float:
    """Seconds of one whole build of FULL_SPECS on ROOT (timing-1.0)."""
    t = time.monotonic()
    assert run_cpkgs("new-env", "timing-1.0", *FULL_SPECS, root=root).returncode == 0
    return time.monotonic() - t


def _interactive_sigint() -> None:
    """In the child before exec: SIGINT handled as in a user's terminal. A test run started in the background by a
    non-interactive shell (CI scripts, `cmd &`) ignores SIGINT, and an ignored disposition survives exec: Python
    would then never raise KeyboardInterrupt and these tests would see a Ctrl-C that did nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn_build(root: Path, name: str, **kw):  # type: ignore[no-untyped-def]
    return subprocess.Popen([sys.executable, "-m", "cpkgs_admin", "--root", str(root), "new-env", name, *FULL_SPECS],
                            preexec_fn=_interactive_sigint, **kw)


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_half_env(tmp_path: Path, channel_url: str) -> None:
    """10 builds killed at random points; users never see a half env, and the rerun always succeeds."""
    root = make_site(tmp_path / "site", channel_url, lease=2.0)
    rng = random.Random(20261122)
    specs = [*FULL_SPECS]
    full = _time_one_build(root)  # to spread the kills across all its steps
    for i in range(10):
        name = f"crash-{i}.0"
        p = _spawn_build(root, name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full * 0.95))
        finished = p.poll() is not None
        p.send_signal(signal.SIGKILL)
        p.wait()
        envs = root / ENVS
        prefix = envs / name
        if prefix.exists():
            # Published before the kill: it must be whole and sealed.
            # Renamed into place before the kill: whole and sealed (the top opens last), never half.
            mode = stat.S_IMODE(prefix.stat().st_mode)
            world_traversable(root)
            run = as_nobody([str(prefix / "bin" / "cpkgs-test-app")])
            if mode == 0o555:
                assert run.stdout.strip() == "app ok"
            else:
                assert mode == 0o700 and run.returncode != 0
        for leftover in envs.glob(".staging-*"):
            assert stat.S_IMODE(leftover.stat().st_mode) == 0o700, leftover
            assert as_nobody(["ls", str(leftover)]).returncode != 0
        world_traversable(root)
        record = root / ".cpkgs" / "records" / "linux-64" / f"{name}.json"
        r = run_cpkgs("new-env", name, *specs, root=root)
        if finished or (record.exists() and "already exists" in r.stderr):
            assert record.exists()  # the build completed before the kill landed
        else:
            assert r.returncode == 0, (i, r)
        assert run_cpkgs("verify", name, root=root).returncode == 0
        assert not list(envs.glob(f".staging-{name}@*"))
        out = as_nobody([str(prefix / "bin" / "cpkgs-test-binprefix")])
        assert out.stdout.strip() == str(prefix)


@pytest.mark.slow
def test_ctrl_c_at_any_moment_leaves_nothing_users_can_enter(tmp_path: Path, channel_url: str) -> None:
    """SIGINT (what Ctrl-C sends) at random moments, most of them aimed inside the install (the staging dir has
    appeared and rattler's threads are linking files): one line and exit 130, no env unless it was complete, no
    staging directory anyone else can enter (rattler's threads outlive the interrupt by a moment), and the rerun
    succeeds."""
    root = make_site(tmp_path / "site", channel_url)
    envs = root / ENVS
    rng = random.Random(20261122)
    full = _time_one_build(root)
    for i in range(12):
        name = f"int-{i}.0"
        p = _spawn_build(root, name, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if i % 3:  # aimed: just after the staging dir appears, while the install runs
            deadline = time.monotonic() + 60
            while not list(envs.glob(f".staging-{name}@*")) and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.03))
        else:  # anywhere in the run once cpkgs' own code runs (the interpreter's first ~0.1 s is Python's own start-up)
            time.sleep(rng.uniform(0.15, max(0.16, full)))
        p.send_signal(signal.SIGINT)
        if i % 4 == 3:  # an impatient second Ctrl-C, while the first one's cleanup runs
            time.sleep(rng.uniform(0.0, 0.03))
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=600)
        time.sleep(0.2)  # anything still writing after the process is gone would show now
        prefix = envs / name
        if p.returncode == 0:
            # Finished before the signal, or the signal came after the publish point: whole, sealed, recorded.
            assert stat.S_IMODE(prefix.stat().st_mode) == 0o555
            assert name in {e["name"] for e in run_cpkgs("list", "--json", root=root).json()}
        else:
            # One line, also after a second, impatient Ctrl-C (ignored while the first one's clean-up runs).
            assert (p.returncode, err) == (130, "cpkgs: interrupted\n"), (p.returncode, err)
            assert not prefix.exists()
        world_traversable(root)
        for leftover in envs.glob(".staging-*"):
            st = leftover.lstat()
            if stat.S_ISDIR(st.st_mode):
                assert stat.S_IMODE(st.st_mode) == 0o700, leftover
                assert as_nobody(["ls", str(leftover)]).returncode != 0
            else:
                assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o600, leftover
        assert not run_cpkgs("locks", "--json", root=root).json()  # no lock left behind
        if p.returncode != 0:
            r = run_cpkgs("new-env", name, *FULL_SPECS, root=root)
            assert r.returncode == 0, r
            assert not list(envs.glob(f".staging-{name}@*"))
            assert as_nobody([str(prefix / "bin" / "cpkgs-test-app")]).stdout.strip() == "app ok"


# SIGINT sent by the process to itself the moment asyncio has built its first event loop (for rattler's solve):
# the one moment the random Ctrl-C test above hits only now and then.
_INTERRUPT_IN_LOOP_SETUP = """
import os, signal, sys, asyncio.base_events as be
init = be.BaseEventLoop.__init__
def first_loop(self, *a, **k):
    init(self, *a, **k)
    be.BaseEventLoop.__init__ = init
    os.kill(os.getpid(), signal.SIGINT)
be.BaseEventLoop.__init__ = first_loop
from cpkgs_admin.cli import main
main(sys.argv[1:])
"""


def test_interrupt_while_asyncio_builds_its_loop_is_one_line(site: Path) -> None:
    cmd = [sys.executable, "-c", _INTERRUPT_IN_LOOP_SETUP, "--root", str(site), "new-env", "l-1.0", "cpkgs-test-app"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(Path(__file__).parent.parent),
                       preexec_fn=_interactive_sigint)
    assert (r.returncode, r.stderr) == (130, "cpkgs: interrupted\n")
    assert not (site / ENVS / "l-1.0").exists()


def test_hard_links_only_into_the_admin_only_cache(built_site: Path) -> None:
    """Env files may share an inode with the site's package cache (fast publish), never with anything users can
    write: the cache under .cpkgs/ is admin-only, and files with a patched prefix are fresh copies."""
    prefix = built_site / ENVS / "demo-1.0"
    cache = built_site / ".cpkgs" / "pkgs"
    assert not cache.stat().st_mode & 0o022 and not cache.parent.stat().st_mode & 0o022
    cached = {os.lstat(os.path.join(d, n)).st_ino for d, _x, files in os.walk(cache) for n in files}
    linked = []
    for dirpath, _dirs, files in os.walk(prefix):
        for n in files:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                linked.append(st.st_ino)
    assert linked, "expected hard links into the admin-only cache"
    assert set(linked) <= cached
    # the prefix-patched files are never shared
    for prog in ("cpkgs-test-textprefix", "cpkgs-test-binprefix"):
        assert os.lstat(prefix / "bin" / prog).st_nlink == 1


def test_user_writable_cache_means_copies(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    # A misconfigured state dir that anyone could write: whoever can write .cpkgs could put their own cache in place
    # of pkgs. (A cache dir open to others is closed by new-env itself: test_security_locks.py.)
    os.chmod(root / ".cpkgs", 0o777)
    assert run_cpkgs("new-env", "c-1.0", "cpkgs-test-app", "python", root=root).returncode == 0
    prefix = root / ENVS / "c-1.0"
    assert all(
        os.lstat(os.path.join(d, n)).st_nlink == 1 for d, _x, files in os.walk(prefix) for n in files
        if not os.path.islink(os.path.join(d, n))
    )


def test_unseal_breaks_links_so_edits_never_reach_the_cache(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "h-1.0", "cpkgs-test-app", root=root).returncode == 0
    assert run_cpkgs("new-env", "h-2.0", "cpkgs-test-app", root=root).returncode == 0
    app1 = root / ENVS / "h-1.0" / "bin" / "cpkgs-test-app"
    app2 = root / ENVS / "h-2.0" / "bin" / "cpkgs-test-app"
    assert os.lstat(app1).st_ino == os.lstat(app2).st_ino  # both linked to the cache
    assert run_cpkgs("unseal", "h-1.0", "--reason", "patch", root=root).returncode == 0
    assert os.lstat(app1).st_nlink == 1
    app1.write_text("#!/bin/sh\necho patched\n")
    assert as_nobody([str(app2)]).stdout.strip() == "app ok"
    assert run_cpkgs("verify", "h-2.0", root=root).returncode == 0
    assert run_cpkgs("new-env", "h-3.0", "cpkgs-test-app", root=root).returncode == 0


def test_not_enough_space_fails_early(tmp_path: Path, channel_url: str) -> None:
    """A real small filesystem (tmpfs) as the site: the build is refused before installing anything."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        root = make_site(small / "site", channel_url)
        before = tree_hash(root)
        r = run_cpkgs("new-env", "big-1.0", *FULL_SPECS, root=root)
        assert r.returncode == 1, r
        assert "not enough space" in r.stderr and r.stderr.count("\n") == 1
        assert tree_hash(root) == before
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_init_and_builds_are_audited(built_site: Path) -> None:
    import json

    lines = [json.loads(x) for x in (built_site / ".cpkgs" / "audit.log").read_text().splitlines()]
    actions = [(x["action"], x.get("env")) for x in lines]
    assert actions[0] == ("init", None)
    assert ("new-env", "demo-1.0") in actions and ("retire", "old-1.0") in actions
    assert all({"time", "user", "host", "command"} <= set(x) for x in lines)


def test_a_build_never_touches_another_names_staging_dir(site: Path) -> None:
    """`rr-1` must not take `.staging-rr-1-2@…` (another name's build, running under its own lock) for its own
    leftover; once no build of rr-1-2 holds that lock, the dir is a dead build's and the next build removes it."""
    from cpkgs_admin.site.locks import env_locked
    from cpkgs_admin.site.paths import open_site

    envs = site / ENVS
    other = envs / ".staging-rr-1-2@0123456789ab"
    other.mkdir(mode=0o700)
    (other / "in-progress").write_text("another build")
    mine = envs / ".staging-rr-1@ba9876543210"
    mine.mkdir(mode=0o700)
    with env_locked(open_site(site), "rr-1-2", "linux-64"):  # as the build of rr-1-2 holds it
        assert run_cpkgs("new-env", "rr-1", "cpkgs-test-app", root=site).returncode == 0
    assert (other / "in-progress").exists()
    assert not mine.exists()  # rr-1's own leftover (a killed run) is cleaned under rr-1's lock
    assert run_cpkgs("new-env", "rr-2", "cpkgs-test-app", root=site).returncode == 0
    assert not other.exists()


def _memo_dir(root: Path) -> Path:
    return root / ".cpkgs" / "pkgs" / ".cpkgs-verified"


def _opened_by_build(root: Path, name: str, *specs: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """new-env under strace: (the run, every path it or its children opened)."""
    # (Only opens inside the build's own staging dir count: rattler opens the cache's files when it extracts them.)
    log = root.parent / f"strace-{name}.log"
    cmd = ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", str(log),
           sys.executable, "-m", "cpkgs_admin", "--root", str(root), "new-env", name, *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc, log.read_text()


def _read_in_staging(log: str, name: str, rel: str) -> bool:
    """Whether the build of NAME opened REL in its staging dir for reading (verify's hashing)."""
    pattern = rf'open(at)?\(.*/\.staging-{re.escape(name)}@[0-9a-f]+/{re.escape(rel)}", O_RDONLY'
    return re.search(pattern, log) is not None


def test_second_build_does_not_reread_unchanged_cache_inodes(tmp_path: Path, channel_url: str) -> None:
    """The first build hashes every file and remembers the cache inodes it hashed; the next build that links the
    same unchanged inodes checks them by inode, size and mtime instead of reading them again. Files whose prefix
    was patched (fresh copies) are always read."""
    root = make_site(tmp_path / "site", channel_url)
    first, log1 = _opened_by_build(root, "m-1.0", "cpkgs-test-app", "cpkgs-test-textprefix")
    assert first.returncode == 0, first.stderr
    assert _read_in_staging(log1, "m-1.0", "bin/cpkgs-test-app")  # hashed on the first build
    assert any(p.name.startswith("cpkgs-test-app-") for p in _memo_dir(root).glob("*.json"))
    second, log2 = _opened_by_build(root, "m-2.0", "cpkgs-test-app", "cpkgs-test-textprefix")
    assert second.returncode == 0, second.stderr
    assert not _read_in_staging(log2, "m-2.0", "bin/cpkgs-test-app")  # a remembered inode: not read again
    assert _read_in_staging(log2, "m-2.0", "bin/cpkgs-test-textprefix")  # a patched copy: read
    # `cpkgs verify` never relies on the memo: it reads every byte.
    r = run_cpkgs("verify", "m-2.0", root=root)
    assert r.returncode == 0, r
    # The package extracted again (an admin cleaned the cache): new inodes, whatever their numbers: read again.
    for entry in (root / ".cpkgs" / "pkgs").glob("cpkgs-test-app-*"):
        if entry.is_dir():
            subprocess.run(["chmod", "-R", "u+w", str(entry)], check=True)
            shutil.rmtree(entry)
    third, log3 = _opened_by_build(root, "m-3.0", "cpkgs-test-app")
    assert third.returncode == 0, third.stderr
    assert _read_in_staging(log3, "m-3.0", "bin/cpkgs-test-app")


def test_cache_file_changed_after_it_was_remembered_is_healed_by_the_next_build(tmp_path: Path,
                                                                                 channel_url: str) -> None:
    """A write into a remembered cache inode moves its mtime: the next build reads it again and finds it wrong; it
    drops that cache entry, extracts the package again and publishes the right bytes, with a warning naming the
    package (it used to fail on every later build, with no hint)."""
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "w-1.0", "cpkgs-test-app", root=root).returncode == 0
    cached = next((root / ".cpkgs" / "pkgs").glob("cpkgs-test-app-*/bin/cpkgs-test-app"))
    data = cached.read_bytes()
    time.sleep(0.05)  # a different mtime tick than the extraction's
    cached.write_bytes(data.replace(b"app ok", b"app KO"))  # same size, other bytes (root ignores the 0555)
    r = run_cpkgs("new-env", "w-2.0", "cpkgs-test-app", root=root)
    assert r.returncode == 0, r
    (line,) = r.stderr.splitlines()
    assert line.startswith("cpkgs: warning: package cache entry cpkgs-test-app-") and "damaged (modified bin/" in line
    assert (root / ENVS / "w-2.0" / "bin" / "cpkgs-test-app").read_bytes() == data
    assert run_cpkgs("verify", "w-2.0", root=root).returncode == 0
    # w-1.0 shares the damaged inode: the full check finds it there.
    v = run_cpkgs("verify", "w-1.0", root=root)
    assert v.returncode == 4 and "bin/cpkgs-test-app" in v.stdout + v.stderr


def test_damaged_or_writable_memo_is_never_trusted(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "d-1.0", "cpkgs-test-app", root=root).returncode == 0
    memo = _memo_dir(root)
    for f in memo.glob("*.json"):
        f.write_text("{not json")
    r, log = _opened_by_build(root, "d-2.0", "cpkgs-test-app")
    assert r.returncode == 0, r.stderr
    assert _read_in_staging(log, "d-2.0", "bin/cpkgs-test-app")  # nothing usable remembered: read again
    # A memo directory others could write could vouch for anything: dropped whole and made again, closed (every
    # file is read again).
    os.chmod(memo, 0o777)
    r, log = _opened_by_build(root, "d-3.0", "cpkgs-test-app")
    assert r.returncode == 0, r.stderr
    assert _read_in_staging(log, "d-3.0", "bin/cpkgs-test-app")
    assert stat.S_IMODE(memo.stat().st_mode) == 0o700
    assert run_cpkgs("verify", "d-3.0", root=root).returncode == 0


def test_a_file_someone_else_put_into_the_cache_is_never_published(tmp_path: Path, channel_url: str) -> None:
    """A cache directory others could write (a package that shipped it 0777, before cpkgs dropped the bits) in a
    cache users could reach: an ordinary user puts their own file, same bytes, in place of one that envs link to.
    The next build never publishes a file its owner could change at will; envs linked to the old inode are
    untouched."""
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "o-1.0", "cpkgs-test-app", root=root).returncode == 0
    cache_bin = next((root / ".cpkgs" / "pkgs").glob("cpkgs-test-app-*/bin"))
    os.chmod(cache_bin, 0o777)
    world_traversable(cache_bin)
    app = cache_bin / "cpkgs-test-app"
    swap = f"cp -p {app} {cache_bin}/mine && mv -f {cache_bin}/mine {app}"
    assert as_nobody(["sh", "-c", swap]).returncode == 0
    assert app.stat().st_uid == 65534
    # The next build finds the cache open (the user had to be let in), closes it and drops what others could have
    # written: the package is extracted again; nothing of the user's is published.
    r = run_cpkgs("new-env", "o-2.0", "cpkgs-test-app", root=root)
    assert r.returncode == 0 and r.stderr.count("\n") == 1, r
    assert "was open to others" in r.stderr and "cpkgs-test-app-" in r.stderr, r.stderr
    published = root / ENVS / "o-2.0" / "bin" / "cpkgs-test-app"
    assert published.stat().st_uid != 65534
    assert stat.S_IMODE((root / ".cpkgs" / "pkgs").stat().st_mode) == 0o711
    assert run_cpkgs("verify", "o-1.0", "o-2.0", root=root).returncode == 0


def test_cache_entries_are_closed_to_others_once_extracted(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    cache = root / ".cpkgs" / "pkgs"
    assert run_cpkgs("new-env", "h-1.0", "cpkgs-test-app", root=root).returncode == 0
    entry = next(p for p in cache.glob("cpkgs-test-app-*") if p.is_dir())
    # As a package that ships a world-writable directory and file leaves them on extraction:
    os.chmod(entry / "bin", 0o777)
    os.chmod(entry / "bin" / "cpkgs-test-app", 0o777)
    for memo in _memo_dir(root).glob("cpkgs-test-app-*.json"):
        memo.unlink()  # as before its first build
    assert run_cpkgs("new-env", "h-2.0", "cpkgs-test-app", root=root).returncode == 0
    modes = [stat.S_IMODE(os.lstat(os.path.join(d, n)).st_mode) for d, dirs, files in os.walk(entry)
             for n in dirs + files if not os.path.islink(os.path.join(d, n))]
    assert modes and not any(m & 0o022 for m in modes), [oct(m) for m in modes]
    assert run_cpkgs("verify", "h-1.0", "h-2.0", root=root).returncode == 0


def test_verify_reports_a_file_owned_by_someone_else(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "u-1.0", "cpkgs-test-app", root=root).returncode == 0
    app = root / ENVS / "u-1.0" / "bin" / "cpkgs-test-app"
    os.lchown(app, 65534, -1)
    r = run_cpkgs("verify", "u-1.0", root=root)
    assert r.returncode == 4, r
    assert "bin/cpkgs-test-app" in r.stdout + r.stderr and "owned by uid 65534" in r.stdout + r.stderr


def test_two_admins_of_the_admin_group_build_in_turn(tmp_path: Path, channel_url: str) -> None:
    """A site root set up with an admin group (Debian's 'staff'); two admins (uids 1001 and 1002, no passwd
    entries, primary group staff, umask 022) build one after the other: nothing they share (the package cache and
    its lock, the hash memo, the audit log) is locked to one of them: no warning, both envs verify, both audited."""
    import grp

    staff = grp.getgrnam("staff").gr_gid
    channel = tmp_path / "channel"
    shutil.copytree(channel_url.removeprefix("file://"), channel)
    root = make_site(tmp_path / "site", channel.as_uri())
    assert run_cpkgs("init", "--admin-group", "staff", root=root).returncode == 0
    world_traversable(root)
    subprocess.run(["chmod", "-R", "a+rX", str(channel)], check=True)
    for i, uid in enumerate((1001, 1002)):
        home = tmp_path / f"home{uid}"
        home.mkdir()
        os.chown(home, uid, staff)
        cmd = ["setpriv", "--reuid", str(uid), "--regid", str(staff), "--clear-groups", sys.executable, "-m",
               "cpkgs_admin", "--root", str(root), "new-env", f"adm{i}-1.0", "cpkgs-test-app"]
        umask = os.umask(0o022)  # inherited by the admin's process
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(Path(__file__).parent.parent),
                               env={**os.environ, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"})
        finally:
            os.umask(umask)
        assert r.returncode == 0 and r.stderr == "", (uid, r.stderr)
    # (The second admin's files are copies here: the kernel's protected_hardlinks lets nobody but root link
    # another user's file it cannot write.)
    assert run_cpkgs("verify", "adm0-1.0", "adm1-1.0", root=root).returncode == 0
    lines = [json.loads(x) for x in (root / ".cpkgs" / "audit.log").read_text().splitlines()]
    assert [x.get("env") for x in lines if x["action"] == "new-env"] == ["adm0-1.0", "adm1-1.0"]


def test_spec_file_variables_are_set_on_activation_and_kept_by_from(site: Path, tmp_path: Path) -> None:
    """environment.yml `variables:` (as conda's env_vars): set by every activation (conda.sh, conda.csh, the
    modulefile), unset on deactivation, kept in the record, inherited by --from and through `extends:`."""
    envfile = tmp_path / "environment.yml"
    envfile.write_text(
        "dependencies: [cpkgs-test-app]\n"
        "variables:\n  DATA_DIR: /data/run 1\n  TRICKY: \"it's $HOME !x `y` \\\"q\\\"\"\n  THREADS: 4\n"
    )
    assert run_cpkgs("new-env", "v-1.0", "-f", str(envfile), root=site).returncode == 0
    want = {"DATA_DIR": "/data/run 1", "TRICKY": 'it\'s $HOME !x `y` "q"', "THREADS": "4"}
    assert run_cpkgs("info", "v-1.0", "--json", root=site).json()["variables"] == want
    assert run_cpkgs("verify", "v-1.0", root=site).returncode == 0
    show = 'printf "%s|%s|%s\\n" "$DATA_DIR" "$TRICKY" "$THREADS"'
    r = subprocess.run(["bash", "-c", f". {site}/etc/profile.d/conda.sh; conda activate v-1.0; {show}; "
                        'conda deactivate; echo "after=${DATA_DIR-unset}"'], capture_output=True, text=True)
    assert r.stdout.splitlines() == ["/data/run 1|" + want["TRICKY"] + "|4", "after=unset"], r
    csh = tmp_path / "t.csh"
    csh.write_text(f"source {site}/etc/profile.d/conda.csh\nconda activate v-1.0\nprintenv TRICKY\n"
                   "conda deactivate\nprintenv DATA_DIR || echo unset\n")
    r = subprocess.run(["tcsh", "-f", str(csh)], capture_output=True, text=True)
    assert r.stdout.splitlines() == [want["TRICKY"], "unset"], r
    lua = (site / "modulefiles" / "v" / "1.0.lua").read_text()
    assert 'pushenv("DATA_DIR", "/data/run 1")' in lua and 'pushenv("THREADS", "4")' in lua
    assert run_cpkgs("new-env", "v-1.1", "--from", "v-1.0", "--add", "cpkgs-test-textprefix", root=site).returncode == 0
    assert run_cpkgs("info", "v-1.1", "--json", root=site).json()["variables"] == want
    exported = tmp_path / "exported.yml"
    exported.write_text(run_cpkgs("export", "v-1.1", "--format", "yaml", root=site).stdout)
    assert run_cpkgs("new-env", "v-1.2", "-f", str(exported), root=site).returncode == 0  # round trip
    assert run_cpkgs("info", "v-1.2", "--json", root=site).json()["variables"] == want
    lock = tmp_path / "v.lock"  # the explicit file carries them as comments conda skips
    lock.write_text(run_cpkgs("export", "v-1.1", "--format", "explicit", root=site).stdout)
    assert "# variable: TRICKY=" + want["TRICKY"] in lock.read_text().splitlines()
    assert run_cpkgs("new-env", "v-1.3", "--lock", str(lock), root=site).returncode == 0
    assert run_cpkgs("info", "v-1.3", "--json", root=site).json()["variables"] == want
    (site / "specs" / "vbase.yml").write_text("dependencies: [cpkgs-test-app]\nvariables: {A: base, B: base}\n")
    (site / "specs" / "vtop.yml").write_text("extends: vbase\ndependencies: [cpkgs-test-lib]\nvariables: {B: top}\n")
    assert run_cpkgs("new-env", "vtop-1.0", root=site).returncode == 0
    assert run_cpkgs("info", "vtop-1.0", "--json", root=site).json()["variables"] == {"A": "base", "B": "top"}


def test_variables_reach_modules_and_kernels_exactly(site: Path, tmp_path: Path) -> None:
    """Values the publish-time measurement cannot see (LC_ALL=C is its own setting) still reach the modulefile and
    the kernel; '$' in a kernel's env stays literal (jupyter_client substitutes $NAME); non-ASCII survives Lmod's
    Tcl path; deactivate.d scripts run in reverse order, so the variables are unset after the packages' own
    scripts (which may still read them)."""
    envfile = tmp_path / "environment.yml"
    envfile.write_text("dependencies: [python, ipykernel, cpkgs-test-app]\n"
                       "variables: {LC_ALL: C, MSG: \"h\u00e9llo $HOME\"}\n")
    assert run_cpkgs("new-env", "w-1.0", "-f", str(envfile), root=site).returncode == 0
    lua = (site / "modulefiles" / "w" / "1.0.lua").read_text()
    assert 'pushenv("LC_ALL", "C")' in lua, lua
    kernel = json.loads((site / "share" / "jupyter" / "kernels" / "w-1.0" / "kernel.json").read_text())
    assert kernel["env"]["LC_ALL"] == "C" and kernel["env"]["MSG"] == "h\u00e9llo $$HOME"
    tcl = (site / "modulefiles-tcl" / "w" / "1.0").read_text()
    assert '"h\\u00e9llo \\$HOME"' in tcl, tcl
    lmod = "/usr/share/lmod/lmod/libexec/lmod"
    if os.path.exists(lmod):
        r = subprocess.run(["bash", "-c", f'eval "$({lmod} bash load w/1.0)"; printenv MSG'], capture_output=True,
                           text=True, env={**os.environ, "MODULEPATH": str(site / "modulefiles-tcl")})
        assert r.stdout == "h\u00e9llo $HOME\n", r
    # a package-like deactivate script that reads MSG: it runs before cpkgs' own unsets it
    deact = site / ENVS / "w-1.0" / "etc" / "conda" / "deactivate.d"
    assert sorted(p.name for p in deact.iterdir()) == ["00-cpkgs-variables.csh", "00-cpkgs-variables.sh"]
    assert run_cpkgs("unseal", "w-1.0", "--reason", "test: a package's deactivate script", root=site).returncode == 0
    (deact / "zz-reader.sh").write_text('SEEN_AT_DEACTIVATE="${MSG-unset}"\n')
    r = subprocess.run(["bash", "-c", f". {site}/etc/profile.d/conda.sh; conda activate w-1.0; conda deactivate; "
                        'echo "seen=$SEEN_AT_DEACTIVATE msg=${MSG-unset}"'], capture_output=True, text=True)
    assert r.stdout == "seen=h\u00e9llo $HOME msg=unset\n", r
