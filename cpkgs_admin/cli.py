"""Command line: one click group, one thin function per command.

The only module that prints or exits. Every command parses its options, calls one core function, and renders the
value it returns as a table or (with --json) as one JSON document. Core errors are CpkgsError subclasses carrying
their exit code; they become one line on stderr. Tracebacks only with -v.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from cpkgs_admin import __version__
from cpkgs_admin.errors import CheckFailed, CpkgsError, NotImplementedYet

F = TypeVar("F", bound=Callable[..., Any])

_state: dict[str, Any] = {"verbose": 0, "quiet": False}


class Ctx:
    def __init__(self, root: str | None, verbose: int, quiet: bool) -> None:
        from cpkgs_admin.site.paths import resolve_root

        self.root = resolve_root(root)
        self.verbose = verbose
        self.quiet = quiet

    def site(self) -> Any:
        from cpkgs_admin.site.paths import open_site

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


def not_yet(what: str) -> NoReturn:
    raise NotImplementedYet(f"'{what}' is not implemented yet")


# ------------------------------------------------------------------------------------------------------------- group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--root", metavar="DIR", help="Site root (default: $CPKGS_ROOT, else /nfs/cpkgs).")
@click.option("-v", "--verbose", count=True, help="More output; tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.version_option(__version__, prog_name="cpkgs")
@click.pass_context
def cli(ctx: click.Context, root: str | None, verbose: int, quiet: bool) -> None:
    """cpkgs: a site's shared conda installation on a network drive.

    Admins build sealed, versioned environments under the site root; users activate them from any Linux or macOS
    host that mounts it (source <root>/etc/profile.d/conda.sh), from Lmod modules or from Jupyter.
    """
    _state["verbose"] = verbose
    _state["quiet"] = quiet
    ctx.obj = Ctx(root, verbose, quiet)
    from cpkgs_admin.site.locks import set_notice

    # What core code says while it works (a lock waited for, a dead lock recovered): on stderr, unless -q.
    set_notice(None if quiet else _log_notice)


def _log_notice(msg: str) -> None:
    click.echo(f"cpkgs: {msg}", err=True)


# ------------------------------------------------------------------------------------------------------------- admin


@cli.command()
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
    from cpkgs_admin.lifecycle.init import init_site

    report = init_site(c.root, admin_group=admin_group, channels=channels, platforms=platforms, force=force,
                       channel_map=channel_map, channel_alias=channel_alias)
    _warn(report.warnings)
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


@cli.command("new-env")
@click.argument("name")
@click.argument("specs", nargs=-1)
@click.option("-f", "--file", "spec_file", type=click.Path(dir_okay=False), help="environment.yml to build from.")
@click.option("--from", "from_env", metavar="OLD", help="Start from OLD's requested specs.")
@click.option("--add", "add", multiple=True, metavar="SPEC", help="With --from: add or change a spec.")
@click.option("--remove", "remove", multiple=True, metavar="PKG", help="With --from: drop a package.")
@click.option("--lock", "lock_file", type=click.Path(dir_okay=False), help="Explicit lock file: exact rebuild.")
@click.option("-c", "--channel", "channels", multiple=True, metavar="CHANNEL", help="Override the site channels.")
@click.option("--platform", "platform", metavar="SUBDIR", help="Target another installation (e.g. osx-arm64).")
@click.option("--override-virtual", "overrides", multiple=True, metavar="PKG=VER", help="e.g. __cuda=12.4")
@click.option("--dry-run", is_flag=True, help="Solve and print the package table; write nothing.")
@click.option("-q", "--quiet", "quiet", is_flag=True, help="Only errors (as 'cpkgs -q new-env').")
@json_option
@pass_ctx
def new_env(
    c: Ctx,
    name: str,
    specs: tuple[str, ...],
    spec_file: str | None,
    from_env: str | None,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    lock_file: str | None,
    channels: tuple[str, ...],
    platform: str | None,
    overrides: tuple[str, ...],
    dry_run: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a sealed, versioned environment NAME (e.g. ml-pyroot-2024.1)."""
    if quiet:
        c.quiet = True
    from cpkgs_admin.pipeline.build import new_env as build_new_env
    from cpkgs_admin.pipeline.job import BuildRequest
    from cpkgs_admin.site.names import parse_name

    env_name = parse_name(name)  # before anything else, even before the site is opened
    site = c.site()
    req = BuildRequest(
        name=env_name,
        specs=specs,
        spec_file=Path(spec_file) if spec_file else None,
        from_env=from_env,
        add=add,
        remove=remove,
        lock_file=Path(lock_file) if lock_file else None,
        channels=channels,
        platform=platform,
        overrides=overrides,
        dry_run=dry_run,
    )
    # Progress (rattler's bars, step lines) on a terminal or with -v; plain output otherwise, so that a failure
    # in a script or a test is exactly one line on stderr.
    progress = sys.stderr.isatty() and not c.quiet and not as_json
    chatty = (progress or c.verbose > 0) and not c.quiet
    result = build_new_env(site, req, progress=progress, log=_log if chatty else None)
    _warn(result.warnings)
    if as_json:
        emit_json(result.to_json())
        return
    if dry_run:
        click.echo(package_table(result.packages))
        c.say(f"dry run: {len(result.packages)} packages for {name} ({result.platform}); nothing written")
        return
    c.say(
        f"built {name} ({result.platform}) at {result.prefix}: {len(result.packages)} packages, "
        f"{result.file_count} files, {human_size(result.size)} in {result.seconds:.1f}s"
    )


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def package_table(packages: Iterable[Any]) -> str:
    rows = [(p.name, p.version, p.build, p.channel) for p in packages]
    return table(rows, ["name", "version", "build", "channel"])


