"""Benchmark of the pip part's install step (cpkgs_admin.pipeline.pypi.install.install_pip) against bare uv and plain pip.

Target (issue 15): the install step <= 1.2 x a bare `uv pip install --require-hashes --no-deps` of the same locked
set into a fresh env of the same python, same uv cache, alternating runs, median of 5. The headline compares like
with like: both hard-link from uv's cache (bare uv's default on Linux; install_pip's when uv's cache is admin-only).
With copies (install_pip's default) the figure beside it compares against bare uv copying too.

The locked set: every package of the test wheelhouse a python + pip env does not already hold (~30 wheels, pure
and binary, ~8 MiB), locked once with lock_pip. Each timed run installs into a fresh env (a real conda env staged
from the test channel with py-rattler, not timed):
- cpkgs: install_pip in this process (the clobber check against conda-meta, uv installing from the wheel store
  with --link-mode copy, the scripts re-headed for the final prefix and their RECORD lines rewritten,
  REQUESTED/direct_url.json); also shown with hard links (what an admin-only uv cache would allow).
- uv: `uv pip install --no-config --python PY --require-hashes --no-deps --no-index --find-links DIR -r LOCK`, its
  default link mode (hard links into the cache on Linux); also with --link-mode copy, to separate what copying
  costs from what cpkgs adds.
- pip: `PY -m pip install --isolated --no-deps --require-hashes --no-index --find-links DIR -r LOCK` (pip's
  defaults: it byte-compiles).
uv's cache is warm for all (one untimed run of each first).

Run: .venv/bin/python bench/bench_pip.py [--runs N]    (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET = 1.2
ENV_SPECS = ["python", "pip"]


def wheelhouse() -> Path:
    sys.path.insert(0, str(C.REPO / "tests" / "wheelhouse"))
    try:
        from build_wheelhouse import ensure_wheelhouse  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return Path(ensure_wheelhouse()) / "wheels"


class Envs:
    """Fresh staged envs of one solve (python + pip from the test channel), files copied as new-env does."""

    def __init__(self, channel: Path, root: Path) -> None:
        from cpkgs_admin.pipeline.solve import solve, virtual_packages
        from cpkgs_admin.site.channels import Source

        self.records = solve([Source(channel.as_uri(), channel.as_uri())], ENV_SPECS, "linux-64", virtual_packages("linux-64", {}))
        self.root = root
        self.cache = root / "rattler-cache"

    def fresh(self, name: str) -> tuple[Path, Path]:
        from rattler import Config, install

        envs = self.root / "envs"
        envs.mkdir(parents=True, exist_ok=True)
        final = envs / name
        staging = envs / f".staging-{name}@{uuid.uuid4().hex[:12]}"
        asyncio.run(install(self.records, target_prefix=staging, cache_dir=self.cache,
                            alternative_target_prefix=final, config=Config.from_toml("allow-hard-links = false\n")))
        (staging / "CACHEDIR.TAG").unlink(missing_ok=True)
        return staging, final


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from uv import find_uv_bin

    from cpkgs_admin.pipeline.pypi.bytecode import compile_pip_part
    from cpkgs_admin.pipeline.pypi.install import install_pip
    from cpkgs_admin.pipeline.pypi.inventory import EnvInventory
    from cpkgs_admin.pipeline.pypi.requirements import parse_pip_section
    from cpkgs_admin.pipeline.pypi.resolve import lock_pip
    from cpkgs_admin.pipeline.pypi.store import WheelStore
    from cpkgs_admin.pipeline.pypi.target import python_platform, target_for_prefix
    from cpkgs_admin.pipeline.solve import virtual_packages
    from cpkgs_admin.site.pypi_config import PypiConfig

    platform = python_platform("linux-64", {v.name.normalized: str(v.version) for v in virtual_packages("linux-64", {})})

    def target_python(staging: Path, final: Path):  # type: ignore[no-untyped-def]
        return target_for_prefix(staging, final, platform, native=True)

    C.log("pip bench: preparing the test channel, the test wheelhouse and a locked set ...")
    channel = C.channel_dir()
    wheels = wheelhouse()
    machine = C.print_machine()
    load_before = os.getloadavg()
    with C.temp_dir("pip") as tmp:
        envs = Envs(channel, tmp)
        uv_cache = tmp / "uv-cache"
        store = WheelStore(tmp / "wheel-store")
        staging, final = envs.fresh("lock-1.0")
        target = target_python(staging, final)
        provided = {d.name for d in EnvInventory(staging).distributions.values()}
        from packaging.utils import parse_wheel_filename

        wanted = sorted({str(parse_wheel_filename(w.name)[0]) for w in wheels.glob("*.whl")
                         if not w.name.startswith(("cpkgs_", "pygments-2.19", "packaging-25"))
                         and "macosx" not in w.name} - provided)
        spec = tmp / "spec.yml"
        spec.write_text("dependencies: [python, pip]\n")
        lock = lock_pip(parse_pip_section(wanted, spec), target, PypiConfig(index_url=None, find_links=(str(wheels),)),
                        store=store, cache_dir=uv_cache, work_dir=tmp / "lock-work")
        n_bytes = sum(p.stat().st_size for p in lock.wheels.values())
        links = tmp / "locked-wheels"
        links.mkdir()
        for p in lock.wheels.values():
            os.symlink(p, links / p.name)
        locked = tmp / "locked.txt"
        locked.write_text("".join(f"{p.name}=={p.version} --hash=sha256:{p.sha256}\n" for p in lock.packages))
        uv = find_uv_bin()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}

        def run_cpkgs(i: int, hard_links: bool = False, compile_: bool = False) -> float:
            s, f = envs.fresh(f"cpkgs{'-hl' if hard_links else ''}{'-c' if compile_ else ''}-{i}-1.0")
            t = target_python(s, f)
            inv = EnvInventory(s)
            t0 = time.perf_counter()
            installed = install_pip(lock, t, cache_dir=uv_cache, work_dir=tmp / f"work-{uuid.uuid4().hex[:8]}",
                                    hard_links=hard_links, inventory=inv)
            if compile_:
                compile_pip_part(t, installed)
            return time.perf_counter() - t0

        def run_uv(i: int, copy: bool = False, compile_: bool = False) -> float:
            s, _f = envs.fresh(f"uv{'-copy' if copy else ''}{'-c' if compile_ else ''}-{i}-1.0")
            return C.timed([uv, "pip", "install", "--no-config", "--python", str(s / "bin" / "python"),
                            "--require-hashes", "--no-deps", "--no-index", "--find-links", str(links), "-r",
                            str(locked), "--cache-dir", str(uv_cache), "-q",
                            *(["--link-mode", "copy"] if copy else []),
                            *(["--compile-bytecode"] if compile_ else [])], env=env)[0]

        def run_pip(i: int) -> float:
            s, _f = envs.fresh(f"pip-{i}-1.0")
            return C.timed([str(s / "bin" / "python"), "-m", "pip", "install", "--isolated", "--no-deps",
                            "--require-hashes", "--no-index", "--find-links", str(links), "-r", str(locked),
                            "-q", "--disable-pip-version-check"], env=env)[0]

        tools = {"cpkgs": run_cpkgs, "uv": run_uv, "cpkgs-hardlink": lambda i: run_cpkgs(i, True),
                 "uv-copy": lambda i: run_uv(i, True), "pip": run_pip,
                 # The pipeline's whole pip step: hard links from the admin-only cache, then byte code for the final
                 # prefix; beside it uv's own --compile-bytecode (which compiles all of site-packages: conda's pip
                 # package too, about a third more files).
                 "cpkgs-step": lambda i: run_cpkgs(i, True, True), "uv-compile": lambda i: run_uv(i, False, True)}
        for name, fn in tools.items():  # warm uv's cache and the page cache; not timed
            fn(-1 if name != "pip" else -2)
        times: dict[str, list[float]] = {k: [] for k in tools}
        for i in range(args.runs):
            for k in (list(tools) if i % 2 == 0 else list(tools)[::-1]):
                C.drop_writeback()
                times[k].append(tools[k](i))
    load_after = os.getloadavg()
    med = {k: C.median(v) for k, v in times.items()}
    # Like for like: bare uv hard-links from its cache by default; so does install_pip when the pipeline finds uv's
    # cache as admin-only as the conda one (pipeline.plan.cache_is_admin_only), else it copies (the second figure).
    ratio = med["cpkgs-hardlink"] / med["uv"]
    print(f"pip part: {len(lock.packages)} locked wheels, {n_bytes / 2**20:.1f} MiB, into a fresh python+pip env; "
          f"median of {args.runs} alternating runs")
    print(f"  load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} (nproc {os.cpu_count()})")
    for k, label in (("cpkgs-hardlink", "cpkgs install_pip (hard links)"), ("uv", "bare uv pip install"),
                     ("cpkgs", "cpkgs install_pip (copies)"), ("uv-copy", "bare uv pip install, copies"),
                     ("cpkgs-step", "cpkgs pip step (+ byte code)"), ("uv-compile", "uv --compile-bytecode"),
                     ("pip", "plain pip install")):
        print(f"  {label:32s} {med[k]:.3f} s  runs {C.fmt_runs(times[k])}")
    print(f"  ratio cpkgs / bare uv, both hard-linking from the same cache: {ratio:.2f}  (target <= {TARGET}: "
          f"{'PASS' if ratio <= TARGET else 'MISS'})")
    print(f"  cpkgs copying / bare uv copying {med['cpkgs'] / med['uv-copy']:.2f}; cpkgs copying / bare uv (hard "
          f"links) {med['cpkgs'] / med['uv']:.2f}; plain pip / bare uv {med['pip'] / med['uv']:.2f}")
    print(f"  with byte code: cpkgs pip step / uv --compile-bytecode {med['cpkgs-step'] / med['uv-compile']:.2f}; "
          f"plain pip (compiles) / cpkgs pip step {med['pip'] / med['cpkgs-step']:.2f}")
    C.final_json("pip", {
        "runs": args.runs,
        "packages": len(lock.packages),
        "wheel_bytes": n_bytes,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio": round(ratio, 3),
        "ratio_both_copy": round(med["cpkgs"] / med["uv-copy"], 3),
        "ratio_copy_vs_uv_default": round(med["cpkgs"] / med["uv"], 3),
        "ratio_pip": round(med["pip"] / med["uv"], 3),
        "ratio_step_vs_uv_compile": round(med["cpkgs-step"] / med["uv-compile"], 3),
        "ratio_pip_vs_step": round(med["pip"] / med["cpkgs-step"], 3),
        "target": TARGET,
        "pass": ratio <= TARGET,
        "runs_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "machine": machine,
    })


if __name__ == "__main__":
    main()
