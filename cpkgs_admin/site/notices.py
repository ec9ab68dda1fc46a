"""What a core function has to say while it works (a lock it waits for, a lock it recovered): the CLI registers one
callback that writes it to stderr; without one (library use, tests) nothing is said. Core code never prints. A module
of its own: the CLI registers its callback on every command, and site.locks costs imports (filelock's helpers,
tempfile, psutil's process facts) that `new-env --dry-run`, `list` and `info` do not need."""

from __future__ import annotations

from collections.abc import Callable

Notice = Callable[[str], None]
_notices: list[Notice] = []


def set_notice(callback: Notice | None) -> None:
    _notices[:] = [callback] if callback is not None else []


def notice(message: str) -> None:
    for callback in _notices:
        callback(message)
