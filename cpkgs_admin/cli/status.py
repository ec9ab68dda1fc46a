"""Changes to published envs: `cpkgs seal`, `unseal`, `retire`, `remove`, `purge`."""

from __future__ import annotations

import click

from cpkgs_admin.cli.common import Ctx, emit_json, json_option, pass_ctx, warn
from cpkgs_admin.lifecycle.purge import purge_trash
from cpkgs_admin.lifecycle.status import remove_env, retire_env, seal_env, successor_warnings, unseal_env
from cpkgs_admin.outputs.usage.report import last_use_line


@click.command()
@click.argument("name")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def seal(c: Ctx, name: str, platform: str | None) -> None:
    """Make an environment read-only again."""
    rec = seal_env(c.site(), name, platform)
    c.say(f"sealed {rec.name} ({rec.platform})")


@click.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def unseal(c: Ctx, name: str, reason: str, platform: str | None) -> None:
    """Make an environment owner-writable for a maintenance window (audited)."""
    rec = unseal_env(c.site(), name, reason, platform)
    c.say(f"unsealed {rec.name} ({rec.platform}); run 'cpkgs seal {rec.name}' when done")


@click.command()
@click.argument("name")
@click.option("--successor", metavar="NEW", help="The environment users should move to.")
@click.option("--message", metavar="TEXT", help="Shown on activation and in modules.")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def retire(c: Ctx, name: str, successor: str | None, message: str | None, platform: str | None) -> None:
    """Mark an environment retired (it stays usable)."""
    site = c.site()
    warnings: list[str] = []
    rec = retire_env(site, name, successor, message, platform, warnings)
    c.say(f"retired {rec.name} ({rec.platform})" + (f"; successor {successor}" if successor else ""))
    warn([*warnings, *successor_warnings(site, rec)])
    last = last_use_line(site, rec.name, rec.platform)  # only when the site keeps usage logs this host can read
    if last:
        c.say(last)


@click.command()
@click.argument("name")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def remove(c: Ctx, name: str, platform: str | None) -> None:
    """Hide an environment and refuse new activations; 'purge' after the grace moves it away."""
    site = c.site()
    warnings: list[str] = []
    rec = remove_env(site, name, platform, warnings)
    c.say(f"removed {rec.name} ({rec.platform}): hidden, and refused on activation; running jobs keep it at "
          f"{rec.prefix} until 'cpkgs purge' after {(rec.removed or {}).get('purge_after')}")
    warn([*warnings, *successor_warnings(site, rec)])


@click.command()
@click.option("--older-than", metavar="DURATION",
              help="Only what was removed longer ago than this (default: the site's grace, trash_grace).")
@json_option
@pass_ctx
def purge(c: Ctx, older_than: str | None, as_json: bool) -> None:
    """Move removed envs past their grace into the trash and delete it; busy .nfs files are skipped and reported."""
    rep = purge_trash(c.site(), older_than)
    if as_json:
        emit_json(rep.to_json())
    else:
        for w in rep.waiting:
            if w.get("kind") == "tool":
                c.say(f"waiting {w['name']} ({w['platform']}): superseded, kept until {w['purge_after']}")
                continue
            c.say(f"waiting {w['prefix']} (removed; kept for running jobs until {w['purge_after'] or '?'})")
        for p in rep.moved:
            c.say(f"moved   {p} to the trash")
        for p in rep.deleted:
            c.say(f"deleted {p}")
        for p in rep.kept_busy:
            c.say(f"kept    {p} (files still open on some host: .nfs*)")
        for p in rep.staging_removed:
            c.say(f"deleted {p} (staging dir of an interrupted build)")
        if not (rep.deleted or rep.kept_busy or rep.staging_removed or rep.failed or rep.moved or rep.waiting):
            c.say("nothing to purge")
    for f in rep.failed:
        click.echo(f"cpkgs: cannot purge {f['path']}: {f['reason']}", err=True)
    if rep.failed:
        raise click.exceptions.Exit(1)
