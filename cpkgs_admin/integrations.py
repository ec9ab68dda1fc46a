"""Hooks the build pipeline calls for site integrations (SQLite off NFS, PEP 668, kernels, modulefiles).

`write_env_integrations` runs before sealing and writes inside the env; `publish_outside` runs after publishing
and writes the generated files that live outside envs (kernelspecs, modulefiles). `cpkgs refresh` regenerates
the latter for every env.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def preflight(site: Any, name: Any, subdir: str, packages: list[Any]) -> None:
    """Before anything is installed: refuse a publish whose generated names would collide with another family's."""
    return None


def write_env_integrations(staging: Path, final: Path, record: Any) -> list[str]:
    """Files written inside the env before sealing; returns their paths relative to the env."""
    return []


def publish_outside(site: Any, record: Any) -> list[str]:
    """Generated files outside the env for a newly published or changed env; returns paths written."""
    return []


def withdraw_outside(site: Any, record: Any) -> list[str]:
    """Remove generated files of a removed env; returns paths removed."""
    return []
