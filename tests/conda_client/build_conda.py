"""Build a real user's conda (26.7.1) for the tests: a conda root prefix like a Miniforge install.

Importable (``ensure_conda()``) and runnable (``python build_conda.py`` prints the root prefix).

conda is not on PyPI and conda-forge is not reachable from CI, so the prefix is put together from parts that are:
1. ``python`` and ``pip`` from the local test channel (``tests/channel``), installed with py-rattler: the root
   prefix carries its own interpreter and ``conda-meta/`` records, as a conda installer leaves them (a venv would
   point back at the build host's interpreter, which the unprivileged test user may not be able to reach);
2. conda's runtime dependencies from PyPI, read from conda's own ``pyproject.toml`` and pinned by
   ``constraints.txt`` (``menuinst`` and ``conda-libmamba-solver`` are not on PyPI and are left out: the prefix's
   ``.condarc`` selects the ``classic`` solver; conda imports menuinst only for Windows shortcuts);
3. conda's own ``conda/`` package from its release source tarball (``tests/thirdparty``), placed in site-packages;
4. ``conda init --install`` run by that conda: ``bin/conda``, ``condabin/conda``, ``etc/profile.d/conda.sh`` and
   ``conda.csh``, ``bin/activate`` exactly as conda writes them.

The result is cached under ``$CPKGS_TEST_CONDA_CACHE`` (default ``~/.cache/cpkgs-test-conda``, or
``/var/cache/cpkgs-test-conda`` for root when other users cannot reach root's home: the prefix must be usable by
the unprivileged test user) in ``conda-<key>``, where ``<key>`` hashes the tarball, the constraints, this file,
the test channel's key and the running Python. The prefix is built in place, not renamed into place: every script
and profile in it names its absolute path (shebangs, ``CONDA_EXE``). A completion marker written last, a file lock
and the removal of an unmarked prefix before a build keep a killed build from being used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONDA_VERSION = "26.7.1"
TARBALL = REPO / "tests" / "thirdparty" / f"conda-{CONDA_VERSION}-src.tar.gz"
CONSTRAINTS = HERE / "constraints.txt"
#: Requirements of conda's pyproject.toml that are not on PyPI (see the module doc).
NOT_ON_PYPI = frozenset({"menuinst", "conda-libmamba-solver"})
_DONE_MARKER = ".cpkgs-test-conda-complete"


def _log(msg: str) -> None:
    print(f"[cpkgs-test-conda] {msg}", file=sys.stderr, flush=True)


def source_tarball() -> Path:
    """``$CPKGS_CONDA_SRC``, else the copy committed under ``tests/thirdparty``."""
    env = os.environ.get("CPKGS_CONDA_SRC")
    path = Path(env).expanduser() if env else TARBALL
    if not path.is_file():
        raise RuntimeError(f"conda source tarball not found: {path}")
    return path


def _others_can_reach(path: Path) -> bool:
    """Every existing directory from / down to PATH is searchable by others (o+x)."""
    p = path
    while not p.exists():
        p = p.parent
    for d in (p, *p.parents):
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return False
    return True


def default_cache_root() -> Path:
    """``$CPKGS_TEST_CONDA_CACHE``, else ``~/.cache/cpkgs-test-conda`` when others can reach it.

    ``~`` comes from the password database (tests move ``$HOME``). The unprivileged test user runs this conda, so
    root, whose home is 0700 on Debian, caches it in ``/var/cache`` instead.
    """
    env = os.environ.get("CPKGS_TEST_CONDA_CACHE")
    if env:
        return Path(env).expanduser()
    try:
        import pwd

        home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        home = Path.home()
    if os.geteuid() == 0 and not _others_can_reach(home):
        return Path("/var/cache/cpkgs-test-conda")
    return home / ".cache" / "cpkgs-test-conda"


def _channel_dir() -> Path:
    channel_tools = str(REPO / "tests" / "channel")
    if channel_tools not in sys.path:
        sys.path.insert(0, channel_tools)
    from build_channel import ensure_channel

    return ensure_channel()


def cache_key(tarball: Path, channel: Path) -> str:
    """Hash of everything that determines the prefix's contents."""
    h = hashlib.sha256()
    for part in (tarball, CONSTRAINTS, Path(__file__).resolve()):
        h.update(part.read_bytes() + b"\0")
    h.update(channel.name.encode() + b"\0")  # channel-<key>: the python and pip packages installed
    h.update(sys.version.encode() + b"\0")
    h.update(os.path.realpath(sys.base_prefix).encode() + b"\0")
    return h.hexdigest()[:16]


