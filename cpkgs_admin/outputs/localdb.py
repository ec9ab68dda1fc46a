"""SQLite off NFS: the IPython and Jupyter config files that point their databases at local disk.

One renderer for two callers: the build pipeline writes these files into every env with python
(`envfiles.env_integration_files`), and `cpkgs extend` writes them into each personal layer, whose sys.prefix
is the layer (so IPython and Jupyter read the layer's etc/ipython and etc/jupyter, not the base's). The text is the
template profiles/local_db_config.py with the settings filled in; nothing in it embeds a path.

Kept light (no rattler, no yaml): it is on the `cpkgs extend` path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.outputs.profiles import template_text

IPYTHON_CONFIG = "etc/ipython/ipython_config.py"
JUPYTER_CONFIGS = ("etc/jupyter/jupyter_server_config.py", "etc/jupyter/jupyter_notebook_config.py")
# (class, trait, local subdir, file): where each SQLite database goes. Traitlets applies a class's config to its
# subclasses, so HistoryAccessor covers HistoryManager too.
IPYTHON_DBS = (("HistoryAccessor", "hist_file", "ipython", "history.sqlite"),)
JUPYTER_DBS = (("NotebookNotary", "db_file", "jupyter", "nbsignatures.db"),)
# Optional extensions with their own SQLite file, configured only when the env has them.
OPTIONAL_JUPYTER_DBS = {
    "jupyter_server_fileid": ("BaseFileIdManager", "db_path", "jupyter", "file_id_manager.db"),
    "jupyter_server_ydoc": ("SQLiteYStore", "db_path", "jupyter", "ystore.db"),
    "jupyter_collaboration": ("SQLiteYStore", "db_path", "jupyter", "ystore.db"),
}


def stdlib_dir(prefix: Path) -> Path | None:
    """lib/pythonX.Y (or X.Yt) of a unix env: where PEP 668's marker goes (sysconfig's 'stdlib' path)."""
    with contextlib.suppress(OSError):
        for d in sorted((prefix / "lib").glob("python3*")):
            if (d / "os.py").is_file():
                return d
    return None


def local_db_config(settings: tuple[tuple[str, str, str, str], ...]) -> str:
    text = template_text("local_db_config.py")
    line = "_CPKGS_SETTINGS = []"
    if line not in text:
        raise CpkgsError("template local_db_config.py lacks its '_CPKGS_SETTINGS = []' line")
    return text.replace(line, "_CPKGS_SETTINGS = " + repr([list(s) for s in settings]), 1)


def _has_module(stdlib: Path | None, module: str) -> bool:
    return stdlib is not None and (stdlib / "site-packages" / module).is_dir()


def db_config_files(stdlib: Path | None) -> dict[str, str]:
    """{path relative to the prefix: text} of the IPython and Jupyter config files for an env whose standard
    library is STDLIB (its site-packages decides which optional extensions get a setting; a few stats, no walk)."""
    jupyter = list(JUPYTER_DBS)
    for module, setting in OPTIONAL_JUPYTER_DBS.items():
        if _has_module(stdlib, module) and setting not in jupyter:
            jupyter.append(setting)
    files = {IPYTHON_CONFIG: local_db_config(IPYTHON_DBS)}
    for rel in JUPYTER_CONFIGS:
        files[rel] = local_db_config(tuple(jupyter))
    return files
