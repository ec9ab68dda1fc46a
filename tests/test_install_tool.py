"""`cpkgs install-tool`: cpkgs itself on the share, per installation, and ordinary users running it.

Real parts: the tool is built by the admin command from this checkout (uv build of the editable source) with the
site's conda python (the test channel's) and real PyPI wheels (tests/wheelhouse/build_wheelhouse.py
`ensure_tool_wheels`: cpkgs' dependencies at the running versions, for Linux and macOS arm64) through the site's
`pypi:` find_links, offline. Users are uid 65534 (setpriv) in real bash, zsh, dash, ksh and tcsh with nothing but
the site profile sourced; strace watches what they touch.

THE ONE FAKE, AT THE macOS BOUNDARY: `test_macos_installation_from_this_linux_host` installs the tool for
osx-arm64 with a stub `python` package (tests/channel/build_osx_python.py: py-rattler-build, target osx-arm64, no
interpreter inside; its `bin/python3.11` is a script that fails loudly). A Linux host cannot run a macOS python;
the test checks that nothing tried, and checks the tree by platform tags and binary formats instead. Every wheel
in that tree is a real macOS wheel from PyPI.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import NOBODY, NOBODY_UID, REPO, make_site, run_cpkgs, tree_hash, world_traversable

sys.path.insert(0, str(REPO / "tests" / "wheelhouse"))

from build_osx_python import ensure_osx_python_channel  # noqa: E402
from build_wheelhouse import ensure_tool_wheels  # noqa: E402

LINUX = "anaconda3_linux"
MACOS = "anaconda3_macOS"
VERSION = importlib.metadata.version("cpkgs")
PY_XY = f"{sys.version_info[0]}.{sys.version_info[1]}"
PYC_TAG = f"cpython-{sys.version_info[0]}{sys.version_info[1]}"
ONE_LINE = re.compile(r"cpkgs: [^\n]+\n\Z")


# ------------------------------------------------------------------------------------------------------ helpers


def tool_dir(root: Path, inst: str = LINUX) -> Path:
    return root / inst / "cpkgs-tool"


def assert_valid_pyc(py: Path) -> None:
    """PY has byte code for this CPython X.Y that Python will use as is: a timestamp pyc naming PY's mtime and
    size (what pip and the pipeline write), or a hash-based one."""
    pyc = py.parent / "__pycache__" / f"{py.stem}.{PYC_TAG}.pyc"
    if not pyc.is_file():
        try:
            compile(py.read_bytes(), str(py), "exec")
        except SyntaxError:
            return  # not Python this interpreter reads (a template, another version's file): pip skips it too
        raise AssertionError(f"no byte code for {py}")
    head = pyc.read_bytes()[:16]
    assert head[:4] == importlib.util.MAGIC_NUMBER, f"{pyc}: byte code of another Python"
    flags = int.from_bytes(head[4:8], "little")
    if flags == 0:
        st = py.stat()
        assert int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF, f"{pyc}: stale mtime"
        assert int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF, f"{pyc}: stale size"


def tool_bin(root: Path, inst: str = LINUX) -> Path:
    """What users' PATH gets: the only entry of cpkgs-tool/bin, a link to the current build's script."""
    return tool_dir(root, inst) / "bin" / "cpkgs"


def build_dir(root: Path, build: str, inst: str = LINUX) -> Path:
    return tool_dir(root, inst) / build


def current_build(root: Path, inst: str = LINUX) -> str:
    target = os.readlink(tool_bin(root, inst))
    m = re.fullmatch(r"\.\./([^/]+)/bin/cpkgs", target)
    assert m, f"{tool_bin(root, inst)} -> {target}: not a link to a build's bin/cpkgs"
    return m.group(1)


def set_pypi(root: Path, find_links: list[Path], index_url: str | None = None) -> None:
    """The site's `pypi:` section (cpkgs.yaml): an offline site lists its wheelhouse as find_links."""
    cfg = root / "cpkgs.yaml"
    text = re.sub(r"(?ms)^pypi:.*?(?=^\S|\Z)", "", cfg.read_text())
    links = "".join(f"\n    - {p}" for p in find_links)
    text += f"pypi:\n  index_url: {json.dumps(index_url)}\n  find_links:{links or ' []'}\n"
    cfg.write_text(text)


