"""Step 4 of new-env (post-process): rattler's conda-meta records made conda's (condameta.py); cpkgs' own files
inside the staged env (the package list, the explicit lock, the spec's variables as activate.d/deactivate.d scripts
for cpkgs' own conda, the PEP 668 marker and SQLite configs, the usage hook) and conda's (the history of what was
requested, the spec's variables as conda's env_vars, CEP 22's frozen marker: outputs.condafiles), then its
manifests: the hashes of what cpkgs wrote, the executables, the embedded record. Anything that embeds a path embeds
the final prefix, never the staging dir's."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import BuildError
from cpkgs_admin.integrity.checks import hash_items
from cpkgs_admin.integrity.content import (
    FileEntry,
    ListSummary,
    check_installed,
    check_paths,
    escaping_symlinks,
    refuse,
    under_symlink,
)
from cpkgs_admin.integrity.manifest import (
    EMBEDDED_RECORD,
    EXECUTABLES_LIST,
    SITE_MANIFEST,
    CondaMeta,
    Expected,
    census_at_publish,
    meta_digest,
    read_conda_meta,
    site_manifest,
    unhashed_patched_files,
)
from cpkgs_admin.integrity.pipfiles import PIP_LOCK, PIP_MANIFEST, expected_pip_files, pip_manifest
from cpkgs_admin.integrity.tree import scan_tree
from cpkgs_admin.integrity.watch import Final, StagedCheck, check_final
from cpkgs_admin.outputs.condafiles import FROZEN, HISTORY, STATE, frozen_text, history_text, state_text
from cpkgs_admin.outputs.envfiles import env_integration_files
from cpkgs_admin.outputs.usage.hook import write_usage_files
from cpkgs_admin.pipeline.condameta import normalise_conda_meta
from cpkgs_admin.pipeline.job import Job
from cpkgs_admin.site.files import write_staged
from cpkgs_admin.site.paths import native_subdir
from cpkgs_admin.site.records import EnvRecord, PackageEntry
from cpkgs_admin.site.specs import check_variables, explicit_text
from cpkgs_admin.site.text import csh_quote

PKG_LIST = "list-of-pkgs-inside.txt"
EXPLICIT_LOCK = "conda-meta/cpkgs/explicit.txt"


def pkg_list_text(packages: list[PackageEntry]) -> str:
    rows = [("# name", "version", "build", "channel")] + [(p.name, p.version, p.build, p.channel) for p in packages]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"


def _write_staged_json(path: Path, obj: Any) -> None:
    write_staged(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


VARIABLES_SCRIPT = "cpkgs-variables"


def variables_scripts(variables: dict[str, str]) -> dict[str, str]:
    """The env's activate.d/deactivate.d scripts for a spec file's `variables:` (sh and csh), by relative path.
    Activation sets them before the packages' own scripts run (00-, first in sorted order); deactivation unsets
    them after the packages' scripts (00- again: deactivate.d scripts run in reverse sorted order, in conda and in
    cpkgs' conda.sh), the order conda keeps for its env_vars.

    One mechanism per activation path, so nothing is applied twice: they act only when cpkgs' own conda (conda.sh,
    conda.csh) sources them, which marks that with `_cpkgs_busy`. A real conda (the user's own, or one in the
    installation) applies the same variables from conda-meta/state and runs these scripts as no-ops; modulefiles
    and kernels take them from the record."""
    if not variables:
        return {}
    check_variables(variables, "variables")  # also those carried from a record (--from): names go into scripts
    head = ("# Written by cpkgs new-env from the spec file's `variables:`; part of the sealed env. For cpkgs' own\n"
            "# conda only: a real conda sets them from conda-meta/state.\n")
    # Locale variables last: tcsh re-reads the rest of a file it is sourcing in a new LC_ALL/LANG.
    names = sorted(variables, key=lambda n: (n == "LANG" or n.startswith("LC_"), n))

    def sh(lines: list[str]) -> str:
        return head + 'if [ -n "${_cpkgs_busy-}" ]; then\n' + "".join(f"    {x}\n" for x in lines) + "fi\n"

    def csh(lines: list[str]) -> str:
        return head + "if ( $?_cpkgs_busy ) then\n" + "".join(f"    {x}\n" for x in lines) + "endif\n"

    act, deact = f"etc/conda/activate.d/00-{VARIABLES_SCRIPT}", f"etc/conda/deactivate.d/00-{VARIABLES_SCRIPT}"
    return {
        f"{act}.sh": sh([f"export {n}={shlex.quote(variables[n])}" for n in names]),
        f"{act}.csh": csh([f"setenv {n} {csh_quote(variables[n])}" for n in names]),
        f"{deact}.sh": sh([f"unset {n}" for n in names]),
        f"{deact}.csh": csh([f"unsetenv {n}" for n in names]),
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
        HISTORY: history_text(record),  # in place of rattler's empty one
        **(pip_files or {}),
    }
    if record.variables:
        ours[STATE] = state_text(record.variables)
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
    else can write the 0700 staging dir, so the scan stays true until the rename. When the packages' files were
    checked during the install (job.staged) and those checks stand for the records as they are now, the final check
    runs here (job.problems) and the walk only looks at what changed since; otherwise the check step reads it all."""
    staging, record = job.staging, job.record
    # Whether the install-time checks stand is decided on the records as rattler left them, before cpkgs rewrites
    # some of them as conda's (condameta: only hash fields those checks do not use; check_final takes conda-meta/
    # as records, and the meta digest below is of the records as published).
    staged = job.staged if job.staged is not None and job.staged.stands() else None
    changed = normalise_conda_meta(staging)
    job.meta = meta = _meta_after(staged, changed) if staged is not None else read_conda_meta(staging)
    site_files = [*post_process(staging, job.final, record, meta, job.pip_files, usage=job.usage_hook),
                  *job.own_files]
    # Not in the manifest: unseal removes it, seal writes it back (lifecycle.status); verify checks it on its own.
    write_staged(staging / FROZEN, frozen_text(record.name, job.site.root), 0o444)
    pip = pip_manifest(staging, job.pip_dists) if job.pip_dists else None
    if pip is not None:  # inside conda-meta/cpkgs: covered by the meta digest below
        _write_staged_json(staging / PIP_MANIFEST, pip)
    record.imports = importable(staging, IMPORTS_OF_INTEREST) if record.python_version else []
    unhashed = (sorted(rel for p in staged.packages.values() for rel in p.unhashed) if staged is not None
                else unhashed_patched_files(staging, meta))
    manifest = site_manifest(staging, [*site_files, *unhashed])
    fin = _final_check(staged, manifest, pip, ran_code=job.pip is not None) if staged is not None else None
    if staged is not None and fin is not None:
        _content_rules(staged, fin, job.final)
        job.problems, job.tree = fin.problems, fin.seal
        files, size, executables = fin.files, fin.size, fin.executables
    else:
        job.staged, job.problems = None, None
        job.tree = scan_tree(staging)
        check_installed(staging, job.final, meta, job.tree)
        files, size, executables = census_at_publish(job.tree)
    record.file_count, record.size = files + 3, size  # + the manifest, the executables list and the record below
    _write_staged_json(staging / SITE_MANIFEST, manifest)
    _write_staged_json(staging / EXECUTABLES_LIST, executables)
    record.meta_sha256 = meta_digest(staging, meta)
    _write_staged_json(staging / EMBEDDED_RECORD, record.to_json())
    for rel in (SITE_MANIFEST, EXECUTABLES_LIST, EMBEDDED_RECORD, *([PIP_MANIFEST] if pip is not None else [])):
        job.tree[rel] = os.lstat(staging / rel)


