"""What an adversarial run broke (issue #13): package content that must never be published, admin text that reaches
users' terminals and shells, activate.d scripts measured as root, and a filesystem failing under a build.

The packages come from a small channel of their own (tests/adversarial), built for the session, so the main test
channel's cache key stays as it is. Builds run as root (the admin); users' views run as uid 65534.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import make_site, run_cpkgs, tree_hash

sys.path.insert(0, str(Path(__file__).resolve().parent / "adversarial"))
from make_channel import build_adversarial_channel  # noqa: E402

ENVS = "anaconda3_linux/envs"


@pytest.fixture(scope="session")
def adv_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_adversarial_channel(tmp_path_factory.mktemp("adversarial")).as_uri()


@pytest.fixture
def adv_site(tmp_path: Path, channel_url: str, adv_url: str) -> Path:
    return make_site(tmp_path / "site", channel_url, "-c", adv_url)


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
    spec = tmp_path / "environment.yml"
    spec.write_text("dependencies: [cpkgs-test-app]\nvaraibles: {A: 1}\n")
    r = run_cpkgs("new-env", "k-1.0", "-f", str(spec), root=site)
    assert r.returncode == 1, r
    assert "unknown key 'varaibles' (allowed: channels, dependencies, extends, variables;" in r.stderr, r.stderr
