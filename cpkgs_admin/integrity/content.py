"""What a package may put into an environment: checked before rattler installs it, again before publish, and by
`cpkgs verify`.

A package is refused, with one line naming it and the path, when it would
- put a file outside the env: an absolute path, a '..' component, or a path under a symlink (its own or another
  package's: rattler would write through it). Checked from the packages' file lists (info/paths.json) BEFORE the
  install: py-rattler 0.28 panics on an absolute path (path_resolver: "All inserted paths must be relative") and
  the panic aborts the whole process;
- put a file into conda-meta/, where conda keeps its package records and cpkgs its own (conda-meta/cpkgs/: a
  `layer` file there makes activation source the scripts of whatever env it names);
- ship a file named .nfs*, the names NFS clients give files deleted while open: `purge` keeps those as busy and
  `verify` skips them, so such a file would make its env impossible to purge and invisible to verify;
- ship a name with a control character (verify and error lines print paths to terminals);
- ship a symlink that leaves the env (absolute, climbing out with '..', or through another symlink): running the
  env's program would run whatever is there, say another user's file in a world-writable directory. Symlink
  targets are not in paths.json: they are checked on the installed tree before publish, and by `cpkgs verify`.
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from cpkgs_admin.errors import BuildError
from cpkgs_admin.site.text import control_character, printable

# The kernel's limit on symlinks followed in one path lookup (ELOOP).
_MAX_HOPS = 40


class FileEntry(NamedTuple):  # a tuple: envs list tens of thousands of them
    path: str
    link: bool = False  # a symlink (path_type softlink)
    directory: bool = False
    size: int | None = None
    copied: bool = True  # written into the env as a copy even where rattler hard-links (prefix placeholder, no_link)


def path_problem(path: str) -> str | None:
    """What is wrong with a path a package lists, or None."""
    if not path:
        return "is an empty path"
    bad = control_character(path)
    if bad:
        return f"holds a control character ({bad})"
    if path.startswith("/"):
        return "is an absolute path; a package may only put files inside the environment"
    parts = path.split("/")
    if ".." in parts:
        return "climbs out of its place with '..'; a package may only put files inside the environment"
    if parts[0] == "conda-meta":
        return "is inside conda-meta/, where conda keeps its package records and cpkgs its own files"
    if ".nfs" in path and any(p.startswith(".nfs") for p in parts):
        return "is named like an NFS silly-rename file (.nfs*), which cpkgs never deletes nor verifies"
    return None


def refuse(dist: str, path: str, problem: str) -> BuildError:
    """The one line: a package's paths are anyone's text, shown with their control characters escaped."""
    return BuildError(printable(f"refusing package {dist}: {path} {problem}"))


def check_paths(files: Iterable[tuple[str, Iterable[FileEntry]]]) -> None:
    """Every path of every package (dist, entries), and none under another's (or its own) symlink: raises for the
    first problem."""
    links: dict[str, str] = {}
    owner: dict[str, str] = {}
    for dist, entries in files:
        for e in entries:
            problem = path_problem(e.path)
            if problem:
                raise refuse(dist, e.path, problem)
            if e.link:
                links[e.path] = dist
            owner[e.path] = dist
    if not links:
        return
    # Paths under LINK sort right after LINK + "/": one bisection per symlink, not a walk up every path.
    ordered = sorted(owner)
    for link in sorted(links):
        below = link + "/"
        i = bisect.bisect_left(ordered, below)
        if i < len(ordered) and ordered[i].startswith(below):
            path = ordered[i]
            raise refuse(owner[path], path, f"is under {link}, a symlink of {links[link]}: it would be written "
                                            "wherever that points")


def _inside(target: str, roots: tuple[str, ...]) -> list[str] | None:
    """An absolute TARGET as components below one of ROOTS (the env's own prefix), or None when it is elsewhere."""
    for root in roots:
        if target == root:
            return []
        if target.startswith(root.rstrip("/") + "/"):
            return target[len(root.rstrip("/")) + 1:].split("/")
    return None


def symlink_escape(top: str, rel: str, roots: tuple[str, ...]) -> str | None:
    """The target of the symlink TOP/REL when it leads outside TOP, else None. Followed as the kernel would, through
    the tree's other symlinks (a link to `d/..` where `d` links to `.` climbs out), with TOP standing for ROOTS: the
    absolute path(s) the env has once published."""
    target = os.readlink(os.path.join(top, rel))
    here = rel.split("/")[:-1]
    todo = target.split("/")
    if target.startswith("/"):
        inside = _inside(target, roots)
        if inside is None:
            return target
        here, todo = [], inside
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return target
            here.pop()
            continue
        path = os.path.join(top, *here, part)
        try:
            st = os.lstat(path)
        except OSError:
            here.append(part)  # dangling from here on: the kernel stops, nothing outside is reached
            continue
        if not stat.S_ISLNK(st.st_mode):
            here.append(part)
            continue
        hops += 1
        if hops > _MAX_HOPS:
            return target
        step = os.readlink(path)
        if step.startswith("/"):
            inside = _inside(step, roots)
            if inside is None:
                return target
            here, todo = [], inside + todo
        else:
            todo = step.split("/") + todo
    return None


def escaping_symlinks(top: Path, tree: dict[str, os.stat_result], roots: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path, target) of every symlink in TREE (a scan_tree of TOP) that leads outside the env."""
    out = []
    for rel, st in tree.items():
        if stat.S_ISLNK(st.st_mode):
            try:
                target = symlink_escape(str(top), rel, roots)
            except OSError:
                continue  # gone since the scan: what verify's own checks report
            if target is not None:
                out.append((rel, target))
    return sorted(out)


def check_installed(staging: Path, final: Path, meta: list[tuple[Path, bytes, Any]],
                    tree: dict[str, os.stat_result]) -> None:
    """Before publish: the installed packages' paths as conda-meta records them (the rules again: an archive may
    differ from the file list read before the install), and no symlink of theirs leading out of the env."""
    owner: dict[str, str] = {}
    lists: list[tuple[str, list[FileEntry]]] = []
    for p, _raw, data in meta:
        dist = p.stem
        entries = []
        for e in ((data.get("paths_data") or {}).get("paths") or []) if isinstance(data, dict) else []:
            path = e.get("_path")
            if isinstance(path, str):
                entries.append(FileEntry(path, e.get("path_type") == "softlink"))
                owner[path] = dist
        lists.append((dist, entries))
    check_paths(lists)
    for rel, target in escaping_symlinks(staging, tree, (str(final),)):
        if rel in owner:  # a symlink no package lists is verify's "unexpected"
            raise refuse(owner[rel], rel, f"is a symlink to {target}, outside the environment")