def user_home() -> Path:
    """A home for uid 65534 in /tmp (not under pytest's tmp_path, which another pytest session may close)."""
    d = Path(tempfile.mkdtemp(prefix="cpkgs-tool-user-"))
    os.chmod(d, 0o755)
    os.chown(d, NOBODY_UID, NOBODY_UID)
    return d


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """What an ordinary login has: no CPKGS_ROOT, no Python variables, no cpkgs on PATH."""
    (home / "tmp").mkdir(exist_ok=True)
    os.chown(home / "tmp", NOBODY_UID, NOBODY_UID)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LC_ALL": "C.UTF-8", "TMPDIR": str(home / "tmp"),
           "USER": "nobody"}
    env.update(extra)
    return env


def as_user(cmd: list[str], home: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", *NOBODY, *cmd], capture_output=True, text=True, env=user_env(home, **extra),
                          cwd=str(home), timeout=timeout)


def user_shell(shell: str, root: Path, script: str, home: Path) -> subprocess.CompletedProcess[str]:
    """SCRIPT in a real SHELL as uid 65534, after nothing but the site profile (no rc files)."""
    if shell == "tcsh":
        cmd = ["tcsh", "-f", "-c", f"source '{root}/etc/profile.d/conda.csh'\n{script}"]
    else:
        flags = {"bash": ["--norc", "--noprofile"], "zsh": ["-f"]}.get(shell, [])
        cmd = [shell, *flags, "-c", f". '{root}/etc/profile.d/conda.sh'\n{script}"]
    return as_user(cmd, home, timeout=600)


def one_line_error(r: subprocess.CompletedProcess[str] | object) -> bool:
    stderr = r.stderr  # type: ignore[attr-defined]
    return r.returncode != 0 and "Traceback" not in stderr and ONE_LINE.fullmatch(stderr) is not None  # type: ignore[attr-defined]


def install_tool(root: Path, *args: str, timeout: float = 900):  # type: ignore[no-untyped-def]
    return run_cpkgs("install-tool", *args, root=root, timeout=timeout)


