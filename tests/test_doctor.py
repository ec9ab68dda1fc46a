"""`cpkgs doctor`: healthy and broken setups through the real CLI (human and --json), the admin side on a real
site with a real env, and the NFS classification through a fake mount table (NFS cannot be mounted here)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from conftest import REPO, make_site, run_cpkgs, world_traversable
from cpkgs_admin.site.paths import native_subdir, open_site
from cpkgs_admin.users.doctor import run_doctor
from cpkgs_admin.users.mounts import Mount, mount_of, network_fstype

LINE = re.compile(r"\[(ok  |warn|fail)\] ([a-z_-]+): (.+)\Z")
USER_CHECKS = {"site", "filesystem", "installation", "profile", "pkgs-cache", "condarc", "ipython", "jupyter"}
ADMIN_CHECKS = {"locks", "unsealed", "trash"}


@pytest.fixture
def dsite(tmp_path: Path, channel_url: str) -> Path:
    """A fresh site with one real, sealed env (tools-1.0)."""
    root = make_site(tmp_path / "site", channel_url)
    r = run_cpkgs("new-env", "tools-1.0", "cpkgs-test-app", root=root)
    assert r.returncode == 0, r
    return root


@pytest.fixture
def bare_site(tmp_path: Path) -> Path:
    """A site without envs, for checks that only need the tree."""
    return make_site(tmp_path / "site", None)


def healthy_env(root: Path, tmp_path: Path, home: Path) -> dict[str, str]:
    """What a user who sourced the profile and ran link-user has: the variables, a private cache, the entry."""
    pkgs = tmp_path / "pkgs-cache"
    pkgs.mkdir(mode=0o700)
    pkgs.chmod(0o700)
    site = open_site(root)
    env = {
        "CPKGS_ROOT": str(root),
        "CPKGS_INSTALLATION": site.installation_name(native_subdir()),
        "CONDA_PKGS_DIRS": str(pkgs),
    }
    r = run_cpkgs("link-user", root=root, env=env)
    assert r.returncode == 0 and r.stderr == "", r
    return env


def parse_human(out: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in out.splitlines():
        m = LINE.match(line)
        assert m, f"not a finding line: {line!r}"
        rows.append((m.group(1).strip(), m.group(2), m.group(3)))
    return rows


def by_check(doc: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in doc["findings"]:
        assert set(f) == {"status", "check", "message", "fix"}
        out.setdefault(f["check"], []).append(f)
    return out


# ------------------------------------------------------------------------------------------------ healthy


def test_healthy_setup_exits_0_in_human_and_json(dsite: Path, tmp_path: Path, _home: Path) -> None:
    env = healthy_env(dsite, tmp_path, _home)
    r = run_cpkgs("doctor", root=dsite, env=env)
    assert r.returncode == 0, r
    rows = parse_human(r.stdout)
    # This site has no cpkgs tool (install-tool): the one warning, users of this host have no cpkgs command.
    assert {s for s, c, _ in rows if c != "tool"} == {"ok"}, r.stdout
    assert [s for s, c, _ in rows if c == "tool"] == ["warn"], r.stdout
    assert {c for _, c, _ in rows} == USER_CHECKS | ADMIN_CHECKS | {"tool"}
    assert r.stderr == ""

    r = run_cpkgs("doctor", "--json", "--deep", root=dsite, env=env)
    assert r.returncode == 0, r
    doc = r.json()
    assert (doc["ok"], doc["failed"], doc["warnings"], doc["root"]) == (True, 0, 1, str(dsite))
    checks = by_check(doc)
    assert set(checks) == USER_CHECKS | ADMIN_CHECKS | {"verify", "tool"}
    assert "1 env(s)" in checks["verify"][0]["message"]
    assert "lists the shared envs" in checks["condarc"][0]["message"]
    assert checks["pkgs-cache"][0]["message"].endswith("local, yours, 0700")


def test_sourced_profile_makes_a_healthy_shell(dsite: Path, tmp_path: Path, _home: Path) -> None:
    """The site's real conda.sh, sourced in real bash, sets what doctor checks (profile, private cache)."""
    profile = dsite / "etc" / "profile.d" / "conda.sh"
    if "CPKGS_INSTALLATION" not in profile.read_text():
        pytest.skip("the site's conda.sh does not export CPKGS_INSTALLATION yet (issue 4 lands it)")
    assert run_cpkgs("link-user", root=dsite).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CPKGS_", "CONDA_", "XDG_RUNTIME"))}
    env["TMPDIR"] = str(tmp_path)  # where the profile puts the private cache when there is no XDG_RUNTIME_DIR
    proc = subprocess.run(
        ["bash", "-c", '. "$1" && exec "$2" -m cpkgs_admin doctor --json', "bash", str(profile), sys.executable],
        capture_output=True, text=True, env=env, cwd=str(REPO), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc
    checks = by_check(json.loads(proc.stdout))
    assert checks["profile"][0]["status"] == "ok"
    assert checks["pkgs-cache"][0]["status"] == "ok", checks["pkgs-cache"]
    assert checks["condarc"][0]["status"] == "ok", checks["condarc"]


# ------------------------------------------------------------------------------------------------ broken


def test_broken_user_setup_exits_4_in_human_and_json(dsite: Path, tmp_path: Path, _home: Path) -> None:
    env = healthy_env(dsite, tmp_path, _home)
    site = open_site(dsite)
    mine = native_subdir()
    other = next(s for s in site.config.platforms if s != mine)
    # A Linux shell that inherited a Mac's variable; a cache others can read; a hard-coded other-OS envs dir.
    env["CPKGS_INSTALLATION"] = site.installation_name(other)
    Path(env["CONDA_PKGS_DIRS"]).chmod(0o755)
    rc = _home / ".condarc"
    rc.write_text(f"# mine\nenvs_dirs:\n  - {site.envs_dir(other)}\n")

    r = run_cpkgs("doctor", root=dsite, env=env)
    assert r.returncode == 4, r
    assert r.stderr == "cpkgs: doctor: 3 check(s) failed\n"
    fails = {c: m for s, c, m in parse_human(r.stdout) if s == "fail"}
    assert set(fails) == {"profile", "pkgs-cache", "condarc"}, r.stdout
    assert f"CPKGS_INSTALLATION={site.installation_name(other)}, not " in fails["profile"]
    assert "has mode 0755, not 0700" in fails["pkgs-cache"]
    assert f"{site.envs_dir(other)} resolves to the {other} envs" in fails["condarc"]
    assert all(" -> " in m for m in fails.values())  # every failure says what to do

    r = run_cpkgs("doctor", "--json", root=dsite, env=env)
    assert r.returncode == 4, r
    doc = r.json()
    assert (doc["ok"], doc["failed"]) == (False, 3)
    failed = {f["check"]: f for f in doc["findings"] if f["status"] == "fail"}
    assert set(failed) == {"profile", "pkgs-cache", "condarc"}
    assert all(f["fix"] for f in failed.values())


def test_unparsable_condarc_and_missing_cache(dsite: Path, tmp_path: Path, _home: Path) -> None:
    env = healthy_env(dsite, tmp_path, _home)
    (_home / ".condarc").write_text("envs_dirs: [a, b\n")
    env["CONDA_PKGS_DIRS"] = str(tmp_path / "not-yet")
    r = run_cpkgs("doctor", "--json", root=dsite, env=env)
    assert r.returncode == 4, r
    checks = by_check(r.json())
    assert checks["condarc"][0]["status"] == "fail"
    assert checks["condarc"][0]["message"].startswith(f"{_home / '.condarc'}: invalid YAML")
    assert checks["pkgs-cache"][0]["status"] == "warn"
    assert f"mkdir -m 0700 {tmp_path / 'not-yet'}" in checks["pkgs-cache"][0]["fix"]


def test_missing_site_fails_and_still_checks_the_user_side(tmp_path: Path) -> None:
    root = tmp_path / "not-mounted"
    r = run_cpkgs("doctor", root=root)
    assert r.returncode == 4, r
    rows = parse_human(r.stdout)
    assert rows[0][:2] == ("fail", "site") and str(root) in rows[0][2] and "mount the drive" in rows[0][2]
    assert {c for _, c, _ in rows} >= {"pkgs-cache", "condarc", "ipython", "jupyter"}
    r = run_cpkgs("doctor", "--json", root=root)
    assert r.returncode == 4 and r.json()["failed"] == 1, r


def test_admin_side_locks_unsealed_trash_and_deep_verify(dsite: Path, tmp_path: Path, _home: Path) -> None:
    env = healthy_env(dsite, tmp_path, _home)
    # an unsealed env with a changed file; a second env removed past its grace (still at its path) and a third in
    # the trash; a lock whose holder was killed
    site = open_site(dsite)
    cfg = site.config_file
    cfg.write_text(cfg.read_text().replace("trash_grace: 7d", "trash_grace: 0s"))
    for name in ("tools-2.0", "tools-3.0"):
        assert run_cpkgs("new-env", name, "cpkgs-test-app", root=dsite).returncode == 0
        assert run_cpkgs("remove", name, root=dsite).returncode == 0
    trashed = site.trash_dir / "tools-3.0@linux-64@1"
    site.env_prefix("tools-3.0", native_subdir()).rename(trashed)  # where an older cpkgs' remove put it
    assert run_cpkgs("unseal", "tools-1.0", "--reason", "hotfix", root=dsite).returncode == 0
    prefix = site.env_prefix("tools-1.0", native_subdir())
    victim = next(p for p in sorted((prefix / "bin").iterdir()) if p.is_file())
    victim.write_bytes(victim.read_bytes() + b"\n# changed\n")
    holder = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "helpers" / "lock_worker.py"), str(dsite), "hold"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()

    r = run_cpkgs("doctor", root=dsite, env=env)
    assert r.returncode == 0, r  # admin findings are warnings: nothing is broken for users yet
    rows = parse_human(r.stdout)
    warns = {c: m for s, c, m in rows if s == "warn"}
    assert set(warns) == {"locks", "unsealed", "trash", "tool"}, r.stdout  # tool: this site has none
    assert warns["locks"].startswith("site.lock held by ") and "its process is gone" in warns["locks"]
    assert "-> cpkgs locks break site.lock" in warns["locks"]
    assert "tools-1.0 (linux-64) is unsealed" in warns["unsealed"] and "hotfix" in warns["unsealed"]
    assert warns["trash"].startswith("2 past the grace (0s) in ") and warns["trash"].endswith("-> cpkgs purge")
    assert "tools-2.0 (linux-64, removed, still at its path)" in warns["trash"] and trashed.name in warns["trash"]

    r = run_cpkgs("doctor", "--deep", "--json", root=dsite, env=env)
    assert r.returncode == 4, r
    doc = r.json()
    assert doc["failed"] == 1 and doc["warnings"] == 4
    [verify] = by_check(doc)["verify"]
    assert verify["status"] == "fail" and verify["message"].startswith("tools-1.0 (linux-64): ")
    assert "modified" in verify["message"] and victim.name in verify["message"]


