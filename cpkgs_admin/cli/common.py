"""What every command shares: the group's context (the root, -v, -q), the --json option, and the renderers (tables,
sizes, ages, warning lines, the records that could not be read)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from cpkgs_admin.site.paths import Site, open_site, resolve_root
from cpkgs_admin.site.records import DAMAGED_RECORD_HINT
from cpkgs_admin.site.tools import running_tool

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    """The group's options, for every command: the site root (not opened yet), -v and -q."""

    def __init__(self, root: str | None, verbose: int, quiet: bool) -> None:
        # The site's own tool (cpkgs-tool/<build>) serves its site when neither --root nor $CPKGS_ROOT says.
        tool = running_tool() if not root and not os.environ.get("CPKGS_ROOT") else None
        self.root = resolve_root(root or (str(tool["root"]) if tool and tool.get("root") else None))
        self.verbose = verbose
        self.quiet = quiet

    def site(self) -> Site:
        return open_site(self.root)

    def say(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg)


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(f)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def human_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def package_table(packages: Iterable[Any]) -> str:
    rows = [(p.name, p.version, p.build, p.channel) for p in packages]
    return table(rows, ["name", "version", "build", "channel"])


def report_damaged(damaged: list[tuple[Path, str]]) -> None:
    """The records that could not be read, one line each, after what could; then exit 1."""
    if not damaged:
        return
    for _path, msg in damaged:
        click.echo(f"cpkgs: {msg}; {DAMAGED_RECORD_HINT}", err=True)
    raise click.exceptions.Exit(1)


def warn(warnings: Iterable[str]) -> None:
    for warning in warnings:
        click.echo(f"cpkgs: warning: {warning}", err=True)
