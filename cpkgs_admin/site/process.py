"""This process as others see it: its user, its command line and its start time (lock owners, audit lines,
records' history)."""

from __future__ import annotations

import functools
import getpass
import os
import sys


@functools.cache
def process_start(pid: int) -> float | None:
    import psutil  # noqa: PLC0415  (14 ms; only a lock's owner record needs it)

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def current_command() -> str:
    return " ".join(["cpkgs", *sys.argv[1:]])[:300]