def _meta_after(staged: StagedCheck, changed: list[str]) -> CondaMeta:
    """conda-meta as the watcher read it, with the records normalise_conda_meta rewrote (CHANGED) read again."""
    out: CondaMeta = []
    for path, raw, data in staged.meta():
        if path.name in changed:
            raw = path.read_bytes()
            data = json.loads(raw)
        out.append((path, raw, data))
    return out


def _final_check(staged: StagedCheck, manifest: dict[str, dict[str, Any]], pip: dict[str, dict[str, str]] | None,
                 *, ran_code: bool) -> Final | None:
    """watch.check_final of the staged env, with what was written after the install checked in full: cpkgs'
    manifest (not on disk yet) and the pip part, as verify expects them (every RECORD row, each RECORD at the hash
    PIP_MANIFEST keeps); None when it failed, and the env is then checked in full the old way. RAN_CODE: the pip step
    ran code of the env's packages and of sdists' build backends (uv asks the env's python, .pth files included, and
    builds with it), which can write any checked file in place: check_final then lstat-s every checked entry again."""
    staging = staged.staging
    extra = expected_pip_files(staging, pip, Expected) if pip is not None else {}
    extra.update({rel: Expected(rel, info["sha256"], info["size"], info["executable"])
                  for rel, info in manifest.items()})
    try:
        return check_final(staged, extra, lambda items: hash_items(staging, items), restat=ran_code)
    except Exception:  # a defect of the shortcut must never let a file through unchecked: the full check decides
        return None


def _content_rules(staged: StagedCheck, fin: Final, final: Path) -> None:
    """content.check_installed's rules, on what the check found: a path no env may hold, a path under a package's
    symlink (named by check_paths over the lists), a package's symlink leading out of the env."""
    for p in sorted(staged.packages.values(), key=lambda p: p.name):
        if p.refused is not None:
            raise refuse(p.dist, *p.refused)
    if under_symlink(ListSummary(tuple(p.links), frozenset(p.dirs), 0, 0, 0, False) for p in staged.packages.values()):
        check_paths((p.dist, [FileEntry(rel, rel in set(p.links)) for rel in p.files])
                    for p in sorted(staged.packages.values(), key=lambda p: p.name))
    links = {rel: st for rel, (_dist, st) in fin.links.items()}
    for rel, target in escaping_symlinks(staged.staging, links, (str(final),)):
        raise refuse(fin.links[rel][0], rel, f"is a symlink to {target}, outside the environment")


# What kernels (ipykernel), the catalog and layers (pip) decide on: what the env can import, whichever part put it.
IMPORTS_OF_INTEREST = ("IPython", "ipykernel", "pip")


def importable(prefix: Path, modules: tuple[str, ...]) -> list[str]:
    """The MODULES a top-level import finds in PREFIX's site-packages (a package dir or a module file)."""
    found = []
    for site in sorted(prefix.glob("lib/python3*/site-packages")):
        found += [m for m in modules if m not in found and ((site / m / "__init__.py").is_file()
                                                            or (site / f"{m}.py").is_file())]
    return sorted(found)
