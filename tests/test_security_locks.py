"""Issue #13: locks and the package cache against an adversarial run.

Real symlinks planted by an admin-group member (uid 65533 in a group made here) or an ordinary user (65534), a
real umask 000, a real `flock -s` held by an ordinary user, empty lock markers, real kill -9 of real cpkgs
processes at random moments.
"""

from __future__ import annotations

import grp
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENVS, NOBODY, REPO, as_nobody, make_site, run_cpkgs, world_traversable

WORKER = str(REPO / "tests" / "helpers" / "lock_worker.py")
ADMIN_GROUP = "cpkgstestadm"
MEMBER_UID = 65533
SECRET = "root only: do not touch\n"


def admin_gid() -> int:
    """The test's admin group (created once per machine)."""
    subprocess.run(["groupadd", "-f", ADMIN_GROUP], check=True)
    return grp.getgrnam(ADMIN_GROUP).gr_gid


def as_member(cmd: list[str], **kw):  # type: ignore[no-untyped-def]
    """CMD as an admin-group member who is not root (uid 65533, the admin group as its group)."""
    return subprocess.run(["setpriv", "--reuid", str(MEMBER_UID), "--regid", str(admin_gid()), "--clear-groups",
                           *cmd], capture_output=True, text=True, **kw)


def set_config(root: Path, **values: float) -> None:
    cfg = root / "cpkgs.yaml"
    lines = [line for line in cfg.read_text().splitlines() if line.split(":")[0] not in values]
    cfg.write_text("\n".join(lines + [f"{k}: {v}" for k, v in values.items()]) + "\n")


@pytest.fixture
def group_site(tmp_path: Path) -> Path:
    """A site whose admin group has a member who is not root: its state dirs are that group's to write."""
    admin_gid()
    root = make_site(tmp_path / "site", None, "--admin-group", ADMIN_GROUP)
    set_config(root, lease_seconds=2.0, lock_timeout=20)
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------------------------- item 2: symlinks


def test_takeover_clock_never_written_through_a_members_symlink(group_site: Path, secret: Path) -> None:
    """Root waits on another host's expired lease in the group-writable locks dir; a member of the admin group
    plants `.clock-<host>-<pid>` (the name cpkgs used to write to learn the server's time) as a symlink to a
    root-only file. The takeover must not truncate it."""
    holder = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname otherhost && exec "$@"', "sh",
                               sys.executable, WORKER, str(group_site), "hold"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    marker = group_site / ".cpkgs" / "locks" / "site.lock"
    old = time.time() - 60
    os.utime(marker, (old, old))  # unrefreshed for many leases: root takes it over at once
    taker = subprocess.Popen([sys.executable, WORKER, str(group_site), "take", "20"], stdout=subprocess.PIPE,
                             text=True)
    planted = marker.with_name(f".clock-{socket.gethostname()}-{taker.pid}")
    assert as_member(["ln", "-s", str(secret), str(planted)]).returncode == 0
    out, _ = taker.communicate(timeout=60)
    assert taker.returncode == 0, out
    assert secret.read_text() == SECRET
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


