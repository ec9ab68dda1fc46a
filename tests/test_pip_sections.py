"""Envs with a `pip:` section (issue #15 §1), through the real CLI: built from the real wheelhouse (PyPI downloads
served as a find-links dir, or as an HTTP PEP 503 index on 127.0.0.1), run as an ordinary user, verified, shown,
exported, mirrored and rebuilt on a second site, packed, used by kernels and layers. Nothing reaches the internet.

The sites here are offline: `cpkgs init --pypi-index-url none --pypi-find-links WHEELHOUSE`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from pypi_helpers import *  # noqa: F403
from pypi_helpers import mac_python_channel

from conftest import as_nobody, make_site, run_cpkgs, tree_hash, world_traversable

ENVS = "anaconda3_linux/envs"
SITE_PACKAGES = "lib/python3.11/site-packages"
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


def pip_site(root: Path, channel_url: str | None, wheel_dir: Path, *extra: str) -> Path:
    """An offline site: no PyPI index, the test wheelhouse as its find-links dir."""
    return make_site(root, channel_url, "--pypi-index-url", "none", "--pypi-find-links", str(wheel_dir), *extra)


def spec_file(path: Path, conda: list[str], pip: list[str], channels: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict = {"dependencies": [*conda, {"pip": pip}]}  # type: ignore[type-arg]
    if channels:
        doc["channels"] = channels
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def packages(root: Path, name: str, *extra: str) -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    r = run_cpkgs("info", name, "--json", *extra, root=root)
    assert r.returncode == 0, r
    return {(p["kind"], p["name"]): p for p in r.json()["packages"]}


def nothing_left(root: Path, name: str, subdir: str = "linux-64") -> None:
    """Nothing published and no staging dir left behind."""
    envs = root / ("anaconda3_linux" if subdir == "linux-64" else "anaconda3_macOS") / "envs"
    assert not (envs / name).exists()
    assert [p.name for p in envs.iterdir() if p.name.startswith(".staging-")] == []
    assert not (root / ".cpkgs" / "records" / subdir / f"{name}.json").exists()


def one_line_failure(r, *words: str) -> str:  # type: ignore[no-untyped-def]
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("cpkgs: ") and "Traceback" not in r.stderr, r
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr.strip()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, channel_url: str, wheel_dir: Path, git_repo) -> Path:
    """A site with pip envs, shared by the read-only tests below (do not modify it):
    web-1.0  python + pip; pip: markdown-it-py, cowsay, cpkgs-datascript, docopt (an sdist), tinytool (git, v0.1)
    web-2.0  the same with rich instead of cowsay
    kern-1.0 python + pip; pip: ipykernel (IPython, ipykernel and their ~25 dependencies from the wheelhouse)"""
    base = tmp_path_factory.mktemp("pipsite")
    root = pip_site(base / "site", channel_url, wheel_dir)
    repo, _first, _second = git_repo
    tiny = f"tinytool @ git+{repo.as_uri()}@v0.1"
    builds = {
        "web-1.0": (["python", "pip"], ["markdown-it-py", "cowsay==6.1", "cpkgs-datascript", "docopt", tiny]),
        "web-2.0": (["python", "pip"], ["markdown-it-py", "rich", "cpkgs-datascript", "docopt", tiny]),
        "kern-1.0": (["python", "pip"], ["ipykernel"]),
    }
    for name, (conda, pip) in builds.items():
        spec = spec_file(base / "specs" / f"{name}.yml", conda, pip)
        r = run_cpkgs("new-env", name, "-f", str(spec), root=root)
        assert r.returncode == 0, r
    world_traversable(root)
    return root


# ------------------------------------------------------------------------------------------------ built and used


def test_console_scripts_and_imports_work_for_an_ordinary_user(built: Path, git_repo) -> None:
    prefix = built / ENVS / "web-1.0"
    for cmd, expect in ((["markdown-it", "--version"], "markdown-it-py [version 4.3.0]"),
                        (["cowsay", "-t", "shared"], "shared"),
                        (["cpkgs-datascript"], f"datascript ok {prefix}"),
                        (["tinytool"], f"tinytool ok {prefix}")):
        proc = as_nobody([str(prefix / "bin" / cmd[0]), *cmd[1:]], env=CLEAN_ENV, timeout=60)
        assert proc.returncode == 0 and expect in proc.stdout, (cmd, proc.stderr)
    proc = as_nobody([str(prefix / "bin/python"), "-c", "import docopt, six, mdurl; print(docopt.__file__)"],
                     env=CLEAN_ENV)
    assert proc.stdout.strip() == f"{prefix}/{SITE_PACKAGES}/docopt.py"
    # Everything pip wrote names the final prefix: no byte, script or RECORD of the staging dir is left.
    for dirpath, _dirs, files in os.walk(prefix):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                with open(p, "rb") as fh:
                    assert b".staging-" not in fh.read(), p


def test_the_pip_part_is_byte_compiled_sealed_and_verifies(built: Path) -> None:
    prefix = built / ENVS / "web-1.0"
    pyc = prefix / SITE_PACKAGES / "markdown_it/__pycache__/main.cpython-311.pyc"
    assert pyc.is_file() and stat.S_IMODE(pyc.stat().st_mode) == 0o444
    record = next((prefix / SITE_PACKAGES).glob("markdown_it_py-4.3.0.dist-info/RECORD")).read_text()
    assert "markdown_it/__pycache__/main.cpython-311.pyc,sha256=" in record
    # The user's python loads the pycs made at build time (it could not write any on the share).
    proc = as_nobody([str(prefix / "bin/python"), "-v", "-c", "import markdown_it.main"], env=CLEAN_ENV)
    assert f"code object from '{pyc}'" in proc.stderr
    for dirpath, dirs, files in os.walk(prefix):
        for n in dirs + files:
            mode = os.lstat(os.path.join(dirpath, n)).st_mode
            assert stat.S_ISLNK(mode) or not mode & 0o222, os.path.join(dirpath, n)
    # The PEP 668 marker came after pip: pip installs into the shared env are refused.
    assert (prefix / "lib/python3.11/EXTERNALLY-MANAGED").is_file()
    r = run_cpkgs("verify", "web-1.0", "web-2.0", "kern-1.0", "--json", root=built)
    assert r.returncode == 0, r
    assert [rep["problems"] for rep in r.json()] == [[], [], []]


def test_info_records_both_kinds(built: Path, wheel_dir: Path, git_repo) -> None:
    repo, first, _second = git_repo
    pkgs = packages(built, "web-1.0")
    assert {k for k, _n in pkgs} == {"conda", "pypi"}
    assert {n for k, n in pkgs if k == "pypi"} == {"markdown-it-py", "mdurl", "cowsay", "cpkgs-datascript", "docopt",
                                                   "tinytool", "six"}
    assert pkgs[("conda", "python")]["version"] == "3.11.7"
    cowsay = pkgs[("pypi", "cowsay")]
    assert (cowsay["version"], cowsay["sha256"]) == ("6.1", sha256(wheel_dir / "cowsay-6.1-py3-none-any.whl"))
    assert cowsay["index"] == wheel_dir.as_uri() and cowsay["requested"] and cowsay["requirement"] == "cowsay==6.1"
    assert not pkgs[("pypi", "mdurl")]["requested"]
    tiny = pkgs[("pypi", "tinytool")]
    assert tiny["source"] == {"kind": "vcs", "url": f"git+{repo.as_uri()}", "commit": first,
                              "requested_revision": "v0.1"}
    docopt = pkgs[("pypi", "docopt")]
    assert docopt["source"]["kind"] == "sdist"
    assert docopt["source"]["sha256"] == sha256(wheel_dir / "docopt-0.6.2.tar.gz")

    r = run_cpkgs("info", "web-1.0", root=built)
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:] if line and not line[0].isspace()}
    assert rows["cowsay"][1:] == ["6.1", "pypi", wheel_dir.as_uri()]
    assert rows["tinytool"][1:] == ["0.1.0", "pypi", f"git+{repo.as_uri()}@{first}"]
    assert rows["python"][1] == "3.11.7" and rows["python"][2] != "pypi"
    text = (built / ENVS / "web-1.0" / "list-of-pkgs-inside.txt").read_text()
    assert any(line.split() == ["cowsay", "6.1", "pypi", wheel_dir.as_uri()] for line in text.splitlines())


def test_diff_shows_both_kinds(built: Path) -> None:
    r = run_cpkgs("diff", "web-1.0", "web-2.0", "--json", root=built)
    assert r.returncode == 0, r
    d = r.json()
    assert sorted((p["kind"], p["name"]) for p in d["added"]) == [("pypi", "pygments"), ("pypi", "rich")]
    assert [(p["kind"], p["name"]) for p in d["removed"]] == [("pypi", "cowsay")]
    assert d["changed"] == []
    r = run_cpkgs("diff", "web-1.0", "web-2.0", root=built)
    lines = [line.split() for line in r.stdout.splitlines()]
    assert ["+", "rich", "15.0.0", "(pypi)"] in lines and ["-", "cowsay", "6.1", "(pypi)"] in lines


def test_export_yaml_has_an_exact_pip_section(built: Path, git_repo) -> None:
    repo, first, _second = git_repo
    r = run_cpkgs("export", "web-1.0", "--format", "yaml", root=built)
    assert r.returncode == 0, r
    doc = yaml.safe_load(r.stdout)
    pip = next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict))
    assert pip == ["cowsay==6.1", "cpkgs-datascript==1.0", "docopt==0.6.2", "markdown-it-py==4.3.0", "mdurl==0.1.2",
                   "six==1.17.0", f"tinytool @ git+{repo.as_uri()}@{first}"]
    assert all(re.fullmatch(r"[^=]+==[^=]+=[^=]+", d) for d in doc["dependencies"] if not isinstance(d, dict))


def test_the_pip_lock_installs_with_pip_and_uv_require_hashes(built: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    r = run_cpkgs("mirror", "web-1.0", str(mirror), root=built)
    assert r.returncode == 0, r
    assert "7 wheels" in r.stdout and str(mirror / "pypi") in r.stdout
    r = run_cpkgs("export", "web-1.0", "--format", "pip", root=built)
    assert r.returncode == 0, r
    lock = tmp_path / "web.pip.txt"
    lock.write_text(r.stdout)
    assert r.stdout.count("--hash=sha256:") >= 7 and "# cpkgs-source: tinytool vcs git+" in r.stdout
    from uv import find_uv_bin

    for tool in ("pip", "uv"):
        venv = tmp_path / f"venv-{tool}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin/python")
        base = ["--no-deps", "--require-hashes", "--no-index", "--find-links", str(mirror / "pypi/files"), "-r",
                str(lock)]
        cmd = ([py, "-m", "pip", "install", "--isolated", *base] if tool == "pip" else
               [find_uv_bin(), "pip", "install", "--no-config", "--python", py, "--cache-dir",
                str(tmp_path / "uvc"), *base])
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**CLEAN_ENV, "HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr
        out = subprocess.run([py, "-c", "import docopt, tinytool, cowsay; print('ok')"], capture_output=True,
                             text=True)
        assert out.stdout == "ok\n", out.stderr


@pytest.mark.slow
def test_export_then_lock_on_a_second_site_with_only_the_mirror(built: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    assert run_cpkgs("mirror", "web-1.0", str(mirror), root=built).returncode == 0
    conda_lock, pip_lock = tmp_path / "web.lock", tmp_path / "web.pip.txt"
    r = run_cpkgs("export", "web-1.0", "--format", "explicit", root=built)
    conda_lock.write_text(r.stdout)
    assert "# pip-lock: 7 packages" in r.stdout
    pip_lock.write_text(run_cpkgs("export", "web-1.0", "--format", "pip", root=built).stdout)
    # The second site knows no channel and no PyPI location at all; git and the wheelhouse are out of its reach
    # (the wheels built from git and the sdist exist in the mirror only).
    other = make_site(tmp_path / "other", None, "--pypi-index-url", "none")
    r = run_cpkgs("new-env", "web-1.0", "--lock", str(conda_lock), root=other)
    one_line_failure(r, "pip part", "--pip-lock")
    nothing_left(other, "web-1.0")
    r = run_cpkgs("new-env", "web-1.0", "--pip-lock", str(pip_lock), root=other)
    assert r.returncode == 2 and "--pip-lock goes with --lock FILE" in r.stderr, r
    # A companion edited after the export is the admin's call: built as given, with a warning naming both files.
    edited = tmp_path / "web.pip.edited.txt"
    edited.write_text(pip_lock.read_text() + "# reviewed by the admin\n")
    via_mirror = ["-c", mirror.as_uri(), "--pip-index", (mirror / "pypi/simple").as_uri()]
    r = run_cpkgs("new-env", "web-1.0", "--lock", str(conda_lock), "--pip-lock", str(edited), *via_mirror,
                  "--dry-run", root=other)
    assert r.returncode == 0, r
    assert f"--pip-lock {edited} is not the pip part lock file {conda_lock} was exported with" in r.stderr, r
    r = run_cpkgs("new-env", "web-1.0", "--lock", str(conda_lock), "--pip-lock", str(pip_lock), *via_mirror,
                  root=other)
    assert r.returncode == 0, r
    assert "warning" not in r.stderr, r.stderr

    def identity(root: Path) -> set[tuple[str, str, str, str]]:
        return {(k, n, p["version"], p["sha256"]) for (k, n), p in packages(root, "web-1.0").items()}

    assert identity(other) == identity(built)
    world_traversable(other)
    proc = as_nobody([str(other / ENVS / "web-1.0/bin/tinytool")], env=CLEAN_ENV)
    assert proc.stdout.strip() == f"tinytool ok {other / ENVS / 'web-1.0'}"
    assert run_cpkgs("verify", "web-1.0", root=other).returncode == 0


@pytest.mark.slow
def test_pack_carries_the_pip_part(built: Path, tmp_path: Path) -> None:
    work = tmp_path / "laptop"
    work.mkdir()
    os.chown(work, 65534, 65534)
    world_traversable(work)
    archive = work / "web.tar.gz"
    r = run_cpkgs("pack", "web-1.0", "-o", str(archive), root=built, user=True)
    assert r.returncode == 0, r
    with tarfile.open(archive) as tf:
        names = set(tf.getnames())
    assert {f"{SITE_PACKAGES}/docopt.py", "bin/cowsay", "bin/tinytool"} <= names
    new = work / "unpacked"
    steps = f"mkdir -p {new} && tar -xf {archive} -C {new} && {new}/bin/python {new}/bin/conda-unpack"
    out = as_nobody(["sh", "-c", steps], env=CLEAN_ENV)
    assert out.returncode == 0, out.stderr
    res = as_nobody([str(new / "bin/python"), "-c", "import docopt, markdown_it; print(markdown_it.__file__)"],
                    env=CLEAN_ENV)
    assert res.stdout.strip() == f"{new}/{SITE_PACKAGES}/markdown_it/__init__.py", res.stderr
    # conda-pack makes the pip part's scripts relocatable (#!/usr/bin/env python): they run in the activated env.
    res = as_nobody(["bash", "-c", f". {new}/bin/activate && tinytool"], env=CLEAN_ENV)
    assert res.stdout.strip() == f"tinytool ok {new}", res.stderr


# ------------------------------------------------------------------------------------------------ kernels, layers


@pytest.mark.slow
def test_kernels_from_a_pip_installed_ipykernel(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    prefix = built / ENVS / "kern-1.0"
    pkgs = packages(built, "kern-1.0")
    assert ("pypi", "ipykernel") in pkgs and ("conda", "ipykernel") not in pkgs
    assert json.loads((built / "share/jupyter/kernels/kern-1.0/kernel.json").read_text())["argv"][0] == \
        f"{prefix}/bin/python"
    monkeypatch.setenv("JUPYTER_PATH", str(built / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    km = KernelManager(kernel_name="kern-1.0", kernel_spec_manager=KernelSpecManager())
    out: list[str] = []
    try:
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=90)
        code = ("import ipykernel, IPython\nprint('K=' + ipykernel.__file__)\n"
                "print('HIST=' + str(get_ipython().history_manager.hist_file))\n")
        reply = kc.execute_interactive(code, timeout=60, output_hook=lambda m: out.append(
            m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
        kc.stop_channels()
        assert reply["content"]["status"] == "ok"
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    lines = dict(line.split("=", 1) for line in "".join(out).splitlines() if "=" in line)
    assert lines["K"] == f"{prefix}/{SITE_PACKAGES}/ipykernel/__init__.py"
    assert lines["HIST"] == f"{xdg}/cpkgs/ipython/history.sqlite"  # the SQLite relocation applies to pip's IPython


def test_a_layer_on_a_base_whose_ipython_comes_from_pip(built: Path, tmp_path: Path) -> None:
    layer = tmp_path / "mine"
    tmp_path.chmod(0o755)
    os.chown(tmp_path, 65534, 65534)
    world_traversable(tmp_path)
    r = run_cpkgs("extend", "kern-1.0", str(layer), root=built, user=True)
    assert r.returncode == 0, r
    assert "has no pip" not in r.stdout
    assert (layer / "bin/ipython").is_file() and (layer / "etc/ipython/ipython_config.py").is_file()
    proc = as_nobody([str(layer / "bin/python"), "-c", "import IPython, ipykernel; print(IPython.__file__)"],
                     env=CLEAN_ENV)
    assert proc.stdout.strip() == f"{built / ENVS / 'kern-1.0'}/{SITE_PACKAGES}/IPython/__init__.py", proc.stderr


# ------------------------------------------------------------------------------------------------ refused


@pytest.fixture
def site(tmp_path: Path, channel_url: str, wheel_dir: Path) -> Path:  # noqa: F811
    return pip_site(tmp_path / "site", channel_url, wheel_dir)


def test_a_wheel_replacing_a_conda_file_is_refused_before_publish(site: Path, tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "s.yml", ["python", "pip"], ["toolz", "cpkgs-clobber"])
    r = run_cpkgs("new-env", "clob-1.0", "-f", str(spec), root=site)
    msg = one_line_failure(r)
    assert msg == ("cpkgs: pip: cpkgs-clobber 1.0 (pip requirement 'cpkgs-clobber') would overwrite bin/pip of the "
                   "conda package pip 26.3; pip may not replace conda's files: drop the pip requirement or change the "
                   "conda spec of pip")
    nothing_left(site, "clob-1.0")


def test_a_version_conda_already_installs_differently_is_refused(site: Path, tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "s.yml", ["python", "ipykernel"], ["rich", "pygments<2.20"])
    r = run_cpkgs("new-env", "conf-1.0", "-f", str(spec), root=site)
    one_line_failure(r, "pip requirement 'pygments<2.20'", "needs Pygments 2.19.2 (a downgrade)",
                     "the conda package ipykernel 7.4.0 installs Pygments 2.21.0", "change the conda spec")
    nothing_left(site, "conf-1.0")


BAD = [
    ("rich>=", ["pip[0]", "invalid requirement 'rich>='"]),
    ("--trusted-host example.org", ["pip[0]", "unknown pip option '--trusted-host'"]),
    ("cpkgs-no-such-thing", ["pip: no index has 'cpkgs-no-such-thing' (indexes: none; find-links:"]),
    ("six==1.17.0 --hash=sha256:" + "0" * 64, ["pip[0]", "hash mismatch for 'six==1.17.0'"]),
    ("-e .", ["pip[0]", "-e .: an editable install"]),
    (".", ["pip[0]", "is a local source directory"]),
    ("tinytool @ hg+https://example.org/r", ["hg URLs are not supported"]),
]


@pytest.mark.parametrize(("line", "words"), BAD, ids=["broken", "unknown-option", "no-index-has", "hash",
                                                       "editable", "source-dir", "hg"])
def test_bad_pip_input_is_one_line_and_publishes_nothing(site: Path, tmp_path: Path, line: str,
                                                         words: list[str]) -> None:
    spec = spec_file(tmp_path / "s.yml", ["python"], [line])
    before = tree_hash(site)
    r = run_cpkgs("new-env", "bad-1.0", "-f", str(spec), root=site)
    one_line_failure(r, *words)
    nothing_left(site, "bad-1.0")
    # Lines refused by their form are refused before any solve or install: no env, record, module or kernel.
    after = tree_hash(site)
    assert {k for k in after if not k.startswith(".cpkgs/")} == {k for k in before if not k.startswith(".cpkgs/")}


def test_a_pip_section_needs_python(site: Path, tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "s.yml", ["cpkgs-test-lib"], ["six"])
    one_line_failure(run_cpkgs("new-env", "nopy-1.0", "-f", str(spec), root=site), "python")
    nothing_left(site, "nopy-1.0")


def test_a_site_that_refuses_pip_sections(tmp_path: Path, channel_url: str, wheel_dir: Path) -> None:
    root = pip_site(tmp_path / "site", channel_url, wheel_dir, "--no-pip-sections")
    assert yaml.safe_load((root / "cpkgs.yaml").read_text())["pypi"]["enabled"] is False
    spec = spec_file(tmp_path / "s.yml", ["python"], ["six"])
    one_line_failure(run_cpkgs("new-env", "np-1.0", "-f", str(spec), root=root), "pypi.enabled: false")
    nothing_left(root, "np-1.0")


def test_pypi_config_is_validated_and_set_by_init(tmp_path: Path, channel_url: str, wheel_dir: Path,
                                                  http_index: str) -> None:
    root = make_site(tmp_path / "site", channel_url)
    cfg = yaml.safe_load((root / "cpkgs.yaml").read_text())
    assert cfg.get("pypi", {}).get("index_url", "https://pypi.org/simple") == "https://pypi.org/simple"
    r = run_cpkgs("init", "--pypi-index-url", http_index, "--pypi-extra-index-url", "https://extra.example.org/simple",
                  "--pypi-find-links", str(wheel_dir), root=root)
    assert r.returncode == 0, r
    pypi = yaml.safe_load((root / "cpkgs.yaml").read_text())["pypi"]
    assert (pypi["index_url"], pypi["extra_index_urls"], pypi["find_links"]) == (
        http_index, ["https://extra.example.org/simple"], [str(wheel_dir)])
    r = run_cpkgs("init", "--pypi-index-url", "ftp://mirror.example.org/simple", root=root)
    assert r.returncode in (1, 2) and r.stderr.count("\n") == 1 and "pypi.index_url" in r.stderr, r
    assert yaml.safe_load((root / "cpkgs.yaml").read_text())["pypi"]["index_url"] == http_index
    text = (root / "cpkgs.yaml").read_text()
    (root / "cpkgs.yaml").write_text(text.replace(str(wheel_dir), "relative/wheels"))
    r = run_cpkgs("list", root=root)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "'pypi.find_links[0]'" in r.stderr, r


def test_a_site_mirror_of_pypi_is_one_line(tmp_path: Path, channel_url: str, http_index: str) -> None:
    """The site's PyPI mirror (here the wheelhouse served over HTTP) is the one key index_url."""
    root = make_site(tmp_path / "site", channel_url, "--pypi-index-url", http_index)
    spec = spec_file(tmp_path / "s.yml", ["python"], ["requests"])
    r = run_cpkgs("new-env", "req-1.0", "-f", str(spec), root=root)
    assert r.returncode == 0, r
    pkgs = packages(root, "req-1.0")
    assert {n for k, n in pkgs if k == "pypi"} == {"requests", "urllib3", "idna", "certifi", "charset-normalizer"}
    assert {p["index"] for (k, _n), p in pkgs.items() if k == "pypi"} == {http_index}


