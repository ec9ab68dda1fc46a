"""What the pip part is resolved and installed for without running the env's python (dry runs, other platforms),
byte code made at build time, and what a failed resolution names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pypi_helpers import *  # noqa: F403
from pypi_helpers import LINUX, Env, Pip, mac_python_channel

from conftest import as_nobody, world_traversable
from cpkgs_admin.errors import PipError
from cpkgs_admin.integrity.manifest import read_conda_meta
from cpkgs_admin.pipeline.pypi.bytecode import compile_pip_part
from cpkgs_admin.pipeline.pypi.install import install_pip
from cpkgs_admin.pipeline.pypi.inventory import EnvInventory, distributions_from_paths
from cpkgs_admin.pipeline.pypi.requirements import parse_pip_section
from cpkgs_admin.pipeline.pypi.resolve import resolve_pip
from cpkgs_admin.pipeline.pypi.target import python_platform, target_for_paths, target_for_prefix
from cpkgs_admin.pipeline.pypi.verify import check_pip_integrity
from cpkgs_admin.site.pypi_config import PypiConfig


def request(env: Env, *lines: str):  # type: ignore[no-untyped-def]
    spec = env.staging.parent.parent / "spec.yml"
    spec.write_text("dependencies: [python]\n")
    return parse_pip_section(list(lines), spec)


def test_platforms_from_the_solves_virtual_packages() -> None:
    assert python_platform("linux-64", {"__glibc": "2.28"}).triple == "x86_64-manylinux_2_28"
    assert python_platform("linux-aarch64", {"__glibc": "2.17"}).triple == "aarch64-manylinux_2_17"
    # The site's oldest glibc decides, clamped to what uv knows.
    assert python_platform("linux-64", {"__glibc": "2.12"}).triple == "x86_64-manylinux_2_17"
    assert python_platform("linux-64", {"__glibc": "2.99"}).triple == "x86_64-manylinux_2_40"
    mac = python_platform("osx-arm64", {"__osx": "13.3"})
    assert (mac.triple, mac.environ()) == ("aarch64-apple-darwin", {"MACOSX_DEPLOYMENT_TARGET": "13.3"})
    assert python_platform("osx-64", {}).environ() == {"MACOSX_DEPLOYMENT_TARGET": "10.13"}
    with pytest.raises(PipError) as exc:
        python_platform("win-64", {})
    assert str(exc.value) == "the pip part is not supported for win-64 envs (linux-64, linux-aarch64, osx-64, osx-arm64)"


def test_dry_run_resolution_matches_the_staged_one(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    """The dry run sees the conda part only through its packages' file lists (nothing staged), and resolves what
    the build then locks."""
    env = make_env("python", "ipykernel")
    meta = read_conda_meta(env.staging)
    lists = [(d["name"], d["version"], [e["_path"] for e in d["paths_data"]["paths"]]) for _p, _r, d in meta]
    conda = distributions_from_paths(lists)
    staged = EnvInventory(env.staging).conda_distributions()
    assert {(d.name, d.version, d.conda_package) for d in conda} == {
        (d.name, d.version, d.conda_package) for d in staged}
    python_paths = next(paths for name, _v, paths in lists if name == "python")
    target = target_for_paths(env.final, "3.11.7", python_paths, LINUX)
    assert (target.purelib, target.native) == ("lib/python3.11/site-packages", False)
    req = request(env, "rich", "packaging>=26", "cpkgs-extras-demo[fast]")
    pins = resolve_pip(req, target, offline_config, conda=conda, cache_dir=pip.cache, work_dir=pip.work / "dry")
    lock = pip.lock(req, env, offline_config)
    assert {(p.name, p.version) for p in pins} == {(p.name, p.version) for p in lock.packages} == {
        ("rich", "15.0.0"), ("markdown-it-py", "4.3.0"), ("mdurl", "0.1.2"), ("cpkgs-extras-demo", "1.0"),
        ("toolz", "1.2.0")}
    assert {p.name for p in pins if p.requested} == {"rich", "cpkgs-extras-demo"}
    assert not list(env.staging.rglob("__pycache__"))


def test_byte_code_is_compiled_for_the_final_prefix_and_recorded(make_env, pip: Pip,
                                                                 offline_config: PypiConfig) -> None:
    env = make_env("python")
    packages = install_pip(pip.lock(request(env, "markdown-it-py", "toolz"), env, offline_config), env.target,
                           cache_dir=pip.cache, work_dir=pip.work)
    assert compile_pip_part(env.target, packages)
    site = env.staging / "lib/python3.11/site-packages"
    pyc = site / "markdown_it/__pycache__/main.cpython-311.pyc"
    assert pyc.is_file() and b".staging-" not in pyc.read_bytes() and str(env.final).encode() in pyc.read_bytes()
    record = next(site.glob("markdown_it_py-*.dist-info/RECORD")).read_text()
    assert "markdown_it/__pycache__/main.cpython-311.pyc,sha256=" in record
    assert check_pip_integrity(env.staging) == []
    # Only the pip part: the conda part's modules (python's stdlib) got no byte code from this.
    assert not (env.staging / "lib/python3.11/__pycache__").exists()
    final = env.publish()
    world_traversable(final)
    proc = as_nobody([str(final / "bin/python"), "-v", "-c", "import markdown_it.main"], timeout=60)
    assert proc.returncode == 0
    assert f"code object from '{final}/lib/python3.11/site-packages/markdown_it/__pycache__/main.cpython-311.pyc'" \
        in proc.stderr


def test_another_platforms_install_runs_nothing_of_the_env(make_env, pip: Pip, offline_config: PypiConfig,
                                                          tmp_path: Path) -> None:
    """The installer path (what an osx-arm64 env built here gets), exercised on a linux env whose python is then
    made unrunnable: the wheels land where uv puts them, scripts name the final python, RECORDs verify."""
    env = make_env("python")
    lock = pip.lock(request(env, "markdown-it-py", "cowsay", "cpkgs-datascript"), env, offline_config)
    real = os.path.realpath(env.staging / "bin/python")
    os.rename(real, real + ".off")  # anything that tried to run it fails
    target = target_for_prefix(env.staging, env.final, LINUX, native=False)
    packages = install_pip(lock, target, cache_dir=pip.cache, work_dir=pip.work)
    assert compile_pip_part(target, packages)  # this interpreter is the env's CPython 3.11: same byte code
    os.rename(real + ".off", real)
    assert check_pip_integrity(env.staging) == []
    dist = {p.name: env.staging / p.dist_info for p in packages}
    assert (dist["cowsay"] / "REQUESTED").exists() and not (dist["mdurl"] / "REQUESTED").exists()
    assert (dist["cowsay"] / "INSTALLER").read_text() == "cpkgs\n"
    final = env.publish()
    world_traversable(final)
    assert (final / "bin/markdown-it").read_bytes().startswith(f"#!{final}/bin/python\n".encode())
    for cmd, expect in ((["cowsay", "-t", "foreign"], "foreign"), (["cpkgs-datascript"], f"datascript ok {final}")):
        proc = as_nobody([str(final / "bin" / cmd[0]), *cmd[1:]], timeout=60)
        assert proc.returncode == 0 and expect in proc.stdout, proc.stderr


def test_what_no_location_has_is_named_by_every_kind_of_location(make_env, pip: Pip, http_index: str,
                                                                 offline_config: PypiConfig) -> None:
    env = make_env("python")
    for config, where in ((offline_config, f"indexes: none; find-links: {offline_config.find_links[0]}"),
                          (PypiConfig(index_url=http_index), f"indexes: {http_index}")):
        with pytest.raises(PipError) as exc:
            pip.lock(request(env, "six", "cpkgs-absent-one", "cpkgs-absent-two>=2 ; python_version > '3'"), env,
                     config)
        assert str(exc.value) == ("pip: no index has 'cpkgs-absent-one', \"cpkgs-absent-two>=2 ; python_version > "
                                  f"'3'\" ({where})")
    many = [f"cpkgs-absent-{i}" for i in range(23)]
    with pytest.raises(PipError) as exc:
        pip.lock(request(env, *many), env, offline_config)
    assert "'cpkgs-absent-19' and 3 more (indexes: none;" in str(exc.value)
    # Every name is there, the versions are not: uv's reason, not a list of names.
    with pytest.raises(PipError) as exc:
        pip.lock(request(env, "six>=99"), env, offline_config)
    assert "no index has" not in str(exc.value) and "six" in str(exc.value)


def test_uv_never_runs_the_envs_python_to_resolve(make_env, pip: Pip, offline_config: PypiConfig,
                                                 tmp_path: Path) -> None:
    env = make_env("python")
    real = os.path.realpath(env.staging / "bin/python")
    os.rename(real, real + ".off")
    try:
        lock = pip.lock(request(env, "rich"), env, offline_config)
    finally:
        os.rename(real + ".off", real)
    assert {p.name for p in lock.packages} == {"rich", "markdown-it-py", "mdurl", "pygments"}
    proc = subprocess.run([str(env.staging / "bin/python"), "-c", "print(1)"], capture_output=True, text=True)
    assert proc.stdout == "1\n"


@pytest.mark.slow
def test_an_osx_arm64_env_gets_macos_wheels_and_runs_nothing(tmp_path: Path, pip: Pip, offline_config: PypiConfig,
                                                             channel_url: str) -> None:
    """An osx-arm64 env staged on this Linux host (python: the stand-in package of mac_python_channel, the one fake
    at the macOS boundary): resolution, wheels, install and byte code without running its python."""
    import asyncio

    from rattler import Config, Platform, install

    from cpkgs_admin.pipeline.solve import solve, virtual_packages
    from cpkgs_admin.site.channels import Source

    mac = mac_python_channel(tmp_path / "mac").as_uri()
    # (conda adds pip to python: the test channel's noarch pip)
    records = solve([Source(mac, mac), Source(channel_url, channel_url)], ["python 3.11.*"], "osx-arm64", virtual_packages("osx-arm64", {}))
    staging, final = tmp_path / "envs" / ".staging-mac-1.0@x", tmp_path / "envs" / "mac-1.0"
    asyncio.run(install(records, target_prefix=staging, cache_dir=tmp_path / "rc", platform=Platform("osx-arm64"),
                        execute_link_scripts=False, alternative_target_prefix=final,
                        config=Config.from_toml("allow-hard-links = false\n")))
    platform = python_platform("osx-arm64", {"__osx": "11.0"})
    target = target_for_prefix(staging, final, platform, native=False)
    env = Env(staging, final)
    env._target = target
    lock = pip.lock(request(env, "pyyaml", "markdown-it-py", "docopt"), env, offline_config)
    names = {p.name: p.filename for p in lock.packages}
    assert names["pyyaml"] == "pyyaml-6.0.4-cp311-cp311-macosx_11_0_arm64.whl"
    assert names["docopt"] == "docopt-0.6.2-py2.py3-none-any.whl"  # a pure wheel built from the sdist here
    installed = install_pip(lock, target, cache_dir=pip.cache, work_dir=pip.work)
    assert compile_pip_part(target, installed)
    site = staging / "lib/python3.11/site-packages"
    assert list((site / "yaml").glob("_yaml.cpython-311-darwin.so"))
    assert (site / "markdown_it/__pycache__/main.cpython-311.pyc").is_file()
    assert check_pip_integrity(staging) == []
    assert (staging / "bin/markdown-it").read_bytes().startswith(f"#!{final}/bin/python\n".encode())


def test_the_pipeline_calls_and_the_manifest_verify_trusts(make_env, pip: Pip, offline_config: PypiConfig,
                                                           tmp_path: Path) -> None:
    """part.plan_pip_part -> build_pip_part -> pip_manifest: the RECORDs are expected at the hashes kept at publish,
    so a RECORD rewritten to match a changed file is caught."""
    import json

    from cpkgs_admin.integrity.checks import check_integrity
    from cpkgs_admin.integrity.pipfiles import pip_manifest
    from cpkgs_admin.pipeline.pypi.part import build_pip_part, plan_pip_part
    from cpkgs_admin.pipeline.pypi.verify import expected_from_manifest
    from cpkgs_admin.pipeline.pypi.wheelfile import record_hash

    env = make_env("python")
    spec = env.staging.parent.parent / "spec.yml"
    spec.write_text("dependencies: [python]\n")
    plan = plan_pip_part(("toolz", "cowsay"), str(spec.parent), str(spec), offline_config)
    assert plan is not None and plan.requested_lines == ["toolz", "cowsay"]
    assert plan_pip_part((), None, str(spec), offline_config) is None
    part = build_pip_part(plan, env.target, store=pip.store, cache_dir=pip.cache, work_dir=pip.work,
                          hard_links=False)
    assert part.compiled and {p.name for p in part.packages} == {"toolz", "cowsay"}
    manifest = pip_manifest(env.staging, [(p.name, p.version, p.dist_info) for p in part.packages])
    expected = expected_from_manifest(env.staging, manifest)
    toolz = next(p for p in part.packages if p.name == "toolz")
    assert f"{toolz.dist_info}/RECORD" in expected and "bin/cowsay" in expected
    assert any(rel.endswith(".cpython-311.pyc") for rel in expected)
    # An edited file whose RECORD row is edited to match: the RECORD no longer has the hash kept at publish.
    main = env.staging / "lib/python3.11/site-packages/toolz/itertoolz.py"
    main.write_text(main.read_text() + "# changed\n")
    record = env.staging / toolz.dist_info / "RECORD"
    rows = [f"toolz/itertoolz.py,{record_hash(main.read_bytes())},{main.stat().st_size}"
            if line.startswith("toolz/itertoolz.py,") else line for line in record.read_text().splitlines()]
    record.write_text("\n".join(rows) + "\n")
    (env.staging / "conda-meta/cpkgs").mkdir(parents=True, exist_ok=True)
    (env.staging / "conda-meta/cpkgs/pypi.json").write_text(json.dumps(manifest))
    problems = {(p.kind, p.path) for p in check_integrity(env.staging)[0]}
    assert ("modified", f"{toolz.dist_info}/RECORD") in problems
