"""Benchmark 3 of issue 3: `cpkgs verify NAME` throughput against `sha256sum` with 2 parallel processes.

Target (issue 3): cpkgs verify bytes/s >= 0.8 x sha256sum's over the same environment (median of 5).

The environment is a real one built with `cpkgs new-env` (python + the test packages: ~750 files, ~71 MiB).
- cpkgs: the whole command `cpkgs --root R verify NAME` (interpreter start, record, conda-meta, hashing every file
  that conda-meta gives a sha256 for, size/existence checks, the unexpected-file and permission walks).
- baseline: `find PREFIX -type f -print0 | xargs -0 -P2 -n 50 sha256sum > /dev/null`.
Page cache warm for both (each runs once untimed first), alternating runs, median of 5.

Throughput (headline) = bytes of the environment's regular files / wall time, the same bytes for both tools (so the
ratio is sha256sum's time / cpkgs' time). Also printed: cpkgs' throughput counting only the bytes it actually hashes
(files whose prefix was patched without a recorded sha256, e.g. libpython with a binary placeholder, are checked
for existence only), the strictest reading.

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


def hashed_bytes(prefix: Path) -> int:
    """Bytes cpkgs verify actually hashes: regular files listed with a sha256 in conda-meta or the site manifest."""
    import os
    import stat

    from cpkgs_admin.integrity.manifest import expected_files

    total = 0
    for e in expected_files(prefix).values():
        if e.sha256 is None:
            continue
        st = os.lstat(prefix / e.rel)
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--specs", nargs="+", default=list(C.SPECS),
                    help="the env to verify (default: the standard 5 specs; e.g. python ipykernel for a bigger one)")
    args = ap.parse_args()
    if not shutil.which("sha256sum") or not shutil.which("xargs"):
        raise SystemExit("sha256sum and xargs (coreutils, findutils) are needed for the baseline")
    C.log("verify bench: preparing the test channel, a fresh site and one env ...")
    channel = C.channel_dir()
    machine = C.print_machine()
    with C.temp_dir("verify") as tmp:
        root = C.make_site(tmp / "site", channel)
        res = json.loads(C.cpkgs(root, "new-env", "bench-1.0", *args.specs, "--json").stdout)
        prefix = Path(res["prefix"])
        rep = json.loads(C.cpkgs(root, "verify", "bench-1.0", "--json").stdout)[0]
        if rep["problems"]:
            raise SystemExit(f"verify found problems in a fresh env: {rep['problems'][:3]}")
        cpkgs_files = rep["files"]
        cpkgs_hashed = hashed_bytes(prefix)
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
    rate = {"cpkgs": sha_bytes / med["cpkgs"], "sha256sum": sha_bytes / med["sha256sum"]}
    ratio = rate["cpkgs"] / rate["sha256sum"]
    hashed_rate = cpkgs_hashed / med["cpkgs"]
    strict = hashed_rate / rate["sha256sum"]
    mib = 2**20
    print(f"verify: env of {sha_files} regular files, {sha_bytes / mib:.1f} MiB; median of {args.runs} alternating "
          "runs, page cache warm")
    print(f"  cpkgs verify (whole CLI)        {med['cpkgs']:.3f} s  {rate['cpkgs'] / mib:7.1f} MiB/s  "
          f"({cpkgs_files} files checked, {cpkgs_hashed / mib:.1f} MiB of them hashed)  runs {C.fmt_runs(times['cpkgs'])}")
    print(f"  sha256sum, 2 processes          {med['sha256sum']:.3f} s  {rate['sha256sum'] / mib:7.1f} MiB/s  "
          f"({sha_files} files hashed)  runs {C.fmt_runs(times['sha256sum'])}")
    print(f"  throughput ratio cpkgs / sha256sum: {ratio:.2f}  (target >= {TARGET}: "
          f"{'PASS' if ratio >= TARGET else 'MISS'})")
    print(f"  strict: counting only bytes cpkgs hashes, {hashed_rate / mib:.1f} MiB/s, ratio {strict:.2f}")
    C.final_json("verify", {
        "runs": args.runs,
        "env_bytes": sha_bytes,
        "cpkgs_s": round(med["cpkgs"], 4),
        "cpkgs_files": cpkgs_files,
        "cpkgs_bytes_per_s": round(rate["cpkgs"]),
        "cpkgs_hashed_bytes": cpkgs_hashed,
        "cpkgs_hashed_bytes_per_s": round(hashed_rate),
        "ratio_strict": round(strict, 3),
        "sha256sum_s": round(med["sha256sum"], 4),
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
