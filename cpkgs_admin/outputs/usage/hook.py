"""What new-env writes into every env with python for usage records, whether or not the site has them on.

    lib/pythonX.Y/sitecustomize.pyc      the hook, byte code only (see below)
    conda-meta/cpkgs/usage-hook.py       its source, for admins to read (verify checks both against the manifest)
    conda-meta/cpkgs/modules.json        top-level module -> (package, conda|pypi) of the env's site-packages

Why a sourceless sitecustomize in the stdlib dir: Python's site.py imports `sitecustomize` at every start, so a
module there turns the lookup's miss into a hit in the first directory searched. A hit on `sitecustomize.py` would
stat the source twice and open __pycache__/...pyc (users cannot write byte code on the sealed share, so it must
exist); a bare `sitecustomize.pyc` is one stat and one read, and the hook's chaining skips the env's own
lib-dynload and site-packages (sealed: the build knows they hold no other sitecustomize), whose stats the miss
would have made. Measured with strace (tests/test_usage.py): the number of file accesses on the env per start
does not grow. A .pth file would add a read to every start instead.

The byte code must be the env's python's: compiled here when this interpreter has the env's X.Y (the pyc format
is fixed within a minor version), else by the staged interpreter itself when it runs on this host; for an env of
another platform and version only the source goes in (`sitecustomize.py`), which that python compiles in memory
at each start.

The module index is what `cpkgs usage` maps imported modules to packages with: conda packages from the `files` of
conda-meta/*.json, PyPI distributions from their RECORD (an env's pip part); one small JSON read per env at
report time instead of every package's file list.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import marshal
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import BuildError
from cpkgs_admin.outputs.localdb import stdlib_dir
from cpkgs_admin.outputs.profiles import template_text

TEMPLATE = "usage_sitecustomize.py"
HOOK_SOURCE = "conda-meta/cpkgs/usage-hook.py"
MODULE_INDEX = "conda-meta/cpkgs/modules.json"
INDEX_SCHEMA = 1
MIN_PYTHON = (3, 7)  # the hook's syntax and str.isascii
COMPILE_TIMEOUT = 60.0
_EXTENSION = re.compile(r"\.(cpython-[^.]*\.so|abi3\.so|so|pyd|py|pyc)\Z")
_NOT_MODULES = (".dist-info", ".egg-info", ".data", ".pth", "__pycache__")


def render_hook(name: str, platform: str, chain_own: bool) -> str:
    text = template_text(TEMPLATE)
    for key, value in (("@ENV@", repr(name)), ("@PLATFORM@", repr(platform)), ("@CHAIN_OWN@", repr(chain_own))):
        if key not in text:
            raise BuildError(f"template {TEMPLATE} lacks its {key} placeholder")
        text = text.replace(key, value)
    return text


def _python_xy(version: str | None) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _other_sitecustomize(stdlib: Path) -> bool:
    """Whether the env's own lib-dynload or site-packages hold a sitecustomize (a package's): the hook then looks
    there too."""
    for d in (stdlib / "lib-dynload", stdlib / "site-packages"):
        with contextlib.suppress(OSError):
            if any(n == "sitecustomize" or n.startswith("sitecustomize.") for n in os.listdir(d)):
                return True
    return False


def _pyc_here(source: str, dfile: str) -> bytes:
    """PEP 552 header (flags 0; mtime and size unused by a sourceless loader) + this interpreter's code object."""
    code = compile(source, dfile, "exec", dont_inherit=True)
    size = len(source.encode("utf-8")) & 0xFFFFFFFF
    return importlib.util.MAGIC_NUMBER + b"\0" * 8 + size.to_bytes(4, "little") + marshal.dumps(code)


_COMPILE = (
    "import importlib.util as u, marshal, sys\n"
    "s = sys.stdin.buffer.read()\n"
    "c = compile(s, sys.argv[1], 'exec', dont_inherit=True)\n"
    "n = (len(s) & 0xFFFFFFFF).to_bytes(4, 'little')\n"
    "sys.stdout.buffer.write(u.MAGIC_NUMBER + bytes(8) + n + marshal.dumps(c))\n"
)


