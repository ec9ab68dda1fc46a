"""The site itself: `cpkgs init`, `write-profiles`, `refresh`, `catalog`, `usage`, `locks`."""

from __future__ import annotations

import click

from cpkgs_admin.cli.common import Ctx, emit_json, human_age, json_option, pass_ctx, report_damaged, table, warn
from cpkgs_admin.lifecycle.init import init_site
from cpkgs_admin.lifecycle.refresh import refresh_site
from cpkgs_admin.outputs.catalog import CatalogReport, catalog_platforms, index_file, render_catalog
from cpkgs_admin.outputs.profiles import write_profiles
from cpkgs_admin.outputs.usage.report import iso, usage_report
from cpkgs_admin.site.audit import audited
from cpkgs_admin.site.locks import break_lock, list_locks, notice, sweep_dead_locks


@click.command()
@click.option("--admin-group", metavar="G", help="Group allowed to change the site.")
@click.option("-c", "--channel", "channels", multiple=True, metavar="CHANNEL", help="Site channel (repeatable).")
@click.option("--platform", "platforms", multiple=True, metavar="SUBDIR", help="Platform to serve (repeatable).")
@click.option("--channel-map", "channel_map", multiple=True, metavar="NAME=URL",
              help="Serve channel NAME (or a URL prefix) from URL, e.g. a mirror; repeat NAME for several URLs; "
                   "NAME= drops it.")
@click.option("--channel-alias", metavar="URL", help="Where other channel names live (default: "
              "https://conda.anaconda.org); 'none' refuses them.")
@click.option("--force", is_flag=True, help="Use a root that is not empty and not yet a cpkgs site.")
@json_option
@pass_ctx
def init(
    c: Ctx, admin_group: str | None, channels: tuple[str, ...], platforms: tuple[str, ...],
    channel_map: tuple[str, ...], channel_alias: str | None, force: bool, as_json: bool
) -> None:
    """Create or upgrade the site tree (idempotent)."""
    report = init_site(c.root, admin_group=admin_group, channels=channels, platforms=platforms, force=force,
                       channel_map=channel_map, channel_alias=channel_alias)
    warn(report.warnings)
    if as_json:
        emit_json(report.to_json())
        return
    if not report.changed:
        c.say(f"site {c.root} is up to date; nothing changed")
        return
    for line in report.config_changes:
        c.say(f"config  {line}")
    for p in report.created:
        c.say(f"created {p}")
    for p in report.updated:
        c.say(f"updated {p}")


@click.command("write-profiles")
@pass_ctx
def write_profiles_cmd(c: Ctx) -> None:
    """Render <root>/etc/profile.d/conda.sh and conda.csh."""
    changed = write_profiles(c.site())
    for p in changed:
        c.say(f"wrote {p}")
    if not changed:
        c.say("profiles are up to date")


@click.command()
@json_option
@pass_ctx
def refresh(c: Ctx, as_json: bool) -> None:
    """Regenerate profiles, modulefiles and kernelspecs; remove orphans."""
    rep = refresh_site(c.site())
    warn(rep.warnings)
    if as_json:
        emit_json(rep.to_json())
        return
    for line in rep.lines():
        c.say(line)
    if not rep.changed:
        c.say("everything is up to date")


@click.command()
@click.option("--path", "path_only", is_flag=True, help="Only print where the page is (any user; writes nothing).")
@json_option
@pass_ctx
def catalog(c: Ctx, path_only: bool, as_json: bool) -> None:
    """Render the catalog web page (every env, its packages, how to use it); print this host's index.html."""
    site = c.site()
    if path_only:
        rep = CatalogReport(indexes={p: str(index_file(site, p)) for p in catalog_platforms(site)})
    else:
        rep = render_catalog(site)
    here = rep.indexes.get(site.native_subdir)
    if as_json:
        emit_json({"index": here, **rep.to_json()})
        if rep.damaged:
            raise click.exceptions.Exit(1)
        return
    if not path_only and not c.quiet:
        click.echo(f"cpkgs: catalog of {rep.envs} environments: {len(rep.written)} files written, "
                   f"{len(rep.removed)} removed", err=True)
    # stdout is the path alone (`xdg-open "$(cpkgs catalog --path)"`); on a host of a platform the site does not
    # serve, every platform's.
    for line in [here] if here else [f"{path} ({plat})" for plat, path in rep.indexes.items()]:
        click.echo(line)
    # Records it could not read: their pages are left as they were; reported after the rest, as `list` does.
    report_damaged(rep.damaged)


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


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def locks(ctx: click.Context, as_json: bool) -> None:
    """List held locks with owner and age."""
    if ctx.invoked_subcommand is not None:
        return
    c: Ctx = ctx.obj
    site = c.site()
    # Locks of processes of this host that died (kill -9) go first: listed, they would stay until the same name is
    # taken again, forever for a name never rebuilt. Another host's are listed: only their lease or `break` ends them.
    for msg in sweep_dead_locks(site.locks_dir, site.config.lease_seconds):
        notice(msg)
    infos = list_locks(site.locks_dir, site.config.lease_seconds)
    if as_json:
        emit_json([i.to_json() for i in infos])
        return
    if not infos:
        c.say("no locks held")
        return
    rows = []
    for i in infos:
        o = i.owner
        rows.append(
            (
                i.name,
                i.state,
                f"{o.user}@{o.host}" if o else "?",
                o.pid if o else "?",
                human_age(i.age_seconds),
                o.command if o else "",
            )
        )
    click.echo(table(rows, ["lock", "state", "owner", "pid", "age", "command"]))


@locks.command("break")
@click.argument("lock")
@pass_ctx
def locks_break(c: Ctx, lock: str) -> None:
    """Break LOCK now, whoever holds it (the holder must be gone)."""

    site = c.site()
    info = break_lock(site.locks_dir, lock, site.config.lease_seconds)
    o = info.owner
    audited(site, "locks-break", lock=info.name, owner=o.__dict__ if o else None)
    c.say(f"broke {info.name}" + (f" (held by {o.user}@{o.host} pid {o.pid})" if o else ""))
