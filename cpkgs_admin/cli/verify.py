"""`cpkgs verify`: permissions and every file's integrity (exit 4 on problems)."""

from __future__ import annotations

import click

from cpkgs_admin.cli.common import Ctx, emit_json, json_option, pass_ctx
from cpkgs_admin.errors import CheckFailed
from cpkgs_admin.lifecycle.verify import verify_envs
from cpkgs_admin.site.text import printable


@click.command()
@click.argument("names", nargs=-1)
@json_option
@pass_ctx
def verify(c: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    """Check permissions and every file's integrity (exit 4 on problems)."""
    reports = verify_envs(c.site(), names)
    problems = sum(len(r.problems) for r in reports)
    if as_json:
        emit_json([r.to_json() for r in reports])
    else:
        for r in reports:
            if r.skipped:
                c.say(f"{r.name}: {r.skipped}")
                continue
            for p in r.problems:  # paths and symlink targets in an env are anyone's text: escaped
                click.echo(printable(f"{r.name}: {p.kind}: {p.path}: {p.detail}"))
            tag = (" [unsealed]" if r.unsealed else "") + (" [removed]" if r.status == "removed" else "")
            c.say(f"{r.name}: {r.files} files checked, {len(r.problems)} problem(s){tag}")
    if problems:
        raise CheckFailed(f"verify found {problems} problem(s)")


