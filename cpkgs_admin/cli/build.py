"""`cpkgs new-env`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cpkgs_admin.cli.common import Ctx, emit_json, human_size, json_option, package_table, pass_ctx, warn
from cpkgs_admin.pipeline.build import new_env as build_new_env
from cpkgs_admin.pipeline.job import BuildRequest
from cpkgs_admin.site.names import parse_name


@click.command("new-env")
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
@click.option("--pip-lock", "pip_lock", type=click.Path(dir_okay=False),
              help="With --lock: the pip part's pins (cpkgs export NAME --format pip).")
@click.option("--pip-index", "pip_index", metavar="URL|DIR",
              help="Take the pip part from this index or wheel directory instead of cpkgs.yaml's pypi: section.")
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
    pip_lock: str | None,
    pip_index: str | None,
    dry_run: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a sealed, versioned environment NAME (e.g. ml-pyroot-2024.1)."""
    if quiet:
        c.quiet = True

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
        pip_lock=Path(pip_lock) if pip_lock else None,
        pip_index=pip_index,
    )
    # Progress (rattler's bars, step lines) on a terminal or with -v; plain output otherwise, so that a failure
    # in a script or a test is exactly one line on stderr.
    progress = sys.stderr.isatty() and not c.quiet and not as_json
    chatty = (progress or c.verbose > 0) and not c.quiet
    result = build_new_env(site, req, progress=progress, log=_log if chatty else None)
    warn(result.warnings)
    if as_json:
        emit_json(result.to_json())
        return
    pypi = f" conda + {len(result.pypi_packages)} pypi" if result.pypi_packages else ""
    if dry_run:
        click.echo(package_table([*result.packages, *result.pypi_packages]))
        c.say(f"dry run: {len(result.packages)}{pypi} packages for {name} ({result.platform}); nothing written")
        return
    c.say(
        f"built {name} ({result.platform}) at {result.prefix}: {len(result.packages)}{pypi} packages, "
        f"{result.file_count} files, {human_size(result.size)} in {result.seconds:.1f}s"
    )


def _log(msg: str) -> None:
    click.echo(msg, err=True)