# ------------------------------------------------------------------------------------------------ tamper, dry run


def test_a_tampered_pip_file_is_reported_like_a_conda_one(site: Path, tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "s.yml", ["python", "cpkgs-test-textprefix"], ["markdown-it-py"])
    assert run_cpkgs("new-env", "tamp-1.0", "-f", str(spec), root=site).returncode == 0
    prefix = site / ENVS / "tamp-1.0"
    for rel in (f"{SITE_PACKAGES}/markdown_it/main.py", "share/cpkgs-test-textprefix/prefix.txt"):
        target = prefix / rel
        if not target.exists():
            continue
        target.chmod(0o644)
        target.write_text(target.read_text() + "# tampered\n")
        target.chmod(0o444)
    r = run_cpkgs("verify", "tamp-1.0", "--json", root=site)
    assert r.returncode == 4, r
    problems = {(p["kind"], p["path"]) for p in r.json()[0]["problems"]}
    assert ("modified", f"{SITE_PACKAGES}/markdown_it/main.py") in problems
    # A RECORD edited to agree with an edited file is caught too: the RECORDs' hashes are part of the sealed metadata.
    record = next((prefix / SITE_PACKAGES).glob("markdown_it_py-*.dist-info/RECORD"))
    main = prefix / SITE_PACKAGES / "markdown_it/main.py"
    from cpkgs_admin.pipeline.pypi.wheelfile import record_hash

    new_row = f"markdown_it/main.py,{record_hash(main.read_bytes())},{main.stat().st_size}"
    lines = [new_row if line.startswith("markdown_it/main.py,") else line for line in record.read_text().splitlines()]
    record.chmod(0o644)
    record.write_text("\n".join(lines) + "\n")
    record.chmod(0o444)
    r = run_cpkgs("verify", "tamp-1.0", "--json", root=site)
    assert r.returncode == 4, r
    paths = {p["path"] for p in r.json()[0]["problems"]}
    assert paths & {str(record.relative_to(prefix)), "conda-meta"}, paths


