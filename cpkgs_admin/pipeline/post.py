"""Step 4 of new-env (post-process): cpkgs' own files inside the staged env (the package list, the explicit lock,
the spec's variables as activate.d/deactivate.d scripts, the PEP 668 marker and SQLite configs, the usage hook),
then its manifests: the hashes of what cpkgs wrote, the executables, the embedded record. Anything that embeds a
path embeds the final prefix, never the staging dir's."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import BuildError
from cpkgs_admin.integrity.content import check_installed
from cpkgs_admin.integrity.manifest import (
    EMBEDDED_RECORD,
    EXECUTABLES_LIST,
    SITE_MANIFEST,
    census_at_publish,
    meta_digest,
    read_conda_meta,
    site_manifest,
    unhashed_patched_files,
)
from cpkgs_admin.integrity.pipfiles import PIP_LOCK, PIP_MANIFEST, pip_manifest
from cpkgs_admin.integrity.tree import scan_tree
from cpkgs_admin.outputs.envfiles import env_integration_files
from cpkgs_admin.outputs.usage.hook import write_usage_files
from cpkgs_admin.pipeline.job import Job
from cpkgs_admin.site.files import write_staged
from cpkgs_admin.site.paths import native_subdir
from cpkgs_admin.site.records import EnvRecord, PackageEntry
from cpkgs_admin.site.specs import check_variables, explicit_text

PKG_LIST = "list-of-pkgs-inside.txt"
EXPLICIT_LOCK = "conda-meta/cpkgs/explicit.txt"


def pkg_list_text(packages: list[PackageEntry]) -> str:
    rows = [("# name", "version", "build", "channel")] + [(p.name, p.version, p.build, p.channel) for p in packages]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"


def _write_staged_json(path: Path, obj: Any) -> None:
    write_staged(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


VARIABLES_SCRIPT = "cpkgs-variables"


def _csh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''").replace("!", "\\!") + "'"


def variables_scripts(variables: dict[str, str]) -> dict[str, str]:
    """The env's activate.d/deactivate.d scripts for a spec file's `variables:` (sh and csh), by relative path.
    Activation sets them before the packages' own scripts run (00-, first in sorted order); deactivation unsets
    them after the packages' scripts (00- again: deactivate.d scripts run in reverse sorted order, in conda and in
    cpkgs' conda.sh), the order conda keeps for its env_vars. Every activation path runs them: conda.sh,
    conda.csh, a user's own conda; modulefiles and kernels get them with the activation (the record keeps them)."""
    if not variables:
        return {}
    check_variables(variables, "variables")  # also those carried from a record (--from): names go into scripts
    head = "# Written by cpkgs new-env from the spec file's `variables:`; part of the sealed env.\n"
    # Locale variables last: tcsh re-reads the rest of a file it is sourcing in a new LC_ALL/LANG.
    names = sorted(variables, key=lambda n: (n == "LANG" or n.startswith("LC_"), n))
    return {
        f"etc/conda/activate.d/00-{VARIABLES_SCRIPT}.sh":
            head + "".join(f"export {n}={shlex.quote(variables[n])}\n" for n in names),
        f"etc/conda/activate.d/00-{VARIABLES_SCRIPT}.csh":
            head + "".join(f"setenv {n} {_csh_quote(variables[n])}\n" for n in names),
        f"etc/conda/deactivate.d/00-{VARIABLES_SCRIPT}.sh": head + "".join(f"unset {n}\n" for n in names),
        f"etc/conda/deactivate.d/00-{VARIABLES_SCRIPT}.csh": head + "".join(f"unsetenv {n}\n" for n in names),
    }


def post_process(staging: Path, final: Path, record: EnvRecord, meta: list[Any] | None = None,
                 pip_files: dict[str, str] | None = None, *, usage: bool = True) -> list[str]:
    """Site files inside the env; anything embedding a path embeds FINAL. Returns the relative paths written.
    META: conda-meta as integrity.manifest.read_conda_meta parsed it (read here when not given); PIP_FILES: what the
    pip step left (its lock text), written among cpkgs' own."""
    pip_lock = (pip_files or {}).get(PIP_LOCK)
    ours = {
        PKG_LIST: pkg_list_text(record.all_packages),
        EXPLICIT_LOCK: explicit_text(record.packages, record.platform, record.variables, pip_lock, record.name),
        **(pip_files or {}),
    }
    # Files added among the packages' own (python's stdlib dir, etc/conda/*.d): a package's file in their place is
    # refused, as replacing it would fail verification against conda-meta.
    added = {**variables_scripts(record.variables), **env_integration_files(staging, final, record)}
    for rel in added:
        if os.path.lexists(staging / rel):
            raise BuildError(f"{record.name}: a package already ships {rel}; cpkgs cannot add its own there")
    for rel, text in {**ours, **added}.items():
        write_staged(staging / rel, text, 0o644)
    if meta is None:
        meta = read_conda_meta(staging)
    # The usage hook and module index (outputs/usage/hook.py): in every env with python, whether records are on or not.
    hook = write_usage_files(staging, final, record, meta, native=record.platform == native_subdir()) if usage else []
    return [*ours, *added, *hook]


def post(job: Job) -> None:
    """post_process, then cpkgs' own manifests and the embedded record; JOB gets the staged tree's scan and its
    conda-meta (read and parsed once for the post-process's usage module index, the manifest, the digest and the
    check). One walk of the staged env serves the census, the check's unexpected-file rule and the seal: nobody
    else can write the 0700 staging dir, so the scan stays true until the rename."""
    staging, record = job.staging, job.record
    job.meta = meta = read_conda_meta(staging)
    site_files = [*post_process(staging, job.final, record, meta, job.pip_files, usage=job.usage_hook),
                  *job.own_files]
    if job.pip_dists:  # inside conda-meta/cpkgs: covered by the meta digest below
        _write_staged_json(staging / PIP_MANIFEST, pip_manifest(staging, job.pip_dists))
    record.imports = importable(staging, IMPORTS_OF_INTEREST) if record.python_version else []
    manifest = site_manifest(staging, [*site_files, *unhashed_patched_files(staging, meta)])
    job.tree = tree = scan_tree(staging)
    check_installed(staging, job.final, meta, tree)
    record.file_count, record.size, executables = census_at_publish(tree)
    record.file_count += 3  # the manifest, the executables list and the embedded record below
    _write_staged_json(staging / SITE_MANIFEST, manifest)
    _write_staged_json(staging / EXECUTABLES_LIST, executables)
    record.meta_sha256 = meta_digest(staging, meta)
    _write_staged_json(staging / EMBEDDED_RECORD, record.to_json())
    for rel in (SITE_MANIFEST, EXECUTABLES_LIST, EMBEDDED_RECORD, *([PIP_MANIFEST] if job.pip_dists else [])):
        tree[rel] = os.lstat(staging / rel)


# What kernels (ipykernel), the catalog and layers (pip) decide on: what the env can import, whichever part put it.
IMPORTS_OF_INTEREST = ("IPython", "ipykernel", "pip")


def importable(prefix: Path, modules: tuple[str, ...]) -> list[str]:
    """The MODULES a top-level import finds in PREFIX's site-packages (a package dir or a module file)."""
    found = []
    for site in sorted(prefix.glob("lib/python3*/site-packages")):
        found += [m for m in modules if m not in found and ((site / m / "__init__.py").is_file()
                                                            or (site / f"{m}.py").is_file())]
    return sorted(found)