def _pyc_by(python: Path, source: str, dfile: str) -> bytes:
    """Compiled by the staged interpreter: -I -S so that neither site.py nor this very hook runs, -B so that it
    writes no byte code of its own into the env."""
    try:
        proc = subprocess.run([str(python), "-I", "-S", "-B", "-c", _COMPILE, dfile], input=source.encode("utf-8"),
                              capture_output=True, timeout=COMPILE_TIMEOUT, check=False, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{python}: cannot byte-compile the usage hook: {exc}") from None
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise BuildError(f"{python}: cannot byte-compile the usage hook: {err[-1] if err else proc.returncode}")
    return proc.stdout


def _same_byte_code(stdlib: Path, version: str) -> bool:
    """Whether this interpreter's byte code is the env's python's: same CPython X.Y (stdlib dir name), both final
    releases (the magic number moves between alphas, betas and release candidates; a pyc made here for an env's
    3.13.0rc1 could be refused at every start)."""
    return (stdlib.name == f"python{sys.version_info[0]}.{sys.version_info[1]}" and sys.implementation.name == "cpython"
            and sys.version_info.releaselevel == "final" and re.fullmatch(r"\d+\.\d+\.\d+", version) is not None)


def hook_files(staging: Path, final: Path, record: Any, native: bool) -> dict[str, bytes]:
    """{relative path: content} of the hook for an env with python >= 3.7 (else nothing); NATIVE: the env runs
    on this host. An env whose stdlib dir already holds a package's sitecustomize gets none: that one is Python's."""
    xy = _python_xy(record.python_version)
    stdlib = stdlib_dir(staging)
    if xy is None or xy < MIN_PYTHON or stdlib is None:
        return {}
    if any(os.path.lexists(stdlib / f"sitecustomize{ext}") for ext in (".py", ".pyc")) or (
            stdlib / "sitecustomize").is_dir():
        return {}
    source = render_hook(record.name, record.platform, _other_sitecustomize(stdlib))
    rel = stdlib.relative_to(staging)
    files = {HOOK_SOURCE: source.encode("utf-8")}
    # Tracebacks and inspect name the readable copy.
    dfile = str(final / HOOK_SOURCE)
    if _same_byte_code(stdlib, record.python_version):
        files[f"{rel}/sitecustomize.pyc"] = _pyc_here(source, dfile)
    elif native and (staging / "bin" / stdlib.name).is_file():
        files[f"{rel}/sitecustomize.pyc"] = _pyc_by(staging / "bin" / stdlib.name, source, dfile)
    else:
        files[f"{rel}/sitecustomize.py"] = source.encode("utf-8")
    return files


# ----------------------------------------------------------------------------------------------------- module index


def _module_of(rest: str) -> tuple[str, str | None] | None:
    """site-packages-relative path -> (top-level name, second-level name or None); None for what is no module."""
    top, _, sub = rest.partition("/")
    if top.endswith(_NOT_MODULES) or not top:
        return None
    if not sub:
        m = _EXTENSION.search(top)
        return (top[: m.start()].split(".")[0], None) if m else None
    second = sub.partition("/")[0]
    if second == "__init__.py" or second.startswith("__init__."):
        return top, "__init__"
    m = _EXTENSION.search(second)
    if m:
        second = second[: m.start()]
    elif "/" not in sub or second == "__pycache__":
        return top, None
    return top, second


class _Index:
    """Module names seen per owner, then resolved: a regular package to whoever ships its __init__, a namespace
    package (no __init__: google, mpl_toolkits) per subpackage, as the hook records them ('google.protobuf')."""

    def __init__(self) -> None:
        self.tops: dict[str, set[tuple[str, str]]] = {}
        self.init: dict[str, tuple[str, str]] = {}
        self.second: dict[str, tuple[str, str]] = {}

    def add(self, rest: str, owner: tuple[str, str]) -> None:
        found = _module_of(rest)
        if found is None:
            return
        top, second = found
        self.tops.setdefault(top, set()).add(owner)
        if second == "__init__" or (second is None and "/" not in rest):
            self.init.setdefault(top, owner)
        elif second is not None:
            self.second.setdefault(f"{top}.{second}", owner)

    def resolved(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for top, owners in sorted(self.tops.items()):
            if top in self.init:
                out[top] = list(self.init[top])
                continue
            out[top] = list(sorted(owners)[0])
            for name, owner in self.second.items():
                if name.startswith(top + "."):
                    out[name] = list(owner)
        return out


def _dist_name(dist_info: str) -> str:
    """'Foo_Bar-1.0.dist-info' -> 'foo-bar' (PEP 503 normalized)."""
    name = dist_info.rsplit(".", 1)[0].split("-", 1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def module_index(staging: Path, meta: list[tuple[Path, bytes, Any]]) -> dict[str, Any]:
    """The index for MODULE_INDEX from conda-meta (parsed, as verify.read_conda_meta gives it) and the RECORDs of
    dist-info dirs no conda package owns."""
    stdlib = stdlib_dir(staging)
    if stdlib is None:
        return {"schema": INDEX_SCHEMA, "site_packages": None, "modules": {}}
    sp = f"{stdlib.relative_to(staging)}/site-packages/"
    index = _Index()
    conda_dirs: set[str] = set()
    for _path, _raw, data in meta:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        owner = (data["name"], "conda")
        files = data.get("files") or [e.get("_path", "") for e in (data.get("paths_data") or {}).get("paths", [])]
        for f in files:
            if isinstance(f, str) and f.startswith(sp):
                rest = f[len(sp):]
                conda_dirs.add(rest.partition("/")[0])
                index.add(rest, owner)
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(staging / sp)):
            if entry.endswith(".dist-info") and entry not in conda_dirs:
                _add_record(index, staging / sp / entry / "RECORD", (_dist_name(entry), "pypi"))
    return {"schema": INDEX_SCHEMA, "site_packages": sp.rstrip("/"), "modules": index.resolved()}


def _add_record(index: _Index, record: Path, owner: tuple[str, str]) -> None:
    try:
        text = record.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    for row in csv.reader(io.StringIO(text)):
        if row and not row[0].startswith(("/", "..")):
            index.add(row[0], owner)


def index_text(index: dict[str, Any]) -> str:
    return json.dumps(index, indent=None, sort_keys=True, separators=(",", ":")) + "\n"


def read_index(prefix: Path) -> dict[str, tuple[str, str]] | None:
    """module -> (package, kind) of an env, or None when it has no readable index (built before cpkgs wrote one,
    removed, or not mounted here)."""
    try:
        data = json.loads((prefix / MODULE_INDEX).read_bytes())
        modules = data["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(modules, dict):
        return None
    return {m: (v[0], v[1]) for m, v in modules.items() if isinstance(v, list) and len(v) == 2}


def write_usage_files(staging: Path, final: Path, record: Any, meta: list[tuple[Path, bytes, Any]],
                      native: bool) -> list[str]:
    """Write the hook and the module index into the staged env; the relative paths written (for the manifest)."""
    if record.python_version is None:
        return []
    files = {**hook_files(staging, final, record, native),
             MODULE_INDEX: index_text(module_index(staging, meta)).encode("utf-8")}
    for rel, data in files.items():
        path = staging / rel
        if os.path.lexists(path):
            raise BuildError(f"{record.name}: a package already ships {rel}; cpkgs cannot add its own there")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o644)
    return list(files)