def is_complete(prefix: Path) -> bool:
    return (prefix / _DONE_MARKER).is_file() and (prefix / "bin" / "conda").is_file()


def ensure_conda(cache_root: Path | None = None) -> Path:
    """Build the conda root prefix if it is not cached yet; return it (``<prefix>/bin/conda`` is conda)."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    root = root.expanduser().resolve()
    tarball = source_tarball()
    channel = _channel_dir()
    key = cache_key(tarball, channel)
    prefix = root / f"conda-{key}"
    if is_complete(prefix):
        return prefix

    from filelock import FileLock, Timeout

    if not root.exists():
        root.mkdir(parents=True)
        os.chmod(root, 0o755)  # the test user reaches the prefix through it, whatever the umask
    lock = FileLock(str(root / f"conda-{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _log(f"waiting for another process building {prefix}")
        lock.acquire()
    try:
        if is_complete(prefix):  # built by someone else while we waited
            return prefix
        # What a killed build of this key left: nobody else holds the lock.
        for stale in (prefix, *root.glob(f".conda-{key}.work-*")):
            shutil.rmtree(stale, ignore_errors=True)
        work = root / f".conda-{key}.work-{os.getpid()}"
        work.mkdir()
        try:
            started = time.monotonic()
            _log(f"building conda {CONDA_VERSION} root prefix {prefix} (key {key})")
            _build(prefix, tarball, channel, work)
            (prefix / _DONE_MARKER).write_text(f"{key}\n")
            os.chmod(prefix / _DONE_MARKER, 0o644)
            _log(f"conda ready in {time.monotonic() - started:.1f}s: {prefix}")
        except BaseException:
            shutil.rmtree(prefix, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()
    return prefix


# --------------------------------------------------------------------------
# building


def _build(prefix: Path, tarball: Path, channel: Path, work: Path) -> None:
    source = _unpack_source(tarball, work / "src")
    t0 = time.monotonic()
    _install_python(prefix, channel, work / "rattler-cache")
    _log(f"python + pip from the test channel in {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    _pip_install(prefix, runtime_requirements(source / "pyproject.toml"), work / "wheels")
    _log(f"conda's runtime dependencies from PyPI in {time.monotonic() - t0:.1f}s")
    _place_conda(prefix, source)
    _conda_init_install(prefix, work)
    _write_root_condarc(prefix)
    # py-rattler tags the prefix as a cache directory; a conda installer does not.
    (prefix / "CACHEDIR.TAG").unlink(missing_ok=True)
    _open_for_others(prefix)


def _unpack_source(tarball: Path, dest: Path) -> Path:
    """Extract conda's source; return its ``conda-<version>/`` directory."""
    top = f"conda-{CONDA_VERSION}"
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
        if not names or any(n != top and not n.startswith(top + "/") for n in names):
            raise RuntimeError(f"{tarball}: expected everything under {top}/")
        tf.extractall(dest, filter="data")
    source = dest / top
    for needed in ("pyproject.toml", "LICENSE", "conda/__init__.py"):
        if not (source / needed).is_file():
            raise RuntimeError(f"{tarball}: {top}/{needed} missing")
    return source


def runtime_requirements(pyproject: Path) -> list[str]:
    """conda's ``[project] dependencies`` without those not on PyPI."""
    from packaging.requirements import Requirement

    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if Requirement(d).name.lower() not in NOT_ON_PYPI]


