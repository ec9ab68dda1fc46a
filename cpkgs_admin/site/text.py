"""Admin text that reaches users' terminals (retire messages, unseal reasons, spec variables, requested specs, paths
in error lines): what it may not hold, and how cpkgs shows text it did not check itself."""

from __future__ import annotations

import unicodedata

from cpkgs_admin.errors import UsageError


def control_character(text: str) -> str | None:
    """The first character of TEXT that must not reach a terminal, as U+XXXX, or None. Control characters (C0 and
    C1: ESC and CSI start terminal escape sequences), format characters (bidi overrides that reorder what is shown,
    zero-width ones) and line separators."""
    if text.isprintable():  # at C speed: these categories are all "not printable" to Python (the common case)
        return None
    for c in text:
        if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            return f"U+{ord(c):04X}"
    return None


def check_printable(text: str, what: str) -> str:
    """TEXT, when it holds nothing that must not reach users' terminals; else a UsageError naming WHAT."""
    bad = control_character(text)
    if bad is not None:
        raise UsageError(f"{what} holds a control character ({bad}); admin text reaches users' terminals")
    return text


def printable(text: str) -> str:
    """TEXT with what must not reach a terminal shown as \\uXXXX instead: for text cpkgs did not check itself (what a
    package's activate.d script sets, a record from before these checks)."""
    return "".join(f"\\u{ord(c):04x}" if control_character(c) else c for c in text)
