"""What failed or killed builds leave under an installation's envs/: their staging dirs, removed by the next build of
the name, by any build once the name's lock is free, and by `purge`; and an env published by a run killed before it
wrote the record, which the next run of the name restores."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from cpkgs_admin.errors import BuildError, CpkgsError, EnvExists, os_error_text
from cpkgs_admin.integrity.manifest import EMBEDDED_RECORD
from cpkgs_admin.integrity.tree import make_removable
from cpkgs_admin.site.locks import env_locked
from cpkgs_admin.site.names import parse_name
from cpkgs_admin.site.paths import Site, staging_owner
from cpkgs_admin.site.records import EnvRecord, load_record_file, record_from_json


def remove_leftover(path: Path) -> None:
    """A staging dir of a run that died, or the empty file an interrupted run left in its place (discard_staging)."""
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            make_removable(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale_staging(site: Site, subdir: str, name: str | None = None,
                        log: Callable[[str], None] | None = None) -> tuple[list[str], list[str]]:
    """Staging dirs of builds that died, under SUBDIR's envs: (removed, could not be removed).

    Under NAME's own lock (a build of NAME), any staging dir for NAME belongs to a run that died. So does any other
    name's whose lock is free (taken at once, or over from a dead owner): a build killed where nothing could clean up
    (rattler aborting the process on a panic, kill -9, a host crash) leaves a 0700 dir that may never be built
    again under its name. Every build sweeps them, and so does `purge`."""
    removed: list[str] = []
    failed: list[str] = []
    try:
        entries = list(os.scandir(site.envs_dir(subdir)))
    except OSError:
        return removed, failed
    for entry in entries:
        owner = staging_owner(entry.name)
        if owner is None:
            continue
        try:
            if owner == name:
                remove_leftover(Path(entry.path))
            else:
                parse_name(owner)  # a lock path is made of it
                with env_locked(site, owner, subdir, timeout=0):
                    remove_leftover(Path(entry.path))
        except CpkgsError:
            continue  # a build of that name is running right now (LockBusy), or no name cpkgs would give a build
        if os.path.lexists(entry.path):
            failed.append(entry.path)
            continue
        removed.append(entry.path)
        if log:
            log(f"removed leftover staging dir {entry.name} of an interrupted run")
    return removed, failed


def discard_staging(staging: Path, *, fenced: bool) -> None:
    """Delete a failed build's staging dir. FENCED: the failure came during the install (an error, Ctrl-C), whose worker
    threads may still be linking files: they would recreate STAGING's directories, world-readable, after an
    rmtree. So it is renamed aside and an empty private file takes its name, on which their paths fail; the file
    stays until the next build of the name (or `purge`) removes it, like any leftover of an interrupted run."""
    doomed = [staging]
    if fenced:
        doomed = []
        for i in range(5):  # a writer may recreate the dir between our rename and our create: rename that too
            aside = staging.with_name(f"{staging.name}-discarded{i}")
            try:
                os.rename(staging, aside)
            except FileNotFoundError:
                pass
            except OSError:
                break
            else:
                doomed.append(aside)
            try:
                os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                break
            except FileExistsError:
                continue
            except OSError:
                break
        if staging.is_dir() and not staging.is_symlink():
            doomed.append(staging)  # recreated more often than we moved it: removed all the same (0700 first)
    for d in doomed:
        if d.is_dir() and not d.is_symlink():  # never the placeholder file
            remove_leftover(d)


@contextlib.contextmanager
def discarded_on_failure(staging: Path, name: str, *, fenced: Callable[[], bool]) -> Iterator[None]:
    """Run the block; when it fails, STAGING is discarded (fenced when FENCED() says rattler's install is running). The
    filesystem failing under the build (EIO, EROFS, ENOSPC outside rattler) is one line, BuildError: what is staged
    removed where it still can be (else by the next build)."""
    try:
        yield
    except OSError as exc:
        discard_staging(staging, fenced=fenced())
        raise BuildError(f"building {name} failed: {os_error_text(exc)}") from exc
    except BaseException:
        # An install that failed or was interrupted can leave rattler's threads linking the other packages.
        discard_staging(staging, fenced=fenced())
        raise


def existing_env_problem(site: Site, name: str, subdir: str) -> EnvRecord | None:
    """Raise EnvExists when NAME is taken; return an embedded record to restore when a run died after publishing."""
    rec_path = site.record_path(name, subdir)
    if rec_path.exists():
        rec = load_record_file(rec_path)
        raise EnvExists(
            f"environment {name} ({subdir}) already exists (status {rec.status}); environments are immutable: "
            "build a new version"
        )
    prefix = site.env_prefix(name, subdir)
    if prefix.exists() or prefix.is_symlink():
        embedded = prefix / EMBEDDED_RECORD
        if embedded.is_file():
            with contextlib.suppress(OSError, ValueError):
                return record_from_json(json.loads(embedded.read_bytes()), embedded)
        raise EnvExists(f"{prefix} exists but has no cpkgs record; remove it by hand or choose another name")
    return None