def test_non_admin_skips_the_admin_side(dsite: Path, tmp_path: Path) -> None:
    home = tmp_path / "nobody-home"
    home.mkdir()
    world_traversable(home)
    r = run_cpkgs("doctor", "--json", root=dsite, user=True, env={"HOME": str(home)})
    assert r.returncode == 0, r
    checks = by_check(r.json())
    assert "admin" in checks and not ADMIN_CHECKS & set(checks)
    assert checks["profile"][0]["status"] == "warn"


def test_a_shell_still_using_a_removed_env_is_told(dsite: Path, tmp_path: Path) -> None:
    """A user whose shell activated an env before it was removed (or a layer on it) gets a warning naming the
    successor and the date its path goes away; any other CONDA_PREFIX gets no finding."""
    assert run_cpkgs("new-env", "tools-2.0", "cpkgs-test-app", root=dsite).returncode == 0
    assert run_cpkgs("retire", "tools-1.0", "--successor", "tools-2.0", root=dsite).returncode == 0
    assert run_cpkgs("remove", "tools-1.0", root=dsite).returncode == 0
    home = tmp_path / "nobody-home"
    layer = home / "layer"
    (layer / "conda-meta" / "cpkgs").mkdir(parents=True)
    site = open_site(dsite)
    prefix = site.env_prefix("tools-1.0", native_subdir())
    (layer / "conda-meta" / "cpkgs" / "layer").write_text(f"{prefix}\ntools-1.0\nanaconda3_linux\n")
    world_traversable(layer / "conda-meta" / "cpkgs")
    until = run_cpkgs("info", "tools-1.0", "--json", root=dsite).json()["removed"]["purge_after"]
    for active in (prefix, layer):
        r = run_cpkgs("doctor", "--json", root=dsite, user=True, env={"HOME": str(home), "CONDA_PREFIX": str(active)})
        assert r.returncode == 0, r
        [warn] = by_check(r.json())["active-env"]
        assert warn["status"] == "warn" and warn["message"] == (
            f"tools-1.0 was removed; use tools-2.0: this shell's {active} works until the first 'cpkgs purge' "
            f"after {until}") and warn["fix"] == "conda deactivate, then conda activate tools-2.0", warn
    current = site.env_prefix("tools-2.0", native_subdir())
    r = run_cpkgs("doctor", "--json", root=dsite, user=True, env={"HOME": str(home), "CONDA_PREFIX": str(current)})
    assert r.returncode == 0 and "active-env" not in by_check(r.json()), r


