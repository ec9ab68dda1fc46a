"""The tool's build between solve and publish: the pipeline's stage, pip step, post-process, check and seal, with
the tool's own post-process before cpkgs' manifests are made (the `cpkgs` script's header, tool.json, byte code for
the conda part), then a check that it runs (this platform) or fits its platform by tags and binary formats (another
platform, whose python cannot run here)."""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import subprocess
from pathlib import Path

from packaging.tags import compatible_tags, cpython_tags, mac_platforms, parse_tag

from cpkgs_admin.errors import BuildError
from cpkgs_admin.integrity.pipfiles import read_record
from cpkgs_admin.pipeline.assemble import stage_and_check
from cpkgs_admin.pipeline.check import DamagedCache
from cpkgs_admin.pipeline.job import Job
from cpkgs_admin.pipeline.leftovers import discarded_on_failure
from cpkgs_admin.pipeline.publish import seal
from cpkgs_admin.pipeline.pypi.bytecode import compile_sources
from cpkgs_admin.pipeline.pypi.install import replace_file
from cpkgs_admin.pipeline.pypi.wheelfile import format_record, record_hash
from cpkgs_admin.site.paths import native_subdir
from cpkgs_admin.site.records import timestamp
from cpkgs_admin.site.tools import TOOL_INFO, TOOL_SCHEMA

