"""One error tree: every failure a user can cause or meet is a CpkgsError with an exit code.

Only cli.py turns these into a stderr line and an exit status; core modules just raise them.
"""

from __future__ import annotations

import errno


class CpkgsError(Exception):
    """A failure with a one-line message that names the thing at fault."""

    exit_code = 1


class UsageError(CpkgsError):
    """Bad arguments or names: the command was never going to work."""

    exit_code = 2


class SiteError(CpkgsError):
    """The site root is missing, unmounted, not a cpkgs site, or its config is invalid."""


class ConfigError(SiteError):
    """cpkgs.yaml (or a user's .condarc) does not validate."""


class SpecError(CpkgsError):
    """A spec file, match spec or lock file is unusable."""


class PipError(SpecError):
    """The pip part of a spec (its `pip:` lines, their resolution, wheels or install) is unusable."""


class SolveError(CpkgsError):
    """The solver found no set of packages satisfying the request."""


class BuildError(CpkgsError):
    """A step of the new-env pipeline failed."""


class EnvNotFound(CpkgsError):
    """No record of an environment with that name."""


class EnvExists(CpkgsError):
    """The name is taken: environments are immutable, a change is a new version."""


class LockBusy(CpkgsError):
    """Another process holds the lock (exit 3, the contract's 'lock busy')."""

    exit_code = 3


class PermissionProblem(CpkgsError):
    """The user lacks the permission an operation needs."""


class CheckFailed(CpkgsError):
    """A check (verify, doctor) found problems; details are in the rendered report."""

    exit_code = 4


def os_error_text(exc: OSError) -> str:
    """One line for an OSError: the path(s) it names, what the system said and the errno's name, e.g.
    "/nfs/cpkgs/x: Read-only file system (EROFS)"."""
    code = errno.errorcode.get(exc.errno or 0)
    what = exc.strerror or str(exc)
    if code:
        what += f" ({code})"
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return ": ".join([" -> ".join(paths), what] if paths else [what])
