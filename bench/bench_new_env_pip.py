"""Benchmark (issue 15 §1): `cpkgs new-env` of an env with a ~30-package pip section, end to end, against the same
env without the pip section.

Both sides are whole `cpkgs --root SITE new-env NAME -f SPEC --json` processes on one offline site (the local test
channel; the test wheelhouse as its only PyPI location: `--pypi-index-url none --pypi-find-links WHEELS`):
- "with pip": python + pip from conda, `pip: [ipykernel]`: ipykernel, IPython and their dependencies from the
  wheelhouse (pure and binary wheels: pyzmq, tornado, psutil, debugpy), resolved against the conda part, fetched
  into the wheel store, installed with hard links from the admin-only uv cache, byte-compiled, verified, sealed;
- "without": the same spec without its pip section.
One untimed warm-up of each (uv's cache and the wheel store filled, the package cache warm, as a site's second build
of a spec); then alternating rounds, a fresh env name each run, median of N. The new-env --json timings say where the
time goes (solve, install, pip, post, verify, seal, publish).

Run: .venv/bin/python bench/bench_new_env_pip.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SPECS = {
    "with pip": "dependencies:\n  - python\n  - pip\n  - pip:\n      - ipykernel\n",
    "without": "dependencies:\n  - python\n  - pip\n",
}


def wheelhouse() -> Path:
    sys.path.insert(0, str(C.REPO / "tests" / "wheelhouse"))
    try:
        from build_wheelhouse import ensure_wheelhouse  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return Path(ensure_wheelhouse()) / "wheels"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    C.byte_compile()
    channel, wheels = C.channel_dir(), wheelhouse()
    machine = C.print_machine()
    with C.temp_dir("new-env-pip") as tmp:
        root = tmp / "site"
        C.cpkgs(root, "init", "-c", channel.as_uri(), "--pypi-index-url", "none", "--pypi-find-links", str(wheels))
        files = {}
        for label, text in SPECS.items():
            files[label] = tmp / f"{label.replace(' ', '-')}.yml"
            files[label].write_text(text)
        times: dict[str, list[float]] = {k: [] for k in SPECS}
        steps: dict[str, list[dict[str, float]]] = {k: [] for k in SPECS}
        counts: dict[str, tuple[int, int, int]] = {}
        n = 0

        def run(label: str, timed: bool) -> None:
            nonlocal n
            n += 1
            dt, proc = C.timed([C.CPKGS, "--root", str(root), "new-env", f"b{n}-1.0", "-f", str(files[label]),
                                "--json"])
            out = json.loads(proc.stdout)
            kinds = [p["kind"] for p in out["packages"]]
            counts[label] = (kinds.count("conda"), kinds.count("pypi"), out["file_count"])
            if timed:
                times[label].append(dt)
                steps[label].append(out["timings"])

        for label in SPECS:
            run(label, timed=False)
        for i in range(args.runs):
            for label in (list(SPECS) if i % 2 == 0 else list(SPECS)[::-1]):
                C.drop_writeback()
                run(label, timed=True)
    med = {k: C.median(v) for k, v in times.items()}
    print(f"new-env with and without a pip section; median of {args.runs} alternating runs")
    for label in SPECS:
        conda, pypi, nfiles = counts[label]
        step_med = {s: C.median([t.get(s, 0.0) for t in steps[label]]) for s in steps[label][0]}
        print(f"  {label:10s} {med[label]:.2f} s  ({conda} conda + {pypi} pypi packages, {nfiles} files)  runs "
              f"{C.fmt_runs(times[label])}")
        print("             steps: " + ", ".join(f"{s} {v:.2f}" for s, v in step_med.items()))
    print(f"  with / without: {med['with pip'] / med['without']:.2f}; the pip section adds "
          f"{med['with pip'] - med['without']:.2f} s")
    C.final_json("new-env-pip", {"runs": args.runs, "median_s": {k: round(v, 3) for k, v in med.items()},
                                 "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
                                 "counts": counts, "machine": machine})


if __name__ == "__main__":
    main()
