"""Locking the pip part against a real staged conda env (python + ipykernel from the test channel), from the real
wheelhouse as a find-links dir and as an HTTP index on 127.0.0.1: what is chosen, what is refused, what is recorded.
No test reaches the internet."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from pypi_helpers import *  # noqa: F403
from pypi_helpers import Env, Pip

from conftest import tree_hash
from cpkgs_admin.errors import PipError
from cpkgs_admin.pipeline.pypi.record import PypiPackage, lock_text, mirror_wheels, read_lock_text
from cpkgs_admin.pipeline.pypi.requirements import parse_pip_section
from cpkgs_admin.site.pypi_config import PypiConfig

KERNEL = ("python", "ipykernel")  # ipykernel's package holds pygments 2.21.0, packaging 26.3, wcwidth 0.9.4 ...


def request(env: Env, *lines: str):  # type: ignore[no-untyped-def]
    spec = env.staging.parent.parent / "spec.yml"
    spec.write_text("dependencies: [python]\n")
    return parse_pip_section(list(lines), spec)


def names(lock) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {p.name: p.version for p in lock.packages}


def refused(pip: Pip, env: Env, config: PypiConfig, *lines: str) -> str:
    before = tree_hash(env.staging)
    with pytest.raises(PipError) as exc:
        pip.lock(request(env, *lines), env, config)
    assert tree_hash(env.staging) == before  # nothing changed in the env
    msg = str(exc.value)
    assert "\n" not in msg and exc.value.exit_code == 1
    return msg


def test_conda_distributions_satisfy_pip_requirements(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env(*KERNEL)
    lock = pip.lock(request(env, "rich", "packaging>=26", "Pygments"), env, offline_config)
    # pygments and packaging come from the conda package ipykernel: not installed again, not a dependency of rich
    assert names(lock) == {"rich": "15.0.0", "markdown-it-py": "4.3.0", "mdurl": "0.1.2"}
    rich = next(p for p in lock.packages if p.name == "rich")
    assert rich.requested and rich.requirement == "rich"
    assert not next(p for p in lock.packages if p.name == "mdurl").requested


def test_downgrade_of_a_conda_distribution_is_refused(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env(*KERNEL)
    msg = refused(pip, env, offline_config, "rich", "pygments<2.20")
    assert msg.startswith("pip requirement 'pygments<2.20' (")
    assert "needs Pygments 2.19.2 (a downgrade), but the conda package ipykernel 7.4.0 installs Pygments 2.21.0" in msg
    assert "change the conda spec (to a version of ipykernel that brings Pygments 2.19.2) or the pip requirement" in msg


def test_upgrade_through_a_dependency_is_refused(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env(*KERNEL)
    msg = refused(pip, env, offline_config, "toolz", "cpkgs-needs-packaging")
    assert "pip requirement 'cpkgs-needs-packaging'" in msg
    assert "needs packaging 26.4 through cpkgs-needs-packaging -> packaging (an upgrade)" in msg
    assert "conda package ipykernel 7.4.0 installs packaging 26.3" in msg


def test_url_for_a_conda_distribution_is_refused(make_env, pip: Pip, offline_config: PypiConfig,
                                                 wheel_dir: Path) -> None:
    env = make_env(*KERNEL)
    msg = refused(pip, env, offline_config, str(wheel_dir / "pygments-2.19.2-py3-none-any.whl"))
    assert "would replace Pygments 2.21.0 of the conda package ipykernel 7.4.0" in msg


def test_a_requirement_no_index_has(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env("python")
    msg = refused(pip, env, offline_config, "rich", "cpkgs-no-such-package>=1", "cpkgs-nor-this")
    assert msg == (f"pip: no index has 'cpkgs-no-such-package>=1', 'cpkgs-nor-this' (indexes: none; find-links: "
                   f"{offline_config.find_links[0]})")


def test_a_hash_mismatch(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env("python")
    msg = refused(pip, env, offline_config, f"six==1.17.0 --hash=sha256:{'0' * 64}")
    assert "hash mismatch for 'six==1.17.0': got sha256 4721f391" in msg and "spec.yml: pip[0]" in msg


def test_http_index_records_index_url_and_hash(make_env, pip: Pip, http_index: str, wheel_dir: Path) -> None:
    env = make_env("python")
    lock = pip.lock(request(env, "requests", "tqdm"), env, PypiConfig(index_url=http_index))
    assert names(lock) == {"requests": "2.34.2", "urllib3": "2.8.0", "idna": "3.21",
                           "certifi": "2026.10.19.post1", "charset-normalizer": "3.5.3", "tqdm": "4.70.1"}
    for p in lock.packages:
        assert p.index == http_index
        assert p.url.startswith(http_index.removesuffix("/simple") + "/wheels/") and p.url.endswith(p.filename)
        assert p.sha256 == hashlib.sha256((wheel_dir / p.filename).read_bytes()).hexdigest()
        assert lock.wheels[p.name].read_bytes() == (wheel_dir / p.filename).read_bytes()
        entry = json.loads(json.dumps(p.to_json()))
        assert entry["kind"] == "pypi" and PypiPackage.from_json(entry) == p


def test_extras_markers_and_constraint_files(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env("python")
    (env.staging.parent.parent / "constraints.txt").write_text("packaging<26\n")
    lock = pip.lock(request(env, "cpkgs-extras-demo[fast]", 'tqdm ; python_version < "3"', "packaging",
                            "-c constraints.txt"), env, offline_config)
    assert names(lock) == {"cpkgs-extras-demo": "1.0", "toolz": "1.2.0", "packaging": "25.0"}
    assert names(pip.lock(request(env, "cpkgs-extras-demo"), env, offline_config)) == {"cpkgs-extras-demo": "1.0"}


def test_a_spec_names_its_own_index_or_find_links(make_env, pip: Pip, http_index: str, wheel_dir: Path) -> None:
    env = make_env("python")
    bare = PypiConfig(index_url=None)  # the site itself offers nothing
    lock = pip.lock(request(env, f"--index-url {http_index}", "six"), env, bare)
    assert [(p.name, p.index) for p in lock.packages] == [("six", http_index)]
    assert lock.options.index_url == http_index
    lock = pip.lock(request(env, "--no-index", f"--find-links {wheel_dir}", "six"), env, PypiConfig())
    assert lock.options.no_index and lock.packages[0].index == wheel_dir.as_uri()
    lock = pip.lock(request(env, f"--extra-index-url {http_index}", "toolz"), env, bare)
    assert [(p.name, p.index) for p in lock.packages] == [("toolz", http_index)]


def test_a_wheel_by_http_url_is_hash_checked(make_env, pip: Pip, offline_config: PypiConfig, http_index: str,
                                             wheel_dir: Path) -> None:
    env = make_env("python")
    name = "toolz-1.2.0-py3-none-any.whl"
    url = f"{http_index.removesuffix('/simple')}/wheels/{name}"
    sha = hashlib.sha256((wheel_dir / name).read_bytes()).hexdigest()
    lock = pip.lock(request(env, f"{url}#sha256={sha}"), env, offline_config)
    (toolz,) = lock.packages
    assert (toolz.url, toolz.sha256, toolz.source.kind if toolz.source else None) == (url, sha, "url")
    assert "toolz @ " + url in lock_text(lock.packages, lock.options)
    msg = refused(pip, env, offline_config, f"toolz @ {url} --hash=sha256:{'1' * 64}")
    assert "hash mismatch" in msg and "toolz" in msg


def test_environment_and_user_config_do_not_steer_uv(make_env, pip: Pip, offline_config: PypiConfig,
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = make_env("python")
    # An admin's own uv/pip settings pointing nowhere: the site config alone decides.
    monkeypatch.setenv("UV_EXTRA_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("UV_INDEX_STRATEGY", "not-a-strategy")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    cfg = tmp_path / "home" / ".config" / "uv"
    cfg.mkdir(parents=True)
    (cfg / "uv.toml").write_text('index-url = "http://127.0.0.1:9/simple"\n')
    lock = pip.lock(request(env, "six"), env, offline_config)
    assert names(lock) == {"six": "1.17.0"}


def test_pre_releases_need_pre(make_env, pip: Pip, offline_config: PypiConfig) -> None:
    env = make_env("python")
    # As in pip: a final release wins unless --pre; a pre-release is taken when nothing else satisfies.
    assert names(pip.lock(request(env, "cpkgs-pre-demo"), env, offline_config)) == {"cpkgs-pre-demo": "1.0"}
    lock = pip.lock(request(env, "--pre", "cpkgs-pre-demo"), env, offline_config)
    assert names(lock) == {"cpkgs-pre-demo": "2.0b1"}


def test_site_policies(make_env, pip: Pip, offline_config: PypiConfig, git_repo) -> None:
    env = make_env("python")
    off = PypiConfig(enabled=False)
    assert "does not allow pip sections" in refused(pip, env, off, "six")
    closed = PypiConfig(index_url=None, find_links=offline_config.find_links, spec_indexes=False)
    assert "does not let spec files choose package indexes" in refused(
        pip, env, closed, "--index-url https://pypi.example.org/simple", "six")
    wheels_only = PypiConfig(index_url=None, find_links=offline_config.find_links, build_from_source=False)
    msg = refused(pip, env, wheels_only, f"tinytool @ git+{git_repo[0].as_uri()}")
    assert "needs a build from source" in msg
    msg = refused(pip, env, wheels_only, "docopt")
    assert msg.startswith("pip: cannot resolve the pip requirements:") and "docopt" in msg and "wheel" in msg


@pytest.mark.slow
def test_git_requirement_records_the_commit(make_env, pip: Pip, offline_config: PypiConfig, git_repo) -> None:
    repo, first, second = git_repo
    env = make_env("python")
    lock = pip.lock(request(env, f"tinytool @ git+{repo.as_uri()}@v0.1"), env, offline_config)
    assert names(lock) == {"tinytool": "0.1.0", "six": "1.17.0"}
    tiny = next(p for p in lock.packages if p.name == "tinytool")
    assert tiny.source is not None and tiny.source.kind == "vcs"
    assert (tiny.source.commit, tiny.source.requested_revision) == (first, "v0.1")
    assert tiny.url == f"git+{repo.as_uri()}" and tiny.index is None
    assert tiny.sha256 == hashlib.sha256(lock.wheels["tinytool"].read_bytes()).hexdigest()
    assert tiny.filename == "tinytool-0.1.0-py2.py3-none-any.whl"
    lock = pip.lock(request(env, f"git+{repo.as_uri()}#egg=tinytool"), env, offline_config)
    tiny = next(p for p in lock.packages if p.name == "tinytool")
    assert tiny.source is not None and tiny.source.commit == second and tiny.source.requested_revision is None


@pytest.mark.slow
def test_sdist_is_built_and_both_hashes_kept(make_env, pip: Pip, offline_config: PypiConfig,
                                             wheel_dir: Path) -> None:
    env = make_env("python")
    lock = pip.lock(request(env, "docopt"), env, offline_config)
    (doc,) = lock.packages
    sdist = wheel_dir / "docopt-0.6.2.tar.gz"
    assert doc.source is not None and doc.source.kind == "sdist"
    assert doc.source.sha256 == hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert doc.filename.endswith(".whl") and doc.sha256 == hashlib.sha256(lock.wheels["docopt"].read_bytes()).hexdigest()
    text = lock_text(lock.packages, lock.options)
    assert f"--hash=sha256:{doc.sha256}" in text and f"--hash=sha256:{doc.source.sha256}" in text


@pytest.mark.slow
def test_lock_file_and_mirror_rebuild_exactly(make_env, pip: Pip, offline_config: PypiConfig, git_repo,
                                              wheel_dir: Path, tmp_path: Path, uv_cache: Path) -> None:
    repo, first, _second = git_repo
    env = make_env("python")
    lines = ["rich", "docopt", f"tinytool @ git+{repo.as_uri()}@{first}",
             str(wheel_dir / "toolz-1.2.0-py3-none-any.whl")]
    lock = pip.lock(request(env, *lines), env, offline_config)
    locked = {p.name: p.sha256 for p in lock.packages}
    path = tmp_path / "pip-lock.txt"
    path.write_text(lock_text(lock.packages, lock.options, "demo-1.0"))

    # Read back with the same store: the same wheels, no resolution.
    again = pip.lock_file(path, make_env("python", name="demo-2.0"), offline_config)
    assert {p.name: p.sha256 for p in again.packages} == locked
    assert {p.name for p in again.packages if p.requested} == {"rich", "docopt", "tinytool", "toolz"}

    # A site without the store or any index: the mirror alone rebuilds the same env, in both layouts.
    for layout in ("find-links", "simple"):
        mirror = tmp_path / f"mirror-{layout}"
        opts = mirror_wheels(lock.packages, pip.store, mirror, layout=layout)
        other = Pip(tmp_path / f"site-{layout}", uv_cache)
        cfg = PypiConfig(index_url=None)
        rebuilt = other.lock_file(path, make_env("python", name=f"demo-{layout}-1.0"), cfg, options=opts)
        assert {p.name: p.sha256 for p in rebuilt.packages} == locked

    # pip and uv themselves install the companion file with --require-hashes from the mirror.
    mirror_text = lock_text(lock.packages, mirror_wheels(lock.packages, pip.store, tmp_path / "m"))
    (tmp_path / "m.txt").write_text(mirror_text)
    assert read_lock_text(tmp_path / "m.txt").options.no_index
    for tool in ("pip", "uv"):
        fresh = make_env("python", "pip", name=f"by-{tool}-1.0")
        py = str(fresh.staging / "bin" / "python")
        if tool == "pip":
            cmd = [py, "-m", "pip", "install", "--isolated", "--no-deps", "--require-hashes", "-r",
                   str(tmp_path / "m.txt")]
        else:
            from uv import find_uv_bin

            cmd = [find_uv_bin(), "pip", "install", "--no-config", "--python", py, "--no-deps", "--require-hashes",
                   "--cache-dir", str(uv_cache), "-r", str(tmp_path / "m.txt")]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr
        assert (fresh.staging / "bin" / "tinytool").exists()


def test_a_lock_file_whose_wheel_the_index_no_longer_serves(make_env, pip: Pip, offline_config: PypiConfig,
                                                            tmp_path: Path) -> None:
    env = make_env("python")
    lock = pip.lock(request(env, "six"), env, offline_config)
    text = lock_text(lock.packages, lock.options)
    path = tmp_path / "lock.txt"
    path.write_text(text.replace(lock.packages[0].sha256, "e" * 64))
    before = tree_hash(env.staging)
    with pytest.raises(PipError) as exc:
        Pip(tmp_path / "elsewhere", pip.cache).lock_file(path, env, offline_config)
    assert str(exc.value) == (f"pip lock file {path} line 5: the index serves six 1.17.0 as "
                              f"six-1.17.0-py2.py3-none-any.whl with sha256 {lock.packages[0].sha256}, which the lock "
                              "does not pin")
    assert tree_hash(env.staging) == before


def test_a_lock_file_against_the_conda_part(make_env, pip: Pip, offline_config: PypiConfig, wheel_dir: Path,
                                            tmp_path: Path) -> None:
    env = make_env(*KERNEL)
    sha = {n: hashlib.sha256((wheel_dir / f).read_bytes()).hexdigest() for n, f in
           (("old", "pygments-2.19.2-py3-none-any.whl"), ("same", "pygments-2.21.0-py3-none-any.whl"),
            ("six", "six-1.17.0-py2.py3-none-any.whl"))}
    path = tmp_path / "lock.txt"
    path.write_text(f"pygments==2.21.0 --hash=sha256:{sha['same']}\nsix==1.17.0 --hash=sha256:{sha['six']}\n")
    lock = pip.lock_file(path, env, offline_config)
    assert names(lock) == {"six": "1.17.0"}  # the conda package already installs that very Pygments
    path.write_text(f"pygments==2.19.2 --hash=sha256:{sha['old']}\n")
    with pytest.raises(PipError) as exc:
        pip.lock_file(path, env, offline_config)
    assert str(exc.value) == (f"pip lock file {path} line 1: pygments 2.19.2 would replace Pygments 2.21.0 of the "
                              "conda package ipykernel 7.4.0")


def test_lock_file_problems(tmp_path: Path) -> None:
    bad = tmp_path / "lock.txt"
    for text, expect in [
        ("rich>=1 --hash=sha256:" + "a" * 64 + "\n", "is not pinned with == to one version"),
        ("rich==15.0.0\n", "has no --hash=sha256"),
        ("-r other.txt\n", "is not allowed in it"),
        ("# cpkgs-source: x vcs git+file:///r\nx==1 --hash=sha256:" + "a" * 64 + "\n", "not a git URL pinned"),
        ("# only comments\n", "pins no packages"),
    ]:
        bad.write_text(text)
        with pytest.raises(PipError) as exc:
            read_lock_text(bad)
        assert expect in str(exc.value) and str(bad) in str(exc.value)
