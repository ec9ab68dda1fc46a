"""What an adversarial run broke (issue #13): package content that must never be published, admin text that reaches
users' terminals and shells, activate.d scripts measured as root, and a filesystem failing under a build.

The packages come from a small channel of their own (tests/adversarial), built for the session, so the main test
channel's cache key stays as it is. Builds run as root (the admin); users' views run as uid 65534.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ENVS, LINUX, REPO, as_nobody, cpkgs_env, make_site, run_cpkgs, tree_hash

sys.path.insert(0, str(Path(__file__).resolve().parent / "adversarial"))
from make_channel import WORLD_WRITABLE, build_adversarial_channel  # noqa: E402


@pytest.fixture(scope="session")
def adv_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_adversarial_channel(tmp_path_factory.mktemp("adversarial")).as_uri()


@pytest.fixture
def adv_site(tmp_path: Path, channel_url: str, adv_url: str) -> Path:
    return make_site(tmp_path / "site", channel_url, "-c", adv_url)


@pytest.fixture
def world() -> Iterator[Path]:
    """The world-writable directory the evil symlinks point into, with another user's program planted in it."""
    d = Path(WORLD_WRITABLE)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    d.chmod(0o1777)
    evil = d / "evil"
    evil.write_text("#!/bin/sh\necho planted by another user\n")
    evil.chmod(0o755)
    os.chown(evil, 65533, 65533)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _no_locks(root: Path) -> bool:
    r = run_cpkgs("locks", "--json", root=root)
    return r.returncode == 0 and r.json() == []


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ENVS).iterdir() if p.name.startswith(".staging-"))


# ------------------------------------------------------------------------------------------- item 5: package content

REFUSED = [
    # (package, the path the line names, what it says)
    ("evil-abs-symlink", "bin/evil", f"a symlink to {WORLD_WRITABLE}/evil, outside the environment"),
    ("evil-rel-symlink", "share/evil/up", "outside the environment"),
    ("evil-under-symlink", "share/evil/planted", "under share/evil, a symlink"),
    ("evil-nfs", "share/evil/.nfs00000000deadbeef0001", "NFS"),
    ("evil-meta", "conda-meta/cpkgs/layer", "conda-meta"),
    ("evil-abs-path", "/tmp/cpkgs-test-abs-path-evil", "absolute path"),
    ("evil-dotdot", "share/../../cpkgs-test-dotdot-evil", "'..'"),
]


@pytest.mark.parametrize("package,path,why", REFUSED, ids=[r[0] for r in REFUSED])
def test_package_content_that_must_not_be_published_is_refused(adv_site: Path, world: Path, package: str,
                                                                 path: str, why: str) -> None:
    """One line naming the package and the path; nothing published, nothing written outside the env, no lock or
    staging dir left. Paths that rattler cannot even be handed safely (an absolute path made it panic and abort)
    are refused before the install: their package never reaches the package cache."""
    r = run_cpkgs("new-env", "bad-1.0", "cpkgs-test-app", package, root=adv_site)
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "panicked" not in r.stderr, r.stderr
    assert package in r.stderr and path in r.stderr and why in r.stderr, r.stderr
    assert not (adv_site / ENVS / "bad-1.0").exists()
    assert not (adv_site / ".cpkgs" / "records" / "linux-64" / "bad-1.0.json").exists()
    assert _leftovers(adv_site) == [] and _no_locks(adv_site)
    assert sorted(p.name for p in world.iterdir()) == ["evil"]
    assert not Path("/tmp/cpkgs-test-abs-path-evil").exists()
    assert not (adv_site / LINUX / "cpkgs-test-dotdot-evil").exists()
    if "symlink to" not in why and "outside" not in why:  # refused from the package's file list, before install
        cached = [p.name for p in (adv_site / ".cpkgs" / "pkgs").iterdir() if p.name.startswith(package)]
        assert cached == [], cached


