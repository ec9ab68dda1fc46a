"""`cpkgs catalog`: render the catalog web page, or only say where it is (any user)."""

from __future__ import annotations

import click

from cpkgs_admin.cli.common import Ctx, emit_json, json_option, pass_ctx, report_damaged
from cpkgs_admin.outputs.catalog import CatalogReport, catalog_platforms, index_file, render_catalog


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