def _run_async(coro):  # noqa: ANN001, ANN202
    """asyncio.run, also when called from inside a running event loop (pytest plugins)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _install_python(prefix: Path, channel: Path, cache: Path) -> None:
    from rattler import Channel, MatchSpec, Platform, install, solve

    async def run() -> None:
        records = await solve(
            sources=[Channel(channel.as_uri())],
            specs=[MatchSpec("python"), MatchSpec("pip")],
            platforms=[Platform.current(), Platform("noarch")],
        )
        await install(records, target_prefix=prefix, cache_dir=cache, installed_packages=[], show_progress=False)

    _run_async(run())
    if not (prefix / "bin" / "python").exists() or not (prefix / "conda-meta" / "history").is_file():
        raise RuntimeError(f"py-rattler left no bin/python or conda-meta/history in {prefix}")


def _build_env(home: Path | None = None) -> dict[str, str]:
    """The build's subprocesses: none of the caller's conda state, byte code written; HOME moved if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONDA", "_CE_", "_CONDA", "PYTHON"))}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    if home is not None:
        home.mkdir(exist_ok=True)
        env["HOME"] = str(home)
    return env


def _check_run(cmd: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/")
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _pip_install(prefix: Path, requirements: list[str], wheels: Path) -> None:
    """Wheels first, made by the interpreter running this script, then installed into the prefix offline.

    pycosat publishes no wheels and the channel's python package carries no C headers: pip builds pycosat here,
    with the interpreter the channel's python was repackaged from (same version, same ABI).
    """
    pins = ["--constraint", str(CONSTRAINTS)]
    # The caller's HOME: pip's user configuration (index, proxy) and its wheel cache apply.
    env = _build_env()
    download = [sys.executable, "-m", "pip", "wheel", "--prefer-binary", "--wheel-dir", str(wheels), *pins,
                *requirements]
    _check_run(download, env, "pip wheel of conda's runtime dependencies")
    install = [str(prefix / "bin" / "python"), "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
               "--compile", "--no-warn-script-location", "--root-user-action=ignore", *pins, *requirements]
    _check_run(install, env, "pip install of conda's runtime dependencies")


def _site_packages(prefix: Path) -> Path:
    found = sorted(prefix.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise RuntimeError(f"expected one lib/python3*/site-packages in {prefix}, found {found}")
    return found[0]


def _place_conda(prefix: Path, source: Path) -> None:
    target = _site_packages(prefix) / "conda"
    shutil.copytree(source / "conda", target)
    # Written by hatch-vcs when conda is built from git; the release tarball has none (conda would call
    # itself 0.0.0.dev0+placeholder).
    (target / "_version.py").write_text(f'__version__ = "{CONDA_VERSION}"\n')
    shutil.copy2(source / "LICENSE", target / "LICENSE")
    # The test user cannot write __pycache__ here; without byte code every conda run would compile conda anew.
    cmd = [str(prefix / "bin" / "python"), "-m", "compileall", "-q", "-j0", str(target)]
    subprocess.run(cmd, check=True, capture_output=True)


def _conda_init_install(prefix: Path, work: Path) -> None:
    """conda's own installer step: entry points, activate scripts and the shell profiles of the prefix."""
    cmd = [str(prefix / "bin" / "python"), "-m", "conda", "init", "--install"]
    _check_run(cmd, _build_env(work / "home"), "conda init --install")
    for made in ("bin/conda", "condabin/conda", "etc/profile.d/conda.sh", "etc/profile.d/conda.csh"):
        if not (prefix / made).is_file():
            raise RuntimeError(f"conda init --install did not write {prefix / made}")


def _write_root_condarc(prefix: Path) -> None:
    (prefix / ".condarc").write_text(
        "# cpkgs tests: conda-libmamba-solver (conda's default solver) is not on PyPI.\nsolver: classic\n"
    )


def _open_for_others(prefix: Path) -> None:
    """Readable (and executable where it was) by everyone, writable by the builder only, whatever the umask.

    py-rattler writes ``conda-meta/*.json`` 0600 and scripts 0775; the tarball's files are group-writable.
    """
    for dirpath, dirnames, filenames in os.walk(prefix):
        os.chmod(dirpath, 0o755)
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                os.chmod(p, mode)


def main() -> int:
    print(ensure_conda())
    return 0


if __name__ == "__main__":
    sys.exit(main())
