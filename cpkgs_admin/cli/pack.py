"""Envs for places without the drive: `cpkgs pack`, `mirror`."""

from __future__ import annotations

from pathlib import Path

import click

from cpkgs_admin.cli.common import Ctx, pass_ctx
from cpkgs_admin.lifecycle.pack import mirror_env, pack_env


@click.command()
@click.argument("name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Archive to write (.tar.gz).")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def pack(c: Ctx, name: str, output: str, platform: str | None) -> None:
    """conda-pack archive of NAME for machines without the drive."""
    out = pack_env(c.site(), name, Path(output), platform)
    c.say(
        f"wrote {out}; on the target: mkdir DIR && tar -xf {Path(out).name} -C DIR && "
        "DIR/bin/python DIR/bin/conda-unpack, then source DIR/bin/activate"
    )


@click.command()
@click.argument("name")
@click.argument("directory", metavar="DIR")
@click.option("--platform", metavar="SUBDIR")
@pass_ctx
def mirror(c: Ctx, name: str, directory: str, platform: str | None) -> None:
    """A local channel holding exactly NAME's packages."""
    rep = mirror_env(c.site(), name, Path(directory), platform)
    c.say(
        f"mirrored {rep.count} packages of {name} into {rep.directory} ({rep.from_cache} from the package cache, "
        f"{rep.fetched} from their recorded URLs, sha256 checked); channel {rep.directory.as_uri()}"
    )
    if rep.wheels:
        simple = (rep.directory / "pypi" / "simple").as_uri()
        c.say(f"pip part: {rep.wheels} wheels in {rep.directory / 'pypi'} (index {simple}, find-links "
              f"{rep.directory / 'pypi' / 'files'})")
