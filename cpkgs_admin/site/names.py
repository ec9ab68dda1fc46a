"""Environment names: family + version, validated before any file is touched."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cpkgs_admin.errors import UsageError

MAX_LEN = 64
_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
# The version starts at the last '-' or '_' followed by a digit (`ml-pyroot-2024.1`: family ml-pyroot), else at the
# first digit after a letter (`isis4.3.0`: family isis).
_DASH_SPLIT = re.compile(r"(?P<family>.*[A-Za-z0-9])[-_](?P<version>[0-9].*)\Z")
_GLUED_SPLIT = re.compile(r"(?P<family>[A-Za-z][A-Za-z._+-]*?)(?P<version>[0-9].*)\Z")
RESERVED = frozenset({"base", "root"})


@dataclass(frozen=True)
class EnvName:
    name: str
    family: str
    version: str

    def __str__(self) -> str:
        return self.name


def parse_name(name: str) -> EnvName:
    """Validate NAME and split it into family and version, or raise UsageError naming the problem."""
    shown = repr(name)
    if not name:
        raise UsageError("environment name is empty")
    if len(name) > MAX_LEN:
        raise UsageError(f"environment name {shown} is longer than {MAX_LEN} characters")
    if name.startswith("."):
        raise UsageError(f"environment name {shown} starts with '.', which is reserved")
    if name.startswith("-"):
        raise UsageError(f"environment name {shown} starts with '-'")
    if "/" in name or ".." in name:
        raise UsageError(f"environment name {shown} contains a path separator or '..'")
    if not _ALLOWED.match(name):
        bad = next((c for c in name if not (c.isascii() and (c.isalnum() or c in "._+-"))), name[0])
        raise UsageError(f"environment name {shown} contains the character {bad!r}; allowed: letters, digits, . _ + -")
    if name.lower() in RESERVED:
        raise UsageError(f"environment name {shown} is reserved")
    m = _DASH_SPLIT.match(name) or _GLUED_SPLIT.match(name)
    if m is None:
        raise UsageError(f"environment name {shown} has no version (expected e.g. ml-pyroot-2024.1 or isis4.3.0)")
    return EnvName(name=name, family=m.group("family"), version=m.group("version"))


def check_family(family: str) -> str:
    """A family name alone (spec files, module dirs): same character rules, no version needed."""
    if not family or len(family) > MAX_LEN or not _ALLOWED.match(family) or ".." in family:
        raise UsageError(f"family name {family!r} is not valid")
    return family
