"""Shared fixtures: a real local channel (built once per machine), real site roots, the real CLI in a subprocess.

HOME and the site root live under tmp_path; nothing touches the real home or /nfs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "channel"))

from build_channel import ensure_channel  # noqa: E402

NOBODY = ("--reuid", "65534", "--regid", "65534", "--clear-groups")
# Packages of the standard test env: python + every kind of test package.
FULL_SPECS = ("python", "cpkgs-test-app", "cpkgs-test-textprefix", "cpkgs-test-binprefix", "cpkgs-test-activate")


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self):  # type: ignore[no-untyped-def]
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"<exit {self.returncode}\nstdout={self.stdout}\nstderr={self.stderr}>"


def cpkgs_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CPKGS_ROOT", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def run_cpkgs(*args: str, root: Path | None = None, env: dict[str, str] | None = None, user: bool = False,
              timeout: float = 600, input: str | None = None) -> Result:
    """The real console entry point in a subprocess; with user=True as uid/gid 65534 (setpriv)."""
    cmd = [sys.executable, "-m", "cpkgs_admin"]
    if root is not None:
        cmd += ["--root", str(root)]
    cmd += list(args)
    if user:
        cmd = ["setpriv", *NOBODY, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cpkgs_env(env), timeout=timeout, input=input,
                          cwd=str(REPO))
    return Result(proc)


def as_nobody(cmd: list[str], **kw):  # type: ignore[no-untyped-def]
    return subprocess.run(["setpriv", *NOBODY, *cmd], capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def channel_dir() -> Path:
    return ensure_channel()


@pytest.fixture(scope="session")
def channel_url(channel_dir: Path) -> str:
    return channel_dir.as_uri()


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CONDARC", raising=False)
    monkeypatch.delenv("CPKGS_ROOT", raising=False)
    return home


def world_traversable(path: Path) -> None:
    """pytest's tmp dirs are 0700: open the chain to the site so uid 65534 can reach it, as on a real drive."""
    p = path
    while p != p.parent:
        if p.exists() and p.stat().st_uid == os.getuid() and str(p).startswith(("/tmp", str(REPO))):
            os.chmod(p, p.stat().st_mode | 0o005)
        p = p.parent


def make_site(root: Path, channel_url: str | None, *extra: str, lease: float | None = None) -> Path:
    r = run_cpkgs("init", *(("-c", channel_url) if channel_url else ()), *extra, root=root)
    assert r.returncode == 0, r
    if lease is not None:
        cfg = root / "cpkgs.yaml"
        cfg.write_text(cfg.read_text().replace("lease_seconds: 60.0", f"lease_seconds: {lease}"))
    world_traversable(root)
    return root


@pytest.fixture
def site(tmp_path: Path, channel_url: str) -> Path:
    return make_site(tmp_path / "site", channel_url)


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Iterator[Path]:
    """A site with published envs, shared by read-only tests (do not modify it):
    demo-1.0  python + all test packages, cpkgs-test-lib 1.1 ... demo-2.0 the same with lib 2.0;
    tools-1.0 no python (cpkgs-test-app only); old-1.0 retired with successor demo-2.0."""
    root = tmp_path_factory.mktemp("built") / "site"
    make_site(root, channel_url)
    builds = [
        ("demo-1.0", (*FULL_SPECS, "cpkgs-test-lib 1.1.*")),
        ("demo-2.0", (*FULL_SPECS, "cpkgs-test-lib 2.0.*")),
        ("tools-1.0", ("cpkgs-test-app",)),
        ("old-1.0", ("python", "cpkgs-test-activate", "cpkgs-test-app")),
    ]
    for name, specs in builds:
        r = run_cpkgs("new-env", name, *specs, root=root)
        assert r.returncode == 0, r
    r = run_cpkgs("retire", "old-1.0", "--successor", "demo-2.0", "--message", "moved to 2.0", root=root)
    assert r.returncode == 0, r
    world_traversable(root)
    yield root
    # Sealed trees need write permission back before pytest can clean them up.
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    shutil.rmtree(root, ignore_errors=True)


def tree_hash(root: Path) -> dict[str, tuple[int, str]]:
    """mode + content hash of every file and dir: what 'no file changed' compares."""
    import hashlib

    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            digest = ""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_mode, digest)
    return out


@pytest.fixture(autouse=True)
def _restore_perms(tmp_path: Path) -> Iterator[None]:
    yield
    for dirpath, dirnames, _ in os.walk(tmp_path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o755)
                except OSError:
                    pass