NOBODY = 65534
# First bytes of a binary by platform family: ELF; 64-bit Mach-O (little-endian) and universal (fat) Mach-O.
_MAGIC = {"linux": (b"\x7fELF",), "osx": (b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")}


def build_and_check(job: Job) -> None:
    job.usage_hook = False
    job.site.tool_dir(job.subdir).mkdir(mode=job.site.shared_modes()[0], exist_ok=True)
    try:
        stage_and_check(job, ("tool", tool_files))
    except DamagedCache as damaged:  # no second try here: the next install-tool fetches again
        raise BuildError(damaged.message) from None
    with discarded_on_failure(job.staging, job.record.name, fenced=lambda: False):
        with job.timed("seal"):
            seal(job)
        with job.timed("run"):
            if job.subdir == native_subdir():
                runs(job)
            else:
                fits_platform(job)


def tool_files(job: Job) -> None:
    """The tool's part of the post-process; what it writes joins cpkgs' manifest (job.own_files)."""
    _isolated_script(job)
    info = {"schema": TOOL_SCHEMA, "root": str(job.site.root), "platform": job.subdir,
            "installation": job.site.installation_name(job.subdir), "version": job.record.version,
            "build": job.record.extra["build"], "prefix": str(job.final), "cpkgs_digest": job.record.extra[
                "cpkgs_digest"], "python": job.record.python_version, "created": timestamp()}
    (job.staging / TOOL_INFO).parent.mkdir(parents=True, exist_ok=True)
    (job.staging / TOOL_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.chmod(job.staging / TOOL_INFO, 0o644)
    job.own_files += [TOOL_INFO, *byte_code(job.staging, job.final)]


def _isolated_script(job: Job) -> None:
    """bin/cpkgs runs its BUILD's python with -I: a user's PYTHONPATH or ~/.local packages never shadow the tool's,
    and no user-site stat on an NFS home at each start. Its RECORD row follows."""
    dist_info = next((d for n, _v, d in job.pip_dists if n == "cpkgs"), None)
    if dist_info is None:
        raise BuildError("the tool's pip part has no cpkgs distribution")
    script = job.staging / "bin" / "cpkgs"
    data = script.read_bytes()
    first, _, rest = data.partition(b"\n")
    python = f"{job.final}/bin/python".encode()
    if first == b"#!" + python:
        new = b"#!" + python + b" -I\n" + rest
    elif first == b"#!/bin/sh" and b"'''exec' " in rest:  # the long-path trampoline (pypi/install.shebang)
        new = first + b"\n" + rest.replace(b' "$0" "$@"', b' -I "$0" "$@"', 1)
    else:
        raise BuildError(f"bin/cpkgs of the tool starts with {first[:80]!r}, not its python's header")
    replace_file(script, new, 0o755)
    site = posixpath.dirname(dist_info)
    record = job.staging / dist_info / "RECORD"
    rel = posixpath.relpath("bin/cpkgs", site)
    rows = [[r[0], record_hash(new), str(len(new))] if r[0] == rel else r for r in read_record(record)]
    replace_file(record, format_record(rows).encode(), 0o644)


def byte_code(staging: Path, final: Path) -> list[str]:
    """Every .py of the tree without byte code (the conda part: python's stdlib, noarch packages) compiled by this
    interpreter (the tool's python is this one's X.Y), as timestamp pycs naming the final path; users cannot write
    __pycache__ on the share, so without them every start would compile in memory. The pycs' relative paths."""
    pairs = []
    for dirpath, dirnames, filenames in os.walk(staging):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not (dirpath == str(staging) and d in (
            "conda-meta", "bin", "include", "share", "man"))]
        for n in filenames:
            src = os.path.join(dirpath, n)
            if n.endswith(".py") and not os.path.islink(src) and not os.path.exists(_cache_of(src)):
                pairs.append((src, str(final / os.path.relpath(src, staging))))
    return [os.path.relpath(pyc, staging) for pyc, _h, _n in compile_sources(pairs)]


def _cache_of(src: str) -> str:
    return importlib.util.cache_from_source(src)


def runs(job: Job) -> None:
    """The staged tool, sealed, runs `cpkgs --version` as an ordinary user (root writes through seals), or nothing
    is published. The staging dir opens for that moment only: it is sealed already."""
    os.chmod(job.staging, 0o555)
    try:
        cmd = [str(job.staging / "bin" / "python"), "-I", "-B", "-m", "cpkgs_admin", "--version"]
        # As an ordinary user where one can reach it (root writes through seals); else (a root not open to
        # others) as this admin: -I -B writes nothing either way.
        as_user = os.getuid() == 0 and _world_searchable(job.staging)
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd="/",
                              stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/"},
                              user=NOBODY if as_user else None, group=NOBODY if as_user else None,
                              extra_groups=[] if as_user else None)
    except subprocess.TimeoutExpired:
        raise BuildError("the staged tool does not run: `cpkgs --version` did not finish in 300s") from None
    finally:
        os.chmod(job.staging, 0o700)
    if proc.returncode != 0 or not proc.stdout.startswith(f"cpkgs, version {job.record.version}"):
        last = (proc.stderr.strip().splitlines() or [proc.stdout.strip() or f"exit {proc.returncode}"])[-1]
        raise BuildError(f"the staged tool does not run (python -m cpkgs_admin --version): {last}")


def _world_searchable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def fits_platform(job: Job) -> None:
    """Another platform's tool: every wheel's tags accepted by its CPython and OS, every binary of its format."""
    version = job.record.python_version or ""
    xy = tuple(int(x) for x in version.split(".")[:2])
    plats = _platforms(job.subdir, job.record.virtual_packages)
    accepted = {*cpython_tags(xy, platforms=plats),
                *compatible_tags(xy, interpreter=f"cp{xy[0]}{xy[1]}", platforms=plats)}
    family = job.subdir.split("-")[0]
    for dist_info in sorted({d for _n, _v, d in job.pip_dists}):
        tags = [ln.split(":", 1)[1].strip() for ln in (job.staging / dist_info / "WHEEL").read_text().splitlines()
                if ln.startswith("Tag:")]
        if not any(parse_tag(t) & accepted for t in tags):
            raise BuildError(f"{dist_info} is for {', '.join(tags)}, not {job.subdir} (CPython {version})")
        for row in read_record(job.staging / dist_info / "RECORD"):
            path = job.staging / posixpath.dirname(dist_info) / row[0]
            if row[0].endswith((".so", ".dylib")) or row[0] == "../../../bin/uv":
                with open(path, "rb") as fh:
                    head = fh.read(4)
                if head not in _MAGIC.get(family, (head,)):
                    raise BuildError(f"{os.path.relpath(path, job.staging)} is not a {job.subdir} binary")


def _platforms(subdir: str, virtual: dict[str, str]) -> list[str]:
    if subdir.startswith("osx-"):
        arch = "arm64" if subdir.endswith("arm64") else "x86_64"
        osx = virtual.get("__osx") or ("11.0" if arch == "arm64" else "10.13")
        major, _, minor = osx.partition(".")
        return list(mac_platforms((int(major), int(minor or 0)), arch))
    raise BuildError(f"cannot check a tool for {subdir} by platform tags from this {native_subdir()} host")

