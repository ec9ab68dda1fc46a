"""retire, remove, purge: lifecycle of published envs, with NFS silly-renames left alone."""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENVS, LINUX, NOBODY, make_site, run_cpkgs, tree_hash, world_traversable


def build(root: Path, name: str) -> None:
    r = run_cpkgs("new-env", name, "cpkgs-test-app", root=root)
    assert r.returncode == 0, r


def test_retire_marks_and_hides(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    build(root, "r-1.0")
    build(root, "r-2.0")
    r = run_cpkgs("retire", "r-1.0", "--successor", "r-2.0", "--message", "faster", root=root)
    assert r.returncode == 0, r
    assert [e["name"] for e in run_cpkgs("list", "--json", root=root).json()] == ["r-2.0"]
    every = {e["name"]: e for e in run_cpkgs("list", "--all", "--json", root=root).json()}
    assert every["r-1.0"]["status"] == "retired" and every["r-1.0"]["successor"] == "r-2.0"
    marker = root / ".cpkgs" / "retired" / LINUX / "r-1.0"
    assert marker.read_text() == "cpkgs: r-1.0 is retired; use r-2.0 (faster)\n"
    assert (root / ENVS / "r-1.0" / "bin" / "cpkgs-test-app").exists()  # retired envs stay usable
    info = run_cpkgs("info", "r-1.0", "--json", root=root).json()
    assert info["retired"]["successor"] == "r-2.0"


def test_retire_bad_successor(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    build(root, "r-1.0")
    before = tree_hash(root)
    r = run_cpkgs("retire", "r-1.0", "--successor", "nope-9.0", root=root)
    assert r.returncode == 1 and "nope-9.0" in r.stderr and r.stderr.count("\n") == 1
    assert tree_hash(root) == before


def start_job(prefix: Path) -> subprocess.Popen[str]:
    """A long job of an ordinary user, started from PREFIX's python: it imports a stdlib module (not loaded at
    start-up) only when told to, as a days-long HPC job does when it reaches new code."""
    code = ("import sys; print('ready', flush=True); sys.stdin.readline(); import email.mime.text; "
            "print('imported', email.mime.text.__file__, flush=True)")
    job = subprocess.Popen(["setpriv", *NOBODY, str(prefix / "bin" / "python"), "-B", "-c", code], text=True,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    assert job.stdout is not None and job.stdout.readline() == "ready\n"
    return job


def resume(job: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = job.communicate("\n", timeout=120)
    return job.returncode, out, err


def test_remove_keeps_the_env_for_running_jobs_until_purge(tmp_path: Path, channel_url: str) -> None:
    """remove hides the env and refuses new uses, but its tree stays at its path through the grace: a job started
    from it still imports modules afterwards. purge within the grace keeps it; past it (--older-than 0s) moves it
    into the trash and deletes it, and only then do the jobs still running from it lose it."""
    root = make_site(tmp_path / "site", channel_url)
    for name in ("g-1.0", "g-2.0"):
        assert run_cpkgs("new-env", name, "python", "cpkgs-test-app", root=root).returncode == 0
    assert run_cpkgs("retire", "g-1.0", "--successor", "g-2.0", root=root).returncode == 0
    prefix = root / ENVS / "g-1.0"
    job = start_job(prefix)
    late = None
    try:
        r = run_cpkgs("remove", "g-1.0", root=root)
        assert r.returncode == 0 and r.stderr == "", r
        code, out, err = resume(job)
        assert code == 0 and out.startswith(f"imported {prefix}/lib/python3.") and err == "", (out, err)
        assert f"running jobs keep it at {prefix} until 'cpkgs purge' after " in r.stdout
        assert (prefix / "bin" / "cpkgs-test-app").is_file() and list((root / ".cpkgs" / "trash").iterdir()) == []

        # What sees envs: the shells' marker refuses it (naming the successor); listings hide it; its modulefile
        # and kernels are gone and refresh does not bring them back; the name stays taken.
        marker = root / ".cpkgs" / "retired" / LINUX / "g-1.0"
        assert marker.read_text() == "cpkgs: g-1.0 was removed; use g-2.0\n"
        assert [e["name"] for e in run_cpkgs("list", "--json", root=root).json()] == ["g-2.0"]
        every = {e["name"]: e for e in run_cpkgs("list", "--all", "--json", root=root).json()}
        info = run_cpkgs("info", "g-1.0", "--json", root=root).json()
        assert every["g-1.0"]["status"] == info["status"] == "removed"
        assert every["g-1.0"]["purge_after"] == info["removed"]["purge_after"] > info["removed"]["at"]
        human = run_cpkgs("list", "--all", root=root).stdout
        assert "removed, kept until " + info["removed"]["purge_after"][:10] in human, human
        assert "kept at its path for running jobs" in run_cpkgs("info", "g-1.0", root=root).stdout
        assert not (root / "modulefiles" / "g" / "1.0.lua").exists()
        assert run_cpkgs("refresh", "--json", root=root).json()["written"] == []
        assert not (root / "modulefiles" / "g" / "1.0.lua").exists()
        again = run_cpkgs("new-env", "g-1.0", "cpkgs-test-app", root=root)
        assert again.returncode == 1 and "already exists (status removed)" in again.stderr, again
        again = run_cpkgs("new-env", "g-3.0", "--from", "g-1.0", root=root)
        assert again.returncode == 1 and "--from g-1.0: that environment was removed" in again.stderr, again
        r = run_cpkgs("export", "g-1.0", root=root)  # the recipe stays: a removed env can be rebuilt offline
        assert r.returncode == 0 and "/python-3." in r.stdout, r
        r = run_cpkgs("mirror", "g-1.0", str(tmp_path / "mirror"), root=root)
        assert r.returncode == 0 and (tmp_path / "mirror" / "linux-64" / "repodata.json").is_file(), r
        r = run_cpkgs("pack", "g-1.0", "-o", str(tmp_path / "g.tar.gz"), root=root)
        assert r.returncode == 1 and r.stderr == "cpkgs: environment g-1.0 (linux-64) was removed\n", r
        r = run_cpkgs("verify", "--json", root=root)  # still there and sealed: checked, not a problem
        assert r.returncode == 0 and {x["name"]: x["status"] for x in r.json()} == {"g-1.0": "removed",
                                                                                    "g-2.0": "active"}, r

        # Within the grace, purge keeps it.
        late = start_job(prefix)
        r = run_cpkgs("purge", "--json", root=root)
        assert r.returncode == 0 and r.json()["moved"] == [] and r.json()["deleted"] == [], r
        assert [w["prefix"] for w in r.json()["waiting"]] == [str(prefix)] and (prefix / "bin").is_dir()
        assert "waiting " + str(prefix) in run_cpkgs("purge", root=root).stdout
        # Past it: moved into the trash (rename first), then deleted.
        r = run_cpkgs("purge", "--older-than", "0s", "--json", root=root)
        assert r.returncode == 0, r
        (deleted,) = r.json()["deleted"]
        assert r.json()["moved"] == [str(prefix)] and deleted.startswith(str(root / ".cpkgs" / "trash" / "g-1.0@"))
        assert not os.path.lexists(prefix) and list((root / ".cpkgs" / "trash").iterdir()) == []
        assert not marker.exists()
        code, out, err = resume(late)
        assert code == 1 and "ModuleNotFoundError" in err, (out, err)
        info = run_cpkgs("info", "g-1.0", "--json", root=root).json()
        assert info["status"] == "removed" and info["removed"]["trash"] == deleted
        assert [h["action"] for h in info["history"]][-2:] == ["remove", "purge"]
        assert run_cpkgs("list", "--all", "--json", root=root).json()[0]["purge_after"] is None
        assert run_cpkgs("purge", "--older-than", "0s", root=root).stdout == "nothing to purge\n"
    finally:
        for j in (job, late):
            if j is not None and j.poll() is None:
                j.kill()
                j.communicate()


def test_purge_skips_busy_nfs_files(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    build(root, "b-1.0")
    assert run_cpkgs("remove", "b-1.0", root=root).returncode == 0
    bindir = root / ENVS / "b-1.0" / "bin"
    os.chmod(bindir, 0o755)
    # What an NFS client leaves when a file of the removed env is still open on some host.
    silly = bindir / ".nfs00000000002a1b2c00000005"
    silly.write_text("open elsewhere")
    r = run_cpkgs("purge", "--older-than", "0s", "--json", root=root)
    assert r.returncode == 0, r
    (entry,) = (root / ".cpkgs" / "trash").iterdir()
    assert r.json()["kept_busy"] == [str(entry)] and r.json()["deleted"] == []
    silly = entry / "bin" / silly.name
    assert silly.exists() and not (entry / "bin" / "cpkgs-test-app").exists()
    human = run_cpkgs("purge", "--older-than", "0s", root=root)
    assert "kept" in human.stdout and ".nfs" in human.stdout
    # The entry is due (its grace was spent at its path): the default purge retries it too.
    silly.unlink()  # the other host closed the file; its client removed the silly-rename
    r = run_cpkgs("purge", "--json", root=root)
    assert r.json()["deleted"] == [str(entry)] and not entry.exists()


def test_remove_unknown_and_removed(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    r = run_cpkgs("remove", "x-1.0", root=root)
    assert r.returncode == 1 and "no environment named x-1.0" in r.stderr
    build(root, "x-1.0")
    assert run_cpkgs("remove", "x-1.0", root=root).returncode == 0
    r = run_cpkgs("remove", "x-1.0", root=root)
    assert r.returncode == 1 and "was removed" in r.stderr


def test_bad_duration(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    r = run_cpkgs("purge", "--older-than", "soon", root=root)
    assert r.returncode == 2 and "duration" in r.stderr


def test_purge_removes_staging_dirs_of_dead_builds_only(tmp_path: Path, channel_url: str) -> None:
    import subprocess
    import sys

    root = make_site(tmp_path / "site", channel_url)
    envs = root / ENVS
    dead = envs / ".staging-dead-1.0@0123456789ab"
    dead.mkdir(mode=0o700)
    (dead / "half").write_text("x")
    live = envs / ".staging-live-1.0@ba9876543210"
    live.mkdir(mode=0o700)
    # A running build of live-1.0 holds its name's lock.
    code = (
        "import sys; from pathlib import Path; from cpkgs_admin.site.locks import env_locked; "
        "from cpkgs_admin.site.paths import open_site\n"
        "with env_locked(open_site(Path(sys.argv[1])), 'live-1.0', 'linux-64'):\n"
        "    print('held', flush=True); sys.stdin.readline()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        r = run_cpkgs("purge", "--json", root=root)
        assert r.returncode == 0, r
        assert r.json()["staging_removed"] == [str(dead)]
        assert not dead.exists() and live.exists()
    finally:
        holder.communicate("\n", timeout=30)


def test_damaged_record_is_one_line_naming_the_file(tmp_path: Path, channel_url: str) -> None:
    """One damaged record: commands about it fail with one line naming the file; whole-site reads (list, verify)
    report it after the others and fail; other names still build (its own module name stays taken); refresh,
    which deletes what no record claims, refuses. Copying the env's own record back repairs it."""
    root = make_site(tmp_path / "site", channel_url)
    build(root, "good-1.0")
    build(root, "bad-1.0")
    rec = root / ".cpkgs" / "records" / "linux-64" / "bad-1.0.json"
    good = json.loads(rec.read_text())
    damaged = [
        "{}", "[]", '{"schema": "x", "name": "bad-1.0", "platform": "linux-64"}',
        json.dumps({**good, "retired": "x"}), json.dumps({**good, "packages": "x"}),
        json.dumps({**good, "name": "good-1.0"}),  # another env's record under this name
    ]
    for n, text in enumerate(damaged):
        rec.write_text(text)
        for args in (("info", "bad-1.0"), ("new-env", "bad-1.0", "cpkgs-test-app"), ("refresh",)):
            r = run_cpkgs(*args, root=root)
            assert r.returncode == 1 and "bad-1.0.json: damaged record" in r.stderr, (text, args, r)
            assert r.stderr.count("\n") == 1 and "internal error" not in r.stderr
        r = run_cpkgs("list", "--json", root=root)
        assert r.returncode == 1 and [e["name"] for e in r.json()] == ["good-1.0", *[f"x-{i}.0" for i in range(n)]]
        assert "bad-1.0.json: damaged record" in r.stderr and "conda-meta/cpkgs/record.json" in r.stderr, r
        r = run_cpkgs("verify", "--json", root=root)
        assert r.returncode == 4, r
        reports = {x["name"]: x for x in r.json()}
        assert reports["good-1.0"]["ok"] and [p["kind"] for p in reports["bad-1.0"]["problems"]] == ["record"]
        r = run_cpkgs("new-env", f"x-{n}.0", "cpkgs-test-app", root=root)
        assert r.returncode == 0 and r.stderr == "", r
        assert (root / "modulefiles" / "x" / f"{n}.0.lua").is_file()
        rc = root / "modulefiles" / "bad" / ".modulerc.lua"
        rc_before = rc.read_text()
        r = run_cpkgs("new-env", f"bad-2.{n}", "cpkgs-test-app", root=root)  # module bad/2.N: not taken, fine
        assert r.returncode == 0 and r.stderr == "", r
        # The family's default stays as it was while one of its records cannot be read.
        assert (root / "modulefiles" / "bad" / f"2.{n}.lua").is_file() and rc.read_text() == rc_before
        r = run_cpkgs("remove", f"bad-2.{n}", root=root)
        assert r.returncode == 0 and not (root / "modulefiles" / "bad" / f"2.{n}.lua").exists(), r
    shutil.copy(root / ENVS / "bad-1.0" / "conda-meta" / "cpkgs" / "record.json", rec)
    assert run_cpkgs("refresh", root=root).returncode == 0
    assert run_cpkgs("verify", root=root).returncode == 0
    listed = [e["name"] for e in run_cpkgs("list", "--json", root=root).json()]
    assert listed == ["bad-1.0", "good-1.0", *[f"x-{i}.0" for i in range(len(damaged))]]


def test_records_read_again_once_another_process_replaced_them(tmp_path: Path, channel_url: str) -> None:
    """A long-lived process that looked at the records (as new-env does three times) sees another process's
    retire at its next look, not the record it parsed before."""
    from cpkgs_admin.site.records import load_all

    root = make_site(tmp_path / "site", channel_url)
    build(root, "s-1.0")
    records = root / ".cpkgs" / "records"
    first = {r.name: r for r in load_all(records, shared=True)}
    assert first["s-1.0"].status == "active"
    assert load_all(records, shared=True)[0] is first["s-1.0"]  # unchanged: not parsed again
    assert run_cpkgs("retire", "s-1.0", root=root).returncode == 0
    again = {r.name: r for r in load_all(records, shared=True)}
    assert again["s-1.0"].status == "retired"


def test_record_keys_of_a_newer_cpkgs_survive_an_older_ones_changes(tmp_path: Path, channel_url: str) -> None:
    """Hosts sharing a site may run different cpkgs versions: keys this one does not know are kept, not dropped
    (and do not make the record 'damaged')."""
    import json

    root = make_site(tmp_path / "site", channel_url)
    build(root, "k-1.0")
    path = root / ".cpkgs" / "records" / "linux-64" / "k-1.0.json"
    data = json.loads(path.read_text())
    data["from_the_future"] = {"kept": True}
    path.write_text(json.dumps(data))
    assert run_cpkgs("retire", "k-1.0", "--message", "old", root=root).returncode == 0
    after = json.loads(path.read_text())
    assert after["from_the_future"] == {"kept": True} and after["status"] == "retired"
    assert [e["name"] for e in run_cpkgs("list", "--all", "--json", root=root).json()] == ["k-1.0"]


def test_purge_removes_what_interrupted_builds_left(tmp_path: Path, channel_url: str) -> None:
    """Leftovers of builds cut short: a staging dir (kill -9), the private placeholder file and a renamed-aside dir
    (Ctrl-C during the install). purge removes them when no build of that name runs."""
    root = make_site(tmp_path / "site", channel_url)
    envs = root / ENVS
    killed = envs / ".staging-k-1.0@0123456789ab"
    (killed / "bin").mkdir(parents=True)
    os.chmod(killed, 0o700)
    placeholder = envs / ".staging-c-1.0@ba9876543210"
    placeholder.touch(mode=0o600)
    aside = envs / ".staging-c-1.0@ba9876543210-discarded0"
    (aside / "lib").mkdir(parents=True)
    os.chmod(aside / "lib", 0o555)
    r = run_cpkgs("purge", "--json", root=root)
    assert r.returncode == 0, r
    assert sorted(r.json()["staging_removed"]) == sorted(str(p) for p in (killed, placeholder, aside))
    assert not list(envs.glob(".staging-*"))
    assert run_cpkgs("new-env", "c-1.0", "cpkgs-test-app", root=root).returncode == 0


def _as_admin(uid: int, gid: int, root: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """cpkgs run by an admin who is not root (uid UID, primary group GID), as on a real site."""
    home.mkdir(exist_ok=True)
    os.chown(home, uid, gid)
    cmd = ["setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups", sys.executable, "-m",
           "cpkgs_admin", "--root", str(root), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(Path(__file__).parent.parent),
                          env={**os.environ, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"})


def test_an_admin_who_is_not_root_removes_and_purges_their_env(tmp_path: Path, channel_url: str) -> None:
    """The sealed top dir (0555) must be made writable to be moved into the trash (its '..' changes): the builder
    can; another admin's remove gets one line naming who can, and nothing changes; their purge of a removed env
    they may not move fails with that line (exit 1) instead of reporting it as busy NFS files."""
    staff = grp.getgrnam("staff").gr_gid
    channel = tmp_path / "channel"
    shutil.copytree(channel_url.removeprefix("file://"), channel)
    subprocess.run(["chmod", "-R", "a+rX", str(channel)], check=True)
    root = make_site(tmp_path / "site", channel.as_uri())
    assert run_cpkgs("init", "--admin-group", "staff", root=root).returncode == 0
    world_traversable(root)
    a, b = tmp_path / "home1001", tmp_path / "home1002"
    for name in ("mine-1.0", "kept-1.0"):
        r = _as_admin(1001, staff, root, "new-env", name, "cpkgs-test-app", home=a)
        assert r.returncode == 0, r.stderr
    before = tree_hash(root / ENVS)
    r = _as_admin(1002, staff, root, "remove", "kept-1.0", home=b)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "uid 1001" in r.stderr and "only by the admin who built it" in r.stderr
    assert tree_hash(root / ENVS) == before
    assert run_cpkgs("info", "kept-1.0", "--json", root=root).json()["status"] == "active"

    r = _as_admin(1001, staff, root, "remove", "mine-1.0", home=a)
    assert r.returncode == 0, r.stderr
    mine = root / ENVS / "mine-1.0"
    assert mine.stat().st_mode & 0o777 == 0o555  # kept at its path, sealed, until purge
    r = _as_admin(1002, staff, root, "purge", "--older-than", "0s", home=b)
    assert r.returncode == 1, r
    assert r.stderr.startswith(f"cpkgs: cannot purge {mine}: it belongs to ") and r.stderr.count("\n") == 1
    assert r.stderr.endswith("uid 1001: only that admin or root can delete it\n") or "(uid 1001)" in r.stderr
    assert mine.stat().st_mode & 0o777 == 0o555 and list((root / ".cpkgs" / "trash").iterdir()) == []
    r = _as_admin(1001, staff, root, "purge", "--older-than", "0s", "--json", home=a)
    assert r.returncode == 0, r.stderr
    (trashed,) = json.loads(r.stdout)["deleted"]
    assert json.loads(r.stdout)["moved"] == [str(mine)] and not os.path.lexists(mine) and not Path(trashed).exists()
    # A dead build's private staging dir of one admin: another admin's purge names it, it does not claim it.
    dead = root / ENVS / ".staging-gone-1.0@0123456789ab"
    (dead / "conda-meta").mkdir(parents=True)
    for d in (dead / "conda-meta", dead):
        os.chown(d, 1001, staff)
        d.chmod(0o700)
    r = _as_admin(1002, staff, root, "purge", "--json", home=b)
    assert r.returncode == 1 and dead.exists(), r
    assert json.loads(r.stdout)["staging_removed"] == [] and "uid 1001" in r.stderr, r
    r = _as_admin(1001, staff, root, "purge", "--json", home=a)
    assert r.returncode == 0 and json.loads(r.stdout)["staging_removed"] == [str(dead)] and not dead.exists(), r


def test_purge_reports_what_it_may_not_delete(tmp_path: Path, channel_url: str) -> None:
    """An undeletable file that is not an NFS silly-rename (here: immutable) fails the purge with a line naming it;
    it is not kept as "busy"."""
    root = make_site(tmp_path / "site", channel_url)
    build(root, "p-1.0")
    assert run_cpkgs("remove", "p-1.0", root=root).returncode == 0
    if subprocess.run(["chattr", "+i", str(root / ENVS / "p-1.0" / "bin" / "cpkgs-test-app")],
                      capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag (chattr +i)")
    r = run_cpkgs("purge", "--older-than", "0s", "--json", root=root)  # moves it (a rename), then fails to delete
    (trashed,) = (root / ".cpkgs" / "trash").iterdir()
    stuck = trashed / "bin" / "cpkgs-test-app"
    try:
        assert r.returncode == 1, r
        out = json.loads(r.stdout)
        assert out["kept_busy"] == [] and out["deleted"] == [] and out["moved"] == [str(root / ENVS / "p-1.0")]
        assert out["failed"] == [{"path": str(trashed), "reason": f"cannot delete {stuck}: Operation not permitted"}]
        assert r.stderr == f"cpkgs: cannot purge {trashed}: cannot delete {stuck}: Operation not permitted\n"
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert run_cpkgs("purge", "--older-than", "0s", root=root).returncode == 0
    assert not trashed.exists()


def test_successor_must_be_current_and_removing_one_warns(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    for v in ("1.0", "1.1", "1.2"):
        build(root, f"s-{v}")
    assert run_cpkgs("retire", "s-1.0", "--successor", "s-1.1", root=root).returncode == 0
    before = tree_hash(root)
    r = run_cpkgs("retire", "s-1.1", "--successor", "s-1.0", root=root)  # would send users in a circle
    assert r.returncode == 2 and r.stderr == (
        "cpkgs: successor s-1.0 is retired itself; name an environment users should move to\n"), r
    assert tree_hash(root) == before
    r = run_cpkgs("remove", "s-1.1", root=root)
    assert r.returncode == 0, r
    assert r.stderr == ("cpkgs: warning: s-1.0 is retired with s-1.1 as its successor, so its users are sent to a "
                        "removed environment: run 'cpkgs retire s-1.0 --successor NEWER'\n")
    assert run_cpkgs("retire", "s-1.0", "--successor", "s-1.2", root=root).returncode == 0
    marker = root / ".cpkgs" / "retired" / LINUX / "s-1.0"
    assert marker.read_text() == "cpkgs: s-1.0 is retired; use s-1.2\n"
    r = run_cpkgs("retire", "s-1.2", root=root)
    assert r.returncode == 0 and r.stderr == (
        "cpkgs: warning: s-1.0 is retired with s-1.2 as its successor, so its users are sent to an environment "
        "retired too: run 'cpkgs retire s-1.0 --successor NEWER'\n"), r
