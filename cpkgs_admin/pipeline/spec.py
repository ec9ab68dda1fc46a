"""Step 1 of new-env: what to build, from the request's source: positional match specs, `-f environment.yml`, the
family's spec file (`specs/<family>.yml`), or `--from OLD` with `--add`/`--remove` (a lock file is read by build.py
and resolved by the solve step). The formats themselves are site/specs.py's."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rattler import PrefixRecord

from cpkgs_admin.errors import SpecError
from cpkgs_admin.pipeline.job import BuildRequest
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, PackageEntry, get_record
from cpkgs_admin.site.specs import (
    ExplicitLock,
    Spec,
    apply_changes,
    check_sources,
    check_variables,
    from_environment_file,
    from_family,
    spec_name,
    validate_specs,
)

if TYPE_CHECKING:
    from cpkgs_admin.pipeline.pypi.part import PipPlan


def resolve_spec(site: Site, req: BuildRequest, subdir: str) -> tuple[Spec, list[Any]]:
    """(spec, locked records for --from). --lock is handled separately."""
    check_sources(req.specs, req.spec_file, req.from_env, req.lock_file, req.add, req.remove)
    if req.from_env:
        return _from_old(get_record(site, req.from_env, subdir), req)
    if req.spec_file:
        spec = from_environment_file(req.spec_file)
        if req.specs:
            extra: list[str] = []
            more = validate_specs(req.specs, extra)
            spec = dataclasses.replace(spec, specs=spec.specs + more, warnings=spec.warnings + tuple(extra))
        return spec, []
    if req.specs:
        warnings: list[str] = []
        specs = validate_specs(req.specs, warnings)
        return Spec(specs=specs, source="command line", warnings=tuple(warnings)), []
    return from_family(site.specs_dir, req.name.family), []


def _from_old(old: EnvRecord, req: BuildRequest) -> tuple[Spec, list[Any]]:
    """--from OLD: OLD's requested specs with --add and --remove applied, OLD's exact builds as locked packages."""
    if old.status == "removed":
        raise SpecError(f"--from {old.name}: that environment was removed; its exact packages are no longer on "
                        "the drive (rebuild from its lock: cpkgs export, then new-env --lock)")
    warnings: list[str] = []
    add = validate_specs(req.add, warnings)
    # An env built from a lock file requested no specs: every package it holds counts as requested.
    base = tuple(old.requested_specs) or tuple(p.name for p in old.packages)
    removed = {spec_name(r) for r in req.remove}
    # OLD's pip part goes along as it was resolved (--remove drops a requirement of it); --add is conda's.
    pip_lines = tuple((old.pip or {}).get("requested") or ())
    pip_removed = removed & {n for line in pip_lines if (n := _pip_line_name(line))}
    pip_lines = tuple(line for line in pip_lines if _pip_line_name(line) not in pip_removed)
    removed -= pip_removed
    specs = apply_changes(base, add, tuple(r for r in req.remove if spec_name(r) in removed))
    missing = removed - {p.name for p in old.packages}
    if missing:
        raise SpecError(f"--remove {', '.join(sorted(missing))}: not in {old.name}")
    implied = sorted(removed - {spec_name(s) for s in base})
    if implied:
        raise SpecError(
            f"--remove {', '.join(implied)}: {old.name} did not ask for it, another package needs it "
            f"(asked for: {', '.join(spec_name(s) for s in base)}); remove what needs it instead"
        )
    locked = [r for r in _prefix_records(Path(old.prefix)) if r.name.normalized not in removed]
    # The site's channels of today, not OLD's: mirrors move; OLD's exact builds are kept through `locked`.
    # A record may predate today's rules for variables (or have been edited): they go into every activation.
    variables = check_variables(dict(old.variables), f"--from {old.name}", warnings)
    spec = Spec(specs=specs, source=f"--from {old.name}", extends=tuple(old.extends), variables=variables,
                pip=pip_lines, warnings=tuple(warnings))
    return spec, locked


def _pip_line_name(line: str) -> str | None:
    """The package a recorded pip requirement line names (PEP 503 normalized), None for an option or a bare URL."""
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[|@|[<>=!~;]|\Z)", line.strip())
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m and "://" not in m.group(1) else None


def pip_plan(site: Site, req: BuildRequest, spec: Spec, lock: ExplicitLock | None) -> PipPlan | None:
    """Step 1 for the pip part: None when the env has none."""
    if not spec.pip and req.pip_lock is None and (lock is None or lock.pip_lock is None):
        return None
    # The pip machinery (uv's driver, installer, the resolver): 45-55 ms of imports (python -X importtime) that a
    # spec without a pip part never needs.
    from cpkgs_admin.pipeline.pypi.part import plan_pip_part  # noqa: PLC0415

    if lock is not None:
        if lock.pip_lock is not None and req.pip_lock is None:
            n, _sha = lock.pip_lock
            raise SpecError(f"lock file {lock.path} is of an env with a pip part ({n} packages): give its pins with "
                            "--pip-lock FILE (cpkgs export NAME --format pip writes them)")
        if req.pip_lock is None:
            return None
        return plan_pip_part((), None, "", site.config.pypi, pip_lock=req.pip_lock, pip_index=req.pip_index)
    return plan_pip_part(spec.pip, spec.pip_dir, spec.source or "spec", site.config.pypi, pip_index=req.pip_index)


def pip_lock_warnings(req: BuildRequest, lock: ExplicitLock) -> list[str]:
    """A --pip-lock file other than the one the lock's `# pip-lock:` comment hashes is built as given (an edited
    companion is the admin's call), said once."""
    if lock.pip_lock is None or req.pip_lock is None:
        return []
    try:
        digest = hashlib.sha256(req.pip_lock.read_bytes()).hexdigest()
    except OSError:
        return []  # step 1 reading it says why, in one line
    if digest == lock.pip_lock[1]:
        return []
    return [f"--pip-lock {req.pip_lock} is not the pip part lock file {lock.path} was exported with (sha256 "
            f"{digest[:12]}..., its comment says {lock.pip_lock[1][:12]}...): building the pins it holds"]


def check_python(plan: PipPlan | None, packages: list[PackageEntry], where: str) -> None:
    """A pip part needs the env's python (conda's rule too: its pip installer runs the env's python)."""
    if plan is not None and not any(p.name == "python" for p in packages):
        raise SpecError(f"{where}: a pip: section needs python in the env; add python to the conda dependencies")


def _prefix_records(prefix: Path) -> list[Any]:
    out = []
    for p in sorted((prefix / "conda-meta").glob("*.json")):
        with contextlib.suppress(Exception):
            out.append(PrefixRecord.from_path(p))
    return out


def check_removed(packages: list[PackageEntry], remove: tuple[str, ...]) -> None:
    """--remove PKG that the solver put back (another package needs it): refused, naming who needs it."""
    back = sorted({spec_name(r) for r in remove} & {p.name for p in packages})
    if back:
        name = back[0]
        needs = sorted(p.name for p in packages if any(spec_name(d) == name for d in p.depends))
        raise SpecError(f"--remove {name}: still needed by {', '.join(needs) or 'the other packages'}; "
                        "remove what needs it too")
