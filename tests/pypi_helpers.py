"""Fixtures of the pip-part tests: the real wheelhouse (find-links dir and an HTTP PEP 503 index on 127.0.0.1), a
local git repository, and real conda envs staged from the test channel with py-rattler (python, pip, ipykernel),
at a staging path that is renamed to its final path as new-env does."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "wheelhouse"))

from build_wheelhouse import ensure_wheelhouse, make_wheel, write_simple  # noqa: E402

from cpkgs_admin.pipeline.pypi.config import PypiConfig  # noqa: E402
from cpkgs_admin.pipeline.pypi.install import install_pip  # noqa: E402
from cpkgs_admin.pipeline.pypi.record import PypiPackage, read_lock_text  # noqa: E402
from cpkgs_admin.pipeline.pypi.requirements import IndexOptions, PipRequest  # noqa: E402
from cpkgs_admin.pipeline.pypi.resolve import PipLock, lock_from_file, lock_pip  # noqa: E402
from cpkgs_admin.pipeline.pypi.store import WheelStore  # noqa: E402
from cpkgs_admin.pipeline.pypi.target import TargetPython, target_python  # noqa: E402

__all__ = ["Env", "Pip", "git_repo", "http_index", "make_env", "make_wheel", "offline_config", "pip", "uv_cache",
           "wheel_dir", "wheelhouse", "write_simple"]


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    return ensure_wheelhouse()


@pytest.fixture(scope="session")
def wheel_dir(wheelhouse: Path) -> Path:
    return wheelhouse / "wheels"


@pytest.fixture
def offline_config(wheel_dir: Path) -> PypiConfig:
    """The site config of an offline site: no index, the wheelhouse as find-links."""
    return PypiConfig(index_url=None, find_links=(str(wheel_dir),))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="session")
def http_index(wheelhouse: Path) -> Iterator[str]:
    """A real HTTP PEP 503 index over the wheelhouse: http://127.0.0.1:PORT/simple."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(wheelhouse)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uv-cache")


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def git_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A git repository holding the pyproject package `tinytool` (flit_core; needs six; console script tinytool):
    (path, first commit, second commit). `main` is at the second; tag v0.1 at the first."""
    repo = tmp_path_factory.mktemp("git") / "tinytool"
    (repo / "tinytool").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["flit_core>=3.4,<5"]\nbuild-backend = "flit_core.buildapi"\n'
        '[project]\nname = "tinytool"\nversion = "0.1.0"\ndescription = "tiny"\ndependencies = ["six"]\n'
        '[project.scripts]\ntinytool = "tinytool:main"\n')
    (repo / "tinytool" / "__init__.py").write_text(
        "def main():\n    import sys\n    print('tinytool ok', sys.prefix)\n")
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "first", cwd=repo)
    first = _git("rev-parse", "HEAD", cwd=repo)
    _git("tag", "v0.1", cwd=repo)
    (repo / "tinytool" / "__init__.py").write_text(
        "def main():\n    import sys\n    print('tinytool 2 ok', sys.prefix)\n")
    _git("commit", "-qam", "second", cwd=repo)
    return repo, first, _git("rev-parse", "HEAD", cwd=repo)


class Env:
    """A staged conda env: STAGING (where things are installed) and FINAL (where it is published by rename)."""

    def __init__(self, staging: Path, final: Path) -> None:
        self.staging = staging
        self.final = final
        self._target: TargetPython | None = None

    @property
    def target(self) -> TargetPython:
        if self._target is None:
            self._target = target_python(self.staging, self.final)
        return self._target

    def publish(self) -> Path:
        os.rename(self.staging, self.final)
        return self.final


_RECORDS: dict[tuple[str, ...], list[object]] = {}


@pytest.fixture
def make_env(tmp_path: Path, channel_url: str) -> Callable[..., Env]:
    """make_env("python", "ipykernel", name="demo-1.0"): a real env staged with py-rattler (files copied, final prefix
    patched in), under tmp_path/envs."""
    from rattler import Config, install

    from cpkgs_admin.pipeline.solve import solve, virtual_packages
    from cpkgs_admin.site.channels import Source

    def make(*specs: str, name: str = "demo-1.0", envs: Path | None = None) -> Env:
        key = tuple(specs)
        if key not in _RECORDS:
            _RECORDS[key] = solve([Source(channel_url, channel_url)], list(specs), "linux-64", virtual_packages("linux-64", {}))
        envs = envs or tmp_path / "envs"
        envs.mkdir(parents=True, exist_ok=True)
        staging = envs / f".staging-{name}@{uuid.uuid4().hex[:12]}"
        final = envs / name
        config = Config.from_toml("allow-hard-links = false\n")
        asyncio.run(install(_RECORDS[key], target_prefix=staging, cache_dir=tmp_path.parent / "rattler-cache",
                            alternative_target_prefix=final, config=config))
        (staging / "CACHEDIR.TAG").unlink(missing_ok=True)
        return Env(staging, final)

    return make


class Pip:
    """lock/install with a wheel store and a work dir of this test, and uv's cache of the session."""

    def __init__(self, tmp_path: Path, uv_cache: Path) -> None:
        self.store = WheelStore(tmp_path / "wheel-store")
        self.cache = uv_cache
        self.work = tmp_path / "pip-work"

    def lock(self, request: PipRequest, env: Env, config: PypiConfig) -> PipLock:
        return lock_pip(request, env.target, config, store=self.store, cache_dir=self.cache, work_dir=self.work)

    def lock_file(self, path: Path, env: Env, config: PypiConfig, options: IndexOptions | None = None) -> PipLock:
        return lock_from_file(read_lock_text(path), env.target, config, store=self.store, cache_dir=self.cache,
                              work_dir=self.work, options=options)

    def install(self, lock: PipLock, env: Env) -> list[PypiPackage]:
        return install_pip(lock, env.target, cache_dir=self.cache, work_dir=self.work)


@pytest.fixture
def pip(tmp_path: Path, uv_cache: Path) -> Pip:
    return Pip(tmp_path, uv_cache)