def test_unsearchable_dirs_are_findings_not_crashes(dsite: Path, tmp_path: Path) -> None:
    """A user's ~/.ipython they cannot search (mode 000) is a warning naming it; a site root under a directory
    they cannot search is one line. Never an internal error."""
    home = tmp_path / "nobody-home"
    (home / ".ipython").mkdir(parents=True)
    world_traversable(home)
    os.chown(home, 65534, 65534)
    (home / ".ipython").chmod(0o000)
    r = run_cpkgs("doctor", "--json", root=dsite, user=True, env={"HOME": str(home)})
    assert "internal error" not in r.stderr, r
    ipython = by_check(r.json())["ipython"]
    assert [c["status"] for c in ipython] == ["warn"] and "not searchable" in ipython[0]["message"], ipython
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    for cmd in (("doctor",), ("list",), ("link-user",), ("extend", "a-1.0", str(home / "layer"))):
        r = run_cpkgs("--root", str(hidden / "site"), *cmd, user=True, env={"HOME": str(home)})
        assert r.returncode != 0 and "internal error" not in r.stderr, (cmd, r)
        assert f"site root {hidden / 'site'} is not reachable by this user" in r.stdout + r.stderr, (cmd, r)


# ------------------------------------------------------------------------------------------------ NFS (boundary)

