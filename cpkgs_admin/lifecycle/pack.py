"""Environments for places without the drive: `pack` (conda-pack archive) and `mirror` (a local channel).

`pack_env` hands a published env to conda-pack. Two things differ from a conda-made env: the env is sealed (files
0444/0555), and conda-unpack rewrites prefix-embedding files in place (`open(path, 'rb+')`), which fails for a
non-root user on a read-only file. So every archive member gets its owner-write bit; nothing else changes.

`mirror_env` writes a channel holding exactly the env's package archives, each checked against the sha256 in the
env's record, indexed with py-rattler. With `cpkgs export NAME --format explicit` it lets `new-env --lock` rebuild
the same env on a site that can reach no other channel.

Where the archives come from: the site's package cache (`.cpkgs/pkgs`) when it holds the archive file itself;
py-rattler's installer keeps only extracted directories there (it streams and unpacks, the .conda file is never
written), so in practice each archive is fetched from the URL recorded at build time (file:// copied, http(s)
downloaded). Either way the bytes are checked against the recorded sha256 before they enter the channel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cpkgs_admin.errors import CpkgsError, PermissionProblem, UsageError
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import get_record

# conda-pack infers the format from the suffix; only tar formats (zip would lose symlinks and modes).
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------------------- pack


@contextlib.contextmanager
def _owner_writable_members() -> Iterator[None]:
    """Give every file and dir conda-pack puts into a tar its owner-write bit.

    conda-pack takes member modes from the files it reads; from a sealed env those are read-only, and the
    `conda-unpack` step then cannot rewrite prefixes (PermissionError for any non-root user). conda-pack has no
    option for this; its TarArchive calls TarFile.add/gettarinfo for every member, so that is where we hook in.
    """
    original = tarfile.TarFile.gettarinfo

    def gettarinfo(self: tarfile.TarFile, *args: Any, **kwargs: Any) -> tarfile.TarInfo:
        info = original(self, *args, **kwargs)
        if info is not None and (info.isfile() or info.isdir()):
            info.mode |= 0o200
        return info

    tarfile.TarFile.gettarinfo = gettarinfo  # type: ignore[method-assign]
    try:
        yield
    finally:
        tarfile.TarFile.gettarinfo = original  # type: ignore[method-assign]


def _check_output(output: Path) -> Path:
    output = Path(os.path.abspath(os.path.expanduser(str(output))))
    if not output.name.endswith(_TAR_SUFFIXES):
        raise UsageError(f"-o {output}: use a tar archive name ({', '.join(_TAR_SUFFIXES)})")
    if output.exists() or output.is_symlink():
        raise UsageError(f"{output} already exists; remove it or choose another name")
    parent = output.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {output}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionProblem(f"cannot write {output}: {parent} is not writable by you")
    return output


def pack_env(site: Site, name: str, output: Path, platform: str | None) -> Path:
    """conda-pack archive of NAME at OUTPUT; unpack anywhere, then run DIR/bin/conda-unpack."""
    rec = get_record(site, name, platform)
    if rec.status == "removed":
        raise CpkgsError(f"environment {name} ({rec.platform}) was removed")
    if not rec.python_version:
        # conda-unpack is a Python script that runs with the env's own interpreter.
        raise UsageError(f"{name} has no python: conda-pack's conda-unpack needs one in the env")
    prefix = Path(rec.prefix)
    if not (prefix / "conda-meta").is_dir():
        raise CpkgsError(f"{prefix}/conda-meta is missing (is the drive mounted? try 'cpkgs verify {name}')")
    output = _check_output(output)

    # conda-pack: 37 ms to import, for `pack` alone.
    import conda_pack  # noqa: PLC0415

    # conda-pack writes OUTPUT itself (a temp file renamed on success); on failure it leaves nothing.
    try:
        with _owner_writable_members():
            conda_pack.pack(prefix=str(prefix), output=str(output), verbose=False, force=False, n_threads=-1)
    except conda_pack.CondaPackException as exc:
        text = " ".join(str(exc).split())
        raise CpkgsError(f"conda-pack failed for {name}: {text[:400]}") from None
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            output.unlink()
        raise CpkgsError(f"cannot write {output}: {exc.strerror}") from None
    # conda-pack's temp file is 0600; an archive meant to be carried elsewhere follows the umask like any file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(output, 0o666 & ~umask)
    return output


# ------------------------------------------------------------------------------------------------------------- mirror


@dataclass(frozen=True)
class MirrorReport:
    name: str
    platform: str
    directory: Path
    count: int
    from_cache: int
    fetched: int
    size: int
    wheels: int = 0  # the pip part's, in DIRECTORY/pypi

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "platform": self.platform,
            "directory": str(self.directory),
            "channel": self.directory.as_uri(),
            "count": self.count,
            "from_cache": self.from_cache,
            "fetched": self.fetched,
            "size": self.size,
            "wheels": self.wheels,
            "pip_index": (self.directory / "pypi" / "simple").as_uri() if self.wheels else None,
        }


def _copy_checked(src: Any, dest: Path, sha256: str, what: str) -> int:
    """Copy the stream SRC into DEST while hashing; raise (and leave no DEST) if the hash is not SHA256."""
    h = hashlib.sha256()
    n = 0
    with open(dest, "wb") as out:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if h.hexdigest() != sha256:
        dest.unlink()
        raise CpkgsError(f"{what}: sha256 {h.hexdigest()[:16]}... differs from the record's {sha256[:16]}...")
    return n


def _fetch(url: str, dest: Path, sha256: str) -> int:
    if url.startswith("file://"):
        path = Path(unquote(urlparse(url).path))
        try:
            with open(path, "rb") as fh:
                return _copy_checked(fh, dest, sha256, str(path))
        except FileNotFoundError:
            raise CpkgsError(f"{dest.name}: not in the site's package cache and {path} is gone") from None
        except PermissionError:
            raise PermissionProblem(f"{path}: permission denied") from None
    if url.startswith(("http://", "https://")):
        # urllib.request: 23 ms to import, only for a package recorded with an http(s) URL.
        import urllib.error  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415

        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                return _copy_checked(resp, dest, sha256, url)
        except (urllib.error.URLError, OSError) as exc:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise CpkgsError(f"cannot download {url}: {reason}") from None
    raise CpkgsError(f"{dest.name}: recorded URL {url!r} is neither file:// nor http(s)://")


def _check_mirror_dir(directory: Path) -> None:
    try:
        if any(os.scandir(directory)):
            raise UsageError(f"{directory} exists and is not empty; a mirror holds exactly one env's packages")
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        raise UsageError(f"{directory} exists and is not a directory") from None
    parent = directory.parent
    if not parent.is_dir():
        raise UsageError(f"cannot create {directory}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionProblem(f"cannot create {directory}: {parent} is not writable by you")


# py-rattler 0.28's index_fs returns with its Rust worker threads still busy; when the interpreter then finalizes,
# the process dies with SIGSEGV or SIGABRT about one run in ten (seen here in loops of 60 runs; the repodata is
# already complete by then). So the index runs in a child that leaves with os._exit right after index_fs returns:
# no finalization, no race, and our own process never loaded the indexer.
_INDEX_CHILD = """
import asyncio, os, sys
try:
    from rattler.index import index_fs
    asyncio.run(index_fs(sys.argv[1], write_zst=False, write_shards=False, force=True))
