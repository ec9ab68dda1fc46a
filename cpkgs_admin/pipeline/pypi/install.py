"""Step 4 for the pip part: the locked wheels installed into the staging env, every script and record naming the
final prefix; a wheel that would replace a conda package's file is refused before anything is written.

uv installs (from the store, offline, --require-hashes, --no-deps: exactly the locked wheels). Its scripts name
the interpreter it was given, the staging one; they are re-headed for the final prefix and their RECORD lines
(hash, size) rewritten, so `cpkgs verify` and `pip check` agree with the files. Only the scripts uv generates embed
the prefix (console and gui entry points, a wheel's .data/scripts with `#!python`); RECORD paths are relative.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shlex
import stat
from dataclasses import replace
from pathlib import Path

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.exceptions import InstallerError
from installer.sources import WheelFile

from cpkgs_admin.errors import PipError
from cpkgs_admin.integrity.pipfiles import read_record
from cpkgs_admin.pipeline.pypi.inventory import EnvInventory
from cpkgs_admin.pipeline.pypi.record import PypiPackage
from cpkgs_admin.pipeline.pypi.resolve import PipLock
from cpkgs_admin.pipeline.pypi.store import sha256_path
from cpkgs_admin.pipeline.pypi.target import TargetPython
from cpkgs_admin.pipeline.pypi.uvtool import run_uv
from cpkgs_admin.pipeline.pypi.wheelfile import WheelContents, format_record, record_hash, wheel_contents

# Longest '#!' line pip and uv write as is: Linux before 5.1 (BINPRM_BUF_SIZE 128) and other systems cut longer ones.
SHEBANG_MAX = 127


def install_pip(lock: PipLock, target: TargetPython, *, cache_dir: Path, work_dir: Path, hard_links: bool = False,
                inventory: EnvInventory | None = None) -> list[PypiPackage]:
    """Install LOCK into TARGET.staging; return its packages with their dist-info paths. HARD_LINKS: files may be
    hard links into uv's cache (only when that cache is as admin-only as the conda one: build.cache_is_admin_only).
    An env of this host's platform is installed by uv with its own python; another platform's by `installer`, which
    runs nothing of the env. Either way the scripts are then re-headed for the final prefix (finish_dist)."""
    if not lock.packages:
        return []
    inv = inventory or EnvInventory(target.staging)
    contents = check_clobber(lock, target, inv)
    if target.native:
        _install_uv(lock, target, cache_dir, work_dir, hard_links)
    else:
        _install_foreign(lock, target)
    out = []
    for p in lock.packages:
        dist_info = contents[p.name].dist_info
        finish_dist(target, dist_info, p)
        out.append(replace(p, dist_info=dist_info))
    return out


def _install_uv(lock: PipLock, target: TargetPython, cache_dir: Path, work_dir: Path, hard_links: bool) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    pinned = "".join(f"{p.name}=={p.version} --hash=sha256:{p.sha256}\n" for p in lock.packages)
    (work_dir / "locked.txt").write_text(pinned)
    # The store keeps each wheel in a directory of its own (<sha256>/): each is a find-links location, so uv sees
    # exactly the locked files (and records no direct URL, as for a wheel from an index).
    links = [a for d in dict.fromkeys(str(lock.wheels[p.name].parent) for p in lock.packages)
             for a in ("--find-links", d)]
    run_uv(["pip", "install", "--no-config", "--python", str(target.executable), "--no-deps", "--require-hashes",
            "--no-index", *links, "--no-build", "--break-system-packages", "--cache-dir", str(cache_dir),
            "--link-mode", "hardlink" if hard_links else "copy", "-r", str(work_dir / "locked.txt")],
           what="installing the pip part")


def _install_foreign(lock: PipLock, target: TargetPython) -> None:
    """An env for another platform (an osx-arm64 env built on Linux): its python cannot run here, so uv (which asks
    the interpreter) cannot install; pypa's `installer` writes each wheel by the scheme read from the staged files.
    Scripts name the staging python here, like uv's, and are re-headed by finish_dist. The wheel's hashes are
    checked against the lock first (installer checks each member against the wheel's RECORD as it writes)."""
    scheme = target.scheme()
    dest = SchemeDictionaryDestination(
        {"purelib": str(target.staging / scheme["purelib"]), "platlib": str(target.staging / scheme["platlib"]),
         "scripts": str(target.staging / scheme["scripts"]), "data": str(target.staging / scheme["data"]),
         "headers": str(target.staging / scheme["include"])},
        interpreter=str(target.executable), script_kind="posix")
    for p in lock.packages:
        wheel = lock.wheels[p.name]
        if sha256_path(wheel) != p.sha256:
            raise PipError(f"pip: {wheel.name} no longer has the sha256 it was locked with ({p.sha256})")
        meta = {"INSTALLER": b"cpkgs\n", **({"REQUESTED": b""} if p.requested else {})}
        try:
            with WheelFile.open(wheel) as source:
                source.validate_record()
                install(source, dest, additional_metadata=meta)
        except (InstallerError, ValueError, OSError) as exc:
            raise PipError(f"pip: installing {wheel.name}: {exc}") from None


def check_clobber(lock: PipLock, target: TargetPython, inv: EnvInventory) -> dict[str, WheelContents]:
    """Every file each wheel would write, against the conda packages' files and each other: the first clash is a
    PipError naming the pip package, the file and the conda package with both versions."""
    claimed: dict[str, PypiPackage] = {}
    contents: dict[str, WheelContents] = {}
    for p in lock.packages:
        c = lock.contents.get(p.name) or wheel_contents(lock.wheels[p.name], target.scheme(), p.name, p.version)
        contents[p.name] = c
        for rel in c.paths:
            owner = inv.owners.get(rel)
            if owner is not None:
                raise PipError(f"pip: {_who(p)} would overwrite {rel} of the conda package {owner[0]} {owner[1]}; "
                               f"pip may not replace conda's files: drop the pip requirement or change the conda "
                               f"spec of {owner[0]}")
            other = claimed.get(rel)
            if other is not None:
                raise PipError(f"pip: {_who(p)} and {_who(other)} both install {rel}")
            claimed[rel] = p
    # Files of no conda package (a link script's output, a leftover) are not replaced either.
    top = str(target.staging)
    on_disk = sorted(rel for rel in claimed if os.path.lexists(f"{top}/{rel}"))
    if on_disk:
        raise PipError(f"pip: {_who(claimed[on_disk[0]])} would overwrite {on_disk[0]}, which is already in the env")
    return contents


def _who(p: PypiPackage) -> str:
    why = f"pip requirement {p.requirement!r}" if p.requirement else "a dependency of the pip requirements"
    return f"{p.name} {p.version} ({why})"


# ------------------------------------------------------------------------------------------ final prefix, RECORD


def shebang(executable: str) -> bytes:
    """The header naming EXECUTABLE: '#!path' when the kernel takes it whole, else the /bin/sh trampoline pip and
    uv use for long paths or paths with spaces (sh re-executes the file with python, which reads the quoted line
    as a string)."""
    plain = f"#!{executable}\n"
    if len(plain) - 1 <= SHEBANG_MAX and not any(c.isspace() or c in "'\"\\" for c in executable):
        return plain.encode()
    quoted = shlex.quote(executable)
    if "'''" in quoted:
        raise PipError(f"pip: cannot write a script header for {executable!r}")
    return f"#!/bin/sh\n'''exec' {quoted} \"$0\" \"$@\"\n' '''\n".encode()


def retarget_script(data: bytes, old: str, new: str) -> bytes | None:
    """DATA with its interpreter header for OLD replaced by one for NEW; None when the header does not name OLD."""
    first, nl, rest = data.partition(b"\n")
    simple = b"#!" + old.encode()
    if first == simple or first.startswith(simple + b" "):
        args = first[len(simple):]
        head = shebang(new)
        if args and head.count(b"\n") == 1:
            head = head[:-1] + args + b"\n"
        return head + rest
    if first == b"#!/bin/sh" and nl:
        second, _, tail = rest.partition(b"\n")
        third, _, body = tail.partition(b"\n")
        if second.startswith(b"'''exec' ") and old.encode() in second and third == b"' '''":
            return shebang(new) + body
    return None


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """A new inode with DATA (never a write through a hard link into uv's cache)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def finish_dist(target: TargetPython, dist_info: str, pkg: PypiPackage) -> None:
    """One installed distribution: scripts re-headed for the final prefix, direct_url.json for a wheel from a URL
    or git (PEP 610: what `pip freeze` shows), REQUESTED only when the spec asked for it; RECORD to match."""
    d = target.staging / dist_info
    rows = read_record(d / "RECORD")
    site = posixpath.dirname(dist_info)
    old, new = str(target.executable), str(target.final_executable)
    scripts = posixpath.relpath(target.scripts, site) + "/"
    changed = False
    for row in rows:
        if not row[0].startswith(scripts):
            continue
        path = os.path.join(target.staging, site, row[0])
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            continue
        # pip and uv make everything they put into bin/ executable, whatever mode the wheel's zip entry had;
        # `installer` keeps the zip's mode.
        mode = stat.S_IMODE(st.st_mode) | 0o111
        with open(path, "rb") as fh:
            data = fh.read()
        new_data = retarget_script(data, old, new)
        if new_data is not None:
            replace_file(Path(path), new_data, mode)
            row[1:] = [record_hash(new_data), str(len(new_data))]
            changed = True
        elif mode != stat.S_IMODE(st.st_mode):
            os.chmod(path, mode)
    extra = {}
    direct = direct_url(pkg)
    if direct is not None:
        data = (json.dumps(direct, sort_keys=True) + "\n").encode()
        replace_file(d / "direct_url.json", data, 0o644)
        extra[posixpath.relpath(f"{dist_info}/direct_url.json", site)] = [record_hash(data), str(len(data))]
    requested = posixpath.relpath(f"{dist_info}/REQUESTED", site)
    if not pkg.requested and any(r[0] == requested for r in rows):
        (d / "REQUESTED").unlink()
        rows = [r for r in rows if r[0] != requested]
        changed = True
    if extra:
        record_rel = posixpath.relpath(f"{dist_info}/RECORD", site)
        rows = [r for r in rows if r[0] not in extra and r[0] != record_rel]
        rows += [[k, *v] for k, v in extra.items()] + [[record_rel, "", ""]]
        changed = True
    if changed:
        text = format_record(rows)
        if old in text:
            raise PipError(f"pip: {dist_info}/RECORD names the staging dir {target.staging}")
        replace_file(d / "RECORD", text.encode(), 0o644)


def direct_url(pkg: PypiPackage) -> dict[str, object] | None:
    src = pkg.source
    if src is None or src.kind == "sdist":
        return None  # from an index: no direct URL, as pip records it
    if src.kind == "vcs":
        info: dict[str, object] = {"vcs": "git", "commit_id": src.commit}
        if src.requested_revision:
            info["requested_revision"] = src.requested_revision
        out: dict[str, object] = {"url": src.url.removeprefix("git+"), "vcs_info": info}
        if src.subdirectory:
            out["subdirectory"] = src.subdirectory
        return out
    return {"url": src.url, "archive_info": {"hash": f"sha256={pkg.sha256}", "hashes": {"sha256": pkg.sha256}}}
