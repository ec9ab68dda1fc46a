"""`cpkgs install-tool`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cpkgs_admin.cli.common import Ctx, emit_json, human_size, json_option, pass_ctx, warn
from cpkgs_admin.pipeline.tool.build import ToolResult, install_tool


@click.command("install-tool")
@click.option("--platform", "platforms", multiple=True, metavar="SUBDIR",
              help="The installation to install it for (repeatable; default: this host's).")
@click.option("--wheel", "wheel", type=click.Path(dir_okay=False), metavar="FILE",
              help="Install this cpkgs wheel instead of the running cpkgs.")
@click.option("--rebuild", is_flag=True, help="Build again even when this cpkgs is already installed.")
@json_option
@pass_ctx
def install_tool_cmd(c: Ctx, platforms: tuple[str, ...], wheel: str | None, rebuild: bool, as_json: bool) -> None:
    """Put cpkgs itself on the share for each installation: a sealed build users' profiles put on PATH."""
    site = c.site()
    chatty = (sys.stderr.isatty() or c.verbose > 0) and not c.quiet and not as_json
    results = install_tool(site, platforms, Path(wheel) if wheel else None, rebuild,
                           log=(lambda m: click.echo(m, err=True)) if chatty else None)
    for r in results:
        warn(r.warnings)
    if as_json:
        emit_json([r.to_json() for r in results])
        return
    for r in results:
        for line in _lines(site.tool_bin(r.platform), r):
            c.say(line)


def _lines(tool_bin: Path, r: ToolResult) -> list[str]:
    if r.action == "current":
        return [f"cpkgs {r.version} for {r.platform} is already installed and current ({r.prefix}); nothing changed "
                "(--rebuild builds it again)"]
    out = []
    if r.action == "built":
        out.append(f"installed cpkgs {r.version} for {r.platform} at {r.prefix}: python {r.python}, {r.packages} "
                   f"packages, {r.files} files, {human_size(r.size)} in {r.seconds:.1f}s")
    was = ""
    if r.previous:
        kept = f"kept for running commands until 'cpkgs purge' after {r.purge_after}" if r.purge_after else "kept"
        was = f" (was {r.previous}: {kept})"
    out.append(f"{tool_bin} -> {r.build}{was}")
    return out
