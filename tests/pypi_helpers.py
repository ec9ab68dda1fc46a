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

from cpkgs_admin.pipeline.pypi.install import install_pip  # noqa: E402
from cpkgs_admin.pipeline.pypi.record import PypiPackage, read_lock_text  # noqa: E402
from cpkgs_admin.pipeline.pypi.requirements import IndexOptions, PipRequest  # noqa: E402
from cpkgs_admin.pipeline.pypi.resolve import PipLock, lock_from_file, lock_pip  # noqa: E402
from cpkgs_admin.pipeline.pypi.store import WheelStore  # noqa: E402
from cpkgs_admin.pipeline.pypi.target import PythonPlatform, TargetPython, python_platform, target_for_prefix  # noqa: E402
from cpkgs_admin.site.pypi_config import PypiConfig  # noqa: E402

__all__ = ["Env", "Pip", "git_repo", "mac_python_channel", "http_index", "make_env", "make_wheel", "offline_config", "pip", "uv_cache",
           "wheel_dir", "wheelhouse", "world_wheel_dir", "write_simple"]


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
def world_wheel_dir(wheel_dir: Path) -> Iterator[Path]:
    """The wheelhouse's wheels where uid 65534 can read them (hard links in a fresh 0755 dir under /tmp: the cache
    sits in root's home)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="cpkgs-test-wheels-"))
    os.chmod(base, 0o755)
    for f in wheel_dir.iterdir():
        os.link(f, base / f.name)
    yield base
    shutil.rmtree(base, ignore_errors=True)


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
            self._target = target_for_prefix(self.staging, self.final, LINUX, native=True)
        return self._target

    def publish(self) -> Path:
        os.rename(self.staging, self.final)
        return self.final


# The platform of the test channel's envs as new-env resolves for them: linux-64 at this host's glibc.
def _linux() -> PythonPlatform:
    from cpkgs_admin.pipeline.solve import virtual_packages

    return python_platform("linux-64", {v.name.normalized: str(v.version) for v in virtual_packages("linux-64", {})})


LINUX = _linux()

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


# ------------------------------------------------------------------------------------------------------------ macOS

MACHO_MAGIC = b"\xcf\xfa\xed\xfe"  # a 64-bit Mach-O file starts so: no Linux kernel will run it


def mac_python_channel(dest: Path) -> Path:
    """A channel with one osx-arm64 package `python 3.11.7` that stands in for conda-forge's: the layout a real one
    has where cpkgs looks (conda-meta record, bin/python -> python3.11, lib/python3.11/os.py, site-packages) and a
    bin/python3.11 that is no program this host can run. The one fake at the macOS boundary: a real macOS python
    cannot run here, and a build for osx-arm64 must not try to run it."""
    import hashlib
    import io
    import json
    import tarfile

    from rattler.index import index_fs

    channel = dest / "channel"
    for sub in ("osx-arm64", "noarch"):
        (channel / sub).mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, bytes | str]] = [
        ("bin/python3.11", MACHO_MAGIC + b"\0" * 28 + b"cpkgs test stand-in for a macOS python\n"),
        ("bin/python", "python3.11"),
        ("lib/python3.11/os.py", b"# stand-in: the stdlib dir of a macOS CPython 3.11\n"),
        ("lib/python3.11/site-packages/README.txt", b"This directory exists so that you can install packages.\n"),
    ]
    index = {"name": "python", "version": "3.11.7", "build": "h0_cpkgs_standin", "build_number": 0, "depends": [],
             "subdir": "osx-arm64", "platform": "osx", "arch": "arm64", "license": "PSF-2.0", "timestamp": 0}
    paths = []
    for path, content in files:
        if isinstance(content, str):
            paths.append({"_path": path, "path_type": "softlink", "size_in_bytes": 0})
        else:
            paths.append({"_path": path, "path_type": "hardlink", "sha256": hashlib.sha256(content).hexdigest(),
                          "size_in_bytes": len(content)})

    def member(tf: tarfile.TarFile, name: str, data: bytes = b"", link: str | None = None, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.mtime = 0
        if link is not None:
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
            tf.addfile(info)
            return
        info.size, info.mode = len(data), mode
        tf.addfile(info, io.BytesIO(data))

    with tarfile.open(channel / "osx-arm64" / "python-3.11.7-h0_cpkgs_standin.tar.bz2", "w:bz2") as tf:
        for path, content in files:
            if isinstance(content, str):
                member(tf, path, link=content)
            else:
                member(tf, path, content, mode=0o755 if path.startswith("bin/") else 0o644)
        member(tf, "info/index.json", json.dumps(index).encode())
        member(tf, "info/paths.json", json.dumps({"paths": paths, "paths_version": 1}).encode())
        member(tf, "info/files", "".join(p + "\n" for p, _c in files).encode())
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False, force=True))
    return channel
