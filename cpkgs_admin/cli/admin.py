"""The site itself: `cpkgs init`, `write-profiles`, `refresh`, `locks`."""

from __future__ import annotations

import click

from cpkgs_admin.cli.common import Ctx, emit_json, human_age, json_option, pass_ctx, table, warn
from cpkgs_admin.lifecycle.init import init_site
from cpkgs_admin.lifecycle.refresh import refresh_site
from cpkgs_admin.outputs.profiles import write_profiles
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
@click.option("--pypi-index-url", metavar="URL", help="The pip part's index (a site mirror of PyPI); 'none': no index.")
@click.option("--pypi-extra-index-url", "pypi_extra", multiple=True, metavar="URL",
              help="More indexes (repeatable; '' empties the list).")
@click.option("--pypi-find-links", "pypi_links", multiple=True, metavar="LOC",
              help="Wheelhouse directories or URLs (repeatable; '' empties the list).")
@click.option("--pip-sections/--no-pip-sections", "pip_sections", default=None,
              help="Whether spec files may have a pip: section.")
@click.option("--pypi-spec-indexes/--no-pypi-spec-indexes", "spec_indexes", default=None,
              help="Whether spec files may name their own indexes and find-links.")
@click.option("--pypi-build-from-source/--no-pypi-build-from-source", "build_from_source", default=None,
              help="Whether sdists and git URLs are built into wheels.")
@json_option
@pass_ctx
def init(
    c: Ctx, admin_group: str | None, channels: tuple[str, ...], platforms: tuple[str, ...],
    channel_map: tuple[str, ...], channel_alias: str | None, force: bool, pypi_index_url: str | None,
    pypi_extra: tuple[str, ...], pypi_links: tuple[str, ...], pip_sections: bool | None, spec_indexes: bool | None,
    build_from_source: bool | None, as_json: bool
) -> None:
    """Create or upgrade the site tree (idempotent)."""
    given = {"index_url": pypi_index_url, "extra_index_urls": pypi_extra or None, "find_links": pypi_links or None,
             "enabled": pip_sections, "spec_indexes": spec_indexes, "build_from_source": build_from_source}
    report = init_site(c.root, admin_group=admin_group, channels=channels, platforms=platforms, force=force,
                       channel_map=channel_map, channel_alias=channel_alias,
                       pypi={k: v for k, v in given.items() if v is not None})
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
