"""What a record looks like to its readers: the package diff between two envs and the exports (an explicit lock
file, an environment.yml), for `cpkgs diff` and `cpkgs export` and the catalog's pages alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from cpkgs_admin.errors import UsageError
from cpkgs_admin.site.pypi_config import PYPI_INDEX
from cpkgs_admin.site.records import EnvRecord, PackageEntry
from cpkgs_admin.site.specs import explicit_text


@dataclass
class EnvDiff:
    old: str
    new: str
    added: list[PackageEntry] = field(default_factory=list)
    removed: list[PackageEntry] = field(default_factory=list)
    changed: list[tuple[PackageEntry, PackageEntry]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def pk(p: PackageEntry) -> dict[str, str]:
            return {"kind": p.kind, "name": p.name, "version": p.version, "build": p.build, "channel": p.channel}

        return {
            "old": self.old,
            "new": self.new,
            "added": [pk(p) for p in self.added],
            "removed": [pk(p) for p in self.removed],
            "changed": [
                {
                    "kind": a.kind,
                    "name": a.name,
                    "old": {"version": a.version, "build": a.build},
                    "new": {"version": b.version, "build": b.build},
                }
                for a, b in self.changed
            ],
        }


def diff_records(old: EnvRecord, new: EnvRecord) -> EnvDiff:
    """The one package diff (`cpkgs diff`, the catalog's diff pages): both kinds, a conda and a pypi package of one
    name apart."""
    a = {(p.kind, p.name): p for p in old.all_packages}
    b = {(p.kind, p.name): p for p in new.all_packages}
    d = EnvDiff(old=old.name, new=new.name)
    d.added = [b[n] for n in sorted(set(b) - set(a))]
    d.removed = [a[n] for n in sorted(set(a) - set(b))]
    d.changed = [
        (a[n], b[n])
        for n in sorted(set(a) & set(b))
        if (a[n].version, a[n].build, a[n].sha256) != (b[n].version, b[n].build, b[n].sha256)
    ]
    return d


def export_record(rec: EnvRecord, fmt: str) -> str:
    """REC as an explicit lock (FMT "explicit") or environment.yml (`cpkgs export`, the catalog's downloads)."""
    pip_lock = (rec.pip or {}).get("lock")
    if fmt == "explicit":
        return explicit_text(rec.packages, rec.platform, rec.variables, pip_lock, rec.name)
    if fmt == "pip":
        if not rec.pypi_packages or not isinstance(pip_lock, str):
            raise UsageError(f"{rec.name} has no pip part")
        return pip_lock
    deps: list[Any] = [f"{p.name}=={p.version}={p.build}" for p in rec.packages]
    if rec.pypi_packages:
        deps.append({"pip": [*_index_lines(rec.pip or {}), *(pip_pin(p) for p in rec.pypi_packages)]})
    doc: dict[str, Any] = {"name": rec.name, "channels": list(rec.channels), "dependencies": deps}
    if rec.variables:
        doc["variables"] = dict(rec.variables)
    # libyaml's emitter when PyYAML has it: the same text, ~8x faster (the catalog exports every env).
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return f"# {rec.name} ({rec.platform}), exported by cpkgs\n" + yaml.dump(doc, Dumper=dumper, sort_keys=False)


def pip_pin(p: PackageEntry) -> str:
    """An exact requirement for a pip package of a record: name==version, or the git commit or wheel URL it came from
    (a wheel built from git has no index to be found on again)."""
    kind = (p.extra.get("source") or {}).get("kind")
    if kind == "vcs":
        return f"{p.name} @ {p.channel}"
    if kind == "url":
        return f"{p.name} @ {p.url}"
    return f"{p.name}=={p.version}"


def _index_lines(pip: dict[str, Any]) -> list[str]:
    """The indexes the pip part came from, when not PyPI's (find-links dirs are local to the site: left out)."""
    opts = pip.get("options") or {}
    lines = []
    if opts.get("index_url") and opts["index_url"] != PYPI_INDEX:
        lines.append(f"--index-url {opts['index_url']}")
    lines += [f"--extra-index-url {u}" for u in opts.get("extra_index_urls") or []]
    return lines
