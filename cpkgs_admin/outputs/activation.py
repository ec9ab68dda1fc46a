"""What an env's etc/conda/activate.d/*.sh scripts set, measured by running them as an unprivileged user (at publish,
`seal` and `refresh`), and kept in its record for hosts that cannot run them: the activation modulefiles and kernels
carry (conda.sh and conda.csh source the scripts themselves)."""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.site.paths import Site
from cpkgs_admin.site.records import EnvRecord

# Shell bookkeeping and what the module/kernel set themselves: not "variables the activate.d scripts set".
_NOT_ACTIVATION = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "PATH", "CONDA_PREFIX", "CONDA_DEFAULT_ENV"})


ACTIVATION_TIMEOUT = 60.0


@dataclass(frozen=True)
class Activation:
    """What an env's etc/conda/activate.d/*.sh scripts do to the environment, beyond conda's own PATH entry."""

    path_prepend: tuple[str, ...] = ()
    variables: tuple[tuple[str, str], ...] = ()


# Who runs an env's activate.d scripts when cpkgs measures what they set (at publish, seal, refresh): they are a
# channel's code, so never root. Run by root, the measuring shell runs as uid/gid 65534 (nobody/nogroup on Linux; on
# macOS an id no account has: either way one that owns nothing, and needs no passwd entry to be switched to), with
# no supplementary groups, a clean environment, no stdin and "/" (readable by anyone) as its working directory: a
# script can then read what every user can read and write nothing of the site's or the admin's. An admin who is not
# root builds with their own uid: switching to another user needs privileges, and an unprivileged user namespace
# (unshare -U) only renames the admin inside it while the kernel still grants the scripts everything the admin may
# write; so the scripts run as that admin, as they would when that admin activates the env themself.
MEASURING_UID = 65534


MEASURING_GID = 65534


def _run_sh(script: str, env: dict[str, str], where: Path) -> bytes:
    as_nobody = os.geteuid() == 0
    drop: dict[str, Any] = (
        {"user": MEASURING_UID, "group": MEASURING_GID, "extra_groups": []} if as_nobody else {}
    )
    try:
        # Its own session: a Ctrl-C at the terminal is cpkgs' to handle, not the scripts' to die of.
        proc: subprocess.CompletedProcess[bytes] = subprocess.run(
            ["/bin/sh", "-c", script], env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True,
            timeout=ACTIVATION_TIMEOUT, check=False, start_new_session=True, **drop,
        )
    except subprocess.TimeoutExpired:
        raise CpkgsError(f"{where}: activate.d scripts did not finish within {ACTIVATION_TIMEOUT:.0f}s") from None
    return proc.stdout


def _measuring_user() -> str:
    return f"uid {MEASURING_UID}" if os.geteuid() == 0 else "this user"


def _env0(dump: bytes) -> dict[str, str]:
    """`env -0` output -> variables."""
    out: dict[str, str] = {}
    for item in dump.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


_measured: dict[tuple[Path, str], Activation] = {}


def activation_of(prefix: Path, name: str) -> Activation:
    """activation_of_scripts, once per env and process (new-env records it, then writes the modulefile with it)."""
    key = (prefix, name)
    if key not in _measured:
        _measured[key] = activation_of_scripts(prefix, name)
    return _measured[key]


