"""The local test channel: build it, install from it with py-rattler, use it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_channel  # noqa: E402

rattler = pytest.importorskip("rattler")

PLATFORMS = ["linux-64", "noarch"]
ENV_SPECS = [
    "python",
    "pip",
    "ipykernel",
    "cpkgs-test-app",
    "cpkgs-test-textprefix",
    "cpkgs-test-binprefix",
    "cpkgs-test-activate",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the test channel is linux-64"),
]


def solve(channel: Path, specs: list[str], cache: Path) -> list:
    gateway = rattler.Gateway(cache_dir=cache / "repodata")
    return asyncio.run(
        rattler.solve(
            sources=[channel.as_uri()],
            specs=specs,
            platforms=PLATFORMS,
            gateway=gateway,
        )
    )


def install(records: list, prefix: Path, cache: Path, final: Path | None = None) -> None:
    asyncio.run(
        rattler.install(
            records,
            target_prefix=prefix,
            cache_dir=cache / "pkgs",
            show_progress=False,
            alternative_target_prefix=final,
        )
    )


def clean_env() -> dict[str, str]:
    """A minimal environment: nothing that could point Python elsewhere."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
    }
    return env


def run(argv: list[str], **kw) -> str:  # noqa: ANN003
    kw.setdefault("env", clean_env())
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def channel() -> Path:
    return build_channel.ensure_channel()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("channel-test")


@pytest.fixture(scope="module")
def env(channel: Path, work: Path) -> Path:
    prefix = work / "env"
    records = solve(channel, ENV_SPECS, work)
    install(records, prefix, work)
    return prefix


# --------------------------------------------------------------------------
# the channel itself


def test_channel_layout(channel: Path) -> None:
    assert (channel / "linux-64" / "repodata.json").is_file()
    assert (channel / "noarch" / "repodata.json").is_file()
    names = {p.name for p in channel.glob("*/*.conda")}
    prefixes = [
        "cpkgs-test-lib-1.0-",
        "cpkgs-test-lib-1.1-",
        "cpkgs-test-lib-2.0-",
        "cpkgs-test-mid-1.0-",
        "cpkgs-test-app-1.0-",
        "cpkgs-test-textprefix-1.0-",
        "cpkgs-test-binprefix-1.0-",
        "cpkgs-test-activate-1.0-",
        "python-",
        "pip-",
        "ipykernel-",
    ]
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in names), (prefix, sorted(names))
    assert not list(channel.glob("*/*.tar.bz2"))
    # Cached: a second call returns the same directory without building.
    assert build_channel.ensure_channel() == channel


def _paths_entry(channel: Path, pkg_glob: str, relpath: str):  # noqa: ANN202
    (archive,) = channel.glob(pkg_glob)
    paths = rattler.PathsJson.from_package_archive(archive)
    (entry,) = [e for e in paths.paths if str(e.relative_path) == relpath]
    return entry


def test_prefix_placeholders_recorded(channel: Path) -> None:
    text = _paths_entry(channel, "noarch/cpkgs-test-textprefix-*.conda", "bin/cpkgs-test-textprefix")
    assert text.prefix_placeholder is not None
    assert str(text.prefix_placeholder.file_mode) == str(rattler.FileMode("text"))
    binary = _paths_entry(channel, "linux-64/cpkgs-test-binprefix-*.conda", "bin/cpkgs-test-binprefix")
    assert binary.prefix_placeholder is not None
    assert str(binary.prefix_placeholder.file_mode) == str(rattler.FileMode("binary"))


# --------------------------------------------------------------------------
# an environment installed from it


def test_python_runs_from_env(env: Path) -> None:
    out = run([str(env / "bin" / "python"), "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"])
    assert out.split() == [str(env), str(env)]
    out = run([str(env / "bin" / "python"), "-m", "pip", "--version"])
    assert str(env / "lib") in out
    # The pieces of the stdlib that pip, venv and friends need.
    run([str(env / "bin" / "python"), "-c", "import ssl, sqlite3, ctypes, venv, ensurepip, sysconfig, zlib"])


def test_python_does_not_touch_its_origin(env: Path) -> None:
    """Nothing of the interpreter the package was made from is used."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    origin = os.path.realpath(sys.base_prefix)
    log = env.parent / "strace.log"
    run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=file",
            "-o",
            str(log),
            str(env / "bin" / "python"),
            "-c",
            "import ssl, sqlite3, ctypes, json, sysconfig; sysconfig.get_config_vars(); import pip",
        ]
    )
    hits = [line for line in log.read_text().splitlines() if origin in line]
    assert not hits, hits[:10]
    config = run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_config_vars())"])
    assert origin not in config
    assert str(env) in config


def test_ipykernel_importable(env: Path) -> None:
    out = run([str(env / "bin" / "python"), "-c", "import ipykernel, IPython; print(ipykernel.__file__)"])
    assert out.startswith(str(env / "lib"))
    assert (env / "share" / "jupyter" / "kernels" / "python3" / "kernel.json").is_file()


def test_kernel_executes_code(env: Path, work: Path) -> None:
    """pyzmq, tornado & co. work after relocation: a kernel runs code."""
    code = """
import sys
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
try:
    out = []
    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
    reply = kc.execute_interactive("import sys; print(sys.prefix)", output_hook=hook, timeout=60)
    assert reply["content"]["status"] == "ok", reply
    print("".join(out).strip())
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""
    env_vars = clean_env()
    env_vars["JUPYTER_RUNTIME_DIR"] = str(work / "jupyter-runtime")
    env_vars["IPYTHONDIR"] = str(work / "ipython")
    env_vars["JUPYTER_PATH"] = str(env / "share" / "jupyter")
    out = run([str(env / "bin" / "python"), "-c", code], env=env_vars)
    assert out.strip().splitlines()[-1] == str(env)