def test_dry_run_shows_both_kinds_and_writes_nothing(tmp_path: Path, conda_channel_url: str,
                                                     world_wheel_dir: Path) -> None:
    # The channel and the wheelhouse where uid 65534 can read them (their caches sit in root's home).
    site = pip_site(tmp_path / "site", conda_channel_url, world_wheel_dir)
    spec = spec_file(tmp_path / "s.yml", ["python", "ipykernel"], ["rich", "packaging>=26"])
    tmp_path.chmod(0o755)
    world_traversable(spec)
    before = tree_hash(site)
    for user in (False, True):  # an admin, and anyone (who cannot write the site's caches)
        r = run_cpkgs("new-env", "dry-1.0", "-f", str(spec), "--dry-run", root=site, user=user)
        assert r.returncode == 0, r
        rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[1:] if line.strip()
                and not line.startswith("dry run")}
        assert rows["rich"][:2] == ["15.0.0", "pypi"] and rows["markdown-it-py"][:2] == ["4.3.0", "pypi"]
        assert "packaging" not in rows or rows["packaging"][1] != "pypi"  # the conda package's 26.3 satisfies it
        assert rows["ipykernel"][1] != "pypi"
        assert "3 pypi" in r.stdout

    def site_files(tree: dict) -> dict:  # type: ignore[type-arg]
        # Caches an admin's dry run may fill (repodata, uv's) aside: no env, record, lock, module or kernel.
        return {k: v for k, v in tree.items() if not k.startswith((".cpkgs/uv-cache", ".cpkgs/pkgs", ".cpkgs/locks"))}

    assert site_files(tree_hash(site)) == site_files(before)


