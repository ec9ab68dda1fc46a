"""Benchmark of issue 17 §1: cpkgs from the tool on the share ÷ the same cpkgs from a local `pip install`.

Target: `cpkgs --help` and `cpkgs list` from the tool (`<root>/anaconda3_linux/cpkgs-tool/bin/cpkgs`, installed by
`cpkgs install-tool` from this checkout) take at most 1.3x the time of the same cpkgs wheel pip-installed into a
fresh venv on local disk, with the same dependency versions. Here both are on local disk; the NFS figure comes from
the `tool` scenario of `make test-nfs` (nfs/scenarios/run.py).

The site: the local test channel, demo-1.0 (python + an app) and N-1 more env records (copies of its record, as in
bench_list.py), the tool wheelhouse (tests/wheelhouse/build_wheelhouse.py) as the site's `pypi:` find_links. The
local install gets the cpkgs wheel the tool was built from (from the site's wheel store) and the same wheels;
pip byte-compiles it at install, as a user's `pip install` does. Timed: medians of RUNS alternating runs (tool,
local, tool, ...) after one untimed warm-up of each, with CPKGS_ROOT set as the profile sets it. Printed with the
runs, the CPU count and the load average before and after; and, for the tool, the file system calls on the tool's
tree per run (strace), with how many of them failed: no `.pyc` is missing, nothing is written.

Run: .venv/bin/python bench/bench_tool.py [--runs N] [--envs N]    (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from bench_list import fill_records

TARGET = 1.3


def tool_wheels() -> tuple[Path, list[str]]:
    """The tool wheelhouse's find-links dir, and the dependency pins install-tool uses (the running versions)."""
    sys.path.insert(0, str(C.REPO / "tests" / "wheelhouse"))
    try:
        from build_wheelhouse import ensure_tool_wheels, tool_requirements  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return Path(ensure_tool_wheels()) / "wheels", list(tool_requirements("linux-64"))


def set_pypi(root: Path, wheels: Path) -> None:
    cfg = root / "cpkgs.yaml"
    text = re.sub(r"(?ms)^pypi:.*?(?=^\S|\Z)", "", cfg.read_text())  # init writes the site's own section
    cfg.write_text(text + f"pypi:\n  index_url: null\n  find_links:\n    - {wheels}\n")


def local_install(tmp: Path, root: Path, wheels: Path, pins: list[str]) -> Path:
    """A fresh venv on local disk with the tool's cpkgs wheel and the same dependency versions (pip install)."""
    found = sorted((root / ".cpkgs").rglob("cpkgs-*.whl"))
    if not found:
        raise SystemExit(f"no cpkgs wheel in {root}/.cpkgs (the site's wheel store)")
    whl = found[0]
    venv = tmp / "local-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (tmp / "pins.txt").write_text("\n".join(pins) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                    str(wheels), "--constraint", str(tmp / "pins.txt"), str(whl)], check=True, env=env)
    return venv / "bin" / "cpkgs"


def alternate(a: list[str], b: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    C.timed(a, env=env)
    C.timed(b, env=env)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(C.timed(a, env=env)[0])
        tb.append(C.timed(b, env=env)[0])
    return ta, tb


def strace_tool(cmd: list[str], env: dict[str, str], tree: Path, tmp: Path) -> tuple[int, int, int]:
    """(file syscalls on TREE, of which failed, of which would write) for one run of CMD."""
    out = tmp / "strace.out"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(out), *cmd], env=env, check=True,
                   capture_output=True)
    lines = [ln for ln in out.read_text().splitlines() if f'"{tree}' in ln]
    failed = sum(1 for ln in lines if re.search(r"= -1 E", ln))
    writes = sum(1 for ln in lines if re.search(r"O_WRONLY|O_RDWR|O_CREAT|\bmkdir", ln))
    return len(lines), failed, writes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "30")))
    ap.add_argument("--envs", type=int, default=50)
    args = ap.parse_args()
    C.print_machine()
    channel = C.channel_dir()
    wheels, pins = tool_wheels()
    with C.temp_dir("tool") as tmp:
        root = C.make_site(tmp / "site", channel)
        set_pypi(root, wheels)
        C.cpkgs(root, "new-env", "demo-1.0", "python", "cpkgs-test-app")
        fill_records(root, root / ".cpkgs" / "records" / "linux-64" / "demo-1.0.json", args.envs)
        dt, _ = C.timed([C.CPKGS, "--root", str(root), "install-tool"])
        tool = root / "anaconda3_linux" / "cpkgs-tool" / "bin" / "cpkgs"
        local = local_install(tmp, root, wheels, pins)
        home = Path(tempfile.mkdtemp(prefix="home-", dir=tmp))
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LC_ALL": "C.UTF-8",
               "CPKGS_ROOT": str(root)}
        load_before = os.getloadavg()[0]
        print(f"\n# cpkgs from the tool on the share vs a local pip install (local disk {C.machine()['tmp_fs']}); "
              f"install-tool took {dt:.1f}s; {args.envs} envs; medians of {args.runs} alternating runs")
        print("| command | tool on the share | local pip install | ratio |")
        print("|---|---|---|---|")
        ratios = {}
        for name, cmd in (("cpkgs --help", ["--help"]), ("cpkgs list", ["list"])):
            ta, tb = alternate([str(tool), *cmd], [str(local), *cmd], env, args.runs)
            ratios[name] = C.median(ta) / C.median(tb)
            print(f"| `{name}` | {C.median(ta) * 1e3:.1f} ms | {C.median(tb) * 1e3:.1f} ms | {ratios[name]:.2f} |")
        load_after = os.getloadavg()[0]
        print(f"(runs: {args.runs} each; {os.cpu_count()} CPUs; load average {load_before:.2f} before, "
              f"{load_after:.2f} after)")
        if shutil.which("strace"):
            tree = tool.resolve().parent.parent
            for name, cmd in (("cpkgs --help", ["--help"]), ("cpkgs list", ["list"])):
                n, failed, writes = strace_tool([str(tool), *cmd], env, tree, tmp)
                print(f"`{name}` from the tool: {n} file syscalls on its tree, {failed} failed, {writes} writes")
        ok = all(r <= TARGET for r in ratios.values())
        C.final_json("tool", {"ratios": ratios, "runs": args.runs, "envs": args.envs, "install_seconds": dt,
                              "load": [load_before, load_after], "ok": ok})
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
