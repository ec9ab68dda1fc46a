"""`cpkgs write-profiles`: render profiles/conda.sh and conda.csh for a site root.

Templates are files (package data `cpkgs_admin.templates`, the repo's `profiles/` dir). Placeholders are `@NAME@`;
values are computed here so the shell never has to parse cpkgs.yaml at start-up.
"""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path

from cpkgs_admin.errors import UsageError
from cpkgs_admin.site.files import write_if_changed
from cpkgs_admin.site.paths import ENVS_GUARD, FALLBACK_PLATFORMS, TOOL_BIN, UNAME_PLATFORMS, Site
from cpkgs_admin.site.usage_config import csh_line, sh_line

# output name in <root>/etc/profile.d -> template in profiles/.  cpkgs-conda.csh is the csh `conda` alias's body.
PROFILE_TEMPLATES = {"conda.sh": "conda.sh", "conda.csh": "conda.csh", "cpkgs-conda.csh": "cpkgs-conda.csh"}

# Inside csh double quotes (and the alias's single quotes) these cannot be written safely: refuse such a root
# at render time rather than ship a profile that breaks every csh user's login.
_CSH_UNSAFE = frozenset("$!`\"'\\\n")


def template_text(name: str) -> str:
    return resources.files("cpkgs_admin.templates").joinpath(name).read_text(encoding="utf-8")


def _platform_installations(site: Site) -> list[tuple[str, str]]:
    """(subdir, installation dir name) for every platform the site serves."""
    return [(sub, site.installation_name(sub)) for sub in site.config.platforms]


def substitutions(site: Site) -> dict[str, str]:
    root = str(site.root)
    if not root.startswith("/") or _CSH_UNSAFE.intersection(root):
        raise UsageError(f"site root {root!r} must be an absolute path without $ ! ` \" ' \\ or newlines "
                         "(the csh profile cannot quote them)")
    pairs = _platform_installations(site)
    return {
        "ROOT": root,
        "ROOT_SH": shlex.quote(root),
        "ROOT_CSH": root,
        # "linux-64=anaconda3_linux osx-arm64=anaconda3_macOS": a word list both sh and csh can walk without forking.
        "INSTALLATIONS": " ".join(f"{sub}={inst}" for sub, inst in pairs),
        # The primary platform's installation: its hosts find modulefiles and kernels at the root, every other
        # host under its own installation (Site.outputs_root). A plain word: installation names are [A-Za-z0-9._+-].
        "PRIMARY_INSTALLATION": site.installation_name(site.primary_platform),
        # One statement each: export CPKGS_USAGE_SEND while cpkgs.yaml has usage records on, else unset it.
        "USAGE_SH": sh_line(site.config.usage, root),
        "USAGE_CSH": csh_line(site.config.usage, root),
        # Where retirement markers are (Site.retired_dir): conda.sh reads them with a builtin on activation.
        "RETIRED_SH": shlex.quote(str(site.retired_dir)),
        # The envs dir's guard against conda (Site.envs_guard): no env, never listed or activated. A plain word.
        "ENVS_GUARD": ENVS_GUARD,
        # The tool's bin under an installation (cpkgs install-tool): a plain relative path, no quoting needed.
        "TOOL_BIN": TOOL_BIN,
        **platform_cases(),
    }


def platform_cases() -> dict[str, str]:
    """The `uname -sm` -> platform table and the fallbacks (site/paths.py) as case arms for sh and csh: the
    profiles cannot ask Python, so the one table is rendered into them."""
    by_platform: dict[str, list[str]] = {}
    for (system, machine), sub in UNAME_PLATFORMS.items():
        by_platform.setdefault(sub, []).append(f"{system} {machine}")
    sh = [f"    {' | '.join(repr(u) for u in unames)}) _cpkgs_sub={sub} ;;" for sub, unames in by_platform.items()]
    csh = ["\n".join([*(f'    case "{u}":' for u in unames), f"        set _cpkgs_sub = {sub}", "        breaksw"])
           for sub, unames in by_platform.items()]
    return {
        "PLATFORM_CASES_SH": "\n".join(sh),
        "PLATFORM_CASES_CSH": "\n".join(csh),
        "FALLBACK_CASES_SH": "\n".join(f"    {sub}) _cpkgs_fb={fb} ;;" for sub, fb in FALLBACK_PLATFORMS.items()),
        "FALLBACK_CASES_CSH": "\n".join(f"    case {sub}:\n        set _cpkgs_fb = {fb}\n        breaksw"
                                         for sub, fb in FALLBACK_PLATFORMS.items()),
    }


def render(template: str, values: dict[str, str]) -> str:
    out = template
    for key, value in values.items():
        out = out.replace(f"@{key}@", value)
    return out


def render_profiles(site: Site) -> dict[Path, str]:
    values = substitutions(site)
    return {site.profile_dir / out: render(template_text(tpl), values) for out, tpl in PROFILE_TEMPLATES.items()}


def write_profiles(site: Site) -> list[str]:
    """Write the rendered profiles; return the paths that changed."""
    changed = []
    gid = site.admin_gid()  # group-writable only for the admin group, which must exist here
    fmode = site.shared_modes()[1]
    for path, text in render_profiles(site).items():
        if write_if_changed(path, text, fmode, gid):
            changed.append(str(path))
    return changed
