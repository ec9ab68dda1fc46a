"""Reading the text files people hand cpkgs, and YAML as cpkgs reads admins' files.

`read_text_file` (and its two steps `open_regular` / `read_fd_text`) is the one reader for cpkgs.yaml, spec and
lock files and users' condarc files: only a regular file (a FIFO would block the open or the read forever, a
device like /dev/zero would fill memory), at most MAX_TEXT_BYTES, UTF-8, each problem one error line naming the
file (and, for bad UTF-8, the byte offset).

YAML (cpkgs.yaml, specs/*.yml, environment.yml): PyYAML's safe subset, libyaml's parser when PyYAML has it, and a
key given twice in one mapping is an error (PyYAML keeps the last one silently: `dependencies:` twice would build an
env without the first list). conda's own loader refuses duplicates too."""

from __future__ import annotations

import errno
import os
import stat
from functools import cache
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError

# A condarc, spec or cpkgs.yaml is a few KB; an explicit lock file of a large env about 100 KB.
MAX_TEXT_BYTES = 4 * 1024 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    kind = next((f"is {text}, not" for test, text in _KINDS if test(mode)), "is not")
    return f"{kind} a regular file (cpkgs reads only regular files)"


def open_regular(path: Path, label: str, error: type[CpkgsError], *, nofollow: bool = False) -> int:
    """A read-only descriptor of PATH, which must be a regular file; FileNotFoundError propagates (callers decide
    what a missing file means). O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer; NOFOLLOW:
    for a path whose symlinks the caller has already resolved (a link appearing there since is refused)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{label}: is a directory, not a file") from None
    except PermissionError:
        raise error(f"{label}: cannot read: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and nofollow:
            raise error(f"{label}: became a symlink while cpkgs was reading it; run again") from None
        raise error(f"{label}: cannot read: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{label}: {_not_regular(mode)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd_bytes(fd: int, label: str, error: type[CpkgsError], limit: int = MAX_TEXT_BYTES) -> bytes:
    """The whole file behind FD, from offset 0 whatever was read before (pread: the offset stays)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = os.pread(fd, min(1 << 20, limit + 1 - size), size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error(f"{label}: cannot read: {exc.strerror}") from None
    if size > limit:
        raise error(f"{label}: larger than {limit // (1024 * 1024)} MiB; not a file cpkgs reads")
    return b"".join(chunks)


def decode_text(raw: bytes, label: str, error: type[CpkgsError]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: not UTF-8 text (byte {exc.start})") from None


def read_fd_text(fd: int, label: str, error: type[CpkgsError], limit: int = MAX_TEXT_BYTES) -> str:
    """The whole file behind FD as UTF-8 text."""
    return decode_text(read_fd_bytes(fd, label, error, limit), label, error)


def read_text_file(path: Path, label: str, error: type[CpkgsError], *, nofollow: bool = False,
                   limit: int = MAX_TEXT_BYTES) -> str:
    """PATH's text; `error(label + ": problem")` for anything but a missing file (FileNotFoundError)."""
    fd = open_regular(path, label, error, nofollow=nofollow)
    try:
        return read_fd_text(fd, label, error, limit)
    finally:
        os.close(fd)


MERGE_TAG = "tag:yaml.org,2002:merge"


@cache
def _loader() -> Any:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class UniqueKeyLoader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _value in node.value:
                    if key_node.tag == MERGE_TAG:  # '<<: *anchor' keys may be overridden: that is their point
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        duplicate = key in seen
                    except TypeError:  # an unhashable key: the base constructor says so
                        continue
                    if duplicate:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"duplicate key {key!r}", key_node.start_mark,
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml(text: str) -> Any:
    """The document in TEXT; yaml.YAMLError (with problem and problem_mark) when it is not valid or repeats a key."""
    import yaml

    return yaml.load(text, Loader=_loader())  # a SafeLoader subclass: the safe subset only
