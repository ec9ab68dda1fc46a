"""Shared fixtures: a real local channel (built once per machine), real site roots, the real CLI in a subprocess.

HOME and the site root live under tmp_path; nothing touches the real home or /nfs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "channel"))
sys.path.insert(0, str(REPO / "tests" / "conda_client"))

from build_channel import ensure_channel  # noqa: E402
from build_conda import ensure_conda  # noqa: E402

# The site tree as make_site builds it (DESIGN.md, the default installations): linux-64's installation and its envs,
# relative to the root.
LINUX = "anaconda3_linux"
ENVS = f"{LINUX}/envs"
NOBODY_UID = 65534
NOBODY = ("--reuid", str(NOBODY_UID), "--regid", str(NOBODY_UID), "--clear-groups")
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


def make_channel(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of channel SRC at DST (package files hard-linked: they are only read) without the packages named in
    DROP: its own repodata.json files, written anew (never through a link to SRC's)."""
    shutil.copytree(src, dst, copy_function=os.link)
    for rd in dst.glob("*/repodata.json"):
        data = json.loads(rd.read_text())
        for key in ("packages", "packages.conda"):
            data[key] = {f: r for f, r in data.get(key, {}).items() if r["name"] not in drop}
        rd.unlink()
        rd.write_text(json.dumps(data))
    return dst


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


# ---------------------------------------------------------------------------------------------------------------
# A real user's own conda (26.7.1, tests/conda_client/build_conda.py), run as root or as uid 65534.


@pytest.fixture(scope="session")
def conda_root() -> Path:
    """The root prefix of a real conda 26.7.1 install (``<root>/bin/conda``), built once per machine.

    Shared by every test: run it through UserConda, which keeps its writes out of it."""
    return ensure_conda()


def _world_dir(prefix: str) -> Path:
    """A fresh directory in /tmp that uid 65534 can traverse. Not under pytest's tmp_path: every pytest session
    that starts (another run on the machine) resets /tmp/pytest-of-<user> to 0700, mid-way through this one."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="session")
def conda_channel_url(channel_dir: Path) -> Iterator[str]:
    """The local test channel where uid 65534 can read it (its cache may sit in root's 0700 home)."""
    base = _world_dir("cpkgs-test-channel-")

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)  # the channel is only read; 28 MB need not be copied per session
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(channel_dir, base / "channel", copy_function=link_or_copy)
    yield (base / "channel").as_uri()
    shutil.rmtree(base, ignore_errors=True)


class UserConda:
    """The ``conda_root`` conda as a user runs it: as uid 65534 (user=True) or root, confined to one test.

    Each gets a fresh directory in /tmp (see _world_dir) holding ``home/`` (owned by uid 65534 for user=True),
    ``condarc`` (CONDARC: lists the local channel; tests may rewrite it) and ``pkgs/`` (CONDA_PKGS_DIRS). conda
    runs with only PATH, LANG, HOME, CONDARC, CONDA_PKGS_DIRS and CONDA_OFFLINE set; the solver is the one the
    root prefix's ``.condarc`` names: classic. As root the conda root prefix is writable, so conda would create
    ``-n`` envs inside it: give root an ``envs_dirs`` or ``-p``; the fixtures fail a test that left ``envs/`` or
    ``pkgs/`` in the shared prefix.
    """

    def __init__(self, conda_root: Path, channel_url: str, *, user: bool) -> None:
        self.root = conda_root
        self.channel_url = channel_url
        self.user = user
        self.base = _world_dir("cpkgs-test-conda-user-" if user else "cpkgs-test-conda-root-")
        self.home = self.base / "home"
        self.pkgs = self.base / "pkgs"
        self.condarc = self.base / "condarc"
        self.home.mkdir(mode=0o755)
        self.pkgs.mkdir(mode=0o700)
        self.condarc.write_text(f"channels:\n  - {channel_url}\n")
        if user:
            for d in (self.home, self.pkgs):
                os.chown(d, NOBODY_UID, NOBODY_UID)

    @property
    def exe(self) -> Path:
        return self.root / "bin" / "conda"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.home), "CONDARC": str(self.condarc),
               "CONDA_PKGS_DIRS": str(self.pkgs), "CONDA_OFFLINE": "true"}
        env.update(extra or {})
        return env

    def _run(self, cmd: list[str], env: dict[str, str] | None, timeout: float) -> Result:
        if self.user:
            cmd = ["setpriv", *NOBODY, *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env(env), cwd=str(self.home),
                              timeout=timeout)
        return Result(proc)

    def conda(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
        """``<root>/bin/conda ARGS``."""
        return self._run([str(self.exe), *args], env, timeout)

    def shell(self, shell: str, script: str, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
        """SCRIPT in a real SHELL (bash, zsh, ksh, dash, tcsh, csh) after the hook that `conda init` installs
        in that shell's rc file; no rc file of the shell is read. csh: one command per line (csh expands
        aliases such as `conda` line by line)."""
        exe = shlex.quote(str(self.exe))
        if shell in ("tcsh", "csh"):
            hook = f'source "{self.root}/etc/profile.d/conda.csh"\n'
            cmd = [shell, "-f", "-c", hook + script]
        else:
            dialect = {"bash": "bash", "zsh": "zsh"}.get(shell, "posix")
            hook = f'eval "$({exe} shell.{dialect} hook)"\n'
            flags = {"bash": ["--norc", "--noprofile"], "zsh": ["-f"]}.get(shell, [])
            cmd = [shell, *flags, "-c", hook + script]
        return self._run(cmd, env, timeout)

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        leftovers = [d for d in ("envs", "pkgs") if (self.root / d).exists()]
        for d in leftovers:
            shutil.rmtree(self.root / d)
        if leftovers:
            pytest.fail(f"the test wrote into the shared conda root {self.root}: {', '.join(leftovers)} (removed)")


@pytest.fixture
def user_conda(conda_root: Path, conda_channel_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserConda]:
    """The user's own conda, run as uid 65534; HOME (also for run_cpkgs) is that user's home."""
    conda = UserConda(conda_root, conda_channel_url, user=True)
    monkeypatch.setenv("HOME", str(conda.home))
    yield conda
    conda.close()


@pytest.fixture
def root_conda(conda_root: Path, conda_channel_url: str) -> Iterator[UserConda]:
    """The same conda run as root (an admin's own conda), with a home of its own."""
    conda = UserConda(conda_root, conda_channel_url, user=False)
    yield conda
    conda.close()
