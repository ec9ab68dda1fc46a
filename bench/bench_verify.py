"""Benchmark 3 of issue 3: `cpkgs verify NAME` throughput against `sha256sum` with 2 parallel processes.

Target (issue 3): cpkgs verify bytes/s >= 0.8 x sha256sum's over the same environment (median of 5).

The environment is a real one built with `cpkgs new-env` (python + the test packages: ~750 files, ~71 MiB).
- cpkgs: the whole command `cpkgs --root R verify NAME` (interpreter start, record, conda-meta, hashing every file,
  the permission walk); bytes = what it reports as hashed (`verify --json`).
- baseline: `find PREFIX -type f -print0 | xargs -0 -P2 -n 50 sha256sum > /dev/null`; bytes = all regular files.
Page cache warm for both (each runs once untimed first), alternating runs, median of 5.

Run: .venv/bin/python bench/bench_verify.py [--runs N]    (also part of `make bench`)
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET = 0.8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("sha256sum") or not shutil.which("xargs"):
        raise SystemExit("sha256sum and xargs (coreutils, findutils) are needed for the baseline")
    C.log("verify bench: preparing the test channel, a fresh site and one env ...")
    channel = C.channel_dir()
    machine = C.print_machine()
    with C.temp_dir("verify") as tmp:
        root = C.make_site(tmp / "site", channel)
        res = json.loads(C.cpkgs(root, "new-env", "bench-1.0", *C.SPECS, "--json").stdout)
        prefix = Path(res["prefix"])
        rep = json.loads(C.cpkgs(root, "verify", "bench-1.0", "--json").stdout)[0]
        if rep["problems"]:
            raise SystemExit(f"verify found problems in a fresh env: {rep['problems'][:3]}")
        cpkgs_files, cpkgs_bytes = rep["files"], rep["bytes"]
        sha_files, sha_bytes = C.tree_bytes(prefix)

        cmds = {
            "cpkgs": [C.CPKGS, "--root", str(root), "verify", "bench-1.0"],
            "sha256sum": ["sh", "-c", f"find {shlex.quote(str(prefix))} -type f -print0 "
                                      "| xargs -0 -P2 -n 50 sha256sum > /dev/null"],
        }
        for cmd in cmds.values():  # page cache warm for both; not timed
            C.timed(cmd)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for i in range(args.runs):
            for k in (list(cmds) if i % 2 == 0 else list(cmds)[::-1]):
                times[k].append(C.timed(cmds[k])[0])

    med = {k: C.median(v) for k, v in times.items()}
    rate = {"cpkgs": cpkgs_bytes / med["cpkgs"], "sha256sum": sha_bytes / med["sha256sum"]}
    ratio = rate["cpkgs"] / rate["sha256sum"]
    mib = 2**20
    print(f"verify: env of {res['file_count']} files, {sha_bytes / mib:.1f} MiB; median of {args.runs} alternating "
          "runs, page cache warm")
    print(f"  cpkgs verify (whole CLI)        {med['cpkgs']:.3f} s  {rate['cpkgs'] / mib:7.1f} MiB/s  "
          f"({cpkgs_files} files, {cpkgs_bytes / mib:.1f} MiB hashed)  runs {C.fmt_runs(times['cpkgs'])}")
    print(f"  sha256sum, 2 processes          {med['sha256sum']:.3f} s  {rate['sha256sum'] / mib:7.1f} MiB/s  "
          f"({sha_files} files, {sha_bytes / mib:.1f} MiB)  runs {C.fmt_runs(times['sha256sum'])}")
    print(f"  throughput ratio cpkgs / sha256sum: {ratio:.2f}  (target >= {TARGET}: "
          f"{'PASS' if ratio >= TARGET else 'MISS'})")
    C.final_json("verify", {
        "runs": args.runs,
        "cpkgs_s": round(med["cpkgs"], 4),
        "cpkgs_bytes": cpkgs_bytes,
        "cpkgs_files": cpkgs_files,
        "cpkgs_bytes_per_s": round(rate["cpkgs"]),
        "sha256sum_s": round(med["sha256sum"], 4),
        "sha256sum_bytes": sha_bytes,
        "sha256sum_files": sha_files,
        "sha256sum_bytes_per_s": round(rate["sha256sum"]),
        "ratio": round(ratio, 3),
        "target": TARGET,
        "pass": ratio >= TARGET,
        "runs_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "machine": machine,
    })


if __name__ == "__main__":
    main()
