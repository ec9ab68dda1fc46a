"""What users run on their own files: `cpkgs link-user`, `unlink-user`, `extend`."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from cpkgs_admin.cli.common import Ctx, pass_ctx, warn
from cpkgs_admin.users.condarc import link_user as do_link
from cpkgs_admin.users.condarc import unlink_user as do_unlink
from cpkgs_admin.users.layered import extend_env


@click.command("link-user")
@click.option("--condarc", type=click.Path(dir_okay=False), help="File to edit (default: $CONDARC or ~/.condarc).")
@click.option("--dry-run", is_flag=True, help="Print the change as a unified diff; write nothing.")
@pass_ctx
def link_user(c: Ctx, condarc: str | None, dry_run: bool) -> None:
    """Add the site's shared envs to your own conda (envs_dirs)."""
    rep = do_link(c.root, Path(condarc) if condarc else None, dry_run=dry_run)
    if dry_run and rep.diff:
        click.echo(rep.diff, nl=False)
    else:
        c.say(rep.message)
    warn(rep.warnings)


@click.command("unlink-user")
@click.option("--condarc", type=click.Path(dir_okay=False), help="File to edit (default: $CONDARC or ~/.condarc).")
@pass_ctx
def unlink_user(c: Ctx, condarc: str | None) -> None:
    """Remove exactly what link-user added."""
    rep = do_unlink(c.root, Path(condarc) if condarc else None)
    c.say(rep.message)


@click.command()
@click.argument("base")
@click.argument("directory", metavar="DIR")
@click.option("--force", is_flag=True, help="Use DIR even if it exists and is not empty.")
@pass_ctx
def extend(c: Ctx, base: str, directory: str, force: bool) -> None:
    """Personal layer in DIR on top of shared env BASE (pip installs go to DIR)."""
    rep = extend_env(c.root, base, Path(directory), force=force)
    where = shlex.quote(str(rep.directory))  # pasted as is into a shell
    c.say(f"layer {rep.directory} on {rep.base}: conda activate {where}; pip install goes into the layer")
    if not rep.has_pip:
        c.say(f"note: {rep.base} has no pip; run '{rep.directory}/bin/python -m ensurepip' once for one in the layer")
    if rep.notice:
        click.echo(rep.notice, err=True)