_LOCK_IN = """
import sys, time
from pathlib import Path
from cpkgs_admin.site.locks import SiteLock
with SiteLock(Path(sys.argv[1]), what="x", lease_seconds=2.0, timeout=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def test_lock_in_a_users_directory_never_follows_the_users_symlinks(tmp_path: Path, secret: Path) -> None:
    """A lock beside a user's file (link-user's, in their home): root, waiting on an expired lease there, must not
    write through the symlinks the user planted at the names it used to write (`.clock-<host>-<pid>`) or writes
    (the owner record)."""
    home = tmp_path / "home65534"
    home.mkdir()
    os.chown(home, 65534, 65534)
    world_traversable(home)
    lock = home / ".condarc.cpkgs.lock"
    holder = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname otherhost && exec "$@"', "sh",
                               sys.executable, "-c", _LOCK_IN, str(lock), "5", "3600"], stdout=subprocess.PIPE,
                              text=True, cwd=str(REPO))
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    old = time.time() - 60
    os.utime(lock, (old, old))
    owner_record = lock.with_name(lock.name + ".owner.json")
    assert as_nobody(["ln", "-sfn", str(secret), str(owner_record)]).returncode == 0
    root = subprocess.Popen([sys.executable, "-c", _LOCK_IN, str(lock), "20", "0"], stdout=subprocess.PIPE,
                            text=True, cwd=str(REPO))
    planted = lock.with_name(f".clock-{socket.gethostname()}-{root.pid}")
    assert as_nobody(["ln", "-s", str(secret), str(planted)]).returncode == 0
    out, _ = root.communicate(timeout=60)
    assert root.returncode == 0 and out.strip() == "held", out
    assert secret.read_text() == SECRET and stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_audit_log_symlink_of_a_member_is_not_written_through(group_site: Path, secret: Path) -> None:
    audit_log = group_site / ".cpkgs" / "audit.log"
    assert as_member(["ln", "-sfn", str(secret), str(audit_log)]).returncode == 0
    assert audit_log.is_symlink()
    r = run_cpkgs("init", "-c", "https://conda.example.org/other", root=group_site)
    assert secret.read_text() == SECRET
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "audit.log is a symlink" in r.stderr


def test_init_never_chmods_through_a_members_symlink(group_site: Path, tmp_path: Path) -> None:
    """A member swaps a state dir for a symlink to a root-only directory: root's `cpkgs init` must not open that
    directory to the admin group (chmod 2770/2775 + chgrp through the link)."""
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    trash = group_site / ".cpkgs" / "trash"
    r = as_member(["sh", "-c", f"mv {trash} {trash}.moved && ln -s {private} {trash}"])
    assert r.returncode == 0, r.stderr
    r = run_cpkgs("init", root=group_site)
    st = private.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o700, 0), oct(st.st_mode)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "is a symlink made by uid 65533" in r.stderr


def test_profile_symlink_to_a_root_file_is_replaced_not_chmodded(group_site: Path, tmp_path: Path) -> None:
    """write_if_changed used to read through a symlink and, when the bytes matched, chmod its target."""
    profile = group_site / "etc" / "profile.d" / "conda.sh"
    copy = tmp_path / "root-copy"
    copy.write_bytes(profile.read_bytes())
    os.chmod(copy, 0o600)
    assert as_member(["ln", "-sfn", str(copy), str(profile)]).returncode == 0
    r = run_cpkgs("init", root=group_site)
    assert r.returncode == 0, r
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and copy.stat().st_gid == 0
    assert not profile.is_symlink() and profile.read_bytes() == copy.read_bytes()


def test_symlink_planted_as_the_lock_marker_is_recovered_not_followed(group_site: Path, secret: Path) -> None:
    """(A guard: filelock itself already recovers a marker that is not a lock record.)"""
    marker = group_site / ".cpkgs" / "locks" / "site.lock"
    assert as_member(["ln", "-s", str(secret), str(marker)]).returncode == 0
    set_config(group_site, lock_timeout=6)
    r = run_cpkgs("init", "-c", "https://conda.example.org/other", root=group_site)
    assert r.returncode == 0, r
    assert secret.read_text() == SECRET and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not marker.is_symlink()


# --------------------------------------------------------------------------------------------- item 3: umask 000


def _umask_000(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["sh", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-m", "cpkgs_admin", "--root", str(root), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(REPO))


def test_umask_000_admin_leaves_no_cache_users_can_write(tmp_path: Path, channel_url: str) -> None:
    root = tmp_path / "site"
    assert _umask_000(["init", "-c", channel_url], root).returncode == 0
    world_traversable(root)
    # Two builds: the second extracts a package of its own (with the umask's modes as they come).
    for name, specs in (("u-1.0", ("cpkgs-test-app", "python")), ("u-2.0", ("cpkgs-test-app", "cpkgs-test-lib"))):
        r = _umask_000(["new-env", name, *specs], root)
        assert r.returncode == 0, r.stderr
    cache = root / ".cpkgs" / "pkgs"
    entry = next(p for p in cache.glob("cpkgs-test-lib-*") if p.is_dir())
    victim = next(p for p in entry.rglob("*") if p.is_file() and not p.is_symlink())
    for attempt in (["sh", "-c", f"echo evil > {entry}.lock"],
                    ["sh", "-c", f"echo evil > {cache}/.cache.lock"],
                    ["touch", str(victim.parent / "mine")],
                    ["sh", "-c", f"echo evil > {victim}"],
                    ["sh", "-c", f"cp {victim} {cache}/x && mv -f {cache}/x {victim}"],
                    ["ls", str(cache)],
                    ["flock", "-s", f"{entry}.lock", "true"],
                    ["flock", "-s", f"{cache}/.cache.lock", "true"]):
        assert as_nobody(attempt).returncode != 0, attempt
    assert as_nobody([str(root / ENVS / "u-1.0" / "bin" / "cpkgs-test-app")]).stdout == "app ok\n"
    for path in (root / ".cpkgs" / "locks", root / ".cpkgs" / "audit.log", *cache.rglob("*")):
        if not path.is_symlink():
            assert not path.stat().st_mode & 0o002, path


def test_entry_others_can_write_is_dropped_and_extracted_again(site: Path) -> None:
    assert run_cpkgs("new-env", "e-1.0", "cpkgs-test-app", root=site).returncode == 0
    entry = next(p for p in (site / ".cpkgs" / "pkgs").glob("cpkgs-test-app-*") if p.is_dir())
    os.chmod(entry, 0o777)
    r = run_cpkgs("new-env", "e-2.0", "cpkgs-test-app", root=site)
    assert r.returncode == 0, r
    assert f"package cache entry {entry.name} was writable by others (mode 0777)" in r.stderr, r.stderr
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    assert run_cpkgs("verify", "e-1.0", "e-2.0", root=site).returncode == 0


# --------------------------------------------------------------------------------------------- item 4: users out


def test_users_cannot_flock_the_cache_and_new_env_completes(site: Path) -> None:
    assert run_cpkgs("new-env", "f-1.0", "cpkgs-test-app", root=site).returncode == 0
    cache_lock = site / ".cpkgs" / "pkgs" / ".cache.lock"
    assert cache_lock.exists()
    holder = subprocess.Popen(["setpriv", *NOBODY, "flock", "-s", str(cache_lock), "sleep", "120"],
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        # The user cannot even reach the cache: flock fails at once.
        assert holder.poll() not in (None, 0)
        r = run_cpkgs("new-env", "f-2.0", "cpkgs-test-app", root=site, timeout=60)
        assert r.returncode == 0, r
    finally:
        holder.kill()
        holder.wait()


def test_admins_flock_on_the_cache_is_named_not_waited_for_silently(site: Path) -> None:
    """Another admin's rattler (or a stray `flock`) holding py-rattler's cache lock: new-env says who holds it and
    gives up after lock_timeout (exit 3) instead of waiting silently for ever."""
    assert run_cpkgs("new-env", "g-1.0", "cpkgs-test-app", root=site).returncode == 0
    set_config(site, lock_timeout=3)
    cache_lock = site / ".cpkgs" / "pkgs" / ".cache.lock"
    holder = subprocess.Popen(["flock", "-x", str(cache_lock), "sleep", "120"])
    try:
        time.sleep(0.3)
        r = run_cpkgs("new-env", "g-2.0", "cpkgs-test-app", root=site, timeout=60)
        assert r.returncode == 3, r
        assert f"flock'ed by pid {holder.pid}" in r.stderr, r.stderr
        assert "waiting for the site package cache" in r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_long_lock_wait_says_what_and_who(site: Path) -> None:
    set_config(site, lock_timeout=4)
    holder = subprocess.Popen([sys.executable, WORKER, str(site), "hold"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = run_cpkgs("init", "-c", "https://conda.example.org/other", root=site)
        assert r.returncode == 3, r
        lines = r.stderr.splitlines()
        assert lines[0].startswith(f"cpkgs: waiting for site {site}: held by ") and f"pid {holder.pid}" in lines[0]
        assert len(lines) == 2 and "is locked by" in lines[1]
    finally:
        holder.kill()
        holder.wait()


def test_init_closes_the_admin_only_state_of_an_existing_site(site: Path) -> None:
    """A site made before: .cpkgs/pkgs, locks, trash 0755 and the audit log 0644, as `cpkgs init` made them. init
    closes them to users (idempotent); users still list the envs."""
    state = site / ".cpkgs"
    assert run_cpkgs("new-env", "i-1.0", "cpkgs-test-app", root=site).returncode == 0
    for d in ("pkgs", "locks", "trash", "pkgs/.cpkgs-verified", "pkgs/repodata"):
        os.chmod(state / d, 0o755)
    for f in (state / "audit.log", *(state / "pkgs").glob("*.lock"), state / "pkgs" / ".cache.lock"):
        os.chmod(f, 0o644)
    r = run_cpkgs("init", root=site)
    assert r.returncode == 0, r
    for d, mode in (("pkgs", 0o711), ("locks", 0o700), ("trash", 0o700)):
        assert f"updated .cpkgs/{d}/ (permissions)" in r.stdout
        assert stat.S_IMODE((state / d).stat().st_mode) == mode
    for private in (".cache.lock", ".cpkgs-verified", "repodata", *(p.name for p in (state / "pkgs").glob("*.lock"))):
        assert not (state / "pkgs" / private).stat().st_mode & 0o077, private
    assert stat.S_IMODE((state / "audit.log").stat().st_mode) == 0o600
    assert "nothing changed" in run_cpkgs("init", root=site).stdout
    assert as_nobody(["ls", str(state / "pkgs")]).returncode != 0
    assert as_nobody(["cat", str(state / "audit.log")]).returncode != 0
    assert as_nobody(["cat", str(state / "pkgs" / ".cache.lock")]).returncode != 0
    # What conda-pack (`cpkgs pack`, any user) reads: a package's own info, by the name the env records.
    entry = next(p for p in (state / "pkgs").glob("cpkgs-test-app-*") if p.is_dir())
    assert as_nobody(["cat", str(entry / "info" / "paths.json")]).returncode == 0
    r = run_cpkgs("list", root=site, user=True)
    assert r.returncode == 0, r


# --------------------------------------------------------------------------------------------- item 11: kills


def test_empty_lock_marker_is_recovered_with_a_line(site: Path) -> None:
    """`: > .cpkgs/locks/site.lock` (what a kill between create and write left): the next command recovers it
    and says so, instead of waiting the whole lock_timeout."""
    set_config(site, lock_timeout=10)
    (site / ".cpkgs" / "locks" / "site.lock").write_bytes(b"")
    r = run_cpkgs("init", "-c", "https://conda.example.org/other", root=site)
    assert r.returncode == 0, r
    assert "cpkgs: recovered site.lock: it was empty for" in r.stderr, r.stderr
    assert not (site / ".cpkgs" / "locks" / "site.lock").exists()


def test_doctor_reports_an_empty_lock(site: Path) -> None:
    (site / ".cpkgs" / "locks" / "env-linux-64-x-1.0.lock").write_bytes(b"")
    r = run_cpkgs("doctor", "--json", root=site)
    found = [f for f in r.json()["findings"] if f["check"] == "locks"]
    assert [f["status"] for f in found] == ["warn"], found
    assert "env-linux-64-x-1.0.lock" in found[0]["message"] and "empty" in found[0]["message"]


_HOLD_ENV_LOCK = """
import sys, time
from pathlib import Path
from cpkgs_admin.site.locks import env_locked
from cpkgs_admin.site.paths import open_site
with env_locked(open_site(Path(sys.argv[1])), "gone-1.0", "linux-64"):
    print("held", flush=True)
    time.sleep(3600)
