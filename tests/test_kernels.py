"""Jupyter kernelspecs: real jupyter_client (KernelSpecManager with JUPYTER_PATH) starting the env's real ipykernel.

The tests in this module share one site and run in file order: the last one retires and removes the env.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import ENVS, LINUX, make_site, run_cpkgs, world_traversable


@pytest.fixture(scope="module")
def nb_site(tmp_path_factory: pytest.TempPathFactory, channel_url: str) -> Path:
    root = make_site(tmp_path_factory.mktemp("kernels") / "site", channel_url)
    r = run_cpkgs("new-env", "NB-1.0", "python", "ipykernel", "cpkgs-test-activate", root=root)
    assert r.returncode == 0, r
    world_traversable(root)
    return root


def _spec(root: Path, kernel: str) -> dict:  # type: ignore[type-arg]
    return json.loads((root / "share" / "jupyter" / "kernels" / kernel / "kernel.json").read_text())


def test_two_kernelspecs_with_absolute_python_and_activation_env(nb_site: Path) -> None:
    prefix = nb_site / ENVS / "NB-1.0"
    plain, user = _spec(nb_site, "nb-1.0"), _spec(nb_site, "nb-1.0-usersite")  # kernel names are lowercase
    assert plain["argv"] == [f"{prefix}/bin/python", "-s", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert user["argv"] == [f"{prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert plain["display_name"] == "NB-1.0" and user["display_name"] == "NB-1.0 (user site)"
    for spec in (plain, user):
        env = spec["env"]
        assert env["PATH"] == f"{prefix}/bin:${{PATH}}"
        assert env["CONDA_PREFIX"] == str(prefix)
        assert env["CPKGS_TEST_ACTIVATED"] == "yes" and env["CPKGS_TEST_ACT_PREFIX"] == str(prefix)
        assert spec["language"] == "python"
    assert plain["env"]["PYTHONNOUSERSITE"] == "1" and "PYTHONNOUSERSITE" not in user["env"]


def test_kernelspec_manager_finds_them_via_jupyter_path(nb_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    monkeypatch.setenv("JUPYTER_PATH", str(nb_site / "share" / "jupyter"))
    specs = KernelSpecManager().get_all_specs()
    assert {"nb-1.0", "nb-1.0-usersite"} <= set(specs)
    assert specs["nb-1.0"]["spec"]["display_name"] == "NB-1.0"


def _run_in_kernels(kernels: list[str], code: str) -> dict[str, str]:
    """Start all KERNELS first (each start imports IPython from source: seconds), then run CODE in each."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    ksm = KernelSpecManager()
    kms = {k: KernelManager(kernel_name=k, kernel_spec_manager=ksm) for k in kernels}
    results: dict[str, str] = {}
    try:
        for km in kms.values():
            km.start_kernel()
        for k, km in kms.items():
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=90)
            out: list[str] = []

            def hook(msg: dict, out: list[str] = out) -> None:  # type: ignore[type-arg]
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    out.append("ERROR " + msg["content"]["ename"] + ": " + msg["content"]["evalue"])

            reply = kc.execute_interactive(code, output_hook=hook, timeout=60)
            kc.stop_channels()
            assert reply["content"]["status"] == "ok", out
            results[k] = "".join(out)
    finally:
        for km in kms.values():
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return results


CODE = (
    "import os, sys\n"
    "print('PREFIX=' + sys.prefix)\n"
    "print('ACT=' + os.environ.get('CPKGS_TEST_ACTIVATED', '-'))\n"
    "print('NOUSERSITE=%d' % sys.flags.no_user_site)\n"
    "print('HIST=' + str(get_ipython().history_manager.hist_file))\n"
    "print('PATH0=' + os.environ['PATH'].split(':')[0])\n"
)


