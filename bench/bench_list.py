"""Benchmark 2 of issue 3: `cpkgs list` with 500 recorded environments.

Target (issue 3): <= 0.3 s wall, interpreter start included (median of 10).

One real environment is built with `cpkgs new-env`; 499 more records are copies of its record JSON
(<root>/.cpkgs/records/<platform>/<name>.json) with the name fields changed (name, family, version, prefix, created).
`list` reads records only, so the copies are as good as real envs for it. Timed: `cpkgs --root R list` and
`cpkgs --root R list --json`, alternating, after one untimed warm-up of each. Also printed: the floor (bare
interpreter start, and importing the CLI module) and the heaviest imports on the `list` path (`-X importtime`).

Run: .venv/bin/python bench/bench_list.py [--envs N] [--runs N]    (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET = 0.3


def fill_records(root: Path, template: Path, count: int) -> list[str]:
    """COUNT-1 more records made from TEMPLATE, names team<NN>-2024.<k>; returns every name."""
    base = json.loads(template.read_bytes())
    envs_dir = Path(base["prefix"]).parent
    names = [base["name"]]
    for i in range(count - 1):
        family, version = f"team{i % 25:02d}", f"2024.{i // 25}"
        name = f"{family}-{version}"
        rec = dict(base)
        rec.update(
            name=name,
            family=family,
            version=version,
            prefix=str(envs_dir / name),
            created=f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T12:00:00+0000",
        )
        (template.parent / f"{name}.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
        names.append(name)
    return names


def import_profile(root: Path, top: int = 8) -> list[tuple[str, float]]:
    """(module, cumulative seconds) of the heaviest top-level imports of `python -m cpkgs_admin list`."""
    proc = subprocess.run(
        [C.PYTHON, "-X", "importtime", "-m", "cpkgs_admin", "--root", str(root), "list"],
        capture_output=True, text=True, check=False,
    )
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2][1:]
        if not name.startswith(" "):  # top-level imports only (nested ones are indented)
            rows.append((name.strip(), int(parts[1]) / 1e6))
    rows.sort(key=lambda r: -r[1])
    return rows[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=500)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    C.log("list bench: preparing the test channel, a fresh site and one real env ...")
    channel = C.channel_dir()
    machine = C.print_machine()
    with C.temp_dir("list") as tmp:
        root = C.make_site(tmp / "site", channel)
        res = json.loads(C.cpkgs(root, "new-env", "bench-1.0", *C.SPECS, "--json").stdout)
        template = root / ".cpkgs" / "records" / res["platform"] / "bench-1.0.json"
        names = fill_records(root, template, args.envs)
        shown = json.loads(C.cpkgs(root, "list", "--json").stdout)
        if len(shown) != len(names):
            raise SystemExit(f"list --json shows {len(shown)} envs, expected {len(names)}")

        cmds = {
            "list": [C.CPKGS, "--root", str(root), "list"],
            "list --json": [C.CPKGS, "--root", str(root), "list", "--json"],
            "python -c pass": [C.PYTHON, "-c", "pass"],
            "python -c 'import cpkgs_admin.cli'": [C.PYTHON, "-c", "import cpkgs_admin.cli"],
        }
        for cmd in cmds.values():  # warm the page cache and the interpreter's .pyc files; not timed
            C.timed(cmd)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(args.runs):
            for k, cmd in cmds.items():
                times[k].append(C.timed(cmd)[0])
        imports = import_profile(root)

    med = {k: C.median(v) for k, v in times.items()}
    ok = med["list"] <= TARGET and med["list --json"] <= TARGET
    print(f"list: {len(names)} recorded envs (1 real + {len(names) - 1} record copies), median of {args.runs}, "
          "interpreter start included")
    for k in cmds:
        label, tag = (f"cpkgs {k}", "") if k.startswith("list") else (k, "   (floor)")
        print(f"  {label:42} {med[k]:.3f} s   runs {C.fmt_runs(times[k])}{tag}")
    print("  heaviest imports on the list path: " + ", ".join(f"{m} {s * 1000:.0f} ms" for m, s in imports))
    print(f"  list {med['list']:.3f} s, list --json {med['list --json']:.3f} s  (target <= {TARGET} s: "
          f"{'PASS' if ok else 'MISS'})")
    C.final_json("list", {
        "envs": len(names),
        "runs": args.runs,
        "list_s": round(med["list"], 4),
        "list_json_s": round(med["list --json"], 4),
        "python_start_s": round(med["python -c pass"], 4),
        "import_cli_s": round(med["python -c 'import cpkgs_admin.cli'"], 4),
        "target_s": TARGET,
        "pass": ok,
        "heaviest_imports_s": {m: round(s, 4) for m, s in imports},
        "runs_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "machine": machine,
    })


if __name__ == "__main__":
    main()