@cli.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include retired and removed environments.")
@json_option
@pass_ctx
def list_cmd(c: Ctx, show_all: bool, as_json: bool) -> None:
    """List environments (reads records only)."""
    from cpkgs_admin.lifecycle.listing import list_envs

    damaged: list[tuple[Path, str]] = []
    rows = list_envs(c.site(), show_all=show_all, damaged=damaged)
    if as_json:
        emit_json([r.to_json() for r in rows])
    elif rows:
        click.echo(
            table(
                [(r.name, r.platform, _status_words(r.status, r.purge_after), r.created, human_size(r.size))
                 for r in rows],
                ["name", "platform", "status", "created", "size"],
            )
        )
    elif not damaged:
        c.say("no environments")
    _report_damaged(damaged)


def _status_words(status: str, purge_after: str | None) -> str:
    """A removed env still at its path says until when (a purge after that moves it away)."""
    if status == "removed" and purge_after:
        return f"removed, kept until {purge_after[:16].replace('T', ' ')}"
    return status


def _report_damaged(damaged: list[tuple[Path, str]]) -> None:
    """The records that could not be read, one line each, after what could; then exit 1."""
    if not damaged:
        return
    from cpkgs_admin.site.records import DAMAGED_RECORD_HINT

    for _path, msg in damaged:
        click.echo(f"cpkgs: {msg}; {DAMAGED_RECORD_HINT}", err=True)
    raise click.exceptions.Exit(1)


def _warn(warnings: Iterable[str]) -> None:
    for warning in warnings:
        click.echo(f"cpkgs: warning: {warning}", err=True)