# psutil.disk_partitions() returns sdiskpart tuples; these hand-written ones stand in for a host with NFS mounts,
# which cannot be mounted in this test environment.
Part = namedtuple("Part", "device mountpoint fstype opts")


def test_nfs_classification_from_a_partition_list(tmp_path: Path) -> None:
    nfs_dir = tmp_path / "nfs-home"
    nfs_dir.mkdir()
    (tmp_path / "link").symlink_to(nfs_dir)
    parts = [
        Part("/dev/sda1", "/", "ext4", "rw"),
        Part("auto.net", "/net", "autofs", "rw"),
        Part("filer:/home", "/net/home", "nfs4", "rw,vers=4.2"),
        Part("filer:/cpkgs", str(nfs_dir), "nfs", "rw"),
        Part("//srv/share", "/mnt/smb", "cifs", "rw"),
    ]
    assert network_fstype("/net/home/alice/.conda/pkgs", parts) == "nfs4"  # longest mount point wins over autofs
    assert network_fstype("/net/home", parts) == "nfs4"
    assert network_fstype("/net/home2/x", parts) is None  # a prefix of the name is not a parent directory
    assert network_fstype("/net/other", parts) is None  # autofs itself is not the network drive
    assert network_fstype("/var/tmp/cpkgs-pkgs-1000", parts) is None
    assert network_fstype("/mnt/smb/x", parts) == "cifs"
    assert network_fstype(tmp_path / "link" / "not" / "yet", parts) == "nfs"  # symlink resolved, tail kept
    assert mount_of("/etc/hosts", parts).device == "/dev/sda1"
    assert mount_of("/x", []) is None


