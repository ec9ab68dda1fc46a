"""Benchmark 1 of issue 3: `cpkgs new-env` wall time / a bare py-rattler solve+install of the same specs.

Target (issue 3): median ratio <= 1.2 against the bare solve+install.

Fairness:
- Same channel (the local file:// test channel), same specs, same machine and disk: the cpkgs site, the bare
  prefixes and both package caches live in one temporary directory.
- Both sides are whole processes: `cpkgs ... new-env NAME SPECS --json` (interpreter start, imports, locks, solve,
  install, post-process, verify, seal, publish) versus `python -c <import rattler; solve; install>`.
- Each side has its own package cache (cpkgs: <root>/.cpkgs/pkgs, bare: <tmp>/bare-cache, both also caching repodata
  there) warmed by one untimed run, so every timed run links from a warm cache and a warm page cache.
- A fresh target prefix every run (a new env name for cpkgs, a new directory for bare), removed after the run,
  `sync` before each timed run so nobody pays for the previous run's writeback.
- Alternating runs: each round runs the three variants in a rotated order; median of 5 rounds.
- cpkgs hard-links from its admin-only site cache (copies when anyone else could write it) and copies files whose
  prefix it patches; the headline is against rattler's default (hard links where possible); the copy-only bare
  run (`allow-hard-links = false`, `allow-symbolic-links = false`) is reported for comparison.
- cpkgs' warm-up run also fills its hash memo (new-env does not re-read cache inodes it has hashed before), as the
  second build on a site would.
- A fourth variant, "bare + CLI stack", is the bare script importing first what any cpkgs command must (click,
  pyyaml, filelock, psutil: the libraries the brief names) and doing nothing with them: the floor of the ratio for
  a CLI on that stack, before any of cpkgs' own work. Reported for comparison, not part of the headline.
- `--bulk N` adds N generated packages of 2,000 files each (another channel, bench/_bulk_channel.py): how the
  ratio moves with an env's file count (production envs hold tens of thousands of files).
- `--specs` builds another env (e.g. `--specs python ipykernel cpkgs-test-app`, ~9,200 files).

Run: .venv/bin/python bench/bench_new_env.py [--runs N] [--specs SPEC...] [--bulk N]    (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET = 1.2

# The bare solve+install, run as its own process like the cpkgs CLI. Prints its in-process phase times as JSON.
BARE = r"""
import asyncio, json, sys, time
t0 = time.perf_counter()
if sys.argv[5] == "1":
    import click, filelock, psutil, yaml
t_stack = time.perf_counter()
from rattler import Channel, Config, Gateway, Platform, VirtualPackage, install, solve
channel, cache, prefix, copy_only = sys.argv[1:5]
specs = sys.argv[6:]
t_import = time.perf_counter()
out = {}
async def main():
    t = time.perf_counter()
    records = await solve(
        sources=[Channel(c) for c in channel.split(",")],
        specs=specs,
        gateway=Gateway(cache_dir=cache + "/repodata"),
        platforms=[str(Platform.current()), "noarch"],
        virtual_packages=VirtualPackage.detect(),
    )
    out["solve"] = time.perf_counter() - t
    t = time.perf_counter()
    config = Config.from_toml("allow-hard-links = false\nallow-symbolic-links = false\n") if copy_only == "1" else None
    await install(records, target_prefix=prefix, cache_dir=cache, show_progress=False, config=config)
    out["install"] = time.perf_counter() - t
asyncio.run(main())
out["import"] = t_import - t_stack
if sys.argv[5] == "1":
    out["stack"] = t_stack - t0
