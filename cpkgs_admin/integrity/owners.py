"""Who may own an env's files (Owners), and group membership by account."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path


class Owners:
    """Who may own an env's files: root, the owner of the env's top directory (who built it), members of the site's
    admin group, and, for a package's files hard-linked from the site cache, whoever owns that package's extracted
    directory there (the admin who extracted it). Anyone else's file in a sealed env could be changed by its owner
    at will: a file replaced in a cache directory others could write."""

    def __init__(self, top_uid: int, cache: Path | None, admin_gid: int | None = None) -> None:
        self.base = {0, top_uid}
        self.cache = cache
        self.admin_gid = admin_gid
        self._entry: dict[str, int | None] = {}
        self._admin: dict[int, bool] = {}

    def allowed(self, dist: str, uid: int) -> bool:
        if uid in self.base:
            return True
        if self.admin_gid is not None:
            if uid not in self._admin:
                self._admin[uid] = in_group(uid, self.admin_gid)
            if self._admin[uid]:
                return True
        if not dist or self.cache is None:
            return False
        if dist not in self._entry:
            try:
                self._entry[dist] = os.stat(self.cache / dist).st_uid
            except OSError:
                self._entry[dist] = None
        return uid == self._entry[dist]


def in_group(uid: int, gid: int) -> bool:
    """Whether UID's account has GID as its primary group or is listed as a member of it."""

    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return False
    if pw.pw_gid == gid:
        return True
    try:
        return pw.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False
