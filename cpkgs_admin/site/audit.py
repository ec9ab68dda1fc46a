"""The audit log (`.cpkgs/audit.log`): one JSON line per change to the site, appended under the site lock."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from typing import Any

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.site.files import NO_FOLLOW
from cpkgs_admin.site.locks import site_locked
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.process import current_command, current_user
from cpkgs_admin.site.records import timestamp


def audit(site: Site, entry: dict[str, Any]) -> None:
    """Append one JSON line to SITE's audit log. Callers hold the site lock: O_APPEND is not atomic across NFS
    clients."""
    audit_log = site.audit_log
    line = {
        "time": timestamp(),
        "user": current_user(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": current_command(),
        **entry,
    }
    audit_log.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Readable and writable by the admins only (Site.private_modes): the admin group's where the site has one (its
    # dirs are setgid: the group comes from the directory), so every admin can append. Users have no business
    # reading it.
    parent = os.stat(audit_log.parent)
    shared = site.config.admin_group is not None
    mode = site.private_modes()[1]
    # The directory may be the admin group's to write: a symlink or a hard link planted at the name must not make
    # root append to a file of someone's choosing.
    try:
        fd = os.open(audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NO_FOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CpkgsError(f"{audit_log} is a symlink: cpkgs does not write through it (remove it)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise CpkgsError(f"{audit_log} is not a plain file (a hard link or a special file): cpkgs does not write "
                             "to it (move it away)")
        if st.st_uid == os.geteuid():
            # Neither the umask of whoever created it nor a group from before the site had an admin group may lock
            # the other admins out.
            if shared and st.st_gid != parent.st_gid:
                os.fchown(fd, -1, parent.st_gid)
            if stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def audited(site: Site, action: str, **fields: Any) -> None:
    """Append an audit line under the site lock."""
    with site_locked(site):
        audit(site, {"action": action, **fields})
