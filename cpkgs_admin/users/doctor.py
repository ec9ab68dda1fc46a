"""`cpkgs doctor`: one finding per check of this user's and this host's setup, each with what to do.

A finding is ok, warn or fail; the command exits 4 when any check fails. User side: the site is mounted and
readable, whether it sits on NFS (then the NFS rules matter), this host's installation, the shell profile,
CONDA_PKGS_DIRS, the condarc's envs_dirs and pkgs_dirs, and SQLite databases (IPython history, Jupyter notebook
signatures) on network drives. Admin side, when this user can write the site: locks past their lease, unsealed
envs, trash past the grace period, and with --deep a full `verify`. Each check judges with the rules of the command
it is about (link-user's for the condarc, purge's for the trash, verify itself); whether a path is on a network
drive comes from the mount table (mounts.py).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cpkgs_admin
from cpkgs_admin import __version__
from cpkgs_admin.errors import CpkgsError
from cpkgs_admin.lifecycle.guards import missing_guards, stray_entries
from cpkgs_admin.lifecycle.purge import purge_due, trash_past_grace
from cpkgs_admin.lifecycle.verify import verify_envs
from cpkgs_admin.site.config import parse_duration
from cpkgs_admin.site.locks import list_locks
from cpkgs_admin.site.paths import ENVS_GUARD, INSTALLATION_VAR, Site, native_subdir, open_site
from cpkgs_admin.site.records import DAMAGED_RECORD_HINT, EnvRecord, epoch_of, load_all, load_record_file, removed_line
from cpkgs_admin.site.text import printable
from cpkgs_admin.site.tools import build_of, current_build, running_tool, tool_info, tool_platforms, tool_records
from cpkgs_admin.users.condarc import (
    OWN_ENVS,
    SHARED_FIRST_WHY,
    conda_expand,
    default_condarc,
    envs_dirs_items,
    pkgs_dirs_items,
    read_condarc,
    shared_envs_entry,
    shared_first,
)
from cpkgs_admin.users.mounts import NETWORK_FSTYPES, current_mounts, mount_of, network_fstype

OK, WARN, FAIL = "ok", "warn", "fail"


# ----------------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Finding:
    status: str  # ok | warn | fail
    check: str
    message: str
    fix: str | None = None


@dataclass
class DoctorReport:
    root: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for f in self.findings if f.status == FAIL)

    @property
    def warned(self) -> int:
        return sum(1 for f in self.findings if f.status == WARN)

    def add(self, status: str, check: str, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(status, check, message, fix))

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.failed == 0,
            "failed": self.failed,
            "warnings": self.warned,
            "findings": [asdict(f) for f in self.findings],
        }


# ----------------------------------------------------------------------------------------------------- checks


def run_doctor(
    root: Path,
    *,
    deep: bool = False,
    environ: Mapping[str, str] | None = None,
    mounts: Iterable[Any] | None = None,
) -> DoctorReport:
    """Every check, in the order a user would fix them. `environ` and `mounts` default to this process's."""
    env = dict(os.environ if environ is None else environ)
    table = list(current_mounts() if mounts is None else mounts)
    rep = DoctorReport(root=str(root))
    site: Site | None = None
    try:
        site = open_site(root)
    except CpkgsError as exc:
        rep.add(FAIL, "site", str(exc), "mount the drive, or point --root / CPKGS_ROOT at the site")
    else:
        rep.add(OK, "site", f"{root} is mounted and readable (cpkgs.yaml schema {site.config.schema})")
        _check_filesystem(rep, site, table)
        _check_installation(rep, site)
        _check_tool(rep, site)
        _check_profile(rep, site, env)
        _check_active_env(rep, site, env)
    _check_pkgs_cache(rep, site, env, table)
    _check_condarc(rep, site, env, table)
    _check_sqlite(rep, env, table)
    if site is not None:
        if os.access(site.state_dir, os.W_OK):
            _check_admin(rep, site)
        else:
            rep.add(OK, "admin", f"admin checks skipped: {site.state_dir} is not writable by you")
        if deep:
            _check_verify(rep, site)
    return rep


def _check_filesystem(rep: DoctorReport, site: Any, mounts: list[Any]) -> None:
    m = mount_of(site.root, mounts)
    if m is None:
        rep.add(OK, "filesystem", f"{site.root}: mount table unavailable; assuming a network drive")
    elif m.fstype.lower() in NETWORK_FSTYPES:
        rep.add(OK, "filesystem", f"{site.root} is on {m.fstype} ({m.device or m.mountpoint}): the NFS rules apply")
    else:
        rep.add(OK, "filesystem", f"{site.root} is on {m.fstype or 'an unknown filesystem'} (local, not NFS)")