@cli.command()
@click.argument("name")
@click.option("--platform", metavar="SUBDIR", help="Which platform's env, when NAME exists on several.")
@json_option
@pass_ctx
def info(c: Ctx, name: str, platform: str | None, as_json: bool) -> None:
    """Show an environment's record and packages."""
    from cpkgs_admin.site.records import get_record

    rec = get_record(c.site(), name, platform)
    if as_json:
        emit_json(rec.to_json())
        return
    fields = [
        ("name", rec.name),
        ("family", rec.family),
        ("version", rec.version),
        ("platform", rec.platform),
        ("status", rec.status),
        ("prefix", rec.prefix),
        ("created", f"{rec.created} by {rec.creator} on {rec.host}"),
        ("size", f"{human_size(rec.size)} in {rec.file_count} files"),
        ("spec", f"{rec.spec_source or '-'}" + (f" (sha256 {rec.spec_sha256[:12]})" if rec.spec_sha256 else "")),
        ("requested", " ".join(rec.requested_specs) or "-"),
        ("channels", " ".join(_channel_shown(n, rec.channel_urls.get(n, [])) for n in rec.channels)),
    ]
    if rec.retired:
        successor = rec.retired.get("successor") or "-"
        fields.append(("retired", f"successor {successor}: {rec.retired.get('message') or ''}"))
    if rec.unsealed:
        fields.append(("unsealed", f"{rec.unsealed.get('reason')} (by {rec.unsealed.get('by')})"))
    if rec.removed:
        r = rec.removed
        where = (f"moved to the trash ({r['trash']})" if r.get("trash") else
                 f"kept at its path for running jobs until a purge after {r.get('purge_after') or '?'}")
        fields.append(("removed", f"{r.get('at') or '?'} by {r.get('by') or '?'}; {where}"))
    # Every variable users get: the spec's own, then what the packages' activate.d scripts set (measured at publish).
    fields += [("variables", f"{k}={v}") for k, v in rec.variables.items()]
    activation = (rec.activation or {}).get("variables")
    if isinstance(activation, dict):  # cpkgs' own activate.d script sets the spec's: shown once, above
        fields += [("activation", f"{k}={v}") for k, v in activation.items() if rec.variables.get(k) != v]
    from cpkgs_admin.site.text import printable

    for k, v in fields:
        click.echo(f"{k:10} {printable(str(v))}")
    click.echo("")
    click.echo(package_table(rec.packages))


def _channel_shown(name: str, urls: list[str]) -> str:
    """A record's channel: its name, with the URLs it was read from where they differ (a mirror)."""
    return name if urls in ([], [name]) else f"{name}={','.join(urls)}"


@cli.command()
@click.argument("old")
@click.argument("new")
@json_option
@pass_ctx
def diff(c: Ctx, old: str, new: str, as_json: bool) -> None:
    """Packages added, removed and changed between two environments."""
    from cpkgs_admin.lifecycle.listing import diff_envs

    d = diff_envs(c.site(), old, new)
    if as_json:
        emit_json(d.to_json())
        return
    rows: list[tuple[str, str, str, str]] = []
    rows += [("+", p.name, "", f"{p.version}={p.build}") for p in d.added]
    rows += [("-", p.name, f"{p.version}={p.build}", "") for p in d.removed]
    rows += [("~", a.name, f"{a.version}={a.build}", f"{b.version}={b.build}") for a, b in d.changed]
    if not rows:
        c.say(f"{old} and {new} hold the same packages")
        return
    click.echo(table(rows, ["", "package", old, new]))


@cli.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["explicit", "yaml"]), default="explicit", show_default=True)
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def export(c: Ctx, name: str, fmt: str, platform: str | None) -> None:
    """Print an environment as an explicit lock file or environment.yml."""
    from cpkgs_admin.lifecycle.listing import export_env

    click.echo(export_env(c.site(), name, fmt, platform), nl=False)


