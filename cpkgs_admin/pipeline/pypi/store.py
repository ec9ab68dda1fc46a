"""The wheel store: every wheel a pip part was built with, by sha256, so the same bytes can be installed, mirrored
and rebuilt later (a wheel built from an sdist or a git commit exists nowhere else).

Layout: <root>/<sha256>/<file name>. Files are written to a private temp name and renamed into place: a reader sees
a whole wheel or none. The pipeline gives it an admin-only directory (like the conda package cache); whatever is
taken from it is hash-checked again by the installer (uv --require-hashes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cpkgs_admin.errors import PipError

_SHA = re.compile(r"[0-9a-f]{64}\Z")
BUILT_DIR = ".built"  # source key (hashed) -> the sha256 of the wheel built from it
_CHUNK = 1 << 20


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class WheelStore:
    """ROOT: an admin-only directory. DIR_MODE/FILE_MODE are set explicitly whatever the umask (0o775/0o664 where a
    site's admins share a group)."""

    def __init__(self, root: Path, dir_mode: int = 0o755, file_mode: int = 0o644) -> None:
        self.root = root
        self.dir_mode = dir_mode
        self.file_mode = file_mode

    def _mkdir(self, d: Path) -> None:
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, self.dir_mode)

    def get(self, sha256: str) -> Path | None:
        if not _SHA.match(sha256):
            return None
        d = self.root / sha256
        try:
            names = [n for n in os.listdir(d) if not n.startswith(".")]
        except OSError:
            return None
        return d / names[0] if len(names) == 1 else None

    def add(self, src: Path, sha256: str | None = None, filename: str | None = None) -> tuple[Path, str]:
        """Copy SRC in (hashing it on the way); (stored path, sha256). SHA256: what it must hash to."""
        filename = filename or src.name
        _check_filename(filename)
        self._mkdir(self.root)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".add-", suffix=".tmp")
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            return self._place(Path(tmp), h.hexdigest(), sha256, filename, str(src))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def download(self, url: str, sha256: str | None, filename: str | None = None,
                 timeout: float = 120) -> tuple[Path, str]:
        """URL (http, https, file) into the store, unless a file with SHA256 is there already."""
        if sha256 and (have := self.get(sha256)) is not None:
            return have, sha256
        parts = urlsplit(url)
        filename = filename or unquote(parts.path.rsplit("/", 1)[-1])
        if parts.scheme == "file":
            return self.add(Path(unquote(parts.path)), sha256, filename)
        if parts.scheme not in ("http", "https"):
            raise PipError(f"pip: {url}: cannot download from a {parts.scheme!r} URL")
        _check_filename(filename)
        self._mkdir(self.root)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".download-", suffix=".tmp")
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            return self._place(Path(tmp), h.hexdigest(), sha256, filename, url)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise PipError(f"pip: cannot download {url}: {reason}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _place(self, tmp: Path, got: str, want: str | None, filename: str, origin: str) -> tuple[Path, str]:
        if want and got != want:
            raise PipError(f"pip: hash mismatch for {filename} from {origin}: sha256 {got}, expected {want}")
        d = self.root / got
        final = d / filename
        if final.is_file():
            return final, got
        self._mkdir(d)
        os.chmod(tmp, self.file_mode)
        os.replace(tmp, final)
        return final, got

    def built(self, key: str) -> Path | None:
        """The wheel remembered for KEY (a source at one commit or hash, for one python and platform), if it is
        still in the store."""
        try:
            sha = (self.root / BUILT_DIR / hashlib.sha256(key.encode()).hexdigest()).read_text().strip()
        except OSError:
            return None
        return self.get(sha)

    def remember_built(self, key: str, sha256: str) -> None:
        d = self.root / BUILT_DIR
        self._mkdir(d)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".built-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(sha256 + "\n")
        os.chmod(tmp, self.file_mode)
        os.replace(tmp, d / hashlib.sha256(key.encode()).hexdigest())

    def copy_out(self, sha256: str, dest: Path) -> Path:
        src = self.get(sha256)
        if src is None:
            raise PipError(f"pip: no wheel with sha256 {sha256} in {self.root}")
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / src.name
        shutil.copyfile(src, out)
        os.chmod(out, self.file_mode)
        return out


def _check_filename(filename: str) -> None:
    if not filename or "/" in filename or filename.startswith(".") or "\0" in filename:
        raise PipError(f"pip: {filename!r} is not a usable file name for a wheel or source archive")
