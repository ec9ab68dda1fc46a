"""Byte code for the pip part, made at build time: nobody can write `__pycache__` on the sealed share later.

Every `.py` a pip distribution's RECORD lists under site-packages is compiled at optimization level 0 (as pip does),
as a timestamp pyc (pip's and conda's default; sealed files keep their mtimes, conda-pack too) whose code objects
name the file at the FINAL prefix (py_compile's dfile), never the staging dir. Each pyc gets a RECORD row (path,
sha256, size), as pip writes them, so verify checks it like any other file.

Who compiles: the env's own python when it runs here (native), in a few parallel processes; for another platform's
env, this interpreter when it is the same CPython X.Y final release (byte code depends on the version, not on the
OS); otherwise nothing is compiled and the caller says so.
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import PipError
from cpkgs_admin.integrity.pipfiles import read_record
from cpkgs_admin.pipeline.pypi.install import replace_file
from cpkgs_admin.pipeline.pypi.record import PypiPackage
from cpkgs_admin.pipeline.pypi.target import TargetPython, same_byte_code
from cpkgs_admin.pipeline.pypi.wheelfile import format_record

COMPILE_TIMEOUT = 1800

# Run by the env's python (-I -S -B: no site, no user site, none of its own byte code), and by this one for another
# platform's env of the same python: [source, dfile] pairs in, [pyc, RECORD hash, size] out. The pyc is what
# py_compile writes (PEP 552 timestamp header + the marshalled code object), built here so that each file is read
# once and its RECORD row comes back with it. A module that does not compile (a py2-only file some wheels carry) is
# skipped, as pip skips it.
_COMPILE = """
import base64, hashlib, importlib.util, json, marshal, os, sys

def compile_pairs(pairs):
    out = []
    for src, dfile in pairs:
        try:
            with open(src, "rb") as fh:
                data = fh.read()
                st = os.fstat(fh.fileno())
            code = compile(data, dfile, "exec", dont_inherit=True)
        except (SyntaxError, ValueError, UnicodeError, OSError, RecursionError, MemoryError):
            continue
        pyc = (importlib.util.MAGIC_NUMBER + bytes(4) + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
               + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little") + marshal.dumps(code))
        cfile = importlib.util.cache_from_source(src)
        os.makedirs(os.path.dirname(cfile), exist_ok=True)
        tmp = "%s.%d.tmp" % (cfile, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pyc)
        os.replace(tmp, cfile)
        digest = base64.urlsafe_b64encode(hashlib.sha256(pyc).digest()).rstrip(b"=").decode()
        out.append([cfile, "sha256=" + digest, len(pyc)])
    return out

if __name__ == "__main__":
    json.dump(compile_pairs(json.load(sys.stdin)), sys.stdout)
"""


def can_compile(target: TargetPython) -> bool:
    return target.native or same_byte_code(target.full_version)


def compile_pip_part(target: TargetPython, packages: Iterable[PypiPackage], workers: int | None = None) -> bool:
    """Compile every installed package's modules and add the pycs to its RECORD. False: not possible here (another
    platform's env of another python version than this one); nothing was written."""
    if not can_compile(target):
        return False
    sources: dict[str, list[tuple[str, str]]] = {}  # dist_info -> [(staging path, final path)]
    for p in packages:
        site = posixpath.dirname(p.dist_info)
        for row in read_record(target.staging / p.dist_info / "RECORD"):
            rel = posixpath.normpath(posixpath.join(site, row[0]))
            if rel.endswith(".py") and rel.startswith(site + "/"):
                sources.setdefault(p.dist_info, []).append((str(target.staging / rel), str(target.final / rel)))
    pairs = [pair for group in sources.values() for pair in group]
    if not pairs:
        return True
    rows = _compile_native(target, pairs, workers) if target.native else _compile_here(pairs)
    written = {c: (h, str(n)) for c, h, n in rows}
    for dist_info, group in sources.items():
        _add_rows(target, dist_info, {c: written[c] for src, _d in group if (c := _cache_path(target, src)) in written})
    return True


def _cache_path(target: TargetPython, source: str) -> str:
    """Where the env's python puts SOURCE's pyc (PEP 3147: __pycache__/<name>.cpython-XY[t].pyc)."""
    head, tail = os.path.split(source)
    tag = f"cpython-{target.version.replace('.', '')}{'t' if target.purelib.split('/')[1].endswith('t') else ''}"
    return os.path.join(head, "__pycache__", f"{tail[:-3]}.{tag}.pyc")


def compile_sources(pairs: list[tuple[str, str]]) -> list[tuple[str, str, int]]:
    """PAIRS (source, dfile) compiled by this interpreter, as for the pip part: [(pyc, RECORD hash, size)]."""
    return _compile_here(pairs)


def _compile_here(pairs: list[tuple[str, str]]) -> list[tuple[str, str, int]]:
    namespace: dict[str, Any] = {"__name__": "cpkgs_bytecode"}
    exec(compile(_COMPILE, "<cpkgs bytecode>", "exec"), namespace)  # the very code the env's python runs
    return [(c, h, n) for c, h, n in namespace["compile_pairs"](pairs)]


def _compile_native(target: TargetPython, pairs: list[tuple[str, str]],
                    workers: int | None) -> list[tuple[str, str, int]]:
    n = max(1, min(workers or os.cpu_count() or 1, 8, len(pairs) // 50 + 1))
    chunks = [pairs[i::n] for i in range(n)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "SOURCE_DATE_EPOCH"}
    procs = []
    try:
        for chunk in chunks:
            procs.append((subprocess.Popen([str(target.executable), "-I", "-S", "-B", "-c", _COMPILE],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           env=env, cwd="/"), json.dumps(chunk).encode()))
        out: list[tuple[str, str, int]] = []
        for proc, data in procs:
            stdout, stderr = proc.communicate(data, timeout=COMPILE_TIMEOUT)
            if proc.returncode != 0:
                last = (stderr.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
                raise PipError(f"pip: byte-compiling the pip part with {target.executable} failed: {last}")
            out += [(c, h, int(n)) for c, h, n in json.loads(stdout)]
        return out
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise PipError(f"pip: byte-compiling the pip part with {target.executable} failed: {exc}") from None
    finally:
        for proc, _d in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _add_rows(target: TargetPython, dist_info: str, pycs: dict[str, tuple[str, str]]) -> None:
    """PYCS (path -> RECORD hash, size) into DIST_INFO's RECORD, before its own row (which stays last)."""
    if not pycs:
        return
    record = target.staging / dist_info / "RECORD"
    rows = read_record(record)
    site = target.staging / posixpath.dirname(dist_info)
    record_rel = posixpath.relpath(f"{dist_info}/RECORD", posixpath.dirname(dist_info))
    have = {r[0] for r in rows}
    body = [r for r in rows if r[0] != record_rel]
    for pyc, (digest, size) in sorted(pycs.items()):
        rel = Path(os.path.relpath(pyc, site)).as_posix()
        if rel not in have:
            body.append([rel, digest, size])
    replace_file(record, format_record([*body, [record_rel, "", ""]]).encode(), 0o644)