@cli.command()
@click.argument("names", nargs=-1)
@json_option
@pass_ctx
def verify(c: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    """Check permissions and every file's integrity (exit 4 on problems)."""
    from cpkgs_admin.lifecycle.verify import verify_envs

    reports = verify_envs(c.site(), names)
    problems = sum(len(r.problems) for r in reports)
    if as_json:
        emit_json([r.to_json() for r in reports])
    else:
        from cpkgs_admin.site.text import printable

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


@cli.command()
@click.argument("name")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def seal(c: Ctx, name: str, platform: str | None) -> None:
    """Make an environment read-only again."""
    from cpkgs_admin.lifecycle.status import seal_env

    rec = seal_env(c.site(), name, platform)
    c.say(f"sealed {rec.name} ({rec.platform})")


@cli.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def unseal(c: Ctx, name: str, reason: str, platform: str | None) -> None:
    """Make an environment owner-writable for a maintenance window (audited)."""
    from cpkgs_admin.lifecycle.status import unseal_env

    rec = unseal_env(c.site(), name, reason, platform)
    c.say(f"unsealed {rec.name} ({rec.platform}); run 'cpkgs seal {rec.name}' when done")


@cli.command()
@click.argument("name")
@click.option("--successor", metavar="NEW", help="The environment users should move to.")
@click.option("--message", metavar="TEXT", help="Shown on activation and in modules.")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def retire(c: Ctx, name: str, successor: str | None, message: str | None, platform: str | None) -> None:
    """Mark an environment retired (it stays usable)."""
    from cpkgs_admin.lifecycle.status import retire_env, successor_warnings

    site = c.site()
    warnings: list[str] = []
    rec = retire_env(site, name, successor, message, platform, warnings)
    c.say(f"retired {rec.name} ({rec.platform})" + (f"; successor {successor}" if successor else ""))
    _warn([*warnings, *successor_warnings(site, rec)])
    from cpkgs_admin.outputs.usage.report import last_use_line

    last = last_use_line(site, rec.name, rec.platform)  # only when the site keeps usage logs this host can read
    if last:
        c.say(last)


@cli.command()
@click.argument("name")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def remove(c: Ctx, name: str, platform: str | None) -> None:
    """Hide an environment and refuse new activations; 'purge' after the grace moves it away."""
    from cpkgs_admin.lifecycle.status import remove_env, successor_warnings

    site = c.site()
    warnings: list[str] = []
    rec = remove_env(site, name, platform, warnings)
    c.say(f"removed {rec.name} ({rec.platform}): hidden, and refused on activation; running jobs keep it at "
          f"{rec.prefix} until 'cpkgs purge' after {(rec.removed or {}).get('purge_after')}")
    _warn([*warnings, *successor_warnings(site, rec)])


@cli.command()
@click.option("--older-than", metavar="DURATION",
              help="Only what was removed longer ago than this (default: the site's grace, trash_grace).")
@json_option
@pass_ctx
def purge(c: Ctx, older_than: str | None, as_json: bool) -> None:
    """Move removed envs past their grace into the trash and delete it; busy .nfs files are skipped and reported."""
    from cpkgs_admin.lifecycle.purge import purge_trash

    rep = purge_trash(c.site(), older_than)
    if as_json:
        emit_json(rep.to_json())
    else:
        for w in rep.waiting:
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


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def locks(ctx: click.Context, as_json: bool) -> None:
    """List held locks with owner and age."""
    if ctx.invoked_subcommand is not None:
        return
    from cpkgs_admin.site.locks import list_locks, notice, sweep_dead_locks

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
    from cpkgs_admin.site.audit import audited
    from cpkgs_admin.site.locks import break_lock

    site = c.site()
    info = break_lock(site.locks_dir, lock, site.config.lease_seconds)
    o = info.owner
    audited(site, "locks-break", lock=info.name, owner=o.__dict__ if o else None)
    c.say(f"broke {info.name}" + (f" (held by {o.user}@{o.host} pid {o.pid})" if o else ""))


@cli.command("write-profiles")
@pass_ctx
def write_profiles_cmd(c: Ctx) -> None:
    """Render <root>/etc/profile.d/conda.sh and conda.csh."""
    from cpkgs_admin.outputs.profiles import write_profiles

    changed = write_profiles(c.site())
    for p in changed:
        c.say(f"wrote {p}")
    if not changed:
        c.say("profiles are up to date")


@cli.command()
@json_option
@pass_ctx
def refresh(c: Ctx, as_json: bool) -> None:
    """Regenerate profiles, modulefiles and kernelspecs; remove orphans."""
    from cpkgs_admin.lifecycle.refresh import refresh_site

    rep = refresh_site(c.site())
    _warn(rep.warnings)
    if as_json:
        emit_json(rep.to_json())
        return
    for line in rep.lines():
        c.say(line)
    if not rep.changed:
        c.say("everything is up to date")


@cli.command()
@click.option("--path", "path_only", is_flag=True, help="Only print where the page is (any user; writes nothing).")
@json_option
@pass_ctx
def catalog(c: Ctx, path_only: bool, as_json: bool) -> None:
    """Render the catalog web page (every env, its packages, how to use it); print this host's index.html."""
    from cpkgs_admin.outputs.catalog import CatalogReport, catalog_platforms, index_file, render_catalog

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
    _report_damaged(rep.damaged)


@cli.command()
@click.argument("name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Archive to write (.tar.gz).")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def pack(c: Ctx, name: str, output: str, platform: str | None) -> None:
    """conda-pack archive of NAME for machines without the drive."""
    from cpkgs_admin.lifecycle.pack import pack_env

    out = pack_env(c.site(), name, Path(output), platform)
    c.say(
        f"wrote {out}; on the target: mkdir DIR && tar -xf {Path(out).name} -C DIR && "
        "DIR/bin/python DIR/bin/conda-unpack, then source DIR/bin/activate"
    )


@cli.command()
@click.argument("name")
@click.argument("directory", metavar="DIR")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def mirror(c: Ctx, name: str, directory: str, platform: str | None) -> None:
    """A local channel holding exactly NAME's packages."""
    from cpkgs_admin.lifecycle.pack import mirror_env

    rep = mirror_env(c.site(), name, Path(directory), platform)
    c.say(
        f"mirrored {rep.count} packages of {name} into {rep.directory} ({rep.from_cache} from the package cache, "
        f"{rep.fetched} from their recorded URLs, sha256 checked); channel {rep.directory.as_uri()}"
    )


@cli.command()
@click.option("--since", metavar="D", help="Only runs since D: a duration back from now (30d) or a date (2024-05-01).")
@click.option("--env", "env", metavar="NAME", help="Only this environment.")
@click.option("--unused", metavar="D", default="90d", show_default=True,
              help="List envs nobody used for D as retirement candidates.")
@click.option("--top", default=30, show_default=True, metavar="N", help="Packages shown (the JSON has all).")
@json_option
@pass_ctx
def usage(c: Ctx, since: str | None, env: str | None, unused: str, top: int, as_json: bool) -> None:
    """Runs, users and last use per env and users per package, from the usage logs (cpkgs.yaml usage.logs)."""
    from cpkgs_admin.outputs.usage.report import iso, usage_report

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


# -------------------------------------------------------------------------------------------------------------- user


@cli.command("link-user")
@click.option("--condarc", type=click.Path(dir_okay=False), help="File to edit (default: $CONDARC or ~/.condarc).")
@click.option("--dry-run", is_flag=True, help="Print the change as a unified diff; write nothing.")
@pass_ctx
def link_user(c: Ctx, condarc: str | None, dry_run: bool) -> None:
    """Add the site's shared envs to your own conda (envs_dirs)."""
    from cpkgs_admin.users.condarc import link_user as do_link

    rep = do_link(c.root, Path(condarc) if condarc else None, dry_run=dry_run)
    if dry_run and rep.diff:
        click.echo(rep.diff, nl=False)
    else:
        c.say(rep.message)
    _warn(rep.warnings)


@cli.command("unlink-user")
@click.option("--condarc", type=click.Path(dir_okay=False), help="File to edit (default: $CONDARC or ~/.condarc).")
@pass_ctx
def unlink_user(c: Ctx, condarc: str | None) -> None:
    """Remove exactly what link-user added."""
    from cpkgs_admin.users.condarc import unlink_user as do_unlink

    rep = do_unlink(c.root, Path(condarc) if condarc else None)
    c.say(rep.message)


@cli.command()
@click.option("--deep", is_flag=True, help="Admin side: also run verify on every environment.")
@json_option
@pass_ctx
def doctor(c: Ctx, deep: bool, as_json: bool) -> None:
    """Check this user's and this host's setup (exit 4 when a check fails)."""
    from cpkgs_admin.users.doctor import run_doctor

    rep = run_doctor(c.root, deep=deep)
    if as_json:
        emit_json(rep.to_json())
    else:
        for f in rep.findings:
            click.echo(f"[{f.status:4}] {f.check}: {f.message}" + (f" -> {f.fix}" if f.fix else ""))
    if rep.failed:
        raise CheckFailed(f"doctor: {rep.failed} check(s) failed")


@cli.command()
@click.argument("base")
@click.argument("directory", metavar="DIR")
@click.option("--force", is_flag=True, help="Use DIR even if it exists and is not empty.")
@pass_ctx
def extend(c: Ctx, base: str, directory: str, force: bool) -> None:
    """Personal layer in DIR on top of shared env BASE (pip installs go to DIR)."""
    from cpkgs_admin.users.layered import extend_env

    rep = extend_env(c.root, base, Path(directory), force=force)
    import shlex

    where = shlex.quote(str(rep.directory))  # pasted as is into a shell
    c.say(f"layer {rep.directory} on {rep.base}: conda activate {where}; pip install goes into the layer")
    if not rep.has_pip:
        c.say(f"note: {rep.base} has no pip; run '{rep.directory}/bin/python -m ensurepip' once for one in the layer")
    if rep.notice:
        click.echo(rep.notice, err=True)


# -------------------------------------------------------------------------------------------------------------- main


def _interrupted(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _interrupted_exit() -> int:
    _quiet_teardown()
    # On a terminal the cursor is still after the "^C" the terminal echoed.
    click.echo(("\n" if sys.stderr.isatty() else "") + "cpkgs: interrupted", err=True)
    return 130


def _quiet_teardown() -> None:
    """An interrupt can land while asyncio is setting up an event loop for rattler: freeing the half-made loop
    and the coroutine it never ran then prints "Exception ignored ..." and "never awaited" to stderr. The process
    is about to exit; the user gets one line, not those."""
    import warnings

    sys.unraisablehook = lambda _unraisable: None
    warnings.simplefilter("ignore")


def _run(argv: list[str] | None) -> int:
    if os.environ.get("_CPKGS_COMPLETE"):  # shell completion: click's own main() knows how
        cli.main(args=argv, prog_name="cpkgs")
    try:
        # click's main() without its interrupt handling, which writes an empty line to stderr before ours.
        args = list(sys.argv[1:] if argv is None else argv)
        with cli.make_context("cpkgs", args) as ctx:
            cli.invoke(ctx)
    except CpkgsError as exc:
        if _state["verbose"]:
            import traceback

            traceback.print_exc()
        from cpkgs_admin.site.text import printable

        # One line whatever it quotes (a path, a package's file name, a spec): control characters escaped.
        click.echo(f"cpkgs: {printable(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        _quiet_teardown()
        click.echo("cpkgs: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `cpkgs` (click >= 8.2): the help, as click shows it
            click.echo(exc.format_message(), err=True)
            return 2
        # One line, like every other error (click's own show() adds a usage block and a hint line).
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"cpkgs: {exc.format_message()}{hint}", err=True)
        return 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except (KeyboardInterrupt, EOFError):
        return _interrupted_exit()
    except BrokenPipeError:
        return 1
    except OSError as exc:
        # The filesystem failing under a command (EIO, EROFS, ENOSPC, a server gone): one line naming the path and
        # the errno; the locks a dead process leaves are recovered by the next one.
        if _state["verbose"]:
            import traceback

            traceback.print_exc()
        from cpkgs_admin.errors import os_error_text
        from cpkgs_admin.site.text import printable

        click.echo(f"cpkgs: {printable(os_error_text(exc))}", err=True)
        return 1
    except Exception as exc:
        if _interrupted(exc):  # Python 3.11 wraps an interrupt during some imports (e.g. "Error calling __set_name__")
            return _interrupted_exit()
        if _state["verbose"]:
            import traceback

            traceback.print_exc()
        click.echo(f"cpkgs: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", err=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    code = _run(argv)
    # py-rattler 0.28's native runtime can crash during interpreter finalization (SIGSEGV/SIGABRT in about a third
    # of runs after a solve or index): the work is done and every lock released by now, so leave without
    # finalizing. Flush first: os._exit skips Python's buffered-stream cleanup.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
    os._exit(code)
