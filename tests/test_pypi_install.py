"""Installing the locked pip part into a real staged env: scripts that name the final prefix and run after the
rename as an ordinary user, RECORDs that verify, conda's files never replaced, what pip itself sees."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pypi_helpers import *  # noqa: F403
from pypi_helpers import Env, Pip

from conftest import as_nobody, tree_hash, world_traversable
from cpkgs_admin.errors import PipError
from cpkgs_admin.integrity.manifest import expected_files
from cpkgs_admin.integrity.tree import scan_tree
from cpkgs_admin.pipeline.pypi.install import retarget_script, shebang
from cpkgs_admin.pipeline.pypi.inventory import EnvInventory, provides
from cpkgs_admin.pipeline.pypi.requirements import parse_pip_section
from cpkgs_admin.pipeline.pypi.verify import check_pip_integrity, pip_expected_files, records_digest
from cpkgs_admin.site.pypi_config import PypiConfig


def install(pip: Pip, env: Env, config: PypiConfig, *lines: str):  # type: ignore[no-untyped-def]
    spec = env.staging.parent.parent / "spec.yml"
    spec.write_text("dependencies: [python]\n")
    lock = pip.lock(parse_pip_section(list(lines), spec), env, config)
    return pip.install(lock, env)


def no_staging_path_anywhere(prefix: Path) -> None:
    for dirpath, _dirs, files in os.walk(prefix):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                with open(p, "rb") as fh:
                    assert b".staging-" not in fh.read(), p


def test_console_scripts_run_after_publish_as_an_ordinary_user(make_env, pip: Pip,
                                                                offline_config: PypiConfig) -> None:
    env = make_env("python", "pip")
    packages = install(pip, env, offline_config, "markdown-it-py", "tqdm", "cowsay", "cpkgs-datascript")
    assert {p.name for p in packages} == {"markdown-it-py", "mdurl", "tqdm", "cowsay", "cpkgs-datascript"}
    for p in packages:
        assert p.dist_info.startswith("lib/python3.11/site-packages/") and (env.staging / p.dist_info).is_dir()
    assert check_pip_integrity(env.staging) == []  # the re-headed scripts' RECORD rows too
    final = env.publish()
    no_staging_path_anywhere(final)
    world_traversable(final)
    for cmd, expect in [(["markdown-it", "--version"], "markdown-it-py [version 4.3.0]"),
                        (["tqdm", "--version"], "4.70.1"),
                        (["cowsay", "-t", "sealed"], "sealed"),
                        (["cpkgs-datascript"], f"datascript ok {final}")]:
        proc = as_nobody([str(final / "bin" / cmd[0]), *cmd[1:]], timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert expect in proc.stdout
    assert (final / "bin" / "markdown-it").read_bytes().startswith(f"#!{final}/bin/python\n".encode())


def test_pip_files_verify_against_their_record(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env("python")
    install(pip, env, offline_config, "rich", "toolz", "pyyaml")
    prefix = env.staging
    assert check_pip_integrity(prefix) == []
    # conda-meta's files and the pip part's RECORDs together account for every file: nothing is "unexpected".
    known = {**expected_files(prefix), **pip_expected_files(prefix)}
    tree = scan_tree(prefix)
    stray = [rel for rel, st in tree.items() if not stat.S_ISDIR(st.st_mode) and rel not in known
             and not rel.startswith("conda-meta/")]
    assert stray == []
    # Copied, never hard links into uv's cache (which is not the sealed env's to share).
    pip_files = [rel for rel, e in pip_expected_files(prefix).items() if e.dist.startswith("pypi:")]
    assert len(pip_files) > 50
    assert all(tree[rel].st_nlink == 1 for rel in pip_files)

    digest = records_digest(prefix)
    console = prefix / "lib/python3.11/site-packages/rich/console.py"
    console.write_text(console.read_text() + "# changed\n")
    (prefix / "lib/python3.11/site-packages/toolz/__init__.py").unlink()
    problems = {(p.kind, p.path) for p in check_pip_integrity(prefix)}
    assert problems == {("modified", "lib/python3.11/site-packages/rich/console.py"),
                        ("missing", "lib/python3.11/site-packages/toolz/__init__.py")}
    record = next(prefix.glob("lib/python3.11/site-packages/toolz-*.dist-info/RECORD"))
    record.write_text(record.read_text().replace("toolz/__init__.py,", "toolz/__init__.py.gone,"))
    assert records_digest(prefix) != digest


def test_hard_links_only_when_asked_and_never_written_through(make_env, pip: Pip, offline_config: PypiConfig,
                                                             uv_cache: Path) -> None:
    env = make_env("python")
    spec = env.staging.parent.parent / "spec.yml"
    spec.write_text("dependencies: [python]\n")
    lock = pip.lock(parse_pip_section(["markdown-it-py"], spec), env, offline_config)
    from cpkgs_admin.pipeline.pypi.install import install_pip

    install_pip(lock, env.target, cache_dir=uv_cache, work_dir=pip.work / "hl", hard_links=True)
    site = env.staging / "lib/python3.11/site-packages"
    assert (site / "markdown_it" / "main.py").stat().st_nlink > 1  # shared with uv's cache
    script = env.staging / "bin" / "markdown-it"
    assert script.stat().st_nlink == 1 and script.read_bytes().startswith(f"#!{env.final}/bin/python".encode())
    assert check_pip_integrity(env.staging) == []


def test_a_wheel_replacing_a_conda_file_is_refused(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env("python", "pip")
    spec = env.staging.parent.parent / "spec.yml"
    spec.write_text("dependencies: [python, pip]\n")
    lock = pip.lock(parse_pip_section(["toolz", "cpkgs-clobber"], spec), env, offline_config)
    before = tree_hash(env.staging)
    with pytest.raises(PipError) as exc:
        pip.install(lock, env)
    msg = str(exc.value)
    assert msg == ("pip: cpkgs-clobber 1.0 (pip requirement 'cpkgs-clobber') would overwrite bin/pip of the conda "
                   "package pip 26.3; pip may not replace conda's files: drop the pip requirement or change the conda "
                   "spec of pip")
    assert tree_hash(env.staging) == before  # refused before anything was written, toolz included


@pytest.mark.slow
def test_requested_direct_url_and_what_pip_sees(make_env, pip: Pip, offline_config: PypiConfig, git_repo,
                                                wheel_dir: Path, tmp_path: Path) -> None:
    repo, first, _second = git_repo
    env = make_env("python", "pip")
    toolz = wheel_dir / "toolz-1.2.0-py3-none-any.whl"
    packages = install(pip, env, offline_config, "rich", f"tinytool @ git+{repo.as_uri()}@v0.1", str(toolz))
    dist = {p.name: env.staging / p.dist_info for p in packages}
    assert {n for n, d in dist.items() if (d / "REQUESTED").exists()} == {"rich", "tinytool", "toolz"}
    assert json.loads((dist["tinytool"] / "direct_url.json").read_text()) == {
        "url": repo.as_uri(), "vcs_info": {"vcs": "git", "commit_id": first, "requested_revision": "v0.1"}}
    toolz_sha = next(p.sha256 for p in packages if p.name == "toolz")
    assert json.loads((dist["toolz"] / "direct_url.json").read_text())["archive_info"]["hashes"] == {
        "sha256": toolz_sha}
    assert not (dist["rich"] / "direct_url.json").exists()
    assert check_pip_integrity(env.staging) == []
    final = env.publish()
    world_traversable(final)
    run_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    freeze = as_nobody([str(final / "bin" / "python"), "-m", "pip", "freeze", "--isolated"], env=run_env)
    assert f"tinytool @ git+{repo.as_uri()}@{first}" in freeze.stdout.splitlines(), freeze.stdout
    assert f"toolz @ {toolz.as_uri()}#sha256={toolz_sha}" in freeze.stdout.splitlines()
    check = as_nobody([str(final / "bin" / "python"), "-m", "pip", "check", "--isolated"], env=run_env)
    assert check.returncode == 0 and "No broken requirements" in check.stdout
    proc = as_nobody([str(final / "bin" / "tinytool")])
    assert proc.stdout.strip() == f"tinytool ok {final}"


def test_long_prefixes_get_the_sh_header_and_short_ones_the_plain_one(make_env, pip: Pip,
                                                                       offline_config: PypiConfig,
                                                                       tmp_path: Path) -> None:
    # Final bin/python just under the kernel's 127 bytes (plain '#!'), its staging dir 22 bytes over (uv wrote the
    # /bin/sh header there): the header is made anew for the final path, not patched.
    pad = 126 - len(str(tmp_path / "a" / "envs" / "demo-1.0" / "bin" / "python"))
    envs = tmp_path / ("a" * max(pad, 1)) / "envs"
    env = make_env("python", envs=envs)
    assert len(f"{env.final}/bin/python") <= 127 < len(f"{env.staging}/bin/python")
    install(pip, env, offline_config, "markdown-it-py")
    final = env.publish()
    assert (final / "bin" / "markdown-it").read_bytes().startswith(f"#!{final}/bin/python\n".encode())
    world_traversable(final)
    assert as_nobody([str(final / "bin" / "markdown-it"), "--version"]).returncode == 0

    long_env = make_env("python", envs=tmp_path / ("b" * 100) / "envs")
    install(pip, long_env, offline_config, "markdown-it-py")
    final = long_env.publish()
    head = (final / "bin" / "markdown-it").read_bytes()
    assert head.startswith(f"#!/bin/sh\n'''exec' {final}/bin/python \"$0\" \"$@\"\n' '''\n".encode())
    assert check_pip_integrity(final) == []
    world_traversable(final)
    proc = as_nobody([str(final / "bin" / "markdown-it"), "--version"])
    assert proc.returncode == 0 and "4.3.0" in proc.stdout


def test_script_headers() -> None:
    assert shebang("/nfs/cpkgs/envs/a/bin/python") == b"#!/nfs/cpkgs/envs/a/bin/python\n"
    assert shebang("/nfs/my envs/a/bin/python") == b"#!/bin/sh\n'''exec' '/nfs/my envs/a/bin/python' \"$0\" \"$@\"\n' '''\n"
    old, new = "/s/.staging-a@1/bin/python", "/s/a/bin/python"
    assert retarget_script(b"#!/s/.staging-a@1/bin/python -u\nimport x\n", old, new) == b"#!/s/a/bin/python -u\nimport x\n"
    assert retarget_script(b"#!/usr/bin/env python\nimport x\n", old, new) is None
    assert retarget_script(b"\x7fELF", old, new) is None


def test_what_the_env_provides(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env("python", "ipykernel")
    install(pip, env, offline_config, "markdown-it-py")
    final = env.publish()
    ipk = provides(final, "ipykernel")
    assert ipk is not None and ipk.from_conda and ipk.conda_package == "ipykernel"
    ipy = provides(final, "IPython", module=True)
    assert ipy is not None and ipy.name == "ipython" and ipy.conda_package == "ipykernel"
    md = provides(final, "markdown_it", module=True)
    assert md is not None and md.name == "markdown-it-py" and not md.from_conda and md.version == "4.3.0"
    assert provides(final, "Markdown_IT.py") is not None  # names compare as pip compares them
    assert provides(final, "rich") is None and provides(final, "rich", module=True) is None
    inv = EnvInventory(final)
    assert {d.name for d in inv.pip_distributions()} == {"markdown-it-py", "mdurl"}


def test_the_target_is_read_from_the_staged_files(make_env) -> None:
    env = make_env("python")
    t = env.target
    assert t.executable == env.staging / "bin" / "python" and t.final_executable == env.final / "bin" / "python"
    assert (t.version, t.full_version, t.purelib, t.scripts, t.native) == (
        "3.11", "3.11.7", "lib/python3.11/site-packages", "bin", True)
    assert t.platform.triple.startswith("x86_64-manylinux_2_")
    assert not list(env.staging.rglob("__pycache__"))  # nothing ran, nothing wrote byte code