def activation_of_scripts(prefix: Path, name: str) -> Activation:
    """Run PREFIX's activate.d/*.sh in a clean `sh` with CONDA_PREFIX set, as an unprivileged user (see _run_sh),
    and diff `env -0` before and after.

    The one place this is computed; kernelspecs and modulefiles both use it. Values are fixed at publish: a script
    that reads the user's own environment (say $JAVA_HOME) gets the publisher's clean one.
    """
    act_dir = prefix / "etc" / "conda" / "activate.d"
    try:
        scripts = sorted(p for p in act_dir.iterdir() if p.name.endswith(".sh") and p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return Activation()
    if not scripts:
        return Activation()
    base_path = f"{prefix}/bin:/usr/bin:/bin"
    env = {"PATH": base_path, "CONDA_PREFIX": str(prefix), "CONDA_DEFAULT_ENV": name, "CONDA_SHLVL": "1",
           "HOME": "/nonexistent", "LC_ALL": "C"}
    # One shell: its environment, a separator no variable can contain (NUL-delimited, random), the scripts sourced
    # like conda does (one after another in sorted order, a failing one does not stop the rest; their own output
    # goes to stderr, away from the dumps), then its environment again.
    sep = f"cpkgs-{uuid.uuid4().hex}"
    # A script the measuring user cannot read would be skipped with a complaint on stderr (or end dash): an
    # activation measured without it would look complete. Checked first, by that user.
    unreadable = f"unreadable-{sep}:"
    readable = "".join(f"[ -r {shlex.quote(str(s))} ] || {{ printf '{unreadable}%s' {shlex.quote(s.name)}; exit 1; }}\n"
                       for s in scripts)
    sourcing = "".join(f". {shlex.quote(str(s))}\n" for s in scripts)
    out = _run_sh(f"{readable}env -0; printf '\\0{sep}\\0'; {{\n{sourcing}}} >&2; env -0", env, act_dir)
    if out.startswith(unreadable.encode()):
        script = out[len(unreadable):].decode("utf-8", "replace")
        raise CpkgsError(f"{act_dir}: {_measuring_user()} cannot read {script}: activation is measured as an "
                         "unprivileged user, so the env must be readable by all users")
    first, found, second = out.partition(f"\0{sep}\0".encode())
    if not found or not second:
        what = "an activate.d script ended the shell (exit?)" if found else "/bin/sh did not run them"
        raise CpkgsError(f"{act_dir}: cannot read what the scripts set: {what}")
    before, after = _env0(first), _env0(second)
    variables = tuple(
        sorted((k, v) for k, v in after.items() if k not in _NOT_ACTIVATION and before.get(k) != v)
    )
    new_path = after.get("PATH", base_path)
    prepend: list[str] = []
    if new_path != base_path:
        if new_path.endswith(":" + base_path):
            prepend = new_path[: -len(base_path) - 1].split(":")
        else:
            old = set(base_path.split(":"))
            prepend = [p for p in new_path.split(":") if p and p not in old]
    return Activation(path_prepend=tuple(p for p in prepend if p), variables=variables)


def activation_to_json(act: Activation) -> dict[str, Any]:
    return {"path_prepend": list(act.path_prepend), "variables": dict(act.variables)}


def activation_from_json(data: Any) -> Activation | None:
    """The activation a record keeps; None when it has none or it is not in the shape cpkgs writes."""
    if not isinstance(data, dict):
        return None
    prepend, variables = data.get("path_prepend"), data.get("variables")
    if not isinstance(prepend, list) or not isinstance(variables, dict):
        return None
    if not all(isinstance(p, str) for p in prepend) or not all(isinstance(v, str) for v in variables.values()):
        return None
    return Activation(path_prepend=tuple(prepend), variables=tuple(sorted(variables.items())))


def keep_activation(site: Site, rec: EnvRecord) -> str | None:
    """On a host of REC's platform, run its activate.d scripts at REC's prefix and keep what they set in REC (for
    other platforms' hosts); the reason when they failed, REC keeping what it had. Elsewhere nothing: they cannot
    run here."""
    if rec.platform != site.native_subdir:
        return None
    try:
        rec.activation = activation_to_json(activation_of(Path(rec.prefix), rec.name))
    except CpkgsError as exc:
        return str(exc)
    return None


def record_activation(site: Site, rec: EnvRecord, warnings: list[str] | None = None) -> Activation:
    """What REC's modulefile and kernels set beyond conda's own variables. On a host of the env's platform the
    activate.d scripts run (as they are now: an unseal may have changed them); elsewhere they cannot (and must
    not) run, and the activation the record kept from publish is used, or, without one, nothing beyond what conda
    itself sets (PATH, CONDA_PREFIX, CONDA_DEFAULT_ENV). Scripts that fail here fall back to the kept activation
    (one env's broken script must not stop `refresh` or `retire` for the site), with a line in WARNINGS."""
    kept = activation_from_json(rec.activation)
    if rec.platform == site.native_subdir:
        try:
            return _with_spec_variables(activation_of(Path(rec.prefix), rec.name), rec)
        except CpkgsError as exc:
            if warnings is not None:
                what = "the variables kept at publish" if kept is not None else "conda's own variables only"
                warnings.append(f"{rec.name}: {exc}; its modulefile and kernels get {what}")
    return _with_spec_variables(kept or Activation(), rec)


def _with_spec_variables(act: Activation, rec: EnvRecord) -> Activation:
    """The spec file's variables (the record keeps them) under what the scripts measurably set: the measurement
    keeps only what changed from the measuring shell's own environment (LC_ALL=C is already set there), and the
    packages' scripts run after cpkgs' own 00- script, so their values win."""
    if not rec.variables:
        return act
    merged = {**rec.variables, **dict(act.variables)}
    return Activation(path_prepend=act.path_prepend, variables=tuple(merged.items()))
