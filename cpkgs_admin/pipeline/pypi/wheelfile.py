"""Wheels and dist-info directories as cpkgs reads them: which files a wheel will put where, RECORD lines."""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import io
import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cpkgs_admin.errors import PipError


@dataclass(frozen=True)
class WheelInfo:
    name: str  # as in METADATA
    version: str
    dist_info: str  # the .dist-info directory name inside the wheel
    purelib: bool  # Root-Is-Purelib
    members: tuple[str, ...]  # file names in the archive
    scripts: tuple[str, ...]  # console_scripts and gui_scripts names (files the installer writes into bin/)


def read_wheel(path: Path) -> WheelInfo:
    """What PATH holds, from its zip index, WHEEL, METADATA and entry_points.txt (nothing is extracted)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = tuple(i.filename for i in zf.infolist() if not i.is_dir())
            infos = sorted({n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")})
            if len(infos) != 1:
                raise PipError(f"{path.name}: a wheel has one .dist-info directory, this one has {len(infos)}")
            di = infos[0]
            meta = headers(zf.read(f"{di}/METADATA"))
            wheel = headers(zf.read(f"{di}/WHEEL"))
            scripts: list[str] = []
            if f"{di}/entry_points.txt" in names:
                scripts = entry_point_scripts(zf.read(f"{di}/entry_points.txt").decode("utf-8", "replace"))
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise PipError(f"{path.name}: not a readable wheel ({exc})") from None
    for n in names:
        if n.startswith("/") or "\\" in n or ".." in n.split("/"):
            raise PipError(f"{path.name}: member {n!r} would be written outside the env")
    return WheelInfo(name=str(meta.get("Name", "")), version=str(meta.get("Version", "")), dist_info=di,
                     purelib=str(wheel.get("Root-Is-Purelib", "true")).strip().lower() == "true",
                     members=names, scripts=tuple(scripts))


def headers(data: bytes) -> dict[str, str]:
    """The header block of a METADATA/WHEEL file (RFC 822 style, up to the first empty line; the description after
    it can be long and is not needed): first value of each field."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        if not line.strip():
            break
        if line[:1] in (" ", "\t"):
            continue  # a folded continuation line
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def entry_point_scripts(text: str) -> list[str]:
    cp = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        cp.read_string(text)
    except configparser.Error:
        return []
    out: list[str] = []
    for section in ("console_scripts", "gui_scripts"):
        if cp.has_section(section):
            out += [k.strip() for k in cp.options(section)]
    return out


def install_paths(info: WheelInfo, scheme: dict[str, str]) -> dict[str, str]:
    """Where each member of the wheel lands, prefix-relative -> member (SCHEME: purelib, platlib, scripts, data,
    include as target.TargetPython holds them). Entry-point scripts are included with member ''."""
    root = scheme["purelib"] if info.purelib else scheme["platlib"]
    data_dir = info.dist_info[: -len(".dist-info")] + ".data/"
    out: dict[str, str] = {}
    for m in info.members:
        if m.startswith(data_dir):
            kind, _, rest = m[len(data_dir):].partition("/")
            base = {"purelib": scheme["purelib"], "platlib": scheme["platlib"], "scripts": scheme["scripts"],
                    "data": scheme["data"], "headers": posixpath.join(scheme["include"], info.name)}.get(kind)
            if base is None or not rest:
                raise PipError(f"wheel {info.name} {info.version}: unknown data directory {m!r}")
            out[_norm(posixpath.join(base, rest))] = m
        else:
            out[_norm(posixpath.join(root, m))] = m
    for s in info.scripts:
        out[_norm(posixpath.join(scheme["scripts"], s))] = ""
    return out


@dataclass(frozen=True)
class WheelContents:
    """What installing a wheel writes, worked out once when it is locked: its dist-info directory and every file,
    prefix-relative (entry-point scripts included)."""

    dist_info: str
    paths: tuple[str, ...]


def wheel_contents(path: Path, scheme: dict[str, str], name: str, version: str) -> WheelContents:
    """PATH's contents for SCHEME; a PipError when the wheel does not hold NAME VERSION or writes outside the env."""
    from packaging.utils import canonicalize_name  # noqa: PLC0415  (packaging: see __init__)
    from packaging.version import InvalidVersion, Version  # noqa: PLC0415  (packaging: see __init__)

    info = read_wheel(path)
    try:
        same = canonicalize_name(info.name) == canonicalize_name(name) and Version(info.version) == Version(version)
    except InvalidVersion:
        same = False
    if not same:
        raise PipError(f"pip: {path.name} holds {info.name} {info.version}, not {name} {version}")
    paths = tuple(install_paths(info, scheme))
    for rel in paths:
        if rel.startswith(("../", "conda-meta/")) or rel in ("", ".."):
            raise PipError(f"pip: {path.name} would write {rel!r}, outside the env's package files")
    site = scheme["purelib"] if info.purelib else scheme["platlib"]
    return WheelContents(dist_info=f"{site}/{info.dist_info}", paths=paths)


def _norm(p: str) -> str:
    p = posixpath.normpath(p)
    return "" if p == "." else p


def record_hash(data: bytes) -> str:
    """RECORD's hash field: sha256=<urlsafe base64, no padding>."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def format_record(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in rows:
        w.writerow(row)
    return buf.getvalue()
