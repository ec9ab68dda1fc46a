"""`cpkgs extend BASE DIR`: a personal venv layer on a sealed shared env; real pip, real unprivileged user."""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ENVS, as_nobody, make_site, run_cpkgs, tree_hash, world_traversable

PIP_ENV = "py-1.0"  # python + pip, sealed, with the PEP 668 marker


def nobody_dir(path: Path) -> Path:
    """A directory uid 65534 may write (a user's home or scratch space)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 65534, 65534)
    world_traversable(path)
    return path


def write_wheel(dest: Path, name: str, version: str, module_source: str) -> Path:
    """A minimal, valid pure-Python wheel written by hand (no build backend, no index)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": module_source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: cpkgs-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for arc, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{arc},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    path = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            zf.writestr(arc, text)
    os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="module")
def pip_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Iterator[Path]:
    """A site whose env py-1.0 has pip (the shared demo envs have none) and carries PEP 668's marker, so pip in
    the layer is checked against a base that forbids installing into itself. If the build pipeline does not
    write the marker (yet), the test adds it in an audited maintenance window (unseal, write, seal)."""
    root = make_site(tmp_path_factory.mktemp("pipsite") / "site", channel_url)
    r = run_cpkgs("new-env", PIP_ENV, "python", "pip", "cpkgs-test-activate", root=root)
    assert r.returncode == 0, r
    marker = root / ENVS / PIP_ENV / "lib" / "python3.11" / "EXTERNALLY-MANAGED"
    if not marker.exists():
        assert run_cpkgs("unseal", PIP_ENV, "--reason", "test: PEP 668 marker", root=root).returncode == 0
        marker.write_text("[externally-managed]\nError=this is a sealed shared environment: use cpkgs extend\n")
        assert run_cpkgs("seal", PIP_ENV, root=root).returncode == 0
    world_traversable(root)
    yield root
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            if not os.path.islink(os.path.join(dirpath, d)):
                os.chmod(os.path.join(dirpath, d), 0o755)


