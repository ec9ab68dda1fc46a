"""`cpkgs verify`, `seal`, `unseal`: integrity and permissions of real published envs."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENVS, make_site, run_cpkgs, world_traversable


@pytest.fixture(scope="module")
def vsite(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Path:
    root = make_site(tmp_path_factory.mktemp("verify") / "site", channel_url)
    assert run_cpkgs("new-env", "v-1.0", "python", "cpkgs-test-app", "cpkgs-test-binprefix", root=root).returncode == 0
    return root


def unsealed(path: Path) -> None:
    """Open one file for tampering the way a careless admin would (root bypasses modes, so chmod first)."""
    os.chmod(path.parent, 0o755)
    if path.exists():
        os.chmod(path, 0o644)


def test_clean_env_verifies(built_site: Path) -> None:
    r = run_cpkgs("verify", "demo-1.0", root=built_site)
    assert r.returncode == 0, r
    assert "0 problem(s)" in r.stdout
    r = run_cpkgs("verify", "--json", root=built_site)
    assert r.returncode == 0
    reports = r.json()
    assert {x["name"] for x in reports} == {"demo-1.0", "demo-2.0", "tools-1.0", "old-1.0"}
    assert all(x["ok"] and x["files"] > 0 for x in reports)


def test_detects_modified_deleted_chmodded_and_extra(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "t-1.0", "python", "cpkgs-test-app", "cpkgs-test-binprefix", root=root).returncode == 0
    prefix = root / ENVS / "t-1.0"
    mod = prefix / "bin" / "cpkgs-test-app"
    unsealed(mod)
    mod.write_text("#!/bin/sh\necho pwned\n")
    gone = prefix / "lib" / "python3.11" / "os.py"
    unsealed(gone)
    gone.unlink()
    chm = prefix / "lib" / "python3.11" / "json" / "decoder.py"
    os.chmod(chm, 0o777)
    extra = prefix / "bin" / "dropped-in"
    extra.write_text("x")
    setuid = prefix / "bin" / "cpkgs-test-binprefix"
    os.chmod(setuid, 0o4555)
    r = run_cpkgs("verify", "t-1.0", root=root)
    assert r.returncode == 4, r
    lines = r.stdout.splitlines()

    def has(kind: str, rel: str) -> bool:
        return any(line.startswith(f"t-1.0: {kind}: {rel}:") for line in lines)

    assert has("modified", "bin/cpkgs-test-app")
    assert has("missing", "lib/python3.11/os.py")
    assert has("writable", "lib/python3.11/json/decoder.py")
    assert has("executable", "lib/python3.11/json/decoder.py")
    assert has("unexpected", "bin/dropped-in")
    assert has("setuid", "bin/cpkgs-test-binprefix")
    assert "verify found" in r.stderr and r.stderr.count("\n") == 1
    js = run_cpkgs("verify", "t-1.0", "--json", root=root)
    assert js.returncode == 4
    kinds = {(p["kind"], p["path"]) for p in js.json()[0]["problems"]}
    assert ("modified", "bin/cpkgs-test-app") in kinds


def test_nfs_silly_rename_files_are_ignored(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "n-1.0", "cpkgs-test-app", root=root).returncode == 0
    prefix = root / ENVS / "n-1.0"
    os.chmod(prefix / "bin", 0o755)
    (prefix / "bin" / ".nfs000000000123abcd00000001").write_text("still open on another host")
    os.chmod(prefix / "bin", 0o555)
    assert run_cpkgs("verify", "n-1.0", root=root).returncode == 0


def test_unseal_then_seal(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "s-1.0", "cpkgs-test-app", root=root).returncode == 0
    prefix = root / ENVS / "s-1.0"
    r = run_cpkgs("unseal", "s-1.0", root=root)
    assert r.returncode == 2 and "--reason" in r.stderr
    r = run_cpkgs("unseal", "s-1.0", "--reason", "hotfix CVE-2026-1", root=root)
    assert r.returncode == 0, r
    assert stat.S_IMODE((prefix / "bin").stat().st_mode) == 0o755
    assert stat.S_IMODE((prefix / "bin" / "cpkgs-test-app").stat().st_mode) == 0o755
    assert not (prefix / "bin" / "cpkgs-test-app").stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    listing = {e["name"]: e for e in run_cpkgs("list", "--json", root=root).json()}
    assert listing["s-1.0"]["status"] == "unsealed"
    v = run_cpkgs("verify", "s-1.0", root=root)
    assert v.returncode == 0 and "[unsealed]" in v.stdout
    audit = [json.loads(x) for x in (root / ".cpkgs" / "audit.log").read_text().splitlines()]
    assert audit[-1]["action"] == "unseal" and audit[-1]["reason"] == "hotfix CVE-2026-1"
    assert run_cpkgs("seal", "s-1.0", root=root).returncode == 0
    assert stat.S_IMODE(prefix.stat().st_mode) == 0o555
    assert stat.S_IMODE((prefix / "bin" / "cpkgs-test-app").stat().st_mode) == 0o555
    assert run_cpkgs("list", "--json", root=root).json()[0]["status"] == "active"
    assert run_cpkgs("verify", "s-1.0", root=root).returncode == 0


def test_verify_unknown_env(built_site: Path) -> None:
    r = run_cpkgs("verify", "nope-1.0", root=built_site)
    assert r.returncode == 1 and "no environment named nope-1.0" in r.stderr


def test_prefix_patched_files_are_hashed_too(tmp_path: Path, channel_url: str) -> None:
    """Every patched file is checked byte for byte: the installer's sha256_in_prefix where it recorded one, else
    the hash cpkgs records at publish in its own manifest."""
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "b-1.0", "python", "cpkgs-test-binprefix", root=root).returncode == 0
    prefix = root / ENVS / "b-1.0"
    manifest = json.loads((prefix / "conda-meta" / "cpkgs" / "site-files.json").read_text())
    unhashed = []
    for meta in (prefix / "conda-meta").glob("*.json"):
        for e in json.loads(meta.read_text())["paths_data"]["paths"]:
            if e.get("prefix_placeholder") and not e.get("sha256_in_prefix"):
                unhashed.append(e["_path"])
    assert set(unhashed) <= set(manifest)
    for rel in (*unhashed[:1], "bin/cpkgs-test-binprefix", "lib/python3.11/_sysconfigdata__linux_x86_64-linux-gnu.py"):
        target = prefix / rel
        unsealed(target)
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF  # same size, one byte flipped
        target.write_bytes(bytes(data))
        r = run_cpkgs("verify", "b-1.0", root=root)
        assert r.returncode == 4 and f"modified: {rel}" in r.stdout, r


def test_file_swapped_for_a_symlink_and_edited_metadata_are_caught(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "m-1.0", "cpkgs-test-app", "cpkgs-test-lib", root=root).returncode == 0
    prefix = root / ENVS / "m-1.0"
    app = prefix / "bin" / "cpkgs-test-app"
    evil = tmp_path / "evil"
    evil.write_text("#!/bin/sh\necho evil\n")
    unsealed(app)
    app.unlink()
    app.symlink_to(evil)
    r = run_cpkgs("verify", "m-1.0", root=root)
    assert r.returncode == 4 and "replaced: bin/cpkgs-test-app" in r.stdout, r
    # Editing a file *and* its expected hash in conda-meta is caught by the digest kept outside the env.
    app.unlink()
    tool = prefix / "bin" / "cpkgs-test-lib-version"
    unsealed(tool)
    tool.write_text(tool.read_text() + "# changed\n")
    (meta,) = (prefix / "conda-meta").glob("cpkgs-test-lib-*.json")
    os.chmod(meta.parent, 0o755)
    os.chmod(meta, 0o644)
    import hashlib

    data = json.loads(meta.read_text())
    for e in data["paths_data"]["paths"]:
        if e["_path"] == "bin/cpkgs-test-lib-version":
            e["sha256"] = hashlib.sha256(tool.read_bytes()).hexdigest()
            e["size_in_bytes"] = tool.stat().st_size
            e.pop("sha256_in_prefix", None)
    meta.write_text(json.dumps(data))
    r = run_cpkgs("verify", "m-1.0", "--json", root=root)
    kinds = {(p["kind"], p["path"]) for p in r.json()[0]["problems"]}
    assert ("modified", "conda-meta") in kinds
    assert ("modified", "bin/cpkgs-test-lib-version") not in kinds  # its hash was forged: only the digest sees it


def test_big_env_hashed_in_processes_still_reports_problems(tmp_path: Path, channel_url: str) -> None:
    """Over 2,000 files the `verify` command hashes in forked processes; problems must come back the same."""
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "big-1.0", "python", "ipykernel", root=root).returncode == 0
    prefix = root / ENVS / "big-1.0"
    ok = run_cpkgs("verify", "big-1.0", "--json", root=root)
    assert ok.returncode == 0 and ok.json()[0]["files"] > 2000, ok
    target = next((prefix / "lib" / "python3.11" / "site-packages" / "ipykernel").glob("*.py"))
    unsealed(target)
    target.write_text(target.read_text() + "\n# tampered\n")
    r = run_cpkgs("verify", "big-1.0", root=root)
    rel = str(target.relative_to(prefix))
    assert r.returncode == 4 and f"modified: {rel}" in r.stdout, r


def test_verify_by_a_user_who_cannot_read_everything_reports_it(tmp_path: Path, channel_url: str) -> None:
    """Any user may run verify; a directory they cannot list is a problem in the report, not an internal error."""
    root = make_site(tmp_path / "site", channel_url)
    assert run_cpkgs("new-env", "r-1.0", "cpkgs-test-app", root=root).returncode == 0
    bin_dir = root / ENVS / "r-1.0" / "bin"
    os.chmod(bin_dir, 0o500)
    world_traversable(root)
    r = run_cpkgs("verify", "r-1.0", root=root, user=True)
    assert r.returncode == 4, r
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert "unreadable" in r.stdout and "bin" in r.stdout, r.stdout


def _has_open_under(pid: int, prefix: str) -> bool:
    """Whether process PID (or a worker of it) has a file or directory under PREFIX open: it is mid-walk there."""
    import psutil

    try:
        pids = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return False
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}").startswith(prefix + "/"):
                    return True
            except OSError:
                continue
    return False


def _verify_stopped_mid_walk(root: Path, prefix: Path, args: tuple[str, ...]) -> subprocess.Popen[str]:
    """A real `cpkgs verify ARGS` stopped (SIGSTOP to its process group) while it has something under PREFIX open.
    A walk that ends before it is caught is run again."""
    for _ in range(200):
        proc = subprocess.Popen([sys.executable, "-m", "cpkgs_admin", "--root", str(root), "verify", "--json", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        while proc.poll() is None:
            if _has_open_under(proc.pid, str(prefix)):
                os.killpg(proc.pid, signal.SIGSTOP)
                if _has_open_under(proc.pid, str(prefix)):  # still there, now frozen
                    return proc
                os.killpg(proc.pid, signal.SIGCONT)
        proc.communicate()
    raise AssertionError(f"verify never caught inside {prefix}")


def test_env_removed_and_purged_during_verify_is_not_a_problem(tmp_path: Path, channel_url: str) -> None:
    """verify (by name and site-wide) frozen in the middle of an env's walk while that env is removed and purged
    (--older-than 0s: moved into the trash and deleted under the walk) finishes with exit 0 and a note for it, not
    with its vanished files as problems."""
    root = make_site(tmp_path / "site", channel_url)
    names = ("c-1.0", "c-2.0", "c-3.0")
    for name in (*names, "keep-1.0"):
        assert run_cpkgs("new-env", name, "python", "cpkgs-test-app", root=root).returncode == 0
    for name, args in zip(names, ((names[0],), (), (names[2], "keep-1.0")), strict=True):
        prefix = root / ENVS / name
        proc = _verify_stopped_mid_walk(root, prefix, args)
        try:
            assert run_cpkgs("remove", name, root=root).returncode == 0
            r = run_cpkgs("purge", "--older-than", "0s", "--json", root=root)
            assert r.returncode == 0 and not os.path.lexists(prefix), r
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and err == "", (name, args, out, err)
        reports = {x["name"]: x for x in json.loads(out)}
        assert reports[name]["skipped"] and reports[name]["problems"] == [], reports[name]
        assert reports[name]["skipped"].startswith("removed, and moved away by 'cpkgs purge'")
        assert all(x["ok"] and not x["skipped"] for n, x in reports.items() if n != name), reports
    # Asked for by name once it is gone: the same note, exit 0.
    r = run_cpkgs("verify", names[0], root=root)
    assert r.returncode == 0 and r.stdout == (f"{names[0]}: removed, and moved away by 'cpkgs purge' (before or "
                                              "during this check): nothing to verify\n"), r


def test_corrupted_cache_file_names_the_envs_sharing_it_and_is_healed(tmp_path: Path, channel_url: str) -> None:
    """A byte flipped in a package-cache file (bit rot, a stray root edit through an env's hard link) damages every
    env linking that inode: verify names the others ("also in: ..."); the next build of the package drops the cache
    entry, extracts it again and succeeds, with a warning naming the package."""
    root = make_site(tmp_path / "site", channel_url)
    for name in ("a-1.0", "b-1.0", "c-1.0"):
        assert run_cpkgs("new-env", name, "cpkgs-test-app", root=root).returncode == 0
    app = root / ENVS / "a-1.0" / "bin" / "cpkgs-test-app"
    good = app.read_bytes()
    assert os.lstat(app).st_nlink >= 4  # the cache's inode, in three envs
    with open(app, "r+b") as fh:  # in place, through a's hard link: the same inode everywhere
        fh.write(b"X")
    r = run_cpkgs("verify", "a-1.0", root=root)
    assert r.returncode == 4, r
    (line,) = [x for x in r.stdout.splitlines() if "bin/cpkgs-test-app" in x]
    assert line.startswith("a-1.0: modified: bin/cpkgs-test-app: ") and line.endswith("; also in: b-1.0, c-1.0")
    reports = run_cpkgs("verify", "--json", root=root).json()
    details = {rep["name"]: [p["detail"] for p in rep["problems"]] for rep in reports}
    assert details["b-1.0"][0].endswith("also in: a-1.0, c-1.0"), details
    r = run_cpkgs("new-env", "d-1.0", "cpkgs-test-app", root=root)
    assert r.returncode == 0, r
    (warning,) = r.stderr.splitlines()
    assert warning.startswith("cpkgs: warning: package cache entry cpkgs-test-app-1.0-") and "damaged" in warning
    assert (root / ENVS / "d-1.0" / "bin" / "cpkgs-test-app").read_bytes() == good
    assert run_cpkgs("verify", "d-1.0", root=root).returncode == 0