def chmod_back(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


@pytest.fixture(scope="session")
def tool_wheels() -> Path:
    return ensure_tool_wheels() / "wheels"


def tool_site_at(root: Path, channel_urls: list[str], wheels: Path, *init_args: str) -> Path:
    args = [a for url in channel_urls for a in ("-c", url)]
    make_site(root, None, *args, *init_args)
    set_pypi(root, [wheels])
    world_traversable(root)
    return root


@pytest.fixture(scope="session")
def tool_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str, tool_wheels: Path) -> Iterator[dict]:
    """A site with demo-1.0 (python, for extend and pack) and the tool installed by `install-tool --json` from this
    checkout. Read-only for the tests that use it."""
    root = tool_site_at(tmp_path_factory.mktemp("tool") / "site", [channel_url], tool_wheels)
    r = run_cpkgs("new-env", "demo-1.0", "python", "cpkgs-test-app", root=root)
    assert r.returncode == 0, r
    r = install_tool(root, "--json")
    assert r.returncode == 0, r
    world_traversable(root)
    yield {"root": root, "report": r.json(), "stderr": r.stderr}
    chmod_back(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def home() -> Iterator[Path]:
    h = user_home()
    yield h
    shutil.rmtree(h, ignore_errors=True)


@pytest.fixture
def fresh_home() -> Iterator[Path]:
    h = user_home()
    yield h
    shutil.rmtree(h, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the install


def test_install_tool_reports_the_build_and_switches_the_link(tool_site: dict) -> None:
    root = tool_site["root"]
    (rep,) = tool_site["report"]
    assert rep["platform"] == "linux-64" and rep["version"] == VERSION and rep["build"] == VERSION
    assert rep["action"] == "built" and rep["previous"] is None
    assert rep["prefix"] == str(build_dir(root, VERSION))
    assert rep["python"].startswith(PY_XY + ".")
    assert rep["packages"] >= 10 and rep["files"] > 100 and rep["size"] > 0
    assert current_build(root) == VERSION
    # cpkgs-tool/bin holds nothing but the link: PATH gets no python, pip or uv from the tool.
    assert sorted(os.listdir(tool_dir(root) / "bin")) == ["cpkgs"]
    assert tool_bin(root).resolve() == build_dir(root, VERSION) / "bin" / "cpkgs"


def test_tool_is_no_env_of_the_site(tool_site: dict, home: Path) -> None:
    """Not listed by `cpkgs list --all`, nor by the profile's `conda env list`, nor in modules or kernels."""
    root = tool_site["root"]
    r = run_cpkgs("list", "--all", "--json", root=root)
    assert r.returncode == 0, r
    assert [e["name"] for e in r.json()] == ["demo-1.0"]
    p = user_shell("bash", root, "conda env list", home)
    assert p.returncode == 0, p
    assert "demo-1.0" in p.stdout and "cpkgs-tool" not in p.stdout and VERSION not in p.stdout.replace("demo-1.0", "")
    assert not list((root / "modulefiles").rglob("*cpkgs*")) and not list((root / "share").rglob("*cpkgs-tool*"))


def test_tool_is_sealed_verified_and_runs_its_own_python_isolated(tool_site: dict) -> None:
    root = tool_site["root"]
    build = build_dir(root, VERSION)
    # The script names its BUILD's python (a running command keeps its build after a switch), with -I: a user's
    # PYTHONPATH or ~/.local packages never shadow the tool's.
    first = (build / "bin" / "cpkgs").read_bytes().split(b"\n", 1)[0].decode()
    assert first == f"#!{build}/bin/python -I"
    for dirpath, dirnames, filenames in os.walk(build):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if not stat.S_ISLNK(st.st_mode):
                assert not st.st_mode & 0o222, f"{dirpath}/{n} is writable: {oct(st.st_mode)}"
                assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID) or stat.S_ISDIR(st.st_mode)
    info = json.loads((build / "conda-meta" / "cpkgs" / "tool.json").read_text())
    assert (info["root"], info["platform"], info["installation"], info["version"], info["build"]) == (
        str(root), "linux-64", LINUX, VERSION, VERSION)
    # The wheel holds every module of the source: a package missing from pyproject's list breaks users' tool.
    src = {p.relative_to(REPO).as_posix() for p in (REPO / "cpkgs_admin").rglob("*.py")}
    src |= {f"cpkgs_admin/templates/{p.name}" for p in (REPO / "profiles").glob("*.py")}  # package-dir mapping
    site_packages = build / "lib" / f"python{PY_XY}" / "site-packages"
    got = {p.relative_to(site_packages).as_posix() for p in (site_packages / "cpkgs_admin").rglob("*.py")}
    assert got == src
    r = run_cpkgs("verify", root=root)
    assert r.returncode == 0, r
    assert re.search(rf"^cpkgs tool {re.escape(VERSION)} \(linux-64\): \d+ files checked, 0 problem\(s\)$",
                     r.stdout, re.M), r.stdout
    r = run_cpkgs("verify", "--json", root=root)
    tools = [x for x in r.json() if x.get("kind") == "tool"]
    assert [(t["platform"], t["prefix"], t["ok"]) for t in tools] == [("linux-64", str(build), True)]


def test_byte_code_is_there_and_users_write_none(tool_site: dict, home: Path) -> None:
    """Every module a user's command imports is loaded from byte code compiled at build time: no `.py` source is
    opened, nothing is created or written under the tool (users cannot write there; Python would try)."""
    root = tool_site["root"]
    build = build_dir(root, VERSION)
    site_packages = build / "lib" / f"python{PY_XY}" / "site-packages"
    for py in [*site_packages.rglob("*.py"), *(build / "lib" / f"python{PY_XY}").glob("*.py")]:
        assert_valid_pyc(py)
    before = tree_hash(build)
    trace = home / "trace"
    for args in (["--help"], ["list"], ["info", "demo-1.0"], ["doctor"], ["--version"]):
        subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(trace), "setpriv", *NOBODY,
                        str(tool_bin(root)), *args], env=user_env(home), capture_output=True, timeout=120)
        lines = [ln for ln in trace.read_text().splitlines() if f'"{build}/' in ln or f'"{tool_dir(root)}/' in ln]
        writes = [ln for ln in lines if re.search(r"O_WRONLY|O_RDWR|O_CREAT|\bmkdir|\brename|\bunlink", ln)]
        sources = [ln for ln in lines if re.search(r'open\w*\([^"]*"[^"]+\.py"', ln)]
        assert not writes, (args, writes[:5])
        assert not sources, (args, sources[:5])
    assert tree_hash(build) == before


