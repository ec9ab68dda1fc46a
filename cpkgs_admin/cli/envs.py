"""What the records say: `cpkgs list`, `info`, `diff`, `export` (light: they read records only)."""

from __future__ import annotations

from pathlib import Path

import click

from cpkgs_admin.cli.common import (
    Ctx,
    emit_json,
    human_size,
    json_option,
    package_table,
    pass_ctx,
    report_damaged,
    table,
)
from cpkgs_admin.lifecycle.listing import diff_envs, export_env, list_envs
from cpkgs_admin.site.records import PackageEntry, get_record
from cpkgs_admin.site.text import printable


@click.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include retired and removed environments.")
@json_option
@pass_ctx
def list_cmd(c: Ctx, show_all: bool, as_json: bool) -> None:
    """List environments (reads records only)."""
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
    report_damaged(damaged)


def _status_words(status: str, purge_after: str | None) -> str:
    """A removed env still at its path says until when (a purge after that moves it away)."""
    if status == "removed" and purge_after:
        return f"removed, kept until {purge_after[:16].replace('T', ' ')}"
    return status


@click.command()
@click.argument("name")
@click.option("--platform", metavar="SUBDIR", help="Which platform's env, when NAME exists on several.")
@json_option
@pass_ctx
def info(c: Ctx, name: str, platform: str | None, as_json: bool) -> None:
    """Show an environment's record and packages."""
    rec = get_record(c.site(), name, platform)
    if as_json:
        # One list of packages, both kinds ("kind": "conda" | "pypi"); the record file keeps them apart.
        doc = rec.to_json()
        emit_json({**doc, "packages": [*doc.pop("packages"), *doc.pop("pypi_packages")]})
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
    if rec.pip is not None:
        fields.append(("pip", " ".join(rec.pip.get("requested") or []) or "-"))
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
    for k, v in fields:
        click.echo(f"{k:10} {printable(str(v))}")
    click.echo("")
    click.echo(package_table(rec.all_packages))


def _shown_version(p: PackageEntry) -> str:
    return f"{p.version} (pypi)" if p.kind == "pypi" else f"{p.version}={p.build}"


def _channel_shown(name: str, urls: list[str]) -> str:
    """A record's channel: its name, with the URLs it was read from where they differ (a mirror)."""
    return name if urls in ([], [name]) else f"{name}={','.join(urls)}"


@click.command()
@click.argument("old")
@click.argument("new")
@json_option
@pass_ctx
def diff(c: Ctx, old: str, new: str, as_json: bool) -> None:
    """Packages added, removed and changed between two environments."""
    d = diff_envs(c.site(), old, new)
    if as_json:
        emit_json(d.to_json())
        return
    rows: list[tuple[str, str, str, str]] = []
    rows += [("+", p.name, "", _shown_version(p)) for p in d.added]
    rows += [("-", p.name, _shown_version(p), "") for p in d.removed]
    rows += [("~", a.name, _shown_version(a), _shown_version(b)) for a, b in d.changed]
    if not rows:
        c.say(f"{old} and {new} hold the same packages")
        return
    click.echo(table(rows, ["", "package", old, new]))


@click.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["explicit", "yaml", "pip"]), default="explicit", show_default=True,
              help="explicit: conda's lock file; yaml: environment.yml; pip: the pip part's pins (--require-hashes).")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def export(c: Ctx, name: str, fmt: str, platform: str | None) -> None:
    """Print an environment as an explicit lock file or environment.yml."""
    click.echo(export_env(c.site(), name, fmt, platform), nl=False)
