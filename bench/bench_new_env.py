"""`cpkgs new-env` wall time / a bare py-rattler solve+install of the same specs (issues 3 and 14).

Targets (issue 14): on a production-size env (`--bulk 20`: ~41k files; `--small 110`: ~44k small files), median
ratio <= 1.2 against the bare solve+install (stretch 1.1); `--dry-run`: `new-env --dry-run` of a one-package env,
whole process, <= 1.3 x a bare `python -c "import rattler; solve"` of the same spec. The standard (toy) env's ratio
is a figure without a target.

Fairness:
- Same channel (the local file:// test channel), same specs, same machine and disk: the cpkgs site, the bare
  prefixes and both package caches live in one temporary directory.
- Both sides are whole processes: `cpkgs ... new-env NAME SPECS --json` (interpreter start, imports, locks, solve,
  install, post-process, verify, seal, publish) versus `python -c <import rattler; solve; install>`.
- Each side has its own package cache (cpkgs: <root>/.cpkgs/pkgs, bare: <tmp>/bare-cache, both also caching repodata
  there) warmed by one untimed run, so every timed run links from a warm cache and a warm page cache.
- A fresh target prefix every run (a new env name for cpkgs, a new directory for bare), removed after the run,
  `sync` before each timed run so nobody pays for the previous run's writeback.
- Alternating runs: each round runs the variants in a rotated order; median of 7 rounds. Every round prints the
  1-minute load average and each variant's wall time; the summary gives each variant's runs, the spread of the
  per-round ratios (min-max) and the load seen (other work on a 2-core machine moves everything), and each
  variant's CPU seconds (user + system of the whole process): with no idle core, wall times follow those.
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
- `--small N` adds N generated packages of 400 small Python-like files each (64 B-8 KiB, median ~720 B, in
  sub-packages of 16 modules): production envs are mostly small .py files, where per-file work weighs most.
- `--specs` builds another env (e.g. `--specs python ipykernel cpkgs-test-app`, ~9,200 files).
- `--dry-run`: the fixed cost instead: `cpkgs new-env NAME SPEC --dry-run --json` (whole process: interpreter,
  imports, site config, solve, the package table) against `python -c` importing rattler and solving the same spec
  (`--specs`, default one package with no dependencies), each with its own warm repodata cache.
- `--variants` picks the variants to time (bare-copy takes ~5 s a run on the big envs).
- `--alt DIR`: one more variant, `cpkgs-alt`, the same command with DIR first on PYTHONPATH (another checkout's
  top directory, holding its `cpkgs_admin/`), alternating in the same rounds: an A/B of two versions of cpkgs on a
  machine whose load moves between runs.
- A bare run that dies of a signal (py-rattler 0.28's runtime crashing, bench/probe_install_crash.py) is rerun and
  counted; whether it died before or after printing its result (during the work or at interpreter exit) is noted.

Run: .venv/bin/python bench/bench_new_env.py [--runs N] [--specs SPEC...] [--bulk N | --small N] [--dry-run]
(the standard env is part of `make bench`)
"""

from __future__ import annotations

import argparse
import json
import os
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
print(json.dumps(out), flush=True)
"""

# The bare solve of --dry-run: import rattler, solve, print the packages (what new-env --dry-run shows).
BARE_SOLVE = r"""
import asyncio, sys
from rattler import Channel, Gateway, Platform, VirtualPackage, solve
channel, cache = sys.argv[1:3]
specs = sys.argv[3:]
async def main():
    return await solve(
        sources=[Channel(c) for c in channel.split(",")],
        specs=specs,
        gateway=Gateway(cache_dir=cache + "/repodata"),
        platforms=[str(Platform.current()), "noarch"],
        virtual_packages=VirtualPackage.detect(),
    )
for r in asyncio.run(main()):
    print(r.name.normalized, r.version, r.build, r.channel)
