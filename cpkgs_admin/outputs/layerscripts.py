"""A personal layer's own activate.d/deactivate.d scripts, so that any conda activating it brings its base along
(templates profiles/layer-{activate,deactivate}.{sh,csh}; `cpkgs extend` writes them, users/layered.py).

conda activates a layer like any env (a directory with conda-meta/: conda/activate.py _resolve_prefix): the layer's
bin on PATH, its scripts run. Those scripts put the base's bin right after the layer's and run the base's own
activate.d scripts with CONDA_PREFIX set to the base; on deactivation the mirror. conda sets PATH before it runs
deactivate.d scripts (conda/activate.py _yield_commands: export_path first), so taking the base's bin off there
sticks. The base is sealed: its scripts are listed here once, in conda's order (sorted; deactivate.d reversed:
conda/activate.py _get_activate_scripts, _get_deactivate_scripts), so csh needs no glob. Every path is quoted for
its shell. The spec's variables come to the layer as its own conda-meta/state (conda applies them, as for the base).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path

from cpkgs_admin.outputs.condafiles import STATE, state_text
from cpkgs_admin.outputs.profiles import render, template_text
from cpkgs_admin.site.text import csh_quote

LAYER_SCRIPT = "00-cpkgs-layer"


def _base_scripts(base: Path, kind: str, ext: str) -> list[str]:
    try:
        names = [e.name for e in os.scandir(base / "etc" / "conda" / f"{kind}.d") if e.name.endswith(ext)]
    except OSError:
        return []
    paths = sorted(str(base / "etc" / "conda" / f"{kind}.d" / n) for n in names)
    return paths[::-1] if kind == "deactivate" else paths


def layer_scripts(layer: Path, base: Path, base_name: str) -> dict[str, str]:
    """Relative path in the layer -> text, for sh and csh."""
    out: dict[str, str] = {}
    # (quote, how a script is sourced when it is there: an admin may change the base's scripts while it is unsealed,
    # a command doing nothing: an if block needs one)
    shells: dict[str, tuple[Callable[[str], str], str, str]] = {
        "sh": (shlex.quote, "if [ -f {0} ]; then . {0}; fi", ":"),
        "csh": (csh_quote, "if ( -f {0} ) source {0}", "true"),
    }
    for ext, (quote, source, nothing) in shells.items():
        for kind in ("activate", "deactivate"):
            scripts = _base_scripts(base, kind, f".{ext}")
            lines = [f"    {source.format(quote(p))}" for p in scripts] or [f"    {nothing}"]
            values = {"BASE_NAME": base_name, "BASE": quote(str(base)), "BASE_BIN": quote(str(base / "bin")),
                      "LAYER": quote(str(layer)), "LAYER_BIN": quote(str(layer / "bin")), "SOURCES": "\n".join(lines)}
            out[f"etc/conda/{kind}.d/{LAYER_SCRIPT}.{ext}"] = render(template_text(f"layer-{kind}.{ext}"), values)
    return out


def _env_vars(prefix: Path) -> dict[str, str]:
    try:
        data = json.loads((prefix / STATE).read_bytes())
    except (OSError, ValueError):
        return {}
    got = data.get("env_vars") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}


def layer_state(layer: Path, base: Path, old_base: Path | None = None) -> str | None:
    """The layer's conda-meta/state: its own env vars (`conda env config vars set -p LAYER`) with the base's over
    them, less what OLD_BASE (the base a re-pointed layer had) gave it; None when there is nothing to write (no
    variables, no file)."""
    own = _env_vars(layer)
    if old_base is not None:
        old = _env_vars(old_base)
        own = {k: v for k, v in own.items() if old.get(k) != v}
    merged = {**own, **_env_vars(base)}
    return state_text(merged) if merged or (layer / STATE).exists() else None
