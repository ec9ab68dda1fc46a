"""Benchmark of the catalog (issue 17 §2): 500 envs x 300 packages.

Targets: a full render <= 2 s, one publish's update <= 0.3 s, the index interactive in <= 1 s in a real browser.

The site is made with `cpkgs init`; its records are written directly (<root>/.cpkgs/records/<platform>/<name>.json,
the shape records.py reads): 50 families x 10 versions, 300 packages each (a pool of 900 names, each version bumping a
tenth of them; 20 of them PyPI entries), one in ten versions retired with a successor, one in twenty removed. The catalog
reads records only, so their envs need not exist.

Timed, each in a fresh interpreter (imports included in the wall time; the call alone printed too):
- full render: `render_catalog` into an empty catalog dir (every file written), and again over an up-to-date one
  (the `cpkgs refresh` case: every page rendered, none written);
- one update: a new record (the next version of a family) written, then `update_catalog(site, platform, [name])`,
  which is what publish runs after its modulefiles (its record read, its pages, its neighbours', the index);
- the index page in headless Chromium from file://: PerformanceNavigationTiming's domInteractive,
  domContentLoadedEventEnd and loadEventEnd, and the time from typing a package name into the search box to the
  filtered table (search.js loaded on that first search).

Run: .venv/bin/python bench/bench_catalog.py [--envs N] [--packages N] [--runs N]   (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
import _common as C

TARGETS = {"full_s": 2.0, "update_s": 0.3, "interactive_ms": 1000.0}
PLATFORM = "linux-64"


def package(name: str, version: str, kind: str, channel: str) -> dict[str, object]:
    sha = f"{abs(hash((name, version))):064x}"[-64:]
    build = "h1a2b3c4_0"
    entry: dict[str, object] = {
        "name": name, "version": version, "build": build, "channel": channel, "sha256": sha, "md5": sha[:32],
        "url": f"{channel}/{PLATFORM}/{name}-{version}-{build}.conda", "subdir": PLATFORM,
        "filename": f"{name}-{version}-{build}.conda", "depends": [f"dep{i} >=1.0" for i in range(3)],
    }
    if kind == "pypi":
        entry.update(kind="pypi", build="", channel="", index="https://pypi.org/simple",
                     url=f"https://files.pythonhosted.org/{name}-{version}-py3-none-any.whl", subdir="", md5="")
    return entry


def write_records(root: Path, envs: int, packages: int) -> list[str]:
    rng = random.Random(17)
    rec_dir = root / ".cpkgs" / "records" / PLATFORM
    rec_dir.mkdir(parents=True, exist_ok=True)
    channel = "https://conda.example.org/conda-forge"
    pool = [f"pkg{i:03d}" for i in range(packages * 3)]
    names = []
    versions_per_family = 10
    for f in range(max(1, envs // versions_per_family)):
        family = f"team{f:02d}"
        chosen = sorted(rng.sample(pool, packages))
        current = {p: f"1.{rng.randrange(20)}.0" for p in chosen}
        for v in range(versions_per_family):
            if len(names) == envs:
                break
            for p in rng.sample(chosen, packages // 10):
                major, minor, _ = current[p].split(".")
                current[p] = f"{major}.{int(minor) + 1}.0"
            name = f"{family}-2024.{v}"
            status = "active"
            rec = {
                "schema": 2, "name": name, "family": family, "version": f"2024.{v}", "platform": PLATFORM,
                "prefix": str(root / "anaconda3_linux" / "envs" / name), "requested_specs": chosen[:8],
                "channels": [channel], "creator": "admin", "host": "build1",
                "created": f"2024-{1 + v:02d}-{1 + f % 28:02d}T12:00:00+0000", "cpkgs_version": "0.1.0",
                "size": 2_000_000_000 + f * v, "file_count": 60000,
                "packages": [package(p, current[p], "pypi" if i >= packages - 20 else "conda", channel)
                             for i, p in enumerate(chosen)],
            }
            if v < versions_per_family - 1 and v % 10 == 3:
                status = "retired"
                rec["retired"] = {"successor": f"{family}-2024.{v + 1}", "message": "use the newer numpy",
                                  "at": "2024-06-01T00:00:00+0000", "by": "admin"}
            if v == 0 and f % 2 == 0:
                status = "removed"
                rec["removed"] = {"at": "2024-07-01T00:00:00+0000", "by": "admin", "trash": "/x"}
            rec["status"] = status
            (rec_dir / f"{name}.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
            names.append(name)
    return names


TIMED = """
import sys, time
t0 = time.perf_counter()
from pathlib import Path
from cpkgs_admin.site.paths import open_site
from cpkgs_admin.outputs.catalog import render_catalog, update_catalog
site = open_site(Path(sys.argv[1]))
t1, c1 = time.perf_counter(), time.process_time()
if sys.argv[2] == "full":
    rep = render_catalog(site, [sys.argv[3]])
else:
    rep = update_catalog(site, sys.argv[3], sys.argv[4:])