def py(layer: Path, code: str) -> subprocess.CompletedProcess[str]:
    return as_nobody([str(layer / "bin" / "python"), "-c", code], env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def pip(layer: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return as_nobody([str(layer / "bin" / "python"), "-m", "pip", *args], env=env)


# ------------------------------------------------------------------------------------------------------- the layer


def test_extend_makes_a_small_layer_as_any_user(built_site: Path, tmp_path: Path) -> None:
    home = nobody_dir(tmp_path / "u")
    layer = home / "layers" / "mine"  # parents are created
    base = built_site / ENVS / "demo-1.0"
    t = time.monotonic()
    r = run_cpkgs("extend", "demo-1.0", str(layer), root=built_site, user=True)
    elapsed = time.monotonic() - t
    assert r.returncode == 0, r
    assert str(layer) in r.stdout
    assert elapsed < 2.0  # the benchmark holds the real bound (0.3 s); this only catches walking BASE
    # A fixed handful of entries, whatever BASE's size: nothing of BASE is copied or linked file by file; only
    # its python scripts (here pip's) get a small wrapper each.
    entries = sorted(str(p.relative_to(layer)) for p in layer.rglob("*"))
    assert entries == [
        "bin", "bin/pip", "bin/pip3", "bin/python", "bin/python3", "bin/python3.11", "conda-meta", "conda-meta/cpkgs",
        "conda-meta/cpkgs/layer", "etc", "etc/ipython", "etc/ipython/ipython_config.py", "etc/jupyter",
        "etc/jupyter/jupyter_notebook_config.py", "etc/jupyter/jupyter_server_config.py",
        "lib", "lib/python3.11", "lib/python3.11/site-packages", "pyvenv.cfg",
    ]
    # The layer's sys.prefix is DIR: IPython and Jupyter read DIR/etc, so it carries BASE's SQLite-off-NFS config.
    for rel in ("etc/ipython/ipython_config.py", "etc/jupyter/jupyter_server_config.py",
                "etc/jupyter/jupyter_notebook_config.py"):
        assert (layer / rel).read_text() == (base / rel).read_text()
    assert os.readlink(layer / "bin" / "python") == str(base / "bin" / "python3.11")
    assert (layer / "conda-meta/cpkgs/layer").read_text() == f"{base}\ndemo-1.0\nanaconda3_linux\n"
    cfg = (layer / "pyvenv.cfg").read_text()
    assert f"home = {base / 'bin'}\n" in cfg and "include-system-site-packages = true\n" in cfg
    assert "version = 3.11.7\n" in cfg
    assert os.stat(layer / "pyvenv.cfg").st_uid == 65534
    out = py(layer, "import sys; print(sys.prefix); print(sys.base_prefix); print(sys.executable)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(layer), str(base), str(layer / "bin" / "python")]


def test_pip_installs_a_local_wheel_into_the_layer(pip_site: Path, tmp_path: Path) -> None:
    base = pip_site / ENVS / PIP_ENV
    before = tree_hash(base)
    home = nobody_dir(tmp_path / "u")
    wheel = write_wheel(home, "cpkgs_probe", "1.0", "VERSION = '1.0'\n")
    layer = home / "layer"
    r = run_cpkgs("extend", PIP_ENV, str(layer), root=pip_site, user=True)
    assert r.returncode == 0, r
    assert "has no pip" not in r.stdout

    # The base refuses installs into itself (PEP 668) ...
    refused = as_nobody([str(base / "bin" / "python"), "-m", "pip", "install", "--no-index", str(wheel)],
                        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr
    # ... the layer does not: pip skips the marker inside a virtual environment.
    inst = pip(layer, "install", "--no-index", str(wheel))
    assert inst.returncode == 0, inst.stderr
    out = py(layer, "import cpkgs_probe, pip, json, sys; print(json.dumps([cpkgs_probe.VERSION, cpkgs_probe.__file__, pip.__file__]))")
    assert out.returncode == 0, out.stderr
    import json

    version, probe_file, pip_file = json.loads(out.stdout)
    assert version == "1.0"
    assert probe_file.startswith(str(layer / "lib/python3.11/site-packages/"))
    assert pip_file.startswith(str(base / "lib/python3.11/site-packages/"))  # BASE's packages stay importable
    # BASE's own interpreter does not see the layer; BASE is unchanged.
    assert as_nobody([str(base / "bin" / "python"), "-c", "import cpkgs_probe"]).returncode != 0
    assert tree_hash(base) == before


def test_layer_package_shadows_the_base_one(pip_site: Path, tmp_path: Path) -> None:
    """The realistic case: a user needs another version of a package BASE ships. BASE has pip 26.x; the layer
    installs pip 23.2.1 from the wheel python bundles for ensurepip (no network). The layer's copy wins in the
    layer; BASE's interpreter still gets its own."""
    base = pip_site / ENVS / PIP_ENV
    bundled = next((base / "lib/python3.11/ensurepip/_bundled").glob("pip-*.whl"))
    old_version = bundled.name.split("-")[1]
    base_version = as_nobody([str(base / "bin" / "python"), "-c", "import pip; print(pip.__version__)"]).stdout.strip()
    assert base_version != old_version
    home = nobody_dir(tmp_path / "u")
    layer = home / "layer"
    assert run_cpkgs("extend", PIP_ENV, str(layer), root=pip_site, user=True).returncode == 0
    inst = pip(layer, "install", "--no-index", str(bundled))
    assert inst.returncode == 0, inst.stderr
    out = py(layer, "import pip; print(pip.__version__); print(pip.__file__)")
    assert out.stdout.split() == [old_version, str(layer / "lib/python3.11/site-packages/pip/__init__.py")]
    again = as_nobody([str(base / "bin" / "python"), "-c", "import pip; print(pip.__version__)"])
    assert again.stdout.strip() == base_version


def test_force_repoints_a_layer_and_keeps_its_packages(built_site: Path, tmp_path: Path) -> None:
    home = nobody_dir(tmp_path / "u")
    layer = home / "layer"
    assert run_cpkgs("extend", "demo-1.0", str(layer), root=built_site, user=True).returncode == 0
    (layer / "lib/python3.11/site-packages/mine.py").write_text("X = 1\n")
    r = run_cpkgs("extend", "demo-2.0", str(layer), root=built_site, user=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not empty" in r.stderr and "--force" in r.stderr
    r = run_cpkgs("extend", "demo-2.0", str(layer), "--force", root=built_site, user=True)
    assert r.returncode == 0, r
    base2 = built_site / ENVS / "demo-2.0"
    assert (layer / "conda-meta/cpkgs/layer").read_text().splitlines()[:2] == [str(base2), "demo-2.0"]
    out = py(layer, "import mine, sys; print(sys.base_prefix)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(base2)
    assert not [p for p in (layer / "bin").iterdir() if p.name.startswith(".")]  # no temp links left


def test_retired_base_works_with_a_notice(built_site: Path, tmp_path: Path) -> None:
    layer = nobody_dir(tmp_path / "u") / "layer"
    r = run_cpkgs("extend", "old-1.0", str(layer), root=built_site, user=True)
    assert r.returncode == 0, r
    assert "old-1.0 is retired" in r.stderr and "demo-2.0" in r.stderr
    assert (layer / "conda-meta/cpkgs/layer").exists()


@pytest.mark.parametrize(
    ("base", "words"),
    [
        ("tools-1.0", ["tools-1.0", "no python"]),
        ("nope-1.0", ["nope-1.0", "no shared environment"]),
        ("../etc", ["../etc"]),
    ],
)
def test_bad_base_is_one_line_and_writes_nothing(built_site: Path, tmp_path: Path, base: str, words: list[str]) -> None:
    home = nobody_dir(tmp_path / "u")
    r = run_cpkgs("extend", base, str(home / "layer"), root=built_site, user=True)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("cpkgs: "), r
    for w in words:
        assert w in r.stderr
    assert not (home / "layer").exists()


def test_unwritable_dir_is_one_line(built_site: Path, tmp_path: Path) -> None:
    locked = tmp_path / "root-owned"
    locked.mkdir(mode=0o755)
    world_traversable(locked)
    r = run_cpkgs("extend", "demo-1.0", str(locked / "layer"), root=built_site, user=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not writable" in r.stderr, r
    assert str(locked) in r.stderr
    # an existing, empty but unwritable DIR
    r = run_cpkgs("extend", "demo-1.0", str(locked), root=built_site, user=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not writable" in r.stderr, r
    assert list(locked.iterdir()) == []


def test_removed_base_is_refused(pip_site: Path, tmp_path: Path) -> None:
    assert run_cpkgs("new-env", "gone-1.0", "python", root=pip_site).returncode == 0
    assert run_cpkgs("remove", "gone-1.0", root=pip_site).returncode == 0
    layer = nobody_dir(tmp_path / "u") / "layer"
    r = run_cpkgs("extend", "gone-1.0", str(layer), root=pip_site, user=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "gone-1.0 was removed" in r.stderr, r
    assert not layer.exists()


def test_activated_layer_runs_bases_python_scripts_with_its_own_python(pip_site: Path, tmp_path: Path) -> None:
    """On an activated layer, `pip` (and any script BASE's python runs: ipython, jupyter, ...) is BASE's script
    run by the layer's python: `pip install X` goes into the layer instead of hitting BASE's PEP 668 marker, and
    the layer's python sees X. A script the user installs into the layer replaces the wrapper."""
    base = pip_site / ENVS / PIP_ENV
    home = nobody_dir(tmp_path / "u")
    wheel = write_wheel(home, "cpkgs_probe", "1.0", "VERSION = '1.0'\n")
    layer = home / "my layer"
    assert run_cpkgs("extend", PIP_ENV, str(layer), root=pip_site, user=True).returncode == 0
    wrapped = sorted(p.name for p in (layer / "bin").iterdir() if not p.name.startswith("python"))
    assert "pip" in wrapped and "pip3" in wrapped, wrapped
    exec_line = f"exec {shlex.quote(str(layer / 'bin/python'))} {shlex.quote(str(base / 'bin/pip'))} \"$@\""
    assert (layer / "bin" / "pip").read_text().splitlines()[2] == exec_line
    script = (
        f". '{pip_site}/etc/profile.d/conda.sh' && conda activate '{layer}' && command -v pip && "
        f"PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 pip install -q --no-index '{wheel}' && "
        "python -c 'import cpkgs_probe; print(cpkgs_probe.__file__)'"
    )
    r = as_nobody(["bash", "--norc", "-c", script], env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == str(layer / "bin" / "pip")
    assert lines[1] == str(layer / "lib/python3.11/site-packages/cpkgs_probe/__init__.py")
    # --force onto the same base keeps the layer's packages and rewrites the wrappers, nothing else
    assert run_cpkgs("extend", PIP_ENV, str(layer), "--force", root=pip_site, user=True).returncode == 0
    assert sorted(p.name for p in (layer / "bin").iterdir() if not p.name.startswith("python")) == wrapped


# ------------------------------------------------------------------------------------------------------- who controls DIR

OTHER = 65533  # "another user" (no passwd entry needed)


def as_other(cmd: list[str]) -> None:
    r = subprocess.run(["setpriv", "--reuid", str(OTHER), "--regid", str(OTHER), "--clear-groups", *cmd],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r


def public_dir(path: Path) -> Path:
    """A root-owned sticky world-writable directory, like /tmp."""
    path.mkdir()
    path.chmod(0o1777)
    world_traversable(path)
    return path


@pytest.mark.parametrize("case", ["parent-of-other-user", "dir-of-other-user", "symlink-of-other-user",
                                  "world-writable-parent"])
def test_layer_dir_another_user_controls_is_refused(built_site: Path, tmp_path: Path, case: str) -> None:
    """Another user (uid 65533) owns DIR, a directory above it or a symlink on the way, or everyone can write a
    directory above it: they could add an activate script or swap bin/python, and the victim's shell would run
    it on `conda activate`. Refused with one line; nothing written."""
    pub = public_dir(tmp_path / "pub")
    if case == "parent-of-other-user":
        as_other(["mkdir", "-m", "0777", str(pub / "shared")])
        layer, culprit = pub / "shared" / "layer", "belongs to uid 65533"
    elif case == "dir-of-other-user":
        as_other(["mkdir", "-m", "0777", str(pub / "layer")])  # empty and writable: the old check let it pass
        layer, culprit = pub / "layer", "belongs to uid 65533, not to you"
    elif case == "symlink-of-other-user":
        as_other(["mkdir", "-m", "0777", str(pub / "theirs")])
        as_other(["ln", "-s", str(pub / "theirs"), str(pub / "layer")])
        layer, culprit = pub / "layer", "belongs to uid 65533"
    else:
        open_dir = tmp_path / "open"
        open_dir.mkdir()
        open_dir.chmod(0o777)
        world_traversable(open_dir)
        layer, culprit = open_dir / "layer", "is writable by everyone"
    before = tree_hash(tmp_path)
    r = run_cpkgs("extend", "demo-1.0", str(layer), root=built_site, user=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("cpkgs: "), r
    assert culprit in r.stderr and "Traceback" not in r.stderr, r
    assert tree_hash(tmp_path) == before


def test_layer_in_a_sticky_public_dir_is_the_users_own(built_site: Path, tmp_path: Path) -> None:
    """/tmp-like parents are fine: only the layer's owner can rename or remove it there."""
    layer = public_dir(tmp_path / "pub") / "mine"
    r = run_cpkgs("extend", "demo-1.0", str(layer), root=built_site, user=True)
    assert r.returncode == 0, r
    st = layer.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o755)


def test_layer_modes_do_not_depend_on_the_umask(built_site: Path, tmp_path: Path) -> None:
    """umask 000: still nothing in the layer that others can write (they could change what activation runs)."""
    home = nobody_dir(tmp_path / "u")
    layer = home / "layers" / "mine"
    r = as_nobody([sys.executable, "-m", "cpkgs_admin", "--root", str(built_site), "extend", "demo-1.0", str(layer)],
                  cwd=str(Path(__file__).parent.parent), preexec_fn=lambda: os.umask(0))  # fmt: skip
    assert r.returncode == 0, r
    for p in [layer.parent, layer, *layer.rglob("*")]:
        st = p.lstat()
        if not stat.S_ISLNK(st.st_mode):
            assert not st.st_mode & 0o022, (p, oct(st.st_mode))
    assert stat.S_IMODE((layer / "bin" / "pip").stat().st_mode) == 0o755
    assert stat.S_IMODE((layer / "pyvenv.cfg").stat().st_mode) == 0o644