_FILL_CACHE = """
import asyncio, sys
from pathlib import Path
from rattler import Platform, install
from cpkgs_admin.pipeline.plan import rattler_config
from cpkgs_admin.site.paths import open_site
from cpkgs_admin.site.channels import Source
from cpkgs_admin.pipeline.solve import check_channels, solve, virtual_packages
site = open_site(Path(sys.argv[1]))
sources = check_channels([Source(c, c) for c in site.config.channels])
records = solve(sources, (sys.argv[2],), "linux-64", virtual_packages("linux-64", {}), [], None)
asyncio.run(install(records, target_prefix=sys.argv[3], cache_dir=site.pkgs_cache_dir, installed_packages=[],
                    platform=Platform("linux-64"), config=rattler_config(False)))
# As cpkgs' own main does: py-rattler 0.28's threads can crash the interpreter while it finalizes (SIGSEGV,
# "PyGILState_Release: thread state ... must be current"); the work is done, leave without finalizing.
import os
os._exit(0)
"""


def test_a_package_already_in_the_cache_is_checked_from_its_cache_entry(tmp_path: Path, channel_url: str,
                                                                        adv_url: str) -> None:
    """A package an older cpkgs (or rattler by hand) unpacked into the site cache is checked from that entry, which
    is what rattler then links: here its archive is gone from the channel, so nothing else could be read."""
    channel = tmp_path / "channel"
    shutil.copytree(Path(adv_url.removeprefix("file://")), channel)
    root = make_site(tmp_path / "site", channel_url, "-c", channel.as_uri())
    r = subprocess.run([sys.executable, "-c", _FILL_CACHE, str(root), "evil-meta", str(tmp_path / "scratch")],
                       capture_output=True, text=True, cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    assert (root / ".cpkgs" / "pkgs" / "evil-meta-1.0-0" / "info" / "paths.json").is_file()
    (channel / "noarch" / "evil-meta-1.0-0.tar.bz2").unlink()
    r = run_cpkgs("new-env", "bad-1.0", "cpkgs-test-app", "evil-meta", root=root)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "refusing package evil-meta-1.0-0: conda-meta/cpkgs/layer is inside conda-meta/" in r.stderr, r.stderr


def test_verify_reports_a_package_symlink_that_leaves_the_env(adv_site: Path, world: Path) -> None:
    """A package's own symlink, pointed out of the env after publish (the integrity check cannot see it: a symlink
    has no content hash), is a problem `verify` names."""
    r = run_cpkgs("new-env", "lnk-1.0", "cpkgs-test-goodlink", root=adv_site)
    assert r.returncode == 0, r
    link = adv_site / ENVS / "lnk-1.0" / "bin" / "cpkgs-test-goodlink"
    assert as_nobody([str(link)]).stdout == "goodlink ok\n"
    assert run_cpkgs("verify", "lnk-1.0", root=adv_site).returncode == 0
    assert run_cpkgs("unseal", "lnk-1.0", "--reason", "test: repoint a symlink", root=adv_site).returncode == 0
    link.unlink()
    link.symlink_to(world / "evil")
    assert run_cpkgs("seal", "lnk-1.0", root=adv_site).returncode == 0
    r = run_cpkgs("verify", "lnk-1.0", root=adv_site)
    assert r.returncode == 4, r
    assert f"lnk-1.0: symlink: bin/cpkgs-test-goodlink: points outside the environment ({world}/evil)" in r.stdout, r


def _run_with_abort(root: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real CLI, without a core dump when it is aborted."""
    return subprocess.run([sys.executable, "-m", "cpkgs_admin", "--root", str(root), *args], capture_output=True,
                          text=True, env=cpkgs_env(env), cwd=str(REPO), timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))


def test_a_build_aborted_mid_install_blocks_no_later_build(adv_site: Path) -> None:
    """rattler aborts the process when it panics (SIGABRT, exit 134): the staging dir (0700) and the locks of that
    build stay behind. The next build, of any name, removes the staging dir and recovers the locks."""
    r = _run_with_abort(adv_site, "new-env", "ab-1.0", "cpkgs-test-app", "cpkgs-test-postlink",
                        env={"CPKGS_TEST_ABORT": "1"})
    assert r.returncode == -6, r  # SIGABRT
    assert len(_leftovers(adv_site)) == 1
    r = run_cpkgs("new-env", "other-1.0", "cpkgs-test-app", root=adv_site)
    assert r.returncode == 0, r
    assert _leftovers(adv_site) == [] and _no_locks(adv_site)
    r = run_cpkgs("new-env", "ab-1.0", "cpkgs-test-app", root=adv_site)
    assert r.returncode == 0, r


# ------------------------------------------------------------------------------------------- item 8: activation


def test_activate_d_scripts_are_measured_as_an_unprivileged_user(adv_site: Path) -> None:
    """At publish the env's activate.d scripts run to measure what they set: as uid 65534 when the builder is root,
    so a channel's package cannot run code as the admin, nor write beside the env."""
    r = run_cpkgs("new-env", "who-1.0", "cpkgs-test-whoami", root=adv_site)
    assert r.returncode == 0, r
    rec = run_cpkgs("info", "who-1.0", "--json", root=adv_site).json()
    assert rec["activation"]["variables"] == {"MEASURED_UID": "65534", "MEASURED_WROTE": "no"}, rec["activation"]
    assert not (adv_site / ENVS / "measured-wrote-here").exists()
    lua = (adv_site / "modulefiles" / "who" / "1.0.lua").read_text()
    assert 'pushenv("MEASURED_UID", "65534")' in lua
    # refresh measures again, the same way
    assert run_cpkgs("refresh", root=adv_site).returncode == 0
    assert not (adv_site / ENVS / "measured-wrote-here").exists()


# ------------------------------------------------------------------------------------------- item 15: disk failures


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield small
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_an_archive_unpacking_past_the_free_space_is_refused_before_install(small_fs: Path, channel_url: str,
                                                                           adv_url: str) -> None:
    """A few KiB of archive that unpacks to 20 MiB, on a 12 MiB filesystem: the estimate comes from the packages'
    own file lists, so the build is refused before anything is installed."""
    root = make_site(small_fs / "site", channel_url, "-c", adv_url)
    before = tree_hash(root)
    r = run_cpkgs("new-env", "big-1.0", "cpkgs-test-bigzero", root=root)
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and f"not enough space on {small_fs}" in r.stderr, r.stderr
    assert "MiB needed" in r.stderr and "failed to fetch" not in r.stderr
    assert tree_hash(root) == before


def test_running_out_of_space_during_install_says_so(small_fs: Path, channel_url: str, adv_url: str) -> None:
    """A package whose file list understates its size passes the estimate and fills the disk while rattler unpacks
    it: one line saying no space is left on that filesystem, no lock left, and the next build works."""
    root = make_site(small_fs / "site", channel_url, "-c", adv_url)
    r = run_cpkgs("new-env", "liar-1.0", "cpkgs-test-liar", root=root)
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and f"no space left on {small_fs} (needed about" in r.stderr, r.stderr
    assert "failed to fetch" not in r.stderr
    assert _no_locks(root) and not (root / ENVS / "liar-1.0").exists()
    r = run_cpkgs("new-env", "ok-1.0", "cpkgs-test-app", root=root)
    assert r.returncode == 0, r
    assert _leftovers(root) == []


def test_filesystem_turning_read_only_mid_build_is_one_line_and_blocks_nothing(adv_site: Path) -> None:
    """The site's filesystem fails under a running build (here it turns read-only once the packages are linked:
    EROFS from the kernel; device-mapper's error target, for EIO, is not available in this sandbox). One line naming
    the path and the errno, no traceback, no 'internal error'; the locks it could not remove do not block the next
    build, which also removes the staging dir left behind."""
    root = adv_site
    try:
        r = run_cpkgs("new-env", "ro-1.0", "cpkgs-test-app", "cpkgs-test-postlink", root=root,
                      env={"CPKGS_TEST_READONLY": str(root)})
    finally:
        mounted = subprocess.run(["umount", str(root)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip(f"could not bind-mount the site read-only here: {r.stderr}")
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "Read-only file system (EROFS)" in r.stderr and f"{root}/" in r.stderr, r.stderr
    assert all(lock["state"] != "held" for lock in run_cpkgs("locks", "--json", root=root).json())
    r = run_cpkgs("new-env", "ro-1.0", "cpkgs-test-app", root=root)
    assert r.returncode == 0, r
    assert _leftovers(root) == [] and _no_locks(root)


# ------------------------------------------------------------------------------------------- item 7: admin text


@pytest.mark.parametrize("text", ["moved\x1b]0;owned\x07", "see \x1b[2J here", "csi \x9b31m red", "bidi \u202e"])
def test_retire_message_and_unseal_reason_with_control_characters_are_refused(adv_site: Path, text: str) -> None:
    assert run_cpkgs("new-env", "t-1.0", "cpkgs-test-app", root=adv_site).returncode == 0
    before = tree_hash(adv_site)
    r = run_cpkgs("retire", "t-1.0", "--message", text, root=adv_site)
    assert r.returncode == 2 and "--message" in r.stderr and "control character" in r.stderr, r
    assert r.stderr.count("\n") == 1
    r = run_cpkgs("unseal", "t-1.0", "--reason", text, root=adv_site)
    assert r.returncode == 2 and "--reason" in r.stderr and "control character" in r.stderr, r
    assert tree_hash(adv_site) == before


CODE_RUNNING = ["PROMPT_COMMAND", "BASH_ENV", "ENV", "ZDOTDIR", "PS4", "PROMPT", "SHELLOPTS", "LD_PRELOAD",
                "LD_LIBRARY_PATH", "LD_AUDIT", "DYLD_INSERT_LIBRARIES", "GLIBC_TUNABLES", "PYTHONSTARTUP",
                "PYTHONPATH", "PERL5OPT", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "LUA_INIT", "HISTFILE"]


@pytest.mark.parametrize("name", CODE_RUNNING)
def test_variables_that_make_shells_or_loaders_run_code_are_refused_from_every_source(
        adv_site: Path, tmp_path: Path, name: str) -> None:
    """Spec files, a lock file's `# variable:` comments and a record carried by --from: each refused with one line
    naming the variable, before anything is solved or installed."""
    spec = tmp_path / "environment.yml"
    spec.write_text(f"dependencies: [cpkgs-test-app]\nvariables:\n  {name}: 'touch /tmp/owned'\n")
    r = run_cpkgs("new-env", "v-1.0", "-f", str(spec), root=adv_site)
    assert r.returncode == 1 and f"variables: {name}" in r.stderr and r.stderr.count("\n") == 1, r
    lock = tmp_path / "v.lock"
    lock.write_text(f"# platform: linux-64\n# variable: {name}=touch /tmp/owned\n@EXPLICIT\n"
                    "file:///nowhere/noarch/cpkgs-test-app-1.0-h4616a5c_0.conda\n")
    r = run_cpkgs("new-env", "v-1.0", "--lock", str(lock), root=adv_site)
    assert r.returncode == 1 and f"variables: {name}" in r.stderr and r.stderr.count("\n") == 1, r
    assert not (adv_site / ENVS / "v-1.0").exists()


def test_a_record_carrying_a_refused_variable_is_refused_by_from(adv_site: Path) -> None:
    assert run_cpkgs("new-env", "f-1.0", "cpkgs-test-app", root=adv_site).returncode == 0
    path = adv_site / ".cpkgs" / "records" / "linux-64" / "f-1.0.json"
    data = json.loads(path.read_text())
    data["variables"] = {"PROMPT_COMMAND": "touch /tmp/owned"}  # a record written by an older cpkgs, or edited
    path.write_text(json.dumps(data))
    r = run_cpkgs("new-env", "f-2.0", "--from", "f-1.0", root=adv_site)
    assert r.returncode == 1 and "--from f-1.0: variables: PROMPT_COMMAND" in r.stderr, r
    assert r.stderr.count("\n") == 1 and not (adv_site / ENVS / "f-2.0").exists()


def test_variable_values_with_control_characters_are_refused(adv_site: Path, tmp_path: Path) -> None:
    spec = tmp_path / "environment.yml"
    spec.write_text('dependencies: [cpkgs-test-app]\nvariables:\n  GREETING: "hi \\x9b2J"\n')
    r = run_cpkgs("new-env", "c-1.0", "-f", str(spec), root=adv_site)
    assert r.returncode == 1 and "variables: GREETING" in r.stderr and r.stderr.count("\n") == 1, r


def test_requested_specs_with_control_characters_are_refused(adv_site: Path, tmp_path: Path) -> None:
    """Requested specs reach users in `module help` and `cpkgs info`; rattler takes `[build="..."]` with anything
    inside the quotes."""
    spec = 'cpkgs-test-app[build="\x1b]0;owned\x07"]'
    r = run_cpkgs("new-env", "s-1.0", spec, root=adv_site)
    assert r.returncode == 1 and "control character (U+001B)" in r.stderr and r.stderr.count("\n") == 1, r
    envfile = tmp_path / "environment.yml"
    envfile.write_text(json.dumps({"dependencies": [spec]}))
    r = run_cpkgs("new-env", "s-1.0", "-f", str(envfile), root=adv_site)
    assert r.returncode == 1 and "control character (U+001B)" in r.stderr and r.stderr.count("\n") == 1, r


def test_info_shows_every_variable(adv_site: Path, tmp_path: Path) -> None:
    """The spec's variables and what the packages' activate.d scripts set, in the table and in --json."""
    spec = tmp_path / "environment.yml"
    spec.write_text("dependencies: [cpkgs-test-app, cpkgs-test-whoami]\nvariables: {DATA_DIR: /data/run 1}\n")
    assert run_cpkgs("new-env", "i-1.0", "-f", str(spec), root=adv_site).returncode == 0
    r = run_cpkgs("info", "i-1.0", root=adv_site)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert "variables  DATA_DIR=/data/run 1" in lines, r.stdout
    assert "activation MEASURED_UID=65534" in lines and "activation MEASURED_WROTE=no" in lines, r.stdout
    data = run_cpkgs("info", "i-1.0", "--json", root=adv_site).json()
    assert data["variables"] == {"DATA_DIR": "/data/run 1"}
    assert data["activation"]["variables"] == {"DATA_DIR": "/data/run 1", "MEASURED_UID": "65534",
                                               "MEASURED_WROTE": "no"}
    assert "activation DATA_DIR=/data/run 1" not in lines  # the spec's, set by cpkgs' own script: shown once


# ------------------------------------------------------------------------------------------- item 16


def test_unknown_spec_key_lists_every_allowed_key(site: Path, tmp_path: Path) -> None:
    """An unknown key is ignored with a warning, as conda does (issue #15); the warning's list of keys names
    `variables` (a misspelt `variables:` would otherwise look like a file without variables)."""
    spec = tmp_path / "environment.yml"
    spec.write_text("dependencies: [cpkgs-test-app]\nvaraibles: {A: 1}\n")
    r = run_cpkgs("new-env", "k-1.0", "-f", str(spec), "--dry-run", root=site)
    assert r.returncode == 0, r
    assert "key 'varaibles' is not an environment.yml key; ignored, as conda does (keys: name, channels, " \
        "dependencies, variables, prefix" in r.stderr, r.stderr
