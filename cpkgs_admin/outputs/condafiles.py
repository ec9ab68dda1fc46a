"""conda's own files in a cpkgs env, written as conda 26.x writes and reads them (the files named are conda's source,
in the tarball under tests/thirdparty):

- `conda-meta/frozen` (CEP 22; conda/core/prefix_data.py is_frozen, assert_not_frozen): in every sealed env. conda
  then refuses install, update, remove, `env remove` and `env update` even for root (a user's conda already cannot
  write the env); its message, shown by conda, says what to do instead. conda reads it as JSON and fails on anything
  else, so the file is always a JSON object.
- `conda-meta/state` (conda/core/prefix_data.py get_environment_env_vars; conda/activate.py
  _get_environment_env_vars): the spec's `variables:` as the env's env_vars. conda's activation sets and unsets them,
  `conda env config vars list` and `conda env export` show them.
- `conda-meta/history` (conda/history.py): one entry with the requested specs, so `conda env export --from-history`
  gives what the spec asked for. It names no conda version: a conda older than a `# conda version:` line refuses
  to read the env's requests (History.get_user_requests).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

from cpkgs_admin.site.channels import CHANNEL_NAME
from cpkgs_admin.site.files import atomic_write
from cpkgs_admin.site.text import printable

FROZEN = "conda-meta/frozen"
STATE = "conda-meta/state"
HISTORY = "conda-meta/history"


def frozen_text(name: str, root: Path) -> str:
    # conda prints the message indented under its own line (conda/exceptions.py EnvironmentIsFrozenError)
    message = (f"{name} is a shared, read-only environment of the cpkgs site {printable(str(root))}: conda must not "
               "change it.\nAdmins build a new version (cpkgs new-env); for packages of your own on top of it:\n"
               f"    cpkgs extend {name} DIR")
    return json.dumps({"message": message}, ensure_ascii=False) + "\n"


def frozen_problem(prefix: Path) -> str | None:
    """Why PREFIX's marker would not protect it, or None."""
    try:
        data = json.loads((prefix / FROZEN).read_bytes())
    except FileNotFoundError:
        return "missing: conda would let root change this env; run 'cpkgs seal' on it"
    except (OSError, ValueError) as exc:
        return f"not conda's JSON marker ({exc}): conda fails on it; run 'cpkgs seal' on it"
    if not isinstance(data, dict) or not isinstance(data.get("message", ""), str):
        return "not a JSON object with a message: conda fails on it; run 'cpkgs seal' on it"
    return None


def write_frozen(prefix: Path, name: str, root: Path) -> None:
    """The marker into PREFIX, whose conda-meta/ may be sealed: opened for its owner (or root) for the write; the
    caller seals it again."""
    meta = prefix / "conda-meta"
    st = os.lstat(meta)
    if not st.st_mode & stat.S_IWUSR:
        os.chmod(meta, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    atomic_write(prefix / FROZEN, frozen_text(name, root), 0o444)


def remove_frozen(prefix: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (prefix / FROZEN).unlink()


def state_text(variables: dict[str, str]) -> str:
    """conda's own format (json.dumps, ensure_ascii off: conda/core/prefix_data.py _write_environment_state_file)."""
    return json.dumps({"env_vars": dict(variables)}, ensure_ascii=False)


def _conda_time(created: str) -> str:
    try:
        return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return printable(created)


def history_text(record: Any) -> str:
    """One history entry as conda writes one for `conda create`: when, the command, every package linked
    (`+channel/subdir::dist`, channel by name where the request named it, else its URL, as conda's dist strings),
    and the requested specs (a lock file's build requested none: then every package counts, as for `--from`)."""
    lines = [f"==> {_conda_time(record.created)} <==",
             f"# cmd: cpkgs new-env {record.name} ({printable(record.spec_source or 'command line')})"]
    for p in record.packages:
        channel = p.channel if CHANNEL_NAME.match(p.channel) else p.url.rsplit("/", 2)[0]
        dist = p.filename.removesuffix(".conda").removesuffix(".tar.bz2") or f"{p.name}-{p.version}-{p.build}"
        lines.append(f"+{channel}/{p.subdir}::{dist}")
    specs = list(record.requested_specs) or [p.name for p in record.packages]
    lines.append(f"# update specs: {specs!r}")
    return "\n".join(lines) + "\n"