def _check_installation(rep: DoctorReport, site: Any) -> None:
    sub = native_subdir()
    use = site.host_platform()
    served = ", ".join(site.config.platforms)
    if use is None:
        rep.add(
            FAIL,
            "installation",
            f"this host is {sub}; the site serves {served} only",
            f"ask the site admins to add it: cpkgs init --platform {sub}",
        )
        return
    inst, path = site.installation_name(use), site.installation(use)
    if not path.is_dir():
        rep.add(FAIL, "installation", f"{sub} maps to {inst}, but {path} does not exist", "run 'cpkgs init' (admins)")
        return
    note = "" if sub in site.config.platforms else f" (no {sub} installation: falls back to {use} under Rosetta)"
    try:
        count = sum(1 for e in os.scandir(site.envs_dir(use)) if not e.name.startswith(".") and e.name != ENVS_GUARD)
    except OSError:
        count = 0
    rep.add(WARN if note else OK, "installation", f"{sub} -> {inst} ({path}, {count} env(s)){note}")


def _check_tool(rep: DoctorReport, site: Site) -> None:
    """The installation's cpkgs command (cpkgs install-tool), and which cpkgs this user runs."""
    use = site.host_platform()
    if use is None or not site.installation(use).is_dir():
        return  # the installation check said why
    inst, link = site.installation_name(use), site.tool_bin(use)
    build = current_build(site, use)
    if build is None:
        what = f"{link} is not a link to a tool build" if os.path.lexists(link) else f"{inst} has no cpkgs tool"
        rep.add(WARN, "tool", f"{what}: users of this host have no cpkgs command",
                f"an admin runs 'cpkgs install-tool --platform {use}'")
        return
    info = tool_info(site.tool_build(build, use))
    if info is None:
        rep.add(FAIL, "tool", f"{link} points to {build}, which is missing", "an admin runs 'cpkgs install-tool'")
        return
    running = running_tool()
    mine = "" if running and running.get("prefix") == info.get("prefix") else (
        f"; you run cpkgs {__version__} from {Path(cpkgs_admin.__file__).parent}")
    rep.add(OK, "tool", printable(f"cpkgs {info.get('version')} is on the share for {inst} ({link}){mine}"))


def _check_tool_builds(rep: DoctorReport, site: Site) -> None:
    """Superseded tool builds past their grace, awaiting `cpkgs purge`."""
    now = time.time()
    due = [f"{build_of(r)} ({r.platform})" for p in tool_platforms(site) for r in tool_records(site, p)
           if (epoch_of((r.extra.get("superseded") or {}).get("purge_after")) or now + 1) <= now]
    if due:
        rep.add(WARN, "tool", f"superseded cpkgs tool builds past their grace: {', '.join(due)}", "run 'cpkgs purge'")


def _check_profile(rep: DoctorReport, site: Any, env: Mapping[str, str]) -> None:
    profile = site.profile_dir / "conda.sh"
    fix = f"add 'source {profile}' to ~/.bashrc or ~/.zshrc (csh/tcsh: source {site.profile_dir / 'conda.csh'})"
    have_root, have_inst = env.get("CPKGS_ROOT"), env.get(INSTALLATION_VAR)
    if not have_root and not have_inst:
        rep.add(WARN, "profile", "the site profile is not sourced in this shell (CPKGS_ROOT is unset)", fix)
        return
    problems = []
    if not have_root or os.path.realpath(have_root) != os.path.realpath(site.root):
        problems.append(f"CPKGS_ROOT={have_root or '(unset)'}, not {site.root}")
    use = site.host_platform()
    expect = site.installation_name(use) if use else None
    if expect is not None and have_inst != expect:
        problems.append(f"{INSTALLATION_VAR}={have_inst or '(unset)'}, not {expect} for this host")
    if problems:
        rep.add(
            FAIL,
            "profile",
            "; ".join(problems),
            f"in a new shell, source {profile} (a value inherited from another host or site is stale)",
        )
    else:
        rep.add(OK, "profile", f"sourced: CPKGS_ROOT={have_root}, {INSTALLATION_VAR}={have_inst}")


