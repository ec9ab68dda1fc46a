"""Build the local wheelhouse of the pip-part tests: real PyPI downloads, once per machine.

Importable (``ensure_wheelhouse()``) and runnable (``python build_wheelhouse.py`` prints the directory). The
directory holds ``wheels/`` (a find-links directory: the wheels and the sdist of ``wheelhouse.txt``, plus a few
wheels made here for cases PyPI has no small example of) and ``simple/`` (a PEP 503 tree over the same files, for
the tests' HTTP index). Cached under ``$CPKGS_TEST_WHEELHOUSE_CACHE`` (default ``~/.cache/cpkgs-test-wheelhouse``)
in ``wheelhouse-<key>``, ``<key>`` hashing ``wheelhouse.txt``, this file, the Python version and the machine; built
in a temporary directory renamed into place under a file lock, as the test channel is (tests/channel).

``ensure_tool_wheels()`` (also built by ``python build_wheelhouse.py``) is a second find-links directory, for the
``cpkgs install-tool`` tests: cpkgs' runtime dependency closure at exactly the versions the running interpreter has
installed (what install-tool pins the tool to), as CPython 3.X wheels for this machine's Linux AND for macOS arm64
(py-rattler and uv are the big ones: about 100 MB in all), plus the build backend of cpkgs' own source
(``[build-system] requires``, for ``uv build`` of an editable checkout). Cached in ``tool-<key>``, ``<key>`` hashing
those pins, so a fresh clone whose venv resolved newer versions downloads them instead of failing offline.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIST = HERE / "wheelhouse.txt"
_DONE = ".cpkgs-test-wheelhouse-complete"


def _log(msg: str) -> None:
    print(f"[cpkgs-test-wheelhouse] {msg}", file=sys.stderr, flush=True)


def default_cache_root() -> Path:
    env = os.environ.get("CPKGS_TEST_WHEELHOUSE_CACHE")
    if env:
        return Path(env).expanduser()
    try:
        import pwd

        home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        home = Path.home()
    return home / ".cache" / "cpkgs-test-wheelhouse"


def cache_key() -> str:
    h = hashlib.sha256()
    for p in (LIST, Path(__file__).resolve()):
        h.update(p.read_bytes() + b"\0")
    h.update(f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}".encode())
    return h.hexdigest()[:16]


def is_complete(d: Path) -> bool:
    return (d / _DONE).is_file() and (d / "simple" / "index.html").is_file()


def ensure_wheelhouse(cache_root: Path | None = None) -> Path:
    root = (Path(cache_root) if cache_root is not None else default_cache_root()).expanduser().resolve()
    key = cache_key()
    final = root / f"wheelhouse-{key}"
    if is_complete(final):
        return final
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"wheelhouse-{key}.lock")):
        if is_complete(final):
            return final
        for stale in root.glob(f".wheelhouse-{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = root / f".wheelhouse-{key}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            t0 = time.monotonic()
            _log(f"building test wheelhouse {final}")
            _build(tmp)
            (tmp / _DONE).write_text(key + "\n")
            os.replace(tmp, final)
            _log(f"test wheelhouse ready in {time.monotonic() - t0:.1f}s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------- downloading


def _pip_env() -> dict[str, str]:
    # The machine's pip configuration (extra indexes, find-links, constraints) must not decide what is downloaded.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _platforms() -> list[str]:
    m = platform.machine()
    return [f"manylinux{v}_{m}" for v in ("2014", "_2_17", "_2_28", "_2_31")] + [f"linux_{m}"]


def _download(dest: Path) -> None:
    binary, source, other = [], [], []
    for raw in LIST.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("--no-binary "):
            source.append(line.split(None, 1)[1])
        elif line.startswith("--platform "):
            _opt, tag, req = line.split(None, 2)
            other.append((tag, req))
        elif line:
            binary.append(line)
    py = f"{sys.version_info[0]}{sys.version_info[1]}"
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), "--index-url",
            "https://pypi.org/simple"]
    plat = [a for p in _platforms() for a in ("--platform", p)]
    for req in binary:  # one at a time: two versions of one name are listed
        _run([*base, "--only-binary=:all:", "--python-version", py, "--implementation", "cp", "--abi", f"cp{py}",
              "--abi", "abi3", "--abi", "none", *plat, req])
    for req in source:
        _run([*base, "--no-binary=:all:", req])
    for tag, req in other:  # another platform's wheel (macOS) for the same python
        _run([*base, "--only-binary=:all:", "--python-version", py, "--implementation", "cp", "--abi", f"cp{py}",
              "--abi", "abi3", "--abi", "none", "--platform", tag, req])


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_pip_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


# ------------------------------------------------------------------------------------------------- local wheels


def make_wheel(dest: Path, name: str, version: str, files: dict[str, str], *, requires: tuple[str, ...] = (),
               scripts: dict[str, str] | None = None, extras: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel holding FILES (archive path -> text), with console SCRIPTS (name -> module:function)."""
    norm = re.sub(r"[-_.]+", "_", name)
    di = f"{norm}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Provides-Extra: {e}\n" for e in extras) + "".join(f"Requires-Dist: {r}\n" for r in requires)
    content = dict(files)
    content[f"{di}/METADATA"] = meta
    content[f"{di}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: cpkgs-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if scripts:
        content[f"{di}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())
    path = dest / f"{norm}-{version}-py3-none-any.whl"
    rows = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, text in content.items():
            data = text.encode()
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{arc},sha256={digest},{len(data)}")
        zf.writestr(f"{di}/RECORD", "\n".join([*rows, f"{di}/RECORD,,"]) + "\n")
    return path


def _local_wheels(dest: Path) -> None:
    main = "def main():\n    print('{name} ok')\n"
    # Its console script is bin/pip, a file of the conda package pip: installing it would replace conda's file.
    make_wheel(dest, "cpkgs-clobber", "1.0", {"cpkgs_clobber/__init__.py": main.format(name="clobber")},
               scripts={"pip": "cpkgs_clobber:main"})
    # Needs a newer packaging than the conda env's 26.3: an upgrade through a dependency.
    make_wheel(dest, "cpkgs-needs-packaging", "1.0", {"cpkgs_needs_packaging.py": "X = 1\n"},
               requires=("packaging>=26.4",))
    # Only a pre-release satisfies >=2 (the --pre case).
    make_wheel(dest, "cpkgs-pre-demo", "1.0", {"cpkgs_pre_demo.py": "V = '1.0'\n"})
    make_wheel(dest, "cpkgs-pre-demo", "2.0b1", {"cpkgs_pre_demo.py": "V = '2.0b1'\n"})
    # An extra that pulls in toolz only when asked for.
    make_wheel(dest, "cpkgs-extras-demo", "1.0", {"cpkgs_extras_demo.py": "X = 1\n"},
               requires=('toolz ; extra == "fast"',), extras=("fast",))
    # A script in .data/scripts with '#!python': the installer writes the interpreter into it.
    make_wheel(dest, "cpkgs-datascript", "1.0", {
        "cpkgs_datascript.py": "X = 1\n",
        "cpkgs_datascript-1.0.data/scripts/cpkgs-datascript": "#!python\nimport sys\nprint('datascript ok', sys.prefix)\n",
    })


# ------------------------------------------------------------------------------------------------- simple index


def _name_of(filename: str) -> str:
    from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

    if filename.endswith(".whl"):
        return canonicalize_name(parse_wheel_filename(filename)[0])
    return canonicalize_name(parse_sdist_filename(filename)[0])


def write_simple(files_dir: Path, simple: Path, href_prefix: str = "../../wheels/") -> None:
    """A PEP 503 tree over FILES_DIR: simple/index.html and simple/<name>/index.html with #sha256= links."""
    by_name: dict[str, list[Path]] = {}
    for f in sorted(files_dir.iterdir()):
        if f.name.endswith((".whl", ".tar.gz", ".zip")):
            by_name.setdefault(_name_of(f.name), []).append(f)
    for name, fs in by_name.items():
        d = simple / name
        d.mkdir(parents=True, exist_ok=True)
        links = "".join(
            f'<a href="{href_prefix}{html.escape(f.name)}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}">'
            f"{html.escape(f.name)}</a><br>\n" for f in fs)
        (d / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    index = "".join(f'<a href="{n}/">{n}</a><br>\n' for n in sorted(by_name))
    (simple / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{index}</body></html>\n")


def _build(tmp: Path) -> None:
    wheels = tmp / "wheels"
    wheels.mkdir()
    _download(wheels)
    _local_wheels(wheels)
    for f in wheels.iterdir():
        os.chmod(f, 0o644)
    write_simple(wheels, tmp / "simple")


# ------------------------------------------------------------------------------------------ the cpkgs tool's wheels

# pip --platform values per tool platform (pip adds the compatible older and universal2 tags itself).
TOOL_PLATFORMS = {"linux-64": _platforms(), "osx-arm64": ["macosx_11_0_arm64"]}
# cpkgs' pyproject [build-system] requires (setuptools>=77, wheel), at wheelhouse.txt's versions.
TOOL_BUILD = ("setuptools==84.2.1", "wheel==0.48.0")
_MARKERS = {
    "linux-64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                 "os_name": "posix"},
    "osx-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                  "os_name": "posix"},
}


def tool_requirements(platform_name: str) -> list[str]:
    """cpkgs' runtime dependency closure for PLATFORM_NAME, each `name==version` as installed here; a dependency
    only that platform needs (not installed here) as its requirement line."""
    import importlib.metadata as md

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {**default_environment(), **_MARKERS[platform_name], "extra": ""}
    seen: dict[str, str] = {}
    todo = [Requirement(r) for r in (md.distribution("cpkgs").requires or [])]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            seen[name] = str(req)
            continue
        seen[name] = f"{name}=={dist.version}"
        todo += [Requirement(r) for r in (dist.requires or [])]
    return sorted(seen.values())


def tool_cache_key() -> str:
    h = hashlib.sha256()
    for plat in TOOL_PLATFORMS:
        h.update(f"{plat}: {' '.join(tool_requirements(plat))}\n".encode())
    h.update(" ".join(TOOL_BUILD).encode() + b"\0" + Path(__file__).resolve().read_bytes())
    h.update(f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}".encode())
    return h.hexdigest()[:16]


def ensure_tool_wheels(cache_root: Path | None = None) -> Path:
    """The directory holding ``wheels/`` (find-links) and ``simple/`` (PEP 503) of the tool's wheels."""
    root = (Path(cache_root) if cache_root is not None else default_cache_root()).expanduser().resolve()
    key = tool_cache_key()
    final = root / f"tool-{key}"
    if is_complete(final):
        return final
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"tool-{key}.lock")):
        if is_complete(final):
            return final
        for stale in root.glob(f".tool-{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = root / f".tool-{key}.tmp-{os.getpid()}"
        (tmp / "wheels").mkdir(parents=True)
        try:
            t0 = time.monotonic()
            _log(f"downloading the cpkgs tool's wheels into {final}")
            _download_tool(tmp / "wheels")
            for f in (tmp / "wheels").iterdir():
                os.chmod(f, 0o644)
            write_simple(tmp / "wheels", tmp / "simple")
            (tmp / _DONE).write_text(key + "\n")
            os.replace(tmp, final)
            _log(f"tool wheels ready in {time.monotonic() - t0:.1f}s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _download_tool(dest: Path) -> None:
    py = f"{sys.version_info[0]}{sys.version_info[1]}"
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), "--index-url",
            "https://pypi.org/simple", "--only-binary=:all:", "--python-version", py, "--implementation", "cp",
            "--abi", f"cp{py}", "--abi", "abi3", "--abi", "none"]
    for plat, tags in TOOL_PLATFORMS.items():
        plat_args = [a for t in tags for a in ("--platform", t)]
        for req in tool_requirements(plat):  # one at a time, as _download: --no-deps pins each
            _run([*base, *plat_args, req])
    for req in TOOL_BUILD:
        _run([*base, req])


def main() -> int:
    print(ensure_wheelhouse())
    print(ensure_tool_wheels())
    return 0


if __name__ == "__main__":
    sys.exit(main())