# ------------------------------------------------------------------------------------------------ users


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_user_with_only_the_profile_runs_the_tool(shell: str, tool_site: dict, fresh_home: Path) -> None:
    root = tool_site["root"]
    h = fresh_home
    which = "which cpkgs" if shell == "tcsh" else "command -v cpkgs"

    def step(name: str, cmd: str) -> str:
        if shell == "tcsh":
            return f"{cmd}\necho rc.{name}=$status\n"
        return f"{cmd}\necho rc.{name}=$?\n"

    script = "".join([
        step("which", which),
        step("version", "cpkgs --version"),
        step("doctor", f"cpkgs doctor --json > {h}/doctor.json"),
        step("link", f"cpkgs link-user --condarc {h}/.condarc"),
        step("extend", f"cpkgs extend demo-1.0 {h}/layer"),
        step("list", f"cpkgs list --json > {h}/list.json"),
    ])
    p = user_shell(shell, root, script, h)
    rc = dict(re.findall(r"^rc\.(\w+)=(\d+)$", p.stdout, re.M))
    assert rc == dict.fromkeys(("which", "version", "doctor", "link", "extend", "list"), "0"), p
    assert f"{tool_bin(root)}\n" in p.stdout
    assert f"cpkgs, version {VERSION} (the site's tool for linux-64 at {build_dir(root, VERSION)})" in p.stdout
    doctor = {f["check"]: f for f in json.loads((h / "doctor.json").read_text())["findings"]}
    assert doctor["tool"]["status"] == "ok" and VERSION in doctor["tool"]["message"], doctor["tool"]
    assert "/${CPKGS_INSTALLATION}/envs" in (h / ".condarc").read_text()
    assert (h / ".condarc").stat().st_uid == NOBODY_UID
    layer_py = as_user([str(h / "layer" / "bin" / "python"), "-c", "import sys; print(sys.prefix)"], h)
    assert layer_py.returncode == 0 and layer_py.stdout.strip() == str(h / "layer"), layer_py
    assert [e["name"] for e in json.loads((h / "list.json").read_text())] == ["demo-1.0"]


def test_user_runs_the_read_commands_pack_and_catalog_path(tool_site: dict, fresh_home: Path) -> None:
    root = tool_site["root"]
    h = fresh_home
    cmds = {
        "info": ["info", "demo-1.0"],
        "diff": ["diff", "demo-1.0", "demo-1.0"],
        "export": ["export", "demo-1.0"],
        "pack": ["pack", "demo-1.0", "-o", f"{h}/demo.tar.gz"],
        "catalog": ["catalog", "--path"],
        "link": ["link-user", "--condarc", f"{h}/.condarc"],
        "unlink": ["unlink-user", "--condarc", f"{h}/.condarc"],
    }
    out = {}
    for name, args in cmds.items():
        p = as_user([str(tool_bin(root)), *args], h, CPKGS_ROOT=str(root))
        assert p.returncode == 0, (name, p)
        out[name] = p.stdout
    assert "cpkgs-test-app" in out["info"] and "@EXPLICIT" in out["export"]
    assert (h / "demo.tar.gz").stat().st_size > 0
    assert out["catalog"].strip() == str(root / "share" / "cpkgs-catalog" / "index.html")


def test_tool_without_root_uses_its_own_site_and_pip_install_says_no_tool(tool_site: dict, home: Path) -> None:
    root = tool_site["root"]
    p = as_user([str(tool_bin(root)), "list", "--json"], home)  # no --root, no CPKGS_ROOT
    assert p.returncode == 0, p
    assert [e["name"] for e in json.loads(p.stdout)] == ["demo-1.0"]
    r = run_cpkgs("--version")  # this checkout's pip (editable) install
    assert r.returncode == 0 and r.stdout == f"cpkgs, version {VERSION}\n", r


def test_admin_commands_through_the_tool_refuse_users_with_one_line(tool_site: dict, home: Path) -> None:
    root = tool_site["root"]
    before = tree_hash(root)
    admin = [
        ["init"], ["new-env", "x-1.0", "python"], ["seal", "demo-1.0"], ["unseal", "demo-1.0", "--reason", "r"],
        ["retire", "demo-1.0"], ["remove", "demo-1.0"], ["purge"], ["refresh"], ["catalog"], ["locks"],
        ["install-tool"], ["install-tool", "--rebuild"],
    ]
    for args in admin:
        p = as_user([str(tool_bin(root)), *args], home, CPKGS_ROOT=str(root))
        assert one_line_error(p), (args, p)
    assert tree_hash(root) == before


def test_install_tool_as_a_user_is_refused_before_any_work(tool_site: dict, home: Path) -> None:
    root = tool_site["root"]
    r = run_cpkgs("install-tool", root=root, user=True)
    assert one_line_error(r), r
    assert "permission denied" in r.stderr and str(root / LINUX) in r.stderr, r


def test_second_install_of_the_same_cpkgs_changes_nothing(tool_site: dict) -> None:
    root = tool_site["root"]
    before = tree_hash(tool_dir(root))
    r = install_tool(root)
    assert r.returncode == 0, r
    assert f"cpkgs {VERSION} for linux-64 is already installed and current" in r.stdout, r
    assert tree_hash(tool_dir(root)) == before


