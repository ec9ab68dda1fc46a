"""Step 1 of new-env: what to build, from the request's source: positional match specs, `-f environment.yml`, the
family's spec file (`specs/<family>.yml`), or `--from OLD` with `--add`/`--remove` (a lock file is read by build.py
and resolved by the solve step). The formats themselves are site/specs.py's."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from rattler import PrefixRecord

from cpkgs_admin.errors import SpecError
from cpkgs_admin.pipeline.job import BuildRequest
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, PackageEntry, get_record
from cpkgs_admin.site.specs import (
    Spec,
    apply_changes,
    check_sources,
    check_variables,
    from_environment_file,
    from_family,
    spec_name,
    validate_specs,
)


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
    specs = apply_changes(base, add, req.remove)
    removed = {spec_name(r) for r in req.remove}
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
                warnings=tuple(warnings))
    return spec, locked


def refuse_pip(spec: Spec) -> None:
    """A spec's `pip:` list (Spec.pip): not built yet; the PyPI step of DESIGN.md will take it from here."""
    if spec.pip:
        raise SpecError(
            f"spec file {spec.source}: a 'pip:' section is not supported; build conda packages or use 'cpkgs extend'"
        )


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
