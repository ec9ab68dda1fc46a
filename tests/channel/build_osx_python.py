"""A second, tiny conda channel for the macOS boundary: one stub ``python`` package for osx-arm64.

THE ONE FAKE AT THE macOS BOUNDARY: a Linux test host cannot run a macOS interpreter, so this package holds none
(see ``osx-stub/python/recipe.yaml``). ``cpkgs install-tool --platform osx-arm64`` takes from it only what it reads
without running anything: the package record (python's version) and conda's layout. The tool's wheels are real
macOS wheels from PyPI (tests/wheelhouse/build_wheelhouse.py).

Built with py-rattler-build for target platform osx-arm64 (``PlatformConfig(target_platform=...)``), at the running
interpreter's version, so that the tool's ``python X.Y.*`` spec finds it. Cached beside the main test channel in
``osx-python-<key>`` (same cache root, same lock-and-rename scheme); importable (``ensure_osx_python_channel()``)
and runnable (prints the channel directory).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE_DIR = HERE / "osx-stub" / "python"
SUBDIRS = ("osx-arm64", "noarch")
_DONE = ".cpkgs-test-osx-python-complete"

sys.path.insert(0, str(HERE))

from build_channel import _log, _Progress, _run_async, default_cache_root  # noqa: E402


def cache_key() -> str:
    h = hashlib.sha256()
    for p in sorted(RECIPE_DIR.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(Path(__file__).resolve().read_bytes() + b"\0")
    h.update("{}.{}.{}".format(*sys.version_info[:3]).encode())
    return h.hexdigest()[:16]


def is_complete(channel: Path) -> bool:
    return (channel / _DONE).is_file() and all((channel / s / "repodata.json").is_file() for s in SUBDIRS)


def ensure_osx_python_channel(cache_root: Path | None = None) -> Path:
    root = (Path(cache_root) if cache_root is not None else default_cache_root()).expanduser().resolve()
    key = cache_key()
    final = root / f"osx-python-{key}"
    if is_complete(final):
        return final
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"osx-python-{key}.lock")):
        if is_complete(final):
            return final
        for stale in root.glob(f".osx-python-{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = root / f".osx-python-{key}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            t0 = time.monotonic()
            channel = _build(tmp)
            (channel / _DONE).write_text(key + "\n")
            os.replace(channel, final)
            _log(f"osx-arm64 stub python channel ready in {time.monotonic() - t0:.1f}s: {final}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(tmp: Path) -> Path:
    from rattler.index import index_fs
    from rattler_build import RenderConfig, Stage0Recipe, ToolConfiguration, VariantConfig
    from rattler_build.tool_config import PlatformConfig

    out = tmp / "out"
    out.mkdir()
    context = {
        "cpkgs_py_version": "{}.{}.{}".format(*sys.version_info[:3]),
        "cpkgs_py_short": sysconfig.get_config_var("VERSION") or "{}.{}".format(*sys.version_info[:2]),
    }
    saved = os.environ.get("RATTLER_CACHE_DIR")
    os.environ["RATTLER_CACHE_DIR"] = str(tmp / "rattler-cache")
    progress = _Progress()
    try:
        Stage0Recipe.from_file(RECIPE_DIR / "recipe.yaml").run_build(
            variant_config=VariantConfig(),
            tool_config=ToolConfiguration(test_strategy="skip"),
            output_dir=out,
            channels=[out.as_uri()],
            progress_callback=progress,
            package_format="conda",
            render_config=RenderConfig(platform=PlatformConfig(target_platform="osx-arm64"), extra_context=context),
        )
    except Exception:
        _log("building the osx-arm64 stub python failed; last log lines:\n" + "\n".join(progress.lines[-60:]))
        raise
    finally:
        if saved is None:
            os.environ.pop("RATTLER_CACHE_DIR", None)
        else:
            os.environ["RATTLER_CACHE_DIR"] = saved
    channel = tmp / "channel"
    for subdir in SUBDIRS:
        (channel / subdir).mkdir(parents=True)
        for pkg in (out / subdir).glob("*.conda"):
            shutil.copy2(pkg, channel / subdir / pkg.name)
            os.chmod(channel / subdir / pkg.name, 0o644)
    if not any((channel / "osx-arm64").glob("python-*.conda")):
        raise RuntimeError(f"py-rattler-build made no osx-arm64 python package in {out}")
    _run_async(index_fs(channel, write_zst=False, write_shards=False, force=True))
    return channel


def main() -> int:
    print(ensure_osx_python_channel())
    return 0


if __name__ == "__main__":
    sys.exit(main())