t2, c2 = time.perf_counter(), time.process_time()
print(t2 - t1, c2 - c1, len(rep.written), len(rep.removed))
"""


def run_timed(*args: str) -> tuple[float, float, float, int]:
    """(wall of the whole process, the call alone, its CPU time, files written)."""
    wall, proc = C.timed([C.PYTHON, "-c", TIMED, *args])
    call, cpu, written, _removed = proc.stdout.decode().split()
    return wall, float(call), float(cpu), int(written)


def new_version(root: Path, template: str, name: str) -> None:
    rec_dir = root / ".cpkgs" / "records" / PLATFORM
    rec = json.loads((rec_dir / f"{template}.json").read_bytes())
    family, _, version = name.rpartition("-")
    rec.update(name=name, family=family, version=version, status="active", retired=None, removed=None,
               prefix=str(root / "anaconda3_linux" / "envs" / name), created="2025-01-01T12:00:00+0000")
    rec["packages"][0]["version"] = "99.0.0"
    (rec_dir / f"{name}.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")


def browser(index: Path, runs: int, query: str) -> tuple[list[dict[str, float]], list[float], int, str | None]:
    import chromium  # tests/helpers/chromium.py: the driver the tests use

    why = chromium.missing()
    if why:
        return [], [], 0, why
    timings, searches, shown = [], [], 0
    with chromium.chromium() as driver:
        for _ in range(runs):
            driver.get("about:blank")
            driver.get(index.as_uri())
            timings.append(chromium.navigation_timing(driver))
            # From the input event to the filtered table, search.js loaded by that first search.
            took, shown = driver.execute_async_script("""
                var done = arguments[arguments.length - 1], box = document.getElementById('q');
                var t0 = performance.now();
                box.value = arguments[0];
                box.dispatchEvent(new Event('input'));
                (function wait() {
                  if (window.CPKGS_SEARCH && document.querySelector('table.searching')) {
                    done([performance.now() - t0,
                          document.querySelectorAll('#envs tr.env:not([hidden])').length]);
                  } else { setTimeout(wait, 5); }
                })();""", query)
            searches.append(took)
    return timings, searches, shown, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=500)
    ap.add_argument("--packages", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    C.byte_compile()
    machine = C.print_machine()
    with C.temp_dir("catalog") as tmp:
        root = tmp / "site"
        C.cpkgs(root, "init", "--platform", PLATFORM)
        names = write_records(root, args.envs, args.packages)
        cdir = root / "share" / "cpkgs-catalog"
        res: dict[str, list[tuple[float, float, float, int]]] = {"full": [], "again": [], "update": []}
        for i in range(args.runs):
            shutil.rmtree(cdir, ignore_errors=True)
            C.drop_writeback()
            res["full"].append(run_timed(str(root), "full", PLATFORM))
            res["again"].append(run_timed(str(root), "full", PLATFORM))
            name = f"team{i % 50:02d}-2025.{i}"
            new_version(root, f"team{i % 50:02d}-2024.9", name)
            C.drop_writeback()
            res["update"].append(run_timed(str(root), "update", PLATFORM, name))
        files = sum(1 for p in cdir.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in cdir.rglob("*") if p.is_file())
        index_kb = (cdir / "index.html").stat().st_size / 1024
        search_kb = (cdir / "search.js").stat().st_size / 1024
        timings, searches, shown, why = browser(cdir / "index.html", args.runs, "pkg0")
    report(args, names, res, files, size, index_kb, search_kb, timings, searches, shown, why, machine)


def report(args, names, res, files, size, index_kb, search_kb, timings, searches, shown, why, machine) -> None:  # type: ignore[no-untyped-def]
    med = {k: C.median([r[1] for r in v]) for k, v in res.items()}
    cpu = {k: C.median([r[2] for r in v]) for k, v in res.items()}
    wall = {k: C.median([r[0] for r in v]) for k, v in res.items()}
    print(f"catalog: {len(names)} envs x {args.packages} packages, {args.runs} runs each; load average "
          f"{machine['loadavg_1m']}; {files} files, {size / 2**20:.1f} MiB (index.html {index_kb:.0f} KiB, "
          f"search.js {search_kb:.0f} KiB)")
    labels = {"full": "full render, empty dir", "again": "full render, up to date", "update": "one publish's update"}
    for k, label in labels.items():
        print(f"  {label:28} {med[k]:.3f} s (CPU {cpu[k]:.3f} s; whole process {wall[k]:.3f} s)  runs "
              f"{C.fmt_runs([r[1] for r in res[k]])}  files written {[r[3] for r in res[k]]}")
    out: dict[str, object] = {"envs": len(names), "packages": args.packages, "runs": args.runs,
                              "full_s": round(med["full"], 4), "full_again_s": round(med["again"], 4),
                              "update_s": round(med["update"], 4),
                              "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
                              "process_s": {k: round(v, 4) for k, v in wall.items()},
                              "runs_s": {k: [round(r[1], 4) for r in v] for k, v in res.items()}}
    if why:
        print(f"  browser: not measured ({why})")
    else:
        inter = C.median([t["domInteractive"] for t in timings])
        dcl = C.median([t["domContentLoaded"] for t in timings])
        load = C.median([t["load"] for t in timings])
        print(f"  index.html in Chromium (file://): domInteractive {inter:.0f} ms, DOMContentLoaded {dcl:.0f} ms, "
              f"load {load:.0f} ms; runs {[round(t['domInteractive']) for t in timings]} ms")
        print(f"  first search 'pkg0' (loads search.js): {C.median(searches):.0f} ms, {shown} envs shown; runs "
              f"{[round(s) for s in searches]} ms")
        out.update(interactive_ms=round(inter, 1), dom_content_loaded_ms=round(dcl, 1), load_ms=round(load, 1),
                   first_search_ms=round(C.median(searches), 1))
    ok = (med["full"] <= TARGETS["full_s"] and med["update"] <= TARGETS["update_s"]
          and (why is not None or float(out["interactive_ms"]) <= TARGETS["interactive_ms"]))  # type: ignore[arg-type]
    print(f"  targets: full <= {TARGETS['full_s']} s, update <= {TARGETS['update_s']} s, interactive <= "
          f"{TARGETS['interactive_ms']:.0f} ms: {'PASS' if ok else 'MISS'}")
    C.final_json("catalog", {**out, "targets": TARGETS, "pass": ok, "machine": machine})


if __name__ == "__main__":
    main()