sys.stdout.flush()
"""
DRY_SPECS = ["cpkgs-test-lib"]
DRY_TARGET = 1.3

VARIANTS = ("cpkgs", "bare", "bare-copy", "bare-stack")
DRY_VARIANTS = ("cpkgs-dry", "bare-solve")
LABELS = {
    "cpkgs": "cpkgs new-env (whole CLI)",
    "bare": "bare rattler solve+install (default: hard links)",
    "bare-copy": "bare rattler solve+install, copy-only config",
    "bare-stack": "bare + CLI stack imports (click yaml filelock psutil)",
    "cpkgs-dry": "cpkgs new-env --dry-run (whole CLI)",
    "bare-solve": "bare python -c 'import rattler; solve'",
    "cpkgs-alt": "cpkgs new-env, --alt checkout",
    "cpkgs-dry-alt": "cpkgs new-env --dry-run, --alt checkout",
}


class Bench:
    def __init__(self, tmp: Path, channel: Path, specs: list[str], extra: list[Path], alt: Path | None = None) -> None:
        self.specs = specs
        self.alt_env = {**os.environ, "PYTHONPATH": str(alt)} if alt else None
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
        chans = ",".join(c.as_uri() for c in self.channels)
        env = self.alt_env if variant.endswith("-alt") else None
        variant = variant.removesuffix("-alt")
        if variant == "cpkgs-dry":
            copts = [a for c in self.channels for a in ("-c", c.as_uri())] if len(self.channels) > 1 else []
            dt, proc = C.timed([C.CPKGS, "--root", str(self.root), "new-env", f"bench-1.{self.n}", *self.specs,
                                *copts, "--dry-run", "--json"], env=env)
            res = json.loads(proc.stdout)
            self.info.update(packages=len(res["packages"]))
            return dt, {k: float(v) for k, v in res["timings"].items()}
        if variant == "bare-solve":
            dt, proc = C.timed([C.PYTHON, "-c", BARE_SOLVE, chans, str(self.bare_cache), *self.specs], retry_crash=5,
                               tag=variant)
            return dt, {}
        if variant == "cpkgs":
            name = f"bench-1.{self.n}"
            chans = [a for c in self.channels for a in ("-c", c.as_uri())] if len(self.channels) > 1 else []
            dt, proc = C.timed([C.CPKGS, "--root", str(self.root), "new-env", name, *self.specs, *chans, "--json"],
                               env=env)
            res = json.loads(proc.stdout)
            self.info.update(packages=len(res["packages"]), files=res["file_count"], size=res["size"])
            C.rmtree(Path(res["prefix"]))
            return dt, {k: float(v) for k, v in res["timings"].items()}
        prefix = self.bare_dir / f"env-{self.n}"
        copy_only = "1" if variant == "bare-copy" else "0"
        stack = "1" if variant == "bare-stack" else "0"
        dt, proc = C.timed(
            [C.PYTHON, "-c", BARE, chans, str(self.bare_cache), str(prefix), copy_only, stack, *self.specs],
            retry_crash=5,
            cleanup=lambda: C.rmtree(prefix),
            tag=variant,
        )
        phases = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        C.rmtree(prefix)
        return dt, phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--specs", nargs="+", default=None,
                    help="the env to build (default: the standard 5 specs; with --dry-run: one package)")
    ap.add_argument("--bulk", type=int, metavar="N", default=0,
                    help="add N packages of 2,000 files each from a generated channel (bench/_bulk_channel.py)")
    ap.add_argument("--small", type=int, metavar="N", default=0,
                    help="add N packages of 400 small files each from a generated channel (bench/_bulk_channel.py)")
    ap.add_argument("--dry-run", action="store_true", help="time new-env --dry-run against a bare solve")
    ap.add_argument("--alt", type=Path, metavar="DIR", help="also time the cpkgs_admin/ found in DIR (A/B)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                    help=f"variants to time (default: all of {', '.join(VARIANTS)}; cpkgs and bare always)")
    args = ap.parse_args()
    if not shutil.which(C.CPKGS):
        raise SystemExit(f"{C.CPKGS} not found: run 'make venv' first")
    variants = DRY_VARIANTS if args.dry_run else tuple(
        v for v in VARIANTS if v in {"cpkgs", "bare", *(args.variants or VARIANTS)})
    if args.alt:
        if not (args.alt / "cpkgs_admin" / "__init__.py").is_file():
            raise SystemExit(f"--alt {args.alt}: no cpkgs_admin/ there")
        import compileall

        compileall.compile_dir(str(args.alt / "cpkgs_admin"), quiet=1)
        variants = (variants[0], f"{variants[0]}-alt", *variants[1:])
    specs = list(args.specs or (DRY_SPECS if args.dry_run else C.SPECS))
    C.log("new-env bench: preparing the test channel and a fresh site ...")
    channel = C.channel_dir()
    machine = C.print_machine()
    extra: list[Path] = []
    if args.bulk or args.small:
        import _bulk_channel

        if args.bulk and not 0 < args.bulk <= _bulk_channel.PACKAGES:
            raise SystemExit(f"--bulk: 1 to {_bulk_channel.PACKAGES}")
        if args.small and not 0 < args.small <= _bulk_channel.SMALL_PACKAGES:
            raise SystemExit(f"--small: 1 to {_bulk_channel.SMALL_PACKAGES}")
        if args.bulk:
            extra.append(_bulk_channel.bulk_channel())
            specs += _bulk_channel.bulk_specs(args.bulk)
        if args.small:
            extra.append(_bulk_channel.small_channel())
            specs += _bulk_channel.small_specs(args.small)
    with C.temp_dir("new-env") as tmp:
        b = Bench(tmp, channel, specs, extra, args.alt)
        for v in variants:  # warm both package caches, repodata caches and the page cache; not timed
            b.run(v)
        walls: dict[str, list[float]] = {v: [] for v in variants}
        phases: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        loads: list[float] = []
        for i in range(args.runs):
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            load = C.loadavg()
            for v in order:
                dt, ph = b.run(v)
                walls[v].append(dt)
                phases[v].append(ph)
                cpu[v].append(C.LAST_CPU[0])
            loads.append(max(load, C.loadavg()))
            C.log(f"  round {i + 1}/{args.runs} (load {loads[-1]:.2f}): "
                  + "  ".join(f"{v} {walls[v][-1]:.3f}s" for v in variants))
        info = b.info
    report(args, specs, variants, walls, phases, loads, info, machine, cpu)


def report(args: argparse.Namespace, specs: list[str], variants: tuple[str, ...], walls: dict[str, list[float]],
           phases: dict[str, list[dict[str, float]]], loads: list[float], info: dict[str, Any],
           machine: dict[str, Any], cpu: dict[str, list[float]]) -> None:
    med = {v: C.median(walls[v]) for v in variants}
    ours, base = ("cpkgs-dry", "bare-solve") if args.dry_run else ("cpkgs", "bare")
    target = DRY_TARGET if args.dry_run else TARGET
    ratio = med[ours] / med[base]
    paired = sorted(a / b for a, b in zip(walls[ours], walls[base], strict=True))

    def med_phases(v: str) -> dict[str, float]:
        keys = list(phases[v][0])
        return {k: C.median([p.get(k, 0.0) for p in phases[v]]) for k in keys}

    steps = med_phases(ours)
    # Interpreter start, imports, site/config load, locks and JSON output: everything new-env's timings don't cover.
    overhead = C.median([w - sum(p.values()) for w, p in zip(walls[ours], phases[ours], strict=True)])

    shown = [s for s in specs if not s.startswith(("cpkgs-bench-bulk-", "cpkgs-bench-small-"))]
    print(f"new-env{' --dry-run' if args.dry_run else ''}: {' '.join(shown)}"
          + (f" + {args.bulk} bulk packages x 2,000 files" if args.bulk else "")
          + (f" + {args.small} packages x 400 small files" if args.small else ""))
    files = f"{info.get('files')} files, {info.get('size', 0) / 2**20:.1f} MiB; " if not args.dry_run else ""
    print(f"  {info.get('packages')} packages, {files}median of {args.runs} alternating runs, load average "
          f"{min(loads):.2f}-{max(loads):.2f}" + ("" if args.dry_run else ", warm package caches, fresh prefix each run"))
    for v in variants:
        print(f"  {LABELS[v]:52} {med[v]:7.3f} s   runs {C.fmt_runs(walls[v])}")
    # CPU seconds (user + system) of each variant's process: on a machine other work keeps busy there is no idle
    # core, and wall times follow these.
    med_cpu = {v: C.median(cpu[v]) for v in variants}
    print("  CPU seconds (median, user + system): " + "  ".join(f"{v} {med_cpu[v]:.3f}" for v in variants)
          + f"; ratio {ours} / {base} {med_cpu[ours] / med_cpu[base]:.2f}")
    print("  cpkgs steps (median): " + "  ".join(f"{k} {s:.3f}" for k, s in steps.items())
          + f"  + process/imports/locks {overhead:.3f} s")
    if args.alt:
        alt = f"{ours}-alt"
        alt_ratio = med[alt] / med[base]
        alt_paired = sorted(a / b for a, b in zip(walls[alt], walls[base], strict=True))
        alt_steps = med_phases(alt)
        print(f"  {alt} steps (median): " + "  ".join(f"{k} {s:.3f}" for k, s in alt_steps.items()))
        print(f"  ratio {alt} / {base}: {alt_ratio:.2f}; per-round ratios {alt_paired[0]:.2f}-{alt_paired[-1]:.2f}"
              f" (median {C.median(alt_paired):.2f})")
    for v in variants:
        if v not in (ours, "bare-solve") and not v.endswith("-alt") and phases[v][0]:
            print(f"  {v} phases (median): " + "  ".join(f"{k} {s:.3f}" for k, s in med_phases(v).items()) + " s")
    # Issue 14: the headline target is for production-size envs (--bulk, --small) and the dry run; the toy env's
    # ratio is a figure.
    judged = args.dry_run or bool(args.bulk or args.small)
    verdict = (f"target <= {target}: {'PASS' if ratio <= target else 'MISS'}" if judged
               else "a figure: no target for this env")
    print(f"  ratio {ours} / {base}: {ratio:.2f}  ({verdict}); per-round ratios "
          f"{paired[0]:.2f}-{paired[-1]:.2f} (median {C.median(paired):.2f})")
    extra = {}
    if "bare-copy" in variants:
        extra["ratio_copy_only"] = round(med["cpkgs"] / med["bare-copy"], 3)
        print(f"  ratio new-env / bare copy-only:       {extra['ratio_copy_only']:.2f}  (for comparison)")
    if "bare-stack" in variants:
        extra["ratio_stack_floor"] = round(med["bare-stack"] / med["bare"], 3)
        print(f"  ratio bare + CLI stack / bare:        {extra['ratio_stack_floor']:.2f}  "
              "(the floor for any CLI on that stack)")
    for crash in C.CRASHES:
        print(f"  note: a bare run crashed and was rerun: {crash}")
    C.final_json("new-env-dry-run" if args.dry_run else "new-env", {
        "specs": specs,
        "runs": args.runs,
        "packages": info.get("packages"),
        "files": info.get("files"),
        "bytes": info.get("size"),
        **{f"{v.replace('-', '_')}_s": round(med[v], 4) for v in variants},
        "ratio": round(ratio, 3),
        "ratio_per_round": [round(x, 3) for x in paired],
        **extra,
        "target": target if judged else None,
        "pass": ratio <= target if judged else None,
        "cpkgs_steps_s": {k: round(s, 4) for k, s in steps.items()},
        "cpkgs_process_overhead_s": round(overhead, 4),
        "phases_s": {v: med_phases(v) for v in variants if phases[v][0]},
        "runs_s": {v: [round(x, 4) for x in walls[v]] for v in variants},
        "loadavg_per_round": [round(x, 2) for x in loads],
        "cpu_s": {v: [round(x, 4) for x in cpu[v]] for v in variants},
        "cpu_ratio": round(med_cpu[ours] / med_cpu[base], 3),
        "bare_crashes_rerun": C.CRASHES,
        "machine": machine,
    })


if __name__ == "__main__":
    main()