# ------------------------------------------------------------------------------------------------ doctor


def test_doctor_reports_an_installation_without_tool(tmp_path: Path, home: Path) -> None:
    root = make_site(tmp_path / "site", None)
    p = as_user([sys.executable, "-m", "cpkgs_admin", "--root", str(root), "doctor", "--json"], home,
                PYTHONDONTWRITEBYTECODE="1")
    doc = json.loads(p.stdout)
    (tool,) = [f for f in doc["findings"] if f["check"] == "tool"]
    assert tool["status"] == "warn", tool
    assert f"{LINUX} has no cpkgs tool" in tool["message"], tool
    assert "cpkgs install-tool" in tool["fix"], tool


def test_doctor_fails_a_link_to_a_missing_build(tmp_path: Path, home: Path) -> None:
    root = make_site(tmp_path / "site", None)
    (tool_dir(root) / "bin").mkdir(parents=True)
    os.symlink("../9.9.9/bin/cpkgs", tool_bin(root))
    world_traversable(root)
    p = as_user([sys.executable, "-m", "cpkgs_admin", "--root", str(root), "doctor", "--json"], home,
                PYTHONDONTWRITEBYTECODE="1")
    (tool,) = [f for f in json.loads(p.stdout)["findings"] if f["check"] == "tool"]
    assert tool["status"] == "fail", tool
    assert tool["message"] == f"{tool_bin(root)} points to 9.9.9, which is missing", tool
    assert "cpkgs install-tool" in tool["fix"], tool


# ------------------------------------------------------------------------------------------------ profiles


def shell_cmd(shell: str, root: Path, script: str) -> list[str]:
    if shell == "tcsh":
        return ["tcsh", "-f", "-c", f"source '{root}/etc/profile.d/conda.csh'\nsource '{root}/etc/profile.d/conda.csh'\n{script}"]
    src = f". '{root}/etc/profile.d/conda.sh'\n"
    return [shell, "-c", src + src + script]


@pytest.mark.parametrize("shell", ["bash", "zsh", "dash", "ksh", "tcsh"])
def test_profile_appends_the_tool_bin_to_path_once(shell: str, tmp_path: Path) -> None:
    root = make_site(tmp_path / "site", None)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "LC_ALL": "C"}
    p = subprocess.run(shell_cmd(shell, root, 'echo "PATH=$PATH"'), capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0, p
    path = p.stdout.strip().removeprefix("PATH=").split(":")
    assert path == ["/usr/local/bin", "/usr/bin", "/bin", str(tool_dir(root) / "bin")], p.stdout


@pytest.mark.parametrize("shell", ["bash", "tcsh"])
def test_profile_leaves_path_alone_where_the_site_serves_no_installation(shell: str, tmp_path: Path) -> None:
    root = make_site(tmp_path / "site", None, "--platform", "osx-arm64")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "LC_ALL": "C"}
    p = subprocess.run(shell_cmd(shell, root, 'echo "PATH=$PATH"'), capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.stdout.strip() == "PATH=/usr/bin:/bin", p


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
@pytest.mark.parametrize("shell", ["bash", "tcsh"])
def test_profile_start_costs_no_access_to_the_tool(shell: str, tmp_path: Path) -> None:
    """The PATH entry is made of strings the profile already has: no stat, no read, no fork for it."""
    root = make_site(tmp_path / "site", None)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "LC_ALL": "C"}
    prof = root / "etc" / "profile.d" / ("conda.csh" if shell == "tcsh" else "conda.sh")
    cmd = ["tcsh", "-f", "-c", f"source '{prof}'"] if shell == "tcsh" else ["bash", "-c", f". '{prof}'"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # the first source creates the package cache
    out = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,%process", "-o", str(out), *cmd], env=env, check=True,
                   capture_output=True)
    lines = [ln for ln in out.read_text().splitlines() if "cpkgs-tool" in ln]
    if shell == "tcsh":
        # tcsh hashes every PATH directory whenever PATH changes (its command hash table; `unhash` would make every
        # later command search PATH instead): one directory open of the new entry, as for each other PATH entry.
        hashed = [ln for ln in lines if re.search(r'open\w*\(AT_FDCWD, "[^"]+/cpkgs-tool/bin", [^)]*O_DIRECTORY', ln)]
        assert len(hashed) == 1, lines
        lines = [ln for ln in lines if ln not in hashed]
    assert not lines, lines


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def plain_tool_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str, tool_wheels: Path) -> Path:
    return tool_site_at(tmp_path_factory.mktemp("badtool") / "site", [channel_url], tool_wheels)