"""


def test_locks_of_killed_processes_are_cleared_not_listed_forever(site: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_ENV_LOCK, str(site)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    r = run_cpkgs("locks", "--json", root=site)
    assert r.returncode == 0, r
    assert r.json() == []
    assert "recovered env-linux-64-gone-1.0.lock" in r.stderr and f"pid {holder.pid}" in r.stderr, r.stderr
    assert not list((site / ".cpkgs" / "locks").iterdir())


@pytest.mark.slow
def test_kill_9_at_random_moments_never_blocks_the_next_run(site: Path) -> None:
    """Real new-env processes killed at random moments: no lock marker is ever left empty, `cpkgs locks` lists no
    dead holder, and the same build run again completes."""
    set_config(site, lock_timeout=30)
    rng = random.Random(13)
    locks = site / ".cpkgs" / "locks"
    for i in range(6):
        name = f"k{i}-1.0"
        cmd = [sys.executable, "-m", "cpkgs_admin", "--root", str(site), "new-env", name, "cpkgs-test-app"]
        proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.15, 0.9))
        proc.kill()
        proc.wait()
        markers = [p for p in locks.iterdir() if p.name.endswith(".lock")]
        assert all(p.stat().st_size > 0 for p in markers), [(p.name, p.stat().st_size) for p in markers]
        listed = run_cpkgs("locks", "--json", root=site)
        assert listed.returncode == 0 and listed.json() == [], listed
        again = run_cpkgs("new-env", name, "cpkgs-test-app", root=site, timeout=120)
        assert again.returncode == 0 or "already exists" in again.stderr, again
    r = run_cpkgs("verify", root=site)
    assert r.returncode == 0, r
    assert json.loads(run_cpkgs("locks", "--json", root=site).stdout) == []