def test_from_carries_the_pip_part(site: Path, tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "s.yml", ["python", "pip"], ["cowsay", "toolz"])
    assert run_cpkgs("new-env", "fr-1.0", "-f", str(spec), root=site).returncode == 0
    r = run_cpkgs("new-env", "fr-2.0", "--from", "fr-1.0", "--add", "cpkgs-test-lib", "--remove", "toolz", root=site)
    assert r.returncode == 0, r
    pkgs = packages(site, "fr-2.0")
    assert {n for k, n in pkgs if k == "pypi"} == {"cowsay"} and ("conda", "cpkgs-test-lib") in pkgs


def test_uv_cache_is_admin_only_and_hard_linked_only_then(site: Path, tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "s.yml", ["python"], ["toolz"])
    assert run_cpkgs("new-env", "hl-1.0", "-f", str(spec), root=site).returncode == 0
    cache = site / ".cpkgs" / "uv-cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE((site / ".cpkgs" / "wheels").stat().st_mode) == 0o700
    toolz = site / ENVS / "hl-1.0" / SITE_PACKAGES / "toolz/itertoolz.py"
    assert toolz.stat().st_nlink > 1  # shared with uv's admin-only cache
    # Someone opened it: anything in it may have been changed, so it is not used (nor linked) but dropped whole.
    planted = next(cache.rglob("itertoolz.py"))
    cache.chmod(0o777)
    r = run_cpkgs("new-env", "hl-2.0", "-f", str(spec), root=site)
    assert r.returncode == 0, r
    assert f"cpkgs: warning: {cache} was writable by others: dropped and made again" in r.stderr
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and not planted.exists()
    fresh = site / ENVS / "hl-2.0" / SITE_PACKAGES / "toolz/itertoolz.py"
    assert fresh.stat().st_ino != toolz.stat().st_ino
    assert run_cpkgs("verify", "hl-1.0", "hl-2.0", root=site).returncode == 0