def _check_active_env(rep: DoctorReport, site: Any, env: Mapping[str, str]) -> None:
    """A shell still using a removed env (activated before the remove; a layer on one): it works until the purge
    after the grace moves the env away. Says nothing otherwise."""
    prefix, use = env.get("CONDA_PREFIX"), site.host_platform()
    if not prefix or use is None:
        return
    base = Path(prefix)
    # A personal layer (cpkgs extend): the first line of its layer file is its base's prefix.
    with contextlib.suppress(OSError, IndexError, ValueError):
        base = Path((base / "conda-meta" / "cpkgs" / "layer").read_text(encoding="utf-8").splitlines()[0])
    if base.parent != site.envs_dir(use):
        return
    try:
        rec = load_record_file(site.record_path(base.name, use))
    except CpkgsError:
        return  # not a shared env cpkgs knows (verify and list report damaged records)
    removed = rec.removed or {}
    if rec.status != "removed" or removed.get("trash"):
        return
    successor = (rec.retired or {}).get("successor")
    rep.add(WARN, "active-env", f"{removed_line(rec).removeprefix('cpkgs: ')}: this shell's {prefix} works until "
            f"the first 'cpkgs purge' after {removed.get('purge_after') or 'the grace'}",
            f"conda deactivate, then conda activate {successor}" if successor else
            "conda deactivate, then activate a current env ('conda env list')")