except BaseException as exc:
    text = str(exc).strip().splitlines()
    sys.stderr.write((text[0] if text else type(exc).__name__) + "\\n")
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os._exit(0)
"""


def _index(channel: Path) -> None:

    cmd = [sys.executable, "-c", _INDEX_CHILD, str(channel)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise CpkgsError(f"indexing {channel} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


def mirror_env(site: Site, name: str, directory: Path, platform: str | None) -> MirrorReport:
    """A channel in DIRECTORY with exactly NAME's packages (subdirs as recorded), each sha256-checked, indexed.

    Built in a hidden sibling directory and renamed into place: a failure leaves no half channel."""
    rec = get_record(site, name, platform)
    directory = Path(os.path.abspath(os.path.expanduser(str(directory))))
    missing = [p.filename or p.name for p in rec.packages if not (p.sha256 and p.url and p.filename and p.subdir)]
    if missing:
        raise CpkgsError(f"record of {name} lacks url/sha256 for {', '.join(missing[:5])}; cannot mirror exactly")
    _check_mirror_dir(directory)

    staging = directory.parent / f".{directory.name}.cpkgs-mirror-{uuid.uuid4().hex[:8]}"
    from_cache = fetched = size = 0
    try:
        os.mkdir(staging, 0o755)
        # noarch must exist: every conda client asks for it, and the indexer always indexes it.
        for sub in {"noarch", *(p.subdir for p in rec.packages)}:
            (staging / sub).mkdir(exist_ok=True)
        for p in rec.packages:
            dest = staging / p.subdir / p.filename
            cached = site.pkgs_cache_dir / p.filename
            try:  # only admins can reach the site cache: anyone else fetches
                fh = open(cached, "rb")  # noqa: SIM115
            except OSError:
                fh = None
            if fh is not None:
                with fh:
                    size += _copy_checked(fh, dest, p.sha256, str(cached))
                from_cache += 1
            else:
                size += _fetch(p.url, dest, p.sha256)
                fetched += 1
            os.chmod(dest, 0o644)
        _index(staging)
        with contextlib.suppress(OSError):
            os.rmdir(staging / ".tmp")  # the indexer's scratch dir, empty when it is done
        wheels = 0
        if rec.pypi_packages:
            # The pip machinery: 45-55 ms of imports (python -X importtime) for envs with a pip part only.
            from cpkgs_admin.pipeline.pip import mirror_pip_part  # noqa: PLC0415

            wheels = mirror_pip_part(site, rec.pypi_packages, staging / "pypi")
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(directory)  # an empty DIRECTORY given by the user: replaced by the finished channel
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return MirrorReport(
        name=rec.name,
        platform=rec.platform,
        directory=directory,
        count=len(rec.packages),
        from_cache=from_cache,
        fetched=fetched,
        size=size,
        wheels=wheels,
    )