def test_doctor_on_an_nfs_home_warns_about_sqlite_and_caches(bare_site: Path, tmp_path: Path, _home: Path) -> None:
    """The whole doctor with a mount table that puts HOME and the site on NFS."""
    dsite = bare_site
    env = healthy_env(dsite, tmp_path, _home)
    env["HOME"] = str(_home)
    hist = _home / ".ipython" / "profile_default" / "history.sqlite"
    sigs = _home / ".local" / "share" / "jupyter" / "nbsignatures.db"
    for p in (hist, sigs):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"SQLite format 3\x00")
    (_home / ".condarc").write_text((_home / ".condarc").read_text() + f"pkgs_dirs: [{_home}/pkgs]\n")
    mounts = [
        Mount("/", "ext4", "/dev/sda1"),
        Mount(str(_home), "nfs4", "filer:/home/me"),
        Mount(str(dsite), "nfs4", "filer:/cpkgs"),
    ]
    rep = run_doctor(dsite, environ=env, mounts=mounts)
    got = {f.check: f for f in rep.findings}
    assert got["filesystem"].message == f"{dsite} is on nfs4 (filer:/cpkgs): the NFS rules apply"
    assert got["ipython"].status == "warn" and f"{hist} is on nfs4" in got["ipython"].message
    assert ":memory:" in (got["ipython"].fix or "")
    assert got["jupyter"].status == "warn" and f"{sigs} is on nfs4" in got["jupyter"].message
    assert got["pkgs_dirs"].status == "warn" and "is on nfs4" in got["pkgs_dirs"].message
    assert rep.failed == 0
    # the package cache on NFS is a failure
    env["CONDA_PKGS_DIRS"] = str(_home / "pkgs-on-nfs")
    (_home / "pkgs-on-nfs").mkdir(mode=0o700)
    rep = run_doctor(dsite, environ=env, mounts=mounts)
    got = {f.check: f for f in rep.findings}
    assert got["pkgs-cache"].status == "fail" and "is on nfs4, not on local disk" in got["pkgs-cache"].message
    assert rep.failed == 1 and rep.to_json()["ok"] is False


@pytest.mark.parametrize(
    ("item", "with_var", "status", "text"),
    [
        ("{root}/${{CPKGS_INSTALLATION}}/envs", True, "ok", "lists the shared envs"),
        ("{root}/$CPKGS_INSTALLATION/envs", True, "ok", "lists the shared envs"),  # written by hand, same effect
        ("{root}/${{CPKGS_INSTALLATION}}/envs", False, "warn", "/${{CPKGS_INSTALLATION}}/envs in this shell"),
        ("{root}/{inst}/envs", True, "warn", "names this OS's envs literally"),
        ("~/envs", True, "warn", "does not list the shared envs"),
    ],
)
def test_condarc_entry_as_this_shell_resolves_it(
    bare_site: Path, _home: Path, item: str, with_var: bool, status: str, text: str
) -> None:
    dsite = bare_site
    site = open_site(dsite)
    inst = site.installation_name(native_subdir())
    # (your own envs dir first, as link-user writes it: the share first is a finding of its own)
    (_home / ".condarc").write_text(f"envs_dirs: ['~/.conda/envs', '{item.format(root=dsite, inst=inst)}']\n")
    env = {"HOME": str(_home), "CPKGS_ROOT": str(dsite)}
    if with_var:
        env["CPKGS_INSTALLATION"] = inst
    rep = run_doctor(dsite, environ=env, mounts=[Mount("/", "ext4")])
    [f] = [f for f in rep.findings if f.check == "condarc"]
    assert f.status == status and text.format() in f.message, f