# ------------------------------------------------------------------------------------------------ another platform


@pytest.mark.slow
def test_an_osx_arm64_env_with_a_pip_part_built_on_linux(tmp_path: Path, channel_url: str, wheel_dir: Path) -> None:
    """The pip part of a macOS env, built here: wheels chosen by macOS tags, installed without running the env's
    python. The env's python is a stand-in package (tests/pypi_helpers.mac_python_channel): a real macOS python
    cannot run here, and nothing in this build may try to run it — the one fake, at the macOS boundary."""
    mac = mac_python_channel(tmp_path / "mac")
    root = pip_site(tmp_path / "site", channel_url, wheel_dir, "-c", mac.as_uri(), "--platform", "linux-64",
                    "--platform", "osx-arm64")
    spec = spec_file(tmp_path / "s.yml", ["python 3.11.*"], ["pyyaml", "markdown-it-py", "docopt"])
    r = run_cpkgs("new-env", "mac-1.0", "-f", str(spec), "--platform", "osx-arm64", "--dry-run", root=root)
    assert r.returncode == 0 and "pyyaml" in r.stdout, r
    r = run_cpkgs("new-env", "mac-1.0", "-f", str(spec), "--platform", "osx-arm64", root=root)
    assert r.returncode == 0, r
    prefix = root / "anaconda3_macOS/envs/mac-1.0"
    pkgs = packages(root, "mac-1.0", "--platform", "osx-arm64")
    assert pkgs[("pypi", "pyyaml")]["filename"] == "pyyaml-6.0.4-cp311-cp311-macosx_11_0_arm64.whl"
    assert pkgs[("pypi", "pyyaml")]["sha256"] == sha256(wheel_dir / "pyyaml-6.0.4-cp311-cp311-macosx_11_0_arm64.whl")
    assert list((prefix / SITE_PACKAGES / "yaml").glob("_yaml.cpython-311-darwin.so"))
    assert (prefix / "bin/markdown-it").read_bytes().startswith(f"#!{prefix}/bin/python\n".encode())
    # Byte code: this host's CPython 3.11 makes the same as the env's 3.11 would.
    assert (prefix / SITE_PACKAGES / "markdown_it/__pycache__/main.cpython-311.pyc").is_file()
    assert run_cpkgs("verify", "mac-1.0", root=root).returncode == 0
