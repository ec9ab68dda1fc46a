"""Benchmark of issue 7: `cpkgs extend BASE DIR` on a ~3,000-file base and a ~60,000-file base.

Targets (issue 7): median wall time of the whole command (interpreter start included) <= 0.3 s, and
median(big base) / median(small base) <= 1.2: the layer must not depend on BASE's size.

Both bases are real published envs (solved, installed, verified, sealed by `cpkgs new-env`): the demo packages
(python, pip, the prefix test programs, ~1,300 files) plus one synthetic package of small files built with
py-rattler-build (`cpkgs-bench-bulk-small`: 1,700 files, `cpkgs-bench-bulk-big`: 58,700 files). The bulk channel is
built once per machine and cached under ~/.cache/cpkgs-bench-bulk/ (bench/_bulk_channel.py).

Fairness: same site, same disk, same command; the runs alternate small/big (rotated order each round), every run
writes a fresh DIR, `sync` before each timed run; median of N rounds. The page cache is warm for both (the command
reads BASE's record and stats one file, whatever the size); the figure is for a local disk, not NFS.

Run: .venv/bin/python bench/bench_extend.py [--runs N]    (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET_RATIO = 1.2
TARGET_SECONDS = 0.3
BULK = {"cpkgs-bench-bulk-small": 1_700, "cpkgs-bench-bulk-big": 58_700}

RECIPE = """\
schema_version: 1
package:
  name: {name}
  version: "1.0"
build:
  number: 0
  noarch: generic
  script:
    - |
      n=0
      d=0
      while [ $n -lt {count} ]; do
        mkdir -p "$PREFIX/share/{name}/$d"
        i=0
        while [ $i -lt 1000 ] && [ $n -lt {count} ]; do
          echo "$n" > "$PREFIX/share/{name}/$d/f$i.txt"
          i=$((i + 1)); n=$((n + 1))
        done
        d=$((d + 1))
      done
about:
  summary: cpkgs benchmark - {count} small files
  license: MIT
"""


def bulk_channel() -> Path:
    """A channel with the two bulk packages, built with py-rattler-build once per machine."""
    import _bulk_channel

    return _bulk_channel.build_channel({name: RECIPE.format(name=name, count=count) for name, count in BULK.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    m = C.print_machine()
    channel = C.channel_dir()
    bulk = bulk_channel()
    with C.temp_dir("extend") as tmp:
        root = tmp / "site"
        C.cpkgs(root, "init", "-c", channel.as_uri(), "-c", bulk.as_uri())
        bases = {"small": "base-small-1.0", "big": "base-big-1.0"}
        files = {}
        for size, env in bases.items():
            C.log(f"building {env} ...")
            C.cpkgs(root, "new-env", env, *C.SPECS, "pip", f"cpkgs-bench-bulk-{size}")
            files[size] = C.tree_bytes(root / "anaconda3_linux" / "envs" / env)[0]
        times: dict[str, list[float]] = {"small": [], "big": []}
        entries: dict[str, int] = {}
        order = ["small", "big"]
        n = 0
        for r in range(args.runs + 1):  # round 0 warms up and is not counted
            for size in order if r % 2 == 0 else order[::-1]:
                n += 1
                layer = tmp / "layers" / f"{size}-{n}"
                C.drop_writeback()
                dt, _ = C.timed([C.CPKGS, "--root", str(root), "-q", "extend", bases[size], str(layer)])
                if r > 0:
                    times[size].append(dt)
                entries[size] = sum(1 for _ in layer.rglob("*"))
        med = {k: C.median(v) for k, v in times.items()}
        ratio = med["big"] / med["small"]
        print(f"base small: {bases['small']}: {files['small']} files; base big: {bases['big']}: {files['big']} files")
        for size in ("small", "big"):
            print(f"cpkgs extend on {size:5} base ({files[size]:>6} files): median {med[size]:.3f} s, "
                  f"layer entries {entries[size]}  runs {C.fmt_runs(times[size])}")
        ok_ratio = ratio <= TARGET_RATIO
        ok_abs = max(med.values()) <= TARGET_SECONDS
        print(f"ratio big/small: {ratio:.2f} (target <= {TARGET_RATIO}: {'ok' if ok_ratio else 'MISSED'}); "
              f"worst median {max(med.values()):.3f} s (target <= {TARGET_SECONDS} s: {'ok' if ok_abs else 'MISSED'})")
        C.final_json("extend", {
            "files": files, "median_s": {k: round(v, 4) for k, v in med.items()}, "ratio": round(ratio, 3),
            "layer_entries": entries, "runs": args.runs, "ok": ok_ratio and ok_abs, "machine": m,
        })
    return 0 if ok_ratio and ok_abs else 1


if __name__ == "__main__":
    sys.exit(main())
