"""Files cpkgs writes inside an env before it is sealed: the PEP 668 marker (pip refuses to install into a shared env
and names `cpkgs extend`) and the configs that keep IPython's and Jupyter's SQLite databases off NFS (localdb)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpkgs_admin.outputs.localdb import db_config_files, stdlib_dir

MARKER = "EXTERNALLY-MANAGED"


def marker_text(name: str) -> str:
    return (
        "[externally-managed]\n"
        f"Error=This Python belongs to {name}, a shared, read-only environment managed by cpkgs:\n"
        " pip cannot install into it (not even with --user, and not as root).\n"
        " To add packages of your own, make a personal environment layered on it:\n"
        f"     cpkgs extend {name} DIR\n"
        " Site admins change shared environments by building a new version (cpkgs new-env).\n"
    )


def env_integration_files(staging: Path, final: Path, record: Any) -> dict[str, str]:
    """Files for inside the env before sealing (the PEP 668 marker, the SQLite-off-NFS configs): relative path ->
    text; the build writes them with its own.

    Envs without python get nothing. Nothing here embeds a path (the config finds its directory at run time), so
    FINAL is not needed; it is in the signature because anything that does must embed it, not STAGING.
    """
    if record.python_version is None:
        return {}
    stdlib = stdlib_dir(staging)
    files: dict[str, str] = {}
    if stdlib is not None:
        files[str((stdlib / MARKER).relative_to(staging))] = marker_text(record.name)
    files.update(db_config_files(stdlib))
    return files