print(json.dumps(out))
"""

VARIANTS = ("cpkgs", "bare", "bare-copy", "bare-stack")
LABELS = {
    "cpkgs": "cpkgs new-env (whole CLI)",
    "bare": "bare rattler solve+install (default: hard links)",
    "bare-copy": "bare rattler solve+install, copy-only config",
    "bare-stack": "bare + CLI stack imports (click yaml filelock psutil)",
}


class Bench:
    def __init__(self, tmp: Path, channel: Path, specs: list[str], extra: list[Path]) -> None:
        self.specs = specs
        self.tmp = tmp
        self.channel = channel
        self.channels = [channel, *extra]
        self.root = C.make_site(tmp / "site", channel)
        self.bare_dir = tmp / "bare"
        self.bare_dir.mkdir()
        self.bare_cache = tmp / "bare-cache"
        self.n = 0
        self.info: dict[str, Any] = {}

    def run(self, variant: str) -> tuple[float, dict[str, float]]:
        self.n += 1
        C.drop_writeback()
        if variant == "cpkgs":
            name = f"bench-1.{self.n}"
            chans = [a for c in self.channels for a in ("-c", c.as_uri())] if len(self.channels) > 1 else []
            dt, proc = C.timed([C.CPKGS, "--root", str(self.root), "new-env", name, *self.specs, *chans, "--json"])
            res = json.loads(proc.stdout)
            self.info.update(packages=len(res["packages"]), files=res["file_count"], size=res["size"])
            C.rmtree(Path(res["prefix"]))
            return dt, {k: float(v) for k, v in res["timings"].items()}
        prefix = self.bare_dir / f"env-{self.n}"
        copy_only = "1" if variant == "bare-copy" else "0"
        stack = "1" if variant == "bare-stack" else "0"
        dt, proc = C.timed(
            [C.PYTHON, "-c", BARE, ",".join(c.as_uri() for c in self.channels), str(self.bare_cache), str(prefix), copy_only, stack,
             *self.specs],
            retry_crash=2,
            cleanup=lambda: C.rmtree(prefix),
        )
        phases = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        C.rmtree(prefix)
        return dt, phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--specs", nargs="+", default=list(C.SPECS),
                    help="the env to build (default: the standard 5 specs; e.g. python ipykernel for a bigger one)")
    ap.add_argument("--bulk", type=int, metavar="N", default=0,
                    help="add N packages of 2,000 files each from a generated channel (bench/_bulk_channel.py)")
    args = ap.parse_args()
    if not shutil.which(C.CPKGS):
        raise SystemExit(f"{C.CPKGS} not found: run 'make venv' first")
    C.log("new-env bench: preparing the test channel and a fresh site ...")
    channel = C.channel_dir()
    machine = C.print_machine()
    extra: list[Path] = []
    if args.bulk:
        import _bulk_channel

        if not 0 < args.bulk <= _bulk_channel.PACKAGES:
            raise SystemExit(f"--bulk: 1 to {_bulk_channel.PACKAGES}")
        extra = [_bulk_channel.bulk_channel()]
        args.specs = [*args.specs, *_bulk_channel.bulk_specs(args.bulk)]
    with C.temp_dir("new-env") as tmp:
        b = Bench(tmp, channel, args.specs, extra)
        for v in VARIANTS:  # warm both package caches, repodata caches and the page cache; not timed
            b.run(v)
        walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
        phases: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for i in range(args.runs):
            order = VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]
            for v in order:
                dt, ph = b.run(v)
                walls[v].append(dt)
                phases[v].append(ph)
            C.log(f"  round {i + 1}/{args.runs}: " + "  ".join(f"{v} {walls[v][-1]:.3f}s" for v in VARIANTS))
        info = b.info

    med = {v: C.median(walls[v]) for v in VARIANTS}
    ratio = med["cpkgs"] / med["bare"]
    ratio_copy = med["cpkgs"] / med["bare-copy"]
    ratio_floor = med["bare-stack"] / med["bare"]

    def med_phases(v: str) -> dict[str, float]:
        keys = list(phases[v][0])
        return {k: C.median([p.get(k, 0.0) for p in phases[v]]) for k in keys}

    steps = med_phases("cpkgs")
    # Interpreter start, imports, site/config load, locks and JSON output: everything new-env's timings don't cover.
    overhead = C.median([w - sum(p.values()) for w, p in zip(walls["cpkgs"], phases["cpkgs"], strict=True)])
    bare_ph = med_phases("bare")
    copy_ph = med_phases("bare-copy")

    shown = [s for s in args.specs if not s.startswith("cpkgs-bench-bulk-")]
    print(f"new-env: {' '.join(shown)}" + (f" + {args.bulk} bulk packages x 2,000 files" if args.bulk else ""))
    print(f"  {info.get('packages')} packages, {info.get('files')} files, {info.get('size', 0) / 2**20:.1f} MiB; "
          f"median of {args.runs} alternating runs, warm package caches, fresh prefix each run")
    for v in VARIANTS:
        print(f"  {LABELS[v]:52} {med[v]:7.3f} s   runs {C.fmt_runs(walls[v])}")
    print("  cpkgs steps (median): " + "  ".join(f"{k} {s:.3f}" for k, s in steps.items())
          + f"  + process/imports/locks {overhead:.3f} s")
    print("  bare phases (median): " + "  ".join(f"{k} {s:.3f}" for k, s in bare_ph.items()) + " s")
    print("  bare copy-only phases (median): " + "  ".join(f"{k} {s:.3f}" for k, s in copy_ph.items()) + " s")
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"  ratio new-env / bare solve+install:   {ratio:.2f}  (target <= {TARGET}: {verdict})")
    print(f"  ratio new-env / bare copy-only:       {ratio_copy:.2f}  (for comparison)")
    print(f"  ratio bare + CLI stack / bare:        {ratio_floor:.2f}  (the floor for any CLI on that stack)")
    if C.CRASHES:
        print(f"  note: {len(C.CRASHES)} bare py-rattler run(s) crashed at interpreter exit and were rerun "
              f"({', '.join(C.CRASHES)})")
    C.final_json("new-env", {
        "specs": args.specs,
        "runs": args.runs,
        "packages": info.get("packages"),
        "files": info.get("files"),
        "bytes": info.get("size"),
        "cpkgs_s": round(med["cpkgs"], 4),
        "bare_s": round(med["bare"], 4),
        "bare_copy_s": round(med["bare-copy"], 4),
        "ratio": round(ratio, 3),
        "ratio_copy_only": round(ratio_copy, 3),
        "bare_stack_s": round(med["bare-stack"], 4),
        "ratio_stack_floor": round(ratio_floor, 3),
        "target": TARGET,
        "pass": ratio <= TARGET,
        "cpkgs_steps_s": {k: round(s, 4) for k, s in steps.items()},
        "cpkgs_process_overhead_s": round(overhead, 4),
        "bare_phases_s": {k: round(s, 4) for k, s in bare_ph.items()},
        "bare_copy_phases_s": {k: round(s, 4) for k, s in copy_ph.items()},
        "runs_s": {v: [round(x, 4) for x in walls[v]] for v in VARIANTS},
        "bare_crashes_rerun": len(C.CRASHES),
        "machine": machine,
    })


if __name__ == "__main__":
    main()