def _nothing_installed(root: Path) -> None:
    d = tool_dir(root)
    assert not d.exists() or not [n for n in os.listdir(d) if n != "bin"] and not os.path.lexists(d / "bin" / "cpkgs")


@pytest.mark.parametrize(("args", "words", "code"), [
    (["--platform", "plan9-64"], ["plan9-64"], 2),
    (["--platform", "linux-aarch64"], ["linux-aarch64"], 2),
    (["--wheel", "/nonexistent/cpkgs-9.9-py3-none-any.whl"], ["/nonexistent/cpkgs-9.9-py3-none-any.whl"], 2),
])
def test_bad_options_are_one_line(plain_tool_site: Path, args: list[str], words: list[str], code: int) -> None:
    r = install_tool(plain_tool_site, *args)
    assert one_line_error(r) and r.returncode == code, r
    assert all(w in r.stderr for w in words), r
    _nothing_installed(plain_tool_site)


def test_a_wheel_that_is_not_cpkgs_is_refused(plain_tool_site: Path, tool_wheels: Path, tmp_path: Path) -> None:
    (click,) = tool_wheels.glob("click-*.whl")
    r = install_tool(plain_tool_site, "--wheel", str(click))
    assert one_line_error(r) and click.name in r.stderr and "cpkgs" in r.stderr.split(click.name, 1)[1], r
    junk = tmp_path / "cpkgs-0.1.0-py3-none-any.whl"
    junk.write_bytes(b"not a zip file")
    r = install_tool(plain_tool_site, "--wheel", str(junk))
    assert one_line_error(r) and str(junk) in r.stderr, r
    _nothing_installed(plain_tool_site)