def _check_pkgs_cache(rep: DoctorReport, site: Any, env: Mapping[str, str], mounts: list[Any]) -> None:
    raw = env.get("CONDA_PKGS_DIRS", "")
    # conda splits sequence settings given as environment variables on commas (SequenceParameter's default).
    dirs = [d.strip() for d in raw.split(",") if d.strip()]
    fix_profile = "source the site's conda.sh: it creates a private 0700 cache on local disk"
    if not dirs:
        rep.add(WARN, "pkgs-cache", "CONDA_PKGS_DIRS is unset: conda would cache in its default dirs", fix_profile)
        return
    path = conda_expand(dirs[0], env)
    problems: list[str] = []
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        fix = f"mkdir -m 0700 {path}; or {fix_profile}"
        rep.add(WARN, "pkgs-cache", f"CONDA_PKGS_DIRS={path} does not exist yet", fix)
        return
    except OSError as exc:
        rep.add(FAIL, "pkgs-cache", f"CONDA_PKGS_DIRS={path}: {exc.strerror}", fix_profile)
        return
    if stat.S_ISLNK(st.st_mode):
        problems.append("is a symlink (someone could point it anywhere)")
    elif not stat.S_ISDIR(st.st_mode):
        problems.append("is not a directory")
    if st.st_uid != os.getuid():
        problems.append(f"is owned by uid {st.st_uid}, not you")
    if stat.S_IMODE(st.st_mode) != 0o700:
        problems.append(f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700")
    fstype = network_fstype(path, mounts)
    if fstype:
        problems.append(f"is on {fstype}, not on local disk")
    if site is not None and _is_under(path, site.root):
        problems.append(f"is inside the site root {site.root}")
    if problems == [f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"] and stat.S_ISDIR(st.st_mode):
        rep.add(FAIL, "pkgs-cache", f"CONDA_PKGS_DIRS={path} {problems[0]}", f"chmod 700 {path}")
    elif problems:
        rep.add(FAIL, "pkgs-cache", f"CONDA_PKGS_DIRS={path} " + "; ".join(problems), fix_profile)
    else:
        rep.add(OK, "pkgs-cache", f"CONDA_PKGS_DIRS={path}: local, yours, 0700")


def _is_under(path: str, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip("/") + "/")


def _check_condarc(rep: DoctorReport, site: Site | None, env: Mapping[str, str], mounts: list[Any]) -> None:
    path = default_condarc(env)
    try:
        doc = read_condarc(path)
    except CpkgsError as exc:
        rep.add(FAIL, "condarc", str(exc), "fix the file by hand (or move it away); conda cannot read it either")
        return
    if doc is None:
        rep.add(OK, "condarc", f"{path} does not exist (only your own conda needs it: 'cpkgs link-user')")
        return
    if site is not None:
        _check_envs_dirs(rep, site, env, path, doc)
    # link-user's own rules for the items (condarc.envs_dirs_items, pkgs_dirs_items), in doctor's words
    for item, resolved, fstype in pkgs_dirs_items(doc, env, mounts):
        if fstype:
            rep.add(
                WARN,
                "pkgs_dirs",
                f"{path}: pkgs_dirs item {item} is on {fstype}",
                "remove pkgs_dirs from the condarc: the site's conda.sh sets CONDA_PKGS_DIRS to local disk",
            )
        elif site is not None and _is_under(resolved, site.root):
            rep.add(FAIL, "pkgs_dirs", f"{path}: pkgs_dirs item {item} is inside the site root", "remove it")


def _check_envs_dirs(rep: DoctorReport, site: Site, env: Mapping[str, str], path: Path, doc: Any) -> None:
    key, entry = doc.key, shared_envs_entry(site)
    use = site.host_platform()
    mine = str(site.envs_dir(use)) if use else None
    problems, notes = [], []
    linked: str | None = None  # an item that resolves to this OS's envs through a variable
    unresolved: str | None = None  # link-user's item, resolving to nothing useful in this shell
    for item, resolved, platform in envs_dirs_items(site, doc.values(), env):
        if platform is not None and resolved != mine:
            problems.append(f"{item} resolves to the {platform} envs ({resolved}), not this host's")
        elif resolved == mine and "$" in item:
            linked = item
        elif resolved == mine:
            notes.append(f"{item} names this OS's envs literally; a host of another OS sharing this home sees them")
        elif item == entry:
            unresolved = resolved
    fix_link = "cpkgs unlink-user; remove the hard-coded item; cpkgs link-user (see README: user quick start)"
    if problems:
        rep.add(FAIL, "condarc", f"{path}: {key}: " + "; ".join(problems), fix_link)
    elif unresolved is not None and linked is None:
        unset = not env.get(INSTALLATION_VAR)
        rep.add(
            WARN if unset else FAIL,
            "condarc",
            f"{path}: {key} holds {entry}, which resolves to {unresolved} in this shell, not {mine}",
            f"source {site.profile_dir / 'conda.sh'} in your shell start-up file",
        )
    elif notes:
        rep.add(WARN, "condarc", f"{path}: {key}: " + "; ".join(notes), fix_link)
    elif linked is not None:
        rep.add(OK, "condarc", f"{path}: {key} lists the shared envs ({linked} -> {mine})")
    else:
        rep.add(WARN, "condarc", f"{path}: {key} does not list the shared envs", "cpkgs link-user")
    first = shared_first(site, doc.values(), env)
    if first is not None:
        # Only for those who can write the share does conda act on it; for the others it is a warning.
        writable = mine is not None and os.access(mine, os.W_OK)
        rep.add(FAIL if writable else WARN, "condarc", f"{path}: {key} lists the shared envs ({first}) first: "
                f"{SHARED_FIRST_WHY}", f"cpkgs unlink-user; cpkgs link-user (it writes {OWN_ENVS} first), or move "
                "the item after your own envs dirs")


def _lexists(path: Path) -> bool | None:
    """Whether PATH exists; None when a directory above it cannot be searched (Path.exists() raises then)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return None
    return True


def _check_sqlite(rep: DoctorReport, env: Mapping[str, str], mounts: list[Any]) -> None:
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    ipython_dir = Path(env["IPYTHONDIR"]) if env.get("IPYTHONDIR") else home / ".ipython"
    if env.get("JUPYTER_DATA_DIR"):
        jupyter_dirs = [Path(env["JUPYTER_DATA_DIR"])]
    else:
        jupyter_dirs = [home / ".local" / "share" / "jupyter", home / "Library" / "Jupyter"]
    checks = [
        ("ipython", [ipython_dir / "profile_default" / "history.sqlite"], "IPython history",
         "the site's envs keep it in memory; in your own envs set c.HistoryManager.hist_file = ':memory:' "
         "(ipython_config.py) or IPYTHONDIR to local disk"),
        ("jupyter", [d / "nbsignatures.db" for d in jupyter_dirs], "Jupyter notebook signatures",
         "the site's envs keep them on local disk; in your own envs set c.NotebookNotary.data_dir to a local dir "
         "or JUPYTER_DATA_DIR to local disk"),
    ]  # fmt: skip
    for check, paths, what, fix in checks:
        unreadable = [p for p in paths if _lexists(p) is None]
        for p in unreadable:
            rep.add(WARN, check, f"cannot look for the {what} database {p}: a directory above it is not searchable "
                    "by you", f"chmod u+rx the directories above {p}")
        found = [p for p in paths if _lexists(p)]
        bad = [(p, network_fstype(p, mounts)) for p in found]
        bad = [(p, fs) for p, fs in bad if fs]
        if bad:
            for p, fs in bad:
                rep.add(WARN, check, f"{what} database {p} is on {fs}: SQLite locking breaks on network drives", fix)
        elif found:
            rep.add(OK, check, f"{what} database {found[0]} is on local disk")
        elif not unreadable:
            rep.add(OK, check, f"no {what} database in {paths[0].parent}")


def _check_admin(rep: DoctorReport, site: Site) -> None:
    _check_locks(rep, site)
    damaged: list[tuple[Path, str]] = []
    records = load_all(site.records_dir, damaged=damaged)
    for _path, msg in damaged:
        rep.add(FAIL, "records", msg, DAMAGED_RECORD_HINT)
    _check_unsealed(rep, records)
    _check_trash(rep, site, records)
    _check_guards(rep, site)
    _check_tool_builds(rep, site)


def _check_guards(rep: DoctorReport, site: Site) -> None:
    """What users' own condas may have left at the site, and the guards that keep them from it (lifecycle.guards)."""
    strays = stray_entries(site)
    for stray in strays:
        rep.add(FAIL, "strays", f"{stray.path}: {stray.why}")
    missing = missing_guards(site)
    if missing:
        rep.add(WARN, "guards", f"missing: {', '.join(map(str, missing))} (a conda could create envs at the site)",
                "cpkgs init")


def _check_locks(rep: DoctorReport, site: Site) -> None:
    lease = site.config.lease_seconds
    infos = list_locks(site.locks_dir, lease)
    why = {
        "stale": "its process is gone",
        "expired": f"its lease ({lease:g}s) ran out",
        "empty": "its lock file is empty (left by a process killed while taking it)",
        "unreadable": "its lock file holds no lock record",
    }
    late = [i for i in infos if i.state in why]
    for i in late:
        o = i.owner
        who = f"{o.user}@{o.host} pid {o.pid}" if o else "an unknown owner"
        rep.add(WARN, "locks", f"{i.name} held by {who}: {why[i.state]}", f"cpkgs locks break {i.name}")
    if not late:
        rep.add(OK, "locks", f"no lock past its lease ({len(infos)} held)")


def _check_unsealed(rep: DoctorReport, records: list[EnvRecord]) -> None:
    unsealed = [r for r in records if r.status == "unsealed"]
    for r in unsealed:
        u = r.unsealed or {}
        rep.add(
            WARN,
            "unsealed",
            f"{r.name} ({r.platform}) is unsealed since {u.get('at', '?')} by {u.get('by', '?')}: "
            f"{printable(str(u.get('reason', '')))}",
            f"cpkgs seal {r.name} --platform {r.platform}",
        )
    if not unsealed:
        rep.add(OK, "unsealed", f"all {len(records)} recorded env(s) sealed, retired or removed")


def _check_trash(rep: DoctorReport, site: Site, records: list[EnvRecord]) -> None:
    """What `cpkgs purge` would move or delete now (its own rules: trash_past_grace, purge_due)."""
    grace = parse_duration(site.config.trash_grace, "trash_grace")
    now, due = time.time(), []
    try:
        entries = list(os.scandir(site.trash_dir))
    except OSError:
        entries = []
    for e in entries:
        if e.name.startswith(".nfs"):
            continue
        try:
            if trash_past_grace(e, grace, now):
                due.append(e.name)
        except OSError:
            continue
    due += _removed_past_grace(site, records, now)
    if due:
        rep.add(
            WARN,
            "trash",
            f"{len(due)} past the grace ({site.config.trash_grace}) in {site.trash_dir} or removed at their path: "
            f"{', '.join(sorted(due)[:5])}{' ...' if len(due) > 5 else ''}",
            "cpkgs purge",
        )
    else:
        rep.add(OK, "trash", f"nothing in the trash or removed past the grace ({site.config.trash_grace})")


def _removed_past_grace(site: Any, records: list[Any], now: float) -> list[str]:
    """Removed envs still at their path whose purge date has passed: the next `cpkgs purge` moves them away."""
    out = []
    for r in records:
        due = purge_due(r) if r.status == "removed" else None
        if due is not None and now >= due and os.path.lexists(site.env_prefix(r.name, r.platform)):
            out.append(f"{r.name} ({r.platform}, removed, still at its path)")
    return out


def _check_verify(rep: DoctorReport, site: Any) -> None:
    try:
        reports = verify_envs(site, [])
    except CpkgsError as exc:
        rep.add(FAIL, "verify", str(exc), "cpkgs verify")
        return
    bad = [r for r in reports if r.problems]
    for r in bad:
        p = r.problems[0]
        rep.add(
            FAIL,
            "verify",
            f"{r.name} ({r.platform}): {len(r.problems)} problem(s), first: {p.kind} {p.path}",
            f"cpkgs verify {r.name} for the list; a damaged env is rebuilt as a new version",
        )
    if not bad:
        files = sum(r.files for r in reports)
        rep.add(OK, "verify", f"{len(reports)} env(s), {files} files: permissions and sha256 match")
