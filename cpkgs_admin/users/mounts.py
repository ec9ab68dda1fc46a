"""This host's mount table, and whether a path lies on a network drive (NFS and its kin): the longest mount point
holding the path's real location decides. A pure function of a path and a list of mounts, so tests can hand it a
mount table with NFS in it (doctor, link-user)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# Network filesystems: NFS above all, and the others with the same problems (no reliable byte-range locks for
# SQLite, close-to-open caching, silly-renames or their equivalents). Names as psutil reports them on Linux/macOS.
NETWORK_FSTYPES = frozenset({"nfs", "nfs3", "nfs4", "cifs", "smbfs", "smb3", "afs", "fuse.sshfs", "sshfs"})


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str
    device: str = ""


def current_mounts() -> list[Mount]:
    """This host's mount table, bind and network mounts included (all=True)."""
    try:
        parts = psutil.disk_partitions(all=True)
    except (OSError, RuntimeError):
        return []
    return [Mount(p.mountpoint, p.fstype, p.device) for p in parts]


def _existing_real(path: str) -> str:
    """The real location of `path`; for a path yet to be created, its nearest existing ancestor's real location
    with the missing tail appended (where it would be created)."""
    p, tail = os.path.abspath(path), ""
    while not os.path.lexists(p) and p != os.path.dirname(p):
        p, tail = os.path.dirname(p), os.path.join(os.path.basename(p), tail)
    return os.path.join(os.path.realpath(p), tail).rstrip("/") or "/"


def mount_of(path: str | Path, mounts: Iterable[Any]) -> Any | None:
    """The mount holding `path`: the longest mount point that is the path or one of its ancestors.

    `mounts` holds anything with .mountpoint and .fstype (psutil's sdiskpart, `Mount`)."""
    real = _existing_real(str(path))
    best: Any = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if (real == mp or real.startswith(mp + "/") or mp == "/") and (
            best is None or len(mp) > len(best.mountpoint.rstrip("/") or "/")
        ):
            best = m
    return best


def network_fstype(path: str | Path, mounts: Iterable[Any]) -> str | None:
    """The filesystem type when `path` lies on a network drive (nfs4, cifs, ...), else None."""
    m = mount_of(path, mounts)
    if m is not None and m.fstype.lower() in NETWORK_FSTYPES:
        return str(m.fstype)
    return None