def test_kernels_start_with_the_env_python_and_activation(nb_site: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = nb_site / ENVS / "NB-1.0"
    monkeypatch.setenv("JUPYTER_PATH", str(nb_site / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    outputs = _run_in_kernels(["nb-1.0", "nb-1.0-usersite"], CODE)
    for kernel, no_user_site in (("nb-1.0", 1), ("nb-1.0-usersite", 0)):
        lines = dict(line.split("=", 1) for line in outputs[kernel].splitlines() if "=" in line)
        assert lines["PREFIX"] == str(prefix)
        assert lines["ACT"] == "yes"
        assert lines["NOUSERSITE"] == str(no_user_site)
        assert lines["PATH0"] == f"{prefix}/bin"
        # The kernel's IPython reads the env's etc/ipython config too: history on local disk, not on the site.
        assert lines["HIST"] == f"{xdg}/cpkgs/ipython/history.sqlite"


def test_env_without_ipykernel_has_no_kernel(built_site: Path) -> None:
    kernels = built_site / "share" / "jupyter" / "kernels"
    assert not list(kernels.glob("demo-*")) and not list(kernels.glob("tools-*"))


def test_refresh_restores_kernels_and_keeps_foreign_ones(nb_site: Path) -> None:
    kernels = nb_site / "share" / "jupyter" / "kernels"
    before = (kernels / "nb-1.0" / "kernel.json").read_text()
    shutil.rmtree(kernels / "nb-1.0")
    (kernels / "nb-1.0-usersite" / "kernel.json").write_text("{}")
    foreign = kernels / "site-r"
    foreign.mkdir()
    (foreign / "kernel.json").write_text('{"argv": ["R"], "display_name": "R", "language": "R"}')
    r = run_cpkgs("refresh", root=nb_site)
    assert r.returncode == 0, r
    assert f"wrote {kernels}/nb-1.0/kernel.json" in r.stdout
    assert f"wrote {kernels}/nb-1.0-usersite/kernel.json" in r.stdout
    assert (kernels / "nb-1.0" / "kernel.json").read_text() == before
    assert (foreign / "kernel.json").exists()
    r = run_cpkgs("refresh", root=nb_site)
    assert r.returncode == 0 and "everything is up to date" in r.stdout, r
    shutil.rmtree(foreign)


def test_retired_kernel_says_so_and_removed_env_loses_its_kernels(nb_site: Path) -> None:
    """Last in this module: changes the shared site."""
    r = run_cpkgs("new-env", "tools-1.0", "cpkgs-test-app", root=nb_site)
    assert r.returncode == 0, r
    r = run_cpkgs("retire", "NB-1.0", "--successor", "tools-1.0", root=nb_site)
    assert r.returncode == 0, r
    assert _spec(nb_site, "nb-1.0")["display_name"] == "NB-1.0 (retired)"
    assert _spec(nb_site, "nb-1.0-usersite")["display_name"] == "NB-1.0 (user site) (retired)"
    assert _spec(nb_site, "nb-1.0")["metadata"]["cpkgs"]["successor"] == "tools-1.0"
    r = run_cpkgs("remove", "NB-1.0", root=nb_site)
    assert r.returncode == 0, r
    kernels = nb_site / "share" / "jupyter" / "kernels"
    assert not (kernels / "nb-1.0").exists() and not (kernels / "nb-1.0-usersite").exists()
    assert os.listdir(kernels) == []


def test_kernels_of_a_non_primary_platform_live_under_its_installation(
    tmp_path: Path, channel_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a site whose first (primary) platform is osx-arm64, a linux-64 env's kernels go under anaconda3_linux
    (what conda.sh puts on JUPYTER_PATH on Linux hosts), not into the macOS hosts' <root>/share/jupyter."""
    from jupyter_client.kernelspec import KernelSpecManager

    root = make_site(tmp_path / "site", channel_url, "--platform", "osx-arm64", "--platform", "linux-64")
    r = run_cpkgs("new-env", "nb-1.0", "python", "ipykernel", root=root)
    assert r.returncode == 0, r
    mine = root / LINUX / "share" / "jupyter"
    spec = json.loads((mine / "kernels" / "nb-1.0" / "kernel.json").read_text())
    assert spec["argv"][0] == f"{root / ENVS / 'nb-1.0'}/bin/python"
    assert (mine / "kernels" / "nb-1.0-usersite" / "kernel.json").is_file()
    assert os.listdir(root / "share" / "jupyter" / "kernels") == []
    assert (root / LINUX / "modulefiles" / "nb" / "1.0.lua").is_file()
    assert not (root / "modulefiles" / "nb").exists()
    monkeypatch.setenv("JUPYTER_PATH", str(mine))
    assert {"nb-1.0", "nb-1.0-usersite"} <= set(KernelSpecManager().get_all_specs())
    monkeypatch.setenv("JUPYTER_PATH", str(root / "share" / "jupyter"))
    assert not {"nb-1.0", "nb-1.0-usersite"} & set(KernelSpecManager().get_all_specs())
    r = run_cpkgs("remove", "nb-1.0", root=root)
    assert r.returncode == 0, r
    assert os.listdir(mine / "kernels") == []
