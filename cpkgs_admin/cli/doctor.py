"""`cpkgs doctor`: this user's and this host's setup (exit 4 when a check fails)."""

from __future__ import annotations

import click

from cpkgs_admin.cli.common import Ctx, emit_json, json_option, pass_ctx
from cpkgs_admin.errors import CheckFailed
from cpkgs_admin.users.doctor import run_doctor


@click.command()
@click.option("--deep", is_flag=True, help="Admin side: also run verify on every environment.")
@json_option
@pass_ctx
def doctor(c: Ctx, deep: bool, as_json: bool) -> None:
    """Check this user's and this host's setup (exit 4 when a check fails)."""
    rep = run_doctor(c.root, deep=deep)
    if as_json:
        emit_json(rep.to_json())
    else:
        for f in rep.findings:
            click.echo(f"[{f.status:4}] {f.check}: {f.message}" + (f" -> {f.fix}" if f.fix else ""))
    if rep.failed:
        raise CheckFailed(f"doctor: {rep.failed} check(s) failed")