def test_a_site_without_pypi_source_is_refused(tmp_path: Path, channel_url: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    set_pypi(root, [])  # index_url: null and no find_links
    r = install_tool(root)
    assert one_line_error(r) and "pypi" in r.stderr, r
    _nothing_installed(root)


def test_a_missing_dependency_wheel_is_named(tmp_path: Path, channel_url: str, tool_wheels: Path) -> None:
    partial = tmp_path / "wheels"
    partial.mkdir()
    for w in tool_wheels.iterdir():
        if not w.name.startswith("psutil-"):
            os.link(w, partial / w.name)
    root = tool_site_at(tmp_path / "site", [channel_url], partial)
    r = install_tool(root)
    assert one_line_error(r) and "psutil" in r.stderr, r
    _nothing_installed(root)
    assert not list(tool_dir(root).glob(".staging-*")) if tool_dir(root).exists() else True


# ------------------------------------------------------------------------------------------------ upgrades

V2 = f"{VERSION}+tooltest"


@pytest.fixture(scope="session")
def v2_wheel(tmp_path_factory: pytest.TempPathFactory, tool_wheels: Path) -> Path:
    """A real cpkgs wheel of this checkout with another version (V2), built as a release would be."""
    src = tmp_path_factory.mktemp("v2src") / "cpkgs"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "demo-site*", "tests"))
    pyproject = src / "pyproject.toml"
    text, n = re.subn(rf'(?m)^version = "{re.escape(VERSION)}"$', f'version = "{V2}"', pyproject.read_text())
    assert n == 1
    pyproject.write_text(text)
    hits = 0
    for py in (src / "cpkgs_admin").rglob("*.py"):
        t = py.read_text()
        if f'__version__ = "{VERSION}"' in t:
            py.write_text(t.replace(f'__version__ = "{VERSION}"', f'__version__ = "{V2}"'))
            hits += 1
    assert hits == 1
    from uv import find_uv_bin

    out = tmp_path_factory.mktemp("v2dist")
    subprocess.run([find_uv_bin(), "build", "--no-config", "--no-index", "--find-links", str(tool_wheels),
                    "--out-dir", str(out), str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("cpkgs-*.whl")
    return whl


def _pipe_bytes(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


@pytest.mark.slow
def test_upgrade_while_a_command_runs_then_rollback_and_purge(tmp_path: Path, channel_url: str, tool_wheels: Path,
                                                             v2_wheel: Path, fresh_home: Path) -> None:
    root = tool_site_at(tmp_path / "site", [channel_url], tool_wheels)
    r = run_cpkgs("new-env", "a-1.0", "cpkgs-test-lib", root=root)
    assert r.returncode == 0, r
    # 1500 records: `list --json` writes more than a pipe holds, so a reader that does not read keeps it running.
    rec = root / ".cpkgs" / "records" / "linux-64" / "a-1.0.json"
    data = json.loads(rec.read_text())
    for i in range(1500):
        (rec.parent / f"f{i:04d}-1.0.json").write_text(json.dumps({**data, "name": f"f{i:04d}-1.0",
                                                                    "family": f"f{i:04d}"}))
    r = install_tool(root)
    assert r.returncode == 0, r
    assert current_build(root) == VERSION
    old = build_dir(root, VERSION)

    # A user's command from the current build, blocked mid-output on a full pipe.
    user = subprocess.Popen(["setpriv", *NOBODY, str(tool_bin(root)), "list", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=user_env(fresh_home, CPKGS_ROOT=str(root)),
                            cwd=str(fresh_home))
    try:
        deadline = time.monotonic() + 120
        while _pipe_bytes(user.stdout.fileno()) < 65536:  # type: ignore[union-attr]
            assert user.poll() is None, "the user's command ended before the pipe filled"
            assert time.monotonic() < deadline, "the user's command never filled its pipe"
            time.sleep(0.05)
        cmdline = Path(f"/proc/{user.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode() == f"{old}/bin/python", cmdline

        # kill -9 during an upgrade: bin/cpkgs stays as it was, the next run takes over.
        killed = subprocess.Popen([sys.executable, "-m", "cpkgs_admin", "--root", str(root), "install-tool",
                                   "--wheel", str(v2_wheel)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, cwd=str(REPO))
        while not list(tool_dir(root).glob(".staging-*")):
            assert killed.poll() is None and time.monotonic() < deadline + 300, "install-tool made no staging dir"
            time.sleep(0.05)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        assert current_build(root) == VERSION

        r = install_tool(root, "--wheel", str(v2_wheel))
        assert r.returncode == 0, r
        assert f"installed cpkgs {V2} for linux-64 at {build_dir(root, V2)}" in r.stdout, r
        assert f"{tool_bin(root)} -> {V2} (was {VERSION}" in r.stdout, r
        assert current_build(root) == V2
        assert not list(tool_dir(root).glob(".staging-*"))
        p = as_user([str(tool_bin(root)), "--version"], fresh_home)
        assert p.stdout.startswith(f"cpkgs, version {V2} "), p
    finally:
        out, err = user.communicate(timeout=300)
    assert user.returncode == 0 and err == b"", err
    assert len(json.loads(out)) == 1501

    # The superseded build stays and still runs; purge waits for the grace.
    p = as_user([str(old / "bin" / "cpkgs"), "--version"], fresh_home)
    assert p.returncode == 0 and p.stdout.startswith(f"cpkgs, version {VERSION} "), p
    r = run_cpkgs("purge", root=root)
    assert r.returncode == 0 and f"tool {VERSION} (linux-64)" in r.stdout and "waiting" in r.stdout, r
    assert old.is_dir()

    # Rollback: this checkout's cpkgs is still installed (superseded): switched back, nothing built.
    r = install_tool(root)
    assert r.returncode == 0, r
    assert "installed cpkgs" not in r.stdout and f"{tool_bin(root)} -> {VERSION} (was {V2}" in r.stdout, r
    assert current_build(root) == VERSION

    r = run_cpkgs("purge", "--older-than", "0s", root=root)
    assert r.returncode == 0, r
    assert not build_dir(root, V2).exists() and old.is_dir()
    p = as_user([str(tool_bin(root)), "--version"], fresh_home)
    assert p.returncode == 0 and p.stdout.startswith(f"cpkgs, version {VERSION} "), p
    r = run_cpkgs("verify", root=root)
    assert r.returncode == 0 and f"cpkgs tool {VERSION} (linux-64)" in r.stdout and V2 not in r.stdout, r
    chmod_back(root)


# ------------------------------------------------------------------------------------------------ macOS


MACHO = (b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")  # 64-bit Mach-O (little-endian), universal (fat) binary


def _wheel_tags(dist_info: Path) -> list[str]:
    return [ln.split(":", 1)[1].strip() for ln in (dist_info / "WHEEL").read_text().splitlines()
            if ln.startswith("Tag:")]


@pytest.mark.slow
def test_macos_installation_from_this_linux_host(tmp_path: Path, channel_url: str, tool_wheels: Path) -> None:
    """THE ONE FAKE AT THE macOS BOUNDARY: the osx-arm64 `python` is a stub (no interpreter; see the module
    docstring). Everything else is real: the macOS wheels from PyPI, the tree, its byte code, verify."""
    stub = ensure_osx_python_channel().as_uri()
    root = tool_site_at(tmp_path / "site", [channel_url, stub], tool_wheels, "--platform", "linux-64",
                        "--platform", "osx-arm64")
    r = install_tool(root, "--platform", "osx-arm64")
    assert r.returncode == 0, r
    assert "cpkgs test stub" not in r.stderr + r.stdout, "something ran the osx-arm64 stub python"
    assert current_build(root, MACOS) == VERSION
    assert not tool_dir(root, LINUX).exists()
    build = build_dir(root, VERSION, MACOS)
    assert (build / "bin" / "cpkgs").read_bytes().split(b"\n", 1)[0].decode() == f"#!{build}/bin/python -I"

    site_packages = build / "lib" / f"python{PY_XY}" / "site-packages"
    dists = sorted(site_packages.glob("*.dist-info"))
    names = {d.name.split("-", 1)[0].lower().replace("_", "-") for d in dists}
    assert {"cpkgs", "py-rattler", "uv", "psutil", "pyyaml", "click"} <= names, names
    for d in dists:
        # A universal2 wheel lists its x86_64 tag too: each wheel has a tag an arm64 Mac takes, none a Linux one.
        plats = [tag.rsplit("-", 1)[1] for tag in _wheel_tags(d)]
        assert any(p == "any" or re.fullmatch(r"macosx_\d+_\d+_(arm64|universal2)", p) for p in plats), (d, plats)
        assert not any("linux" in p for p in plats), (d.name, plats)
    binaries = [build / "bin" / "uv", *site_packages.rglob("*.so")]
    assert len(binaries) >= 4, binaries
    for b in binaries:
        assert b.read_bytes()[:4] in MACHO, f"{b} is not a Mach-O binary"
    for py in site_packages.rglob("*.py"):
        assert_valid_pyc(py)

    r = run_cpkgs("verify", "--json", root=root)
    assert r.returncode == 0, r
    (mac,) = [x for x in r.json() if x.get("kind") == "tool"]
    assert (mac["platform"], mac["ok"]) == ("osx-arm64", True)
    # verify reads the byte code too: a changed .pyc is reported.
    pyc = next((site_packages / "cpkgs_admin" / "__pycache__").glob("errors.*.pyc"))
    pyc.chmod(0o644)
    pyc.write_bytes(pyc.read_bytes()[:-1] + b"\0")
    r = run_cpkgs("verify", root=root)
    assert r.returncode == 4 and "cpkgs_admin/__pycache__/errors." in r.stdout, r
    chmod_back(root)


# ------------------------------------------------------------------------------------------------ the wheel


def _installed(wheel: Path, prefix: Path) -> Path:
    """WHEEL installed (pypa's installer) into a venv-like PREFIX; its site-packages."""
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    sp = prefix / "lib" / f"python{PY_XY}" / "site-packages"
    dest = SchemeDictionaryDestination({"purelib": str(sp), "platlib": str(sp), "scripts": str(prefix / "bin"),
                                        "data": str(prefix), "headers": str(prefix / "include")},
                                       interpreter=sys.executable, script_kind="posix")
    with WheelFile.open(wheel) as source:
        install(source, dest, additional_metadata={"INSTALLER": b"pip\n"})
    return sp


def test_a_regular_install_is_repacked_into_the_same_cpkgs(v2_wheel: Path, tmp_path: Path) -> None:
    """A pip-installed cpkgs (no checkout) is made into a wheel from its RECORD: the same files, so the same
    identity as the wheel it was installed from; a file changed since the install is refused with one line."""
    from cpkgs_admin.errors import BuildError
    from cpkgs_admin.pipeline.tool.wheel import _repack, wheel_digest

    sp = _installed(v2_wheel, tmp_path / "venv")
    (dist,) = importlib.metadata.distributions(name="cpkgs", path=[str(sp)])
    out = tmp_path / "out"
    out.mkdir()
    whl = _repack(dist, out)
    assert wheel_digest(whl) == wheel_digest(v2_wheel)
    again = tmp_path / "again"
    again.mkdir()
    assert _repack(dist, again).read_bytes() == whl.read_bytes()  # fixed timestamps: the same bytes
    (sp / "cpkgs_admin" / "errors.py").write_text("# changed\n")
    with pytest.raises(BuildError, match=r"cpkgs_admin/errors\.py has changed since it was installed"):
        _repack(dist, tmp_path)