def test_venv_from_env_python(env: Path, work: Path) -> None:
    venv = work / "venv"
    run([str(env / "bin" / "python"), "-m", "venv", "--without-pip", str(venv)])
    out = run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix, sys.base_prefix)"])
    assert out.split() == [str(venv), str(env)]


def test_dependency_chain(env: Path) -> None:
    assert run([str(env / "bin" / "cpkgs-test-app")]).strip() == "app ok"
    assert (env / "share" / "cpkgs-test-mid" / "README").is_file()
    # The highest cpkgs-test-lib was picked.
    assert (env / "share" / "cpkgs-test-lib" / "VERSION").read_text().strip() == "2.0"
    assert run([str(env / "bin" / "cpkgs-test-lib-version")]).strip() == "2.0"
    records = {p.name for p in (env / "conda-meta").glob("*.json")}
    assert any(n.startswith("cpkgs-test-lib-2.0-") for n in records), records


def test_unsatisfiable_lib_pin(channel: Path, work: Path) -> None:
    # app -> mid -> lib >=1.1, so lib 1.0 cannot go with app ...
    # (solve() parses string specs strictly: "cpkgs-test-lib 1.0" is rejected
    # as ambiguous, hence "==1.0".)
    from rattler.exceptions import SolverError

    with pytest.raises(SolverError) as info:
        solve(channel, ["cpkgs-test-app", "cpkgs-test-lib ==1.0"], work)
    assert "cpkgs-test-lib" in str(info.value)
    # ... while lib 1.1 can, and lib 1.0 alone can.
    names = {
        (r.name.normalized, str(r.version)) for r in solve(channel, ["cpkgs-test-app", "cpkgs-test-lib ==1.1"], work)
    }
    assert ("cpkgs-test-lib", "1.1") in names
    names = {(r.name.normalized, str(r.version)) for r in solve(channel, ["cpkgs-test-lib ==1.0"], work)}
    assert names == {("cpkgs-test-lib", "1.0")}


def test_prefix_replacement(env: Path) -> None:
    assert run([str(env / "bin" / "cpkgs-test-textprefix")]).strip() == str(env)
    assert run([str(env / "bin" / "cpkgs-test-binprefix")]).strip() == str(env)


def test_activation_scripts(env: Path) -> None:
    act = env / "etc" / "conda" / "activate.d" / "cpkgs-test-activate.sh"
    deact = env / "etc" / "conda" / "deactivate.d" / "cpkgs-test-activate.sh"
    assert (env / "etc" / "conda" / "activate.d" / "cpkgs-test-activate.csh").is_file()
    assert (env / "etc" / "conda" / "deactivate.d" / "cpkgs-test-activate.csh").is_file()
    script = (
        f'export CONDA_PREFIX="{env}"; . "{act}"; '
        'echo "$CPKGS_TEST_ACTIVATED|$CPKGS_TEST_ACT_PREFIX"; '
        f'. "{deact}"; echo "${{CPKGS_TEST_ACTIVATED-unset}}|${{CPKGS_TEST_ACT_PREFIX-unset}}"'
    )
    out = run(["bash", "-c", script]).splitlines()
    assert out == [f"yes|{env}", "unset|unset"]
    tcsh = shutil.which("tcsh") or shutil.which("csh")
    if tcsh:
        csh_act = act.with_suffix(".csh")
        csh_deact = deact.with_suffix(".csh")
        script = (
            f'setenv CONDA_PREFIX "{env}"; source "{csh_act}"; '
            'echo "${CPKGS_TEST_ACTIVATED}|${CPKGS_TEST_ACT_PREFIX}"; '
            f'source "{csh_deact}"; if ( ! $?CPKGS_TEST_ACTIVATED ) echo gone'
        )
        out = run([tcsh, "-f", "-c", script]).splitlines()
        assert out == [f"yes|{env}", "gone"]


# --------------------------------------------------------------------------
# staged install, the way cpkgs publishes environments


def test_staged_install_then_rename(channel: Path, work: Path) -> None:
    staging = work / "envs" / ".staging-demo-1"
    final = work / "envs" / "demo-1"
    staging.parent.mkdir(parents=True)
    records = solve(channel, ENV_SPECS, work)
    install(records, staging, work, final=final)
    # Everything names the final prefix, nothing the staging one.
    assert run([str(staging / "bin" / "cpkgs-test-textprefix")]).strip() == str(final)
    assert run([str(staging / "bin" / "cpkgs-test-binprefix")]).strip() == str(final)
    os.rename(staging, final)
    assert run([str(final / "bin" / "cpkgs-test-textprefix")]).strip() == str(final)
    assert run([str(final / "bin" / "cpkgs-test-binprefix")]).strip() == str(final)
    out = run([str(final / "bin" / "python"), "-c", "import sys, ipykernel; print(sys.prefix)"])
    assert out.strip() == str(final)
    run([str(final / "bin" / "python"), "-m", "pip", "--version"])
    pip_script = (final / "bin" / "pip").read_text().splitlines()[0]
    assert pip_script.startswith(f"#!{final}/bin/python"), pip_script
    run([str(final / "bin" / "pip"), "--version"])
    # No file names the staging directory.
    needle = str(staging).encode()
    named = [p for p in final.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]
    assert not named, named[:10]
