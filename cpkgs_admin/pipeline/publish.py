"""Steps 6 and 7 of new-env: seal the staged env, then publish it: rename it into place (atomic on one filesystem:
users see no env or a whole sealed one), then its record, generated files (modulefiles, kernels, the catalog page)
and the audit line. From the publish point on an interrupt only waits: the env is there, the rest is best effort,
and a build killed in between has its record restored by the next run (restore)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from cpkgs_admin.errors import CpkgsError, EnvExists
from cpkgs_admin.integrity.tree import seal_tree
from cpkgs_admin.outputs.activation import keep_activation
from cpkgs_admin.outputs.sync import preflight, publish_outside
from cpkgs_admin.pipeline.job import Job
from cpkgs_admin.site.audit import audited
from cpkgs_admin.site.locks import site_locked
from cpkgs_admin.site.names import EnvName
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord, save_record


def seal(job: Job) -> None:
    """Step 6: every file and directory of the staged env read-only for everyone, the top still 0700 (private until
    the rename); from the scan the post-process made (nobody else can write the staging dir)."""
    seal_tree(job.staging, job.site.admin_gid(), top_mode=0o700, tree=job.tree)


def publish(job: Job, name: EnvName) -> list[str]:
    """Step 7: rename the sealed staging dir into place, then the record, generated files and audit line; the
    warnings."""
    site, record, staging = job.site, job.record, job.staging
    subdir, final = record.platform, Path(record.prefix)
    with site_locked(site):
        # Again, under the site lock: two families racing for one module or kernel name cannot both pass.
        preflight(site, name, subdir, record.all_packages)
        # From the publish point on, an interrupt waits for the record, the generated files and the audit
        # line: an env half registered (published, no record) is worse than finishing in a moment.
        with _interrupts_deferred() as interrupted:
            # The publish point: rename is atomic on one filesystem, so users see no env or a whole sealed
            # one. The top dir opens to users only after the rename: a kill in between leaves nothing they
            # can enter.
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    # NFS clients cache "no such file" for a while: another host published this name
                    # after our existence checks looked.
                    msg = f"environment {record.name} ({subdir}) already exists: another run published it meanwhile"
                    raise EnvExists(msg) from None
                raise
            os.chmod(final, 0o555)
            # The activate.d scripts run at their final prefix, once, here: the record keeps what they set,
            # so modulefiles and kernels written later on any host (refresh on a Mac) carry it.
            act_error = keep_activation(site, record)
            act_warning = [f"{record.name}: {act_error}; its modulefile and kernels get conda's own variables only"
                           ] if act_error else []
            save_record(site.record_path(record.name, subdir), record)
            # Still under the site lock (publish_outside takes it again, nested): one acquisition, not two.
            warnings = [*act_warning, *finish_publish(site, record, "ok")]
        if interrupted:
            warnings.append(f"interrupted after the publish point: {record.name} is published and recorded")
    return warnings


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[list[int]]:
    """SIGINT and SIGTERM only noted while the block runs (a list that gets the signal numbers); the default
    handling comes back after it. In the main thread only (signal handlers cannot be set elsewhere)."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    wanted = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in wanted}
    for sig in wanted:
        signal.signal(sig, lambda signum, _frame: got.append(signum))
    try:
        yield got
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def restore(site: Site, name: str, subdir: str, record: EnvRecord) -> list[str]:
    """A run died after the rename: the env NAME is complete and sealed; only its record (and what follows it) is
    missing. RECORD: the env's embedded one (leftovers.existing_env_problem). The warnings."""
    os.chmod(site.env_prefix(name, subdir), 0o555)
    save_record(site.record_path(name, subdir), record)
    return finish_publish(site, record, "record restored")


def finish_publish(site: Site, record: EnvRecord, result: str) -> list[str]:
    """After the publish point the env exists whatever happens next: generated files (modulefile, kernels) and
    the audit line are best effort. A failure is a warning naming the repair, not a failed command for an env
    that users can already activate."""
    warnings: list[str] = []
    try:
        publish_outside(site, record, warnings)
    except (CpkgsError, OSError) as exc:
        warnings.append(f"{record.name} is published, but its modulefile/kernels were not written: {exc}; "
                        "run 'cpkgs refresh'")
    try:
        audited(site, "new-env", env=record.name, platform=record.platform, packages=len(record.packages),
                result=result)
    except (CpkgsError, OSError) as exc:
        warnings.append(f"{record.name} is published, but the audit line was not written: {exc}")
    return warnings
