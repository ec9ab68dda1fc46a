"""`python -m cpkgs_admin` and the `cpkgs` console script (pyproject's `run`)."""

from __future__ import annotations

import os
import sys


def _is_interrupt(exc: BaseException | None) -> bool:
    # Python 3.11 can wrap an interrupt that lands inside an import (e.g. "Error calling __set_name__").
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run() -> None:
    """The CLI. Its modules are imported inside a try: a Ctrl-C in the first tenth of a second, while click, yaml and
    cpkgs' own modules load, is one line and exit 130 like any later interrupt, not a traceback."""
    try:
        from cpkgs_admin.cli import main  # noqa: PLC0415 - inside the try on purpose (see the docstring)
    except BaseException as exc:
        if not _is_interrupt(exc):
            raise
        sys.stderr.write("cpkgs: interrupted\n")
        sys.stderr.flush()
        os._exit(130)
    main()


if __name__ == "__main__":
    run()
