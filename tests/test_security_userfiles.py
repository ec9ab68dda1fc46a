"""Files that belong to users, handled by cpkgs (issue #13): root's link-user/unlink-user on a user's condarc, an
editor writing while link-user edits, and files that are not regular files or not UTF-8.

Real unprivileged users via setpriv: uid 65534 (nobody) owns the home; uid 65533 (no passwd entry) is "another
user". Their symlinks are planted by them, with their own rights.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ENVS, REPO, as_nobody, cpkgs_env, make_site, run_cpkgs, world_traversable
from cpkgs_admin.users.condarc import link_user, unlink_user

USER, OTHER = 65534, 65533
BACKUP = re.compile(r"\.condarc\.cpkgs-backup-\d{8}T\d{6}(-\d+)?\Z")


@pytest.fixture(scope="module")
def usite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("sec") / "site", None)


def entry_of(root: Path) -> str:
    return f"{root}/${{CPKGS_INSTALLATION}}/envs"


def as_uid(uid: int, cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", *cmd],
                          capture_output=True, text=True, **kw)  # fmt: skip


def user_dir(path: Path, uid: int = USER, mode: int = 0o755) -> Path:
    """A directory of UID's (a home), reachable by everyone through pytest's 0700 tmp dirs."""
    path.mkdir(parents=True)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    world_traversable(path.parent)
    return path


def user_file(path: Path, text: str, uid: int = USER, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def plant_symlink(uid: int, target: Path, link: Path) -> None:
    r = as_uid(uid, ["ln", "-s", str(target), str(link)])
    assert r.returncode == 0, r
    assert os.lstat(link).st_uid == uid


def snapshot(path: Path) -> tuple[bytes, int, int, int, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_mtime_ns


def one_line_error(r) -> str:  # type: ignore[no-untyped-def]
    assert r.returncode != 0, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cpkgs: ") and "Traceback" not in r.stderr, r
    return lines[0]


# ------------------------------------------------------------------------------------------- root on a user's file


@pytest.mark.parametrize("command", ["link-user", "unlink-user"])
def test_root_does_not_write_through_the_users_symlink(usite: Path, tmp_path: Path, command: str) -> None:
    """The user's .condarc is a symlink to a file only root may write: root's run edits with the user's rights, so
    it cannot read or change that file, and leaves nothing beside it."""
    secret = tmp_path / "root-only.yml"
    secret.write_text(f"channels: [x]\nenvs_dirs: ['{entry_of(usite)}']\n" if command == "unlink-user" else
                      "channels: [x]\n")  # fmt: skip
    secret.chmod(0o600)
    home = user_dir(tmp_path / "uhome")
    before, listing = snapshot(secret), sorted(os.listdir(tmp_path))
    plant_symlink(USER, secret, home / ".condarc")
    r = run_cpkgs(command, "--condarc", str(home / ".condarc"), root=usite)
    line = one_line_error(r)
    assert "permission denied" in line, r
    assert snapshot(secret) == before
    assert sorted(os.listdir(tmp_path)) == listing  # no lock, temp or backup file beside it
    assert sorted(os.listdir(home)) == [".condarc"]


def test_root_does_not_create_a_file_through_a_dangling_symlink(usite: Path, tmp_path: Path) -> None:
    rootdir = tmp_path / "root-dir"
    rootdir.mkdir()
    world_traversable(rootdir)
    home = user_dir(tmp_path / "uhome")
    plant_symlink(USER, rootdir / "planted", home / ".condarc")
    r = run_cpkgs("link-user", "--condarc", str(home / ".condarc"), root=usite)
    assert "permission denied" in one_line_error(r), r
    assert os.listdir(rootdir) == []


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_root_keeps_owner_group_and_mode_of_the_users_file(usite: Path, tmp_path: Path, mode: int) -> None:
    home = user_dir(tmp_path / "uhome")
    rc = user_file(home / ".condarc", "channels: [conda-forge]\n", mode=mode)
    for command in ("link-user", "unlink-user"):
        r = run_cpkgs(command, "--condarc", str(rc), root=usite)
        assert r.returncode == 0, r
        assert "with the rights of its owner nobody (uid 65534)" in r.stdout, r
        st = rc.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, USER, mode), command
        # the user can still read (and write) their own file
        assert as_nobody(["sh", "-c", f"cat {rc} >/dev/null && test -w {rc}"]).returncode == 0
    assert rc.read_text() == "channels: [conda-forge]\n"
    for p in home.iterdir():  # the backups too: the user's, no more readable than the file
        st = p.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, USER, mode), p
    assert len([p for p in home.iterdir() if BACKUP.match(p.name)]) == 2


def test_root_edits_a_file_only_ruamels_round_trip_can_change(usite: Path, tmp_path: Path) -> None:
    """The splice cannot add a key to a one-line flow mapping: ruamel's dumper writes it, in the child that has
    the user's rights (and cannot read this interpreter's installation under root's 0700 home here: whatever it
    needs was imported before it dropped root)."""
    home = user_dir(tmp_path / "uhome")
    rc = user_file(home / ".condarc", "{channels: [conda-forge, 'bioconda'], ssl_verify: true}\n", mode=0o600)
    for command in ("link-user", "unlink-user"):
        r = run_cpkgs(command, "--condarc", str(rc), root=usite)
        assert r.returncode == 0, r
    assert "'bioconda'" in rc.read_text() and "envs_dirs: []" in rc.read_text()
    st = rc.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, USER, 0o600)


def test_root_creates_a_missing_condarc_as_its_user(usite: Path, tmp_path: Path) -> None:
    home = user_dir(tmp_path / "uhome")
    r = run_cpkgs("link-user", "--condarc", str(home / ".condarc"), root=usite)
    assert r.returncode == 0, r
    st = (home / ".condarc").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, USER, 0o644)
    assert sorted(os.listdir(home)) == [".condarc"]


def test_root_refuses_a_file_two_users_control(usite: Path, tmp_path: Path) -> None:
    """The user's condarc sits in a directory another user owns: that user could swap it for a symlink to one of
    the first user's files; no one user's rights make the edit safe."""
    shared = user_dir(tmp_path / "shared", uid=OTHER)
    rc = user_file(shared / "condarc", "channels: [a]\n")
    before = snapshot(rc)
    r = run_cpkgs("link-user", "--condarc", str(rc), root=usite)
    line = one_line_error(r)
    assert "uid 65533" in line and "nobody (uid 65534)" in line, r
    assert snapshot(rc) == before and os.listdir(shared) == ["condarc"]


def test_root_refuses_a_directory_a_group_can_write(usite: Path, tmp_path: Path) -> None:
    """A root-owned directory that a group (here: nogroup) can write: its members could plant a symlink."""
    d = tmp_path / "group-dir"
    d.mkdir()
    os.chown(d, 0, 65534)
    d.chmod(0o775)
    world_traversable(d)
    rc = d / "condarc"
    rc.write_text("channels: [a]\n")
    before = snapshot(rc)
    line = one_line_error(run_cpkgs("link-user", "--condarc", str(rc), root=usite))
    assert f"{d} is writable by group nogroup" in line
    assert snapshot(rc) == before


def test_user_may_not_edit_another_users_file(usite: Path, tmp_path: Path) -> None:
    """uid 65534 points --condarc at a file of uid 65533 that it could write: refused, the file untouched."""
    d = user_dir(tmp_path / "other", uid=OTHER, mode=0o775)
    rc = user_file(d / "condarc", "channels: [a]\n", uid=OTHER, mode=0o666)
    before = snapshot(rc)
    r = run_cpkgs("link-user", "--condarc", str(rc), root=usite, user=True)
    line = one_line_error(r)
    assert "belongs to uid 65533, not to you" in line, r
    assert snapshot(rc) == before and os.listdir(d) == ["condarc"]


def test_world_writable_directory_is_refused(usite: Path, tmp_path: Path) -> None:
    d = user_dir(tmp_path / "open", uid=USER, mode=0o777)
    rc = user_file(d / "condarc", "channels: [a]\n")
    before = snapshot(rc)
    for user in (False, True):
        line = one_line_error(run_cpkgs("link-user", "--condarc", str(rc), root=usite, user=user))
        assert f"{d} is writable by everyone" in line
    assert snapshot(rc) == before


HOLDER = """\
import sys
from filelock import SoftFileLease
lock = SoftFileLease(sys.argv[1], lease_duration=30, is_singleton=False, thread_local=False)
lock.acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes it
lock.release()
"""


@pytest.fixture
def outside_pytest_tmp() -> Iterator[Path]:
    """A root-owned 0755 dir directly in /tmp. For the long test: another pytest session starting meanwhile (other
    work on this machine) chmods /tmp/pytest-of-root back to 0700, which would lock the users out of tmp_path."""
    d = Path(tempfile.mkdtemp(prefix="cpkgs-sec-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_root_waiting_on_the_users_lock_follows_no_clock_symlink(usite: Path, outside_pytest_tmp: Path) -> None:
    """The user holds the lock beside their condarc and plants `.clock-<host>-<pid>` symlinks to a root-only file
    for the pids root's link-user may get. While it waits (a lease slice is 15 s) cpkgs writes such a clock file
    to read the server's time: with the user's rights, not root's, so the root-only file stays whole."""
    tmp_path = outside_pytest_tmp
    secret = tmp_path / "root-only"
    secret.write_text("do not truncate\n")
    secret.chmod(0o600)
    before = snapshot(secret)
    home = user_dir(tmp_path / "uhome")
    rc = user_file(home / ".condarc", "channels: [a]\n")
    holder = subprocess.Popen(
        ["setpriv", "--reuid", str(USER), "--regid", str(USER), "--clear-groups", sys.executable, "-c", HOLDER,
         str(home / ".condarc.cpkgs.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        first = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
        plant = (f"import os\nfor pid in range({first}, {first + 3000}):\n"
                 f"    os.symlink({str(secret)!r}, {str(home)!r} + '/.clock-{socket.gethostname()}-' + str(pid))\n")
        assert as_uid(USER, [sys.executable, "-c", plant]).returncode == 0
        cmd = [sys.executable, "-m", "cpkgs_admin", "--root", str(usite), "link-user", "--condarc", str(rc)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cpkgs_env(),
                                cwd=str(REPO))  # fmt: skip
        assert first <= proc.pid < first + 3000
        tick = threading.Event()

        # Let go once a lease slice has passed (15 s after link-user started waiting: it then writes its clock
        # file), or as soon as the root-only file changed.
        def release_later() -> None:
            for _ in range(100):
                if proc.poll() is not None or snapshot(secret) != before:
                    break
                tick.wait(0.2)
            holder.communicate("", timeout=60)

        t = threading.Thread(target=release_later)
        t.start()
        out, err = proc.communicate(timeout=120)
        t.join()
    finally:
        if holder.poll() is None:
            holder.kill()
    assert snapshot(secret) == before
    assert proc.returncode == 0, (out, err)
    st = rc.stat()
    assert (st.st_uid, st.st_gid) == (USER, USER)
    assert entry_of(usite) in rc.read_text()


# ------------------------------------------------------------------------------------------- an editor meanwhile


APPENDER = """\
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
print("start", flush=True)
for i in range(n):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, f"# appended {i}\\n".encode())
    os.close(fd)
    time.sleep(0.002)
"""


def test_lines_appended_while_link_user_edits_are_kept(usite: Path, _home: Path) -> None:
    """A real process appends 400 lines (open, append, close: a shell's `>>` or an editor saving by append) while
    link-user and unlink-user edit the same file over and over. Not one line is lost, none is doubled, and what is
    left besides them is the user's file as it was."""
    rc = _home / ".condarc"
    base = "channels:\n  - conda-forge\nenvs_dirs:\n  - ~/envs\n"
    rc.write_text(base)
    n = 400
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(rc), str(n)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "start\n"
    runs = 0
    while proc.poll() is None:
        (link_user if runs % 2 == 0 else unlink_user)(usite)
        runs += 1
    assert proc.wait() == 0
    if runs % 2:
        unlink_user(usite)
    text = rc.read_text()
    appended = [ln for ln in text.splitlines() if ln.startswith("# appended ")]
    assert sorted(appended) == sorted(f"# appended {i}" for i in range(n)), (runs, len(appended))
    assert "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("# appended ")) == base
    assert runs >= 4, runs  # the edits did overlap the appends
    backups = [p for p in _home.iterdir() if BACKUP.match(p.name)]
    assert len(backups) <= 3


def test_only_the_newest_three_backups_are_kept(usite: Path, _home: Path) -> None:
    rc = _home / ".condarc"
    rc.write_text("channels: [a]\n")
    contents, runs = [], []
    for n in range(6):
        contents.append(rc.read_bytes())
        runs.append(run_cpkgs("link-user" if n % 2 == 0 else "unlink-user", root=usite))
        assert runs[-1].returncode == 0, runs[-1]
    backups = sorted((p for p in _home.iterdir() if BACKUP.match(p.name)), key=lambda p: p.stat().st_mtime_ns)
    assert len(backups) == 3
    assert [p.read_bytes() for p in backups] == contents[3:]
    # each run says where its backup is, and how many are kept
    assert f"backup {backups[-1]} (the newest 3 backups are kept)" in runs[-1].stdout, runs[-1]


# ------------------------------------------------------------------------------------------- not a regular file


def _limited() -> None:
    # Old code read /dev/zero to MemoryError: never let a test eat the shared machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def run_limited(*args: str, root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cpkgs_admin", "--root", str(root), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=cpkgs_env(env), timeout=60, cwd=str(REPO),
                          preexec_fn=_limited)  # fmt: skip


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_condarc_that_is_not_a_regular_file(usite: Path, _home: Path, kind: str) -> None:
    if kind == "fifo":
        path = _home / ".condarc"
        os.mkfifo(path)
        env = {"HOME": str(_home)}
        what = "is a FIFO, not a regular file"
    else:
        path = Path("/dev/zero")
        env = {"HOME": str(_home), "CONDARC": str(path)}
        what = "is a character device, not a regular file"
    for command in ("link-user", "unlink-user"):
        r = run_limited(command, root=usite, env=env)
        assert r.returncode == 1, r
        assert r.stderr == f"cpkgs: {path}: {what} (cpkgs reads only regular files)\n", r
    r = run_limited("doctor", root=usite, env=env)
    assert r.returncode == 4, r
    assert f"[fail] condarc: {path}: {what}" in r.stdout, r
    assert r.stderr == "cpkgs: doctor: 1 check(s) failed\n" or "Traceback" not in r.stderr, r
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode) and sorted(os.listdir(_home)) == [".condarc"]


def test_huge_condarc_is_refused(usite: Path, _home: Path) -> None:
    rc = _home / ".condarc"
    with rc.open("w") as fh:
        fh.write("channels: [a]\n" + "# padding\n" * 500_000)
    r = run_cpkgs("link-user", root=usite)
    assert one_line_error(r) == f"cpkgs: {rc}: larger than 4 MiB; not a file cpkgs reads", r


def test_non_utf8_cpkgs_yaml_is_one_line(tmp_path: Path) -> None:
    root = make_site(tmp_path / "site", None)
    cfg = root / "cpkgs.yaml"
    raw = cfg.read_bytes()
    at = raw.index(b"channels")
    cfg.write_bytes(raw[:at] + b"# caf\xe9\n" + raw[at:])
    for args in (["list"], ["init"], ["doctor"]):
        r = run_cpkgs(*args, root=root)
        assert r.returncode in (1, 4), r
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r
        assert f"{cfg}: not UTF-8 text (byte {at + 5})" in r.stderr + r.stdout, r


def test_spec_and_lock_files_that_are_fifos_or_not_utf8(usite: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "env.yml"
    os.mkfifo(fifo)
    r = run_cpkgs("new-env", "x-1.0", "-f", str(fifo), root=usite, timeout=60)
    assert one_line_error(r) == f"cpkgs: spec file {fifo}: is a FIFO, not a regular file (cpkgs reads only regular files)"
    r = run_cpkgs("new-env", "x-1.0", "--lock", str(fifo), root=usite, timeout=60)
    assert "is a FIFO, not a regular file" in one_line_error(r)
    spec = usite / "specs" / "bad.yml"
    spec.write_bytes(b"dependencies: [python]\n# \xff\n")
    try:
        r = run_cpkgs("new-env", "bad-1.0", root=usite, timeout=60)
        assert one_line_error(r) == f"cpkgs: spec file {spec}: not UTF-8 text (byte 25)"
    finally:
        spec.unlink()
    assert not (usite / ENVS / "x-1.0").exists()
