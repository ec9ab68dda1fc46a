"""`cpkgs usage`: runs, users and last use per env, users per package, from the usage logs."""

from __future__ import annotations

import click

from cpkgs_admin.cli.common import Ctx, emit_json, json_option, pass_ctx, table
from cpkgs_admin.outputs.usage.report import iso, usage_report


@click.command()
@click.option("--since", metavar="D", help="Only runs since D: a duration back from now (30d) or a date (2024-05-01).")
@click.option("--env", "env", metavar="NAME", help="Only this environment.")
@click.option("--unused", metavar="D", default="90d", show_default=True,
              help="List envs nobody used for D as retirement candidates.")
@click.option("--top", default=30, show_default=True, metavar="N", help="Packages shown (the JSON has all).")
@json_option
@pass_ctx
def usage(c: Ctx, since: str | None, env: str | None, unused: str, top: int, as_json: bool) -> None:
    """Runs, users and last use per env and users per package, from the usage logs (cpkgs.yaml usage.logs)."""
    rep = usage_report(c.site(), since=since, env=env, unused=unused)
    if as_json:
        emit_json(rep.to_json())
        return
    click.echo(table([(e.name, e.platform, e.status, e.runs, e.users, iso(e.last_used) or "never")
                      for e in rep.envs], ["env", "platform", "status", "runs", "users", "last used"]))
    click.echo("")
    click.echo(table([(p.name, p.kind, p.users, p.envs) for p in rep.packages[:top]],
                     ["package", "kind", "users", "envs"]))
    click.echo("")
    days = f"{rep.unused_days / 86400:g} days"
    if not rep.covered:
        click.echo(f"retirement candidates: unknown (the logs do not reach back {days})")
    else:
        names = ", ".join(f"{x.name} ({x.platform})" for x in rep.candidates) or "none"
        click.echo(f"unused for {days} (retirement candidates): {names}")
    c.say(f"{rep.records} records in {len(rep.logs)} file(s); {rep.skipped_lines} lines skipped "
          f"({rep.foreign_lines} not usage records, {rep.malformed_lines} malformed)")
