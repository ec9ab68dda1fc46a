"""Jupyter kernelspecs for shared envs that contain ipykernel: `<root>/share/jupyter/kernels/<kernel>/kernel.json`
for envs of the site's primary platform (the first in cpkgs.yaml's `platforms`), and
`<root>/<installation>/share/jupyter/kernels/<kernel>/kernel.json` for every other platform's envs
(`Site.kernels_dir`), so a host only ever lists kernels it can run and one name may have a kernel per platform.

Two kernels per env, as the ATLAS images ship them: `<kernel>` runs python with `-s` (no user site-packages, so a
user's `pip install --user` cannot break the shared env's kernel) and `<kernel>-usersite` without it. argv[0] is the
env's absolute python: jupyter_client replaces a bare `python`/`python3` with its *own* interpreter. Users see them
through `JUPYTER_PATH`, to which conda.sh/conda.csh add this host's platform's `share/jupyter` dir.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cpkgs_admin.outputs.activation import Activation
from cpkgs_admin.outputs.profiles import template_text
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, PackageEntry

USER_SITE_SUFFIX = "-usersite"
# jupyter_client accepts kernel names matching this (case-insensitively) and lowercases them when it lists a dir.
_KERNEL_CHARS = re.compile(r"[^a-z0-9._-]")


def wants_kernel(packages: list[PackageEntry]) -> bool:
    """python from conda, ipykernel from either part (PACKAGES: a record's all_packages)."""
    names = {p.name for p in packages}
    return "python" in names and "ipykernel" in names


def kernel_name(env_name: str) -> str:
    """Lowercase, '+' and anything else jupyter_client rejects become '_' (so two env names can collide)."""
    return _KERNEL_CHARS.sub("_", env_name.lower())


def kernel_names(env_name: str) -> tuple[str, str]:
    """(no-user-site kernel, user-site kernel)."""
    k = kernel_name(env_name)
    return k, k + USER_SITE_SUFFIX


def env_block(rec: EnvRecord, act: Activation) -> dict[str, str]:
    prefix = rec.prefix
    # jupyter_client (>= 7) expands ${PATH} from the server's environment when it launches the kernel.
    path = ":".join([*act.path_prepend, f"{prefix}/bin", "${PATH}"])
    env = {"PATH": path, "CONDA_PREFIX": prefix.replace("$", "$$"), "CONDA_DEFAULT_ENV": rec.name}
    # jupyter_client runs string.Template over every env value at launch: a literal '$' must be '$$'.
    env.update({k: v.replace("$", "$$") for k, v in act.variables})
    return env


def render_kernel(rec: EnvRecord, act: Activation, user_site: bool) -> str:
    spec: dict[str, Any] = json.loads(template_text("kernel.json"))
    python = f"{rec.prefix}/bin/python"
    argv = [python if a == "@PYTHON@" else a for a in spec["argv"]]
    argv = [a for a in argv if a != "@FLAGS@"] if user_site else ["-s" if a == "@FLAGS@" else a for a in argv]
    spec["argv"] = argv
    display = rec.name + (" (user site)" if user_site else "")
    if rec.status == "retired":
        display += " (retired)"
    spec["display_name"] = display
    env = env_block(rec, act)
    if not user_site:
        # -s covers the kernel itself; this covers the processes it starts (!pip, subprocess python).
        env["PYTHONNOUSERSITE"] = "1"
    spec["env"] = env
    spec["metadata"]["cpkgs"] = {
        "env": rec.name,
        "platform": rec.platform,
        "prefix": rec.prefix,
        "user_site": user_site,
        "status": rec.status,
        "successor": (rec.retired or {}).get("successor"),
    }
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def kernel_files(site: Site, rec: EnvRecord, act: Activation) -> dict[Path, str]:
    """Every kernel.json REC should have (none when the env lacks python or ipykernel)."""
    if not wants_kernel(rec.all_packages) and not (rec.python_version and rec.can_import("ipykernel")):
        return {}
    plain, user = kernel_names(rec.name)
    return {
        site.kernel_dir(plain, rec.platform) / "kernel.json": render_kernel(rec, act, user_site=False),
        site.kernel_dir(user, rec.platform) / "kernel.json": render_kernel(rec, act, user_site=True),
    }


def kernel_owner(kernel_json: Path) -> str | None:
    """The env a kernel.json was generated for, or None when cpkgs did not write it (an admin's own kernel)."""
    try:
        data = json.loads(kernel_json.read_text(encoding="utf-8"))
        owner = data["metadata"]["cpkgs"]["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return owner if isinstance(owner, str) else None


def generated_kernel_files(site: Site, platform: str) -> list[Path]:
    """The kernel.json files under PLATFORM's kernels dir that cpkgs wrote."""
    out: list[Path] = []
    try:
        entries = sorted(site.kernels_dir(platform).iterdir())
    except FileNotFoundError:
        return out
    for d in entries:
        f = d / "kernel.json"
        if not d.name.startswith(".") and kernel_owner(f) is not None:
            out.append(f)
    return out
