"""Probe (not a benchmark): when does py-rattler 0.28 crash the process around `install`, can `cpkgs new-env` be
hit, and what does a crash leave behind?

Part 1 runs one solve+install per process, many times, in four ways, on the env of bench_new_env.py's `--small`
(or the standard env with --small 0), and sorts each exit: ok, died of a signal BEFORE printing its result (during
the solve or the install) or AFTER it (at interpreter exit, the work done):
- default: `install(records, target_prefix=..., cache_dir=..., show_progress=False)`, then a normal exit (what
  bench_new_env.py's bare script does);
- default+_exit: the same, then `os._exit(0)` after printing, as cpkgs' CLI leaves (cli.main);
- cpkgs: cpkgs' own call (installed_packages=[], an explicit Platform, a Config and a Client from it, requested
  specs, alternative_target_prefix: build.install_planned), then a normal exit;
- cpkgs+_exit: cpkgs' call and cpkgs' exit;
- with --modes, also default+client (the default call given a rattler.networking.Client) and cpkgs-noclient (cpkgs'
  call without one), to tell which argument goes with the crashes at exit.
Then it runs the real `cpkgs new-env` as many times.

Part 2 sends SIGABRT (what a Rust panic that aborts sends itself) and SIGSEGV to `cpkgs new-env` while rattler
installs, lists what is left (staging dir, lock files and their owner records) and runs the next build of the same
name, which must take the dead owner's locks over and remove the staging dir.

Run: .venv/bin/python bench/probe_install_crash.py [--runs N] [--small N]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SCRIPT = r"""
import asyncio, json, os, sys
from rattler import Channel, Config, Gateway, MatchSpec, Platform, VirtualPackage, install, solve
channels, cache, prefix, mode = sys.argv[1:5]
specs = sys.argv[5:]
async def main():
    records = await solve(sources=[Channel(c) for c in channels.split(",")], specs=specs,
                          gateway=Gateway(cache_dir=cache + "/repodata"),
                          platforms=[str(Platform.current()), "noarch"], virtual_packages=VirtualPackage.detect())
    from rattler.networking import Client
    config = Config.from_toml("allow-hard-links = true\nallow-symbolic-links = true\n")
    if mode.startswith("default"):
        more = {"client": Client.from_config(config)} if "client" in mode else {}
        await install(records, target_prefix=prefix, cache_dir=cache, show_progress=False, **more)
    else:
        more = {} if "noclient" in mode else {"client": Client.from_config(config)}
        await install(records, target_prefix=prefix, cache_dir=cache, installed_packages=[],
                      platform=Platform(str(Platform.current())), execute_link_scripts=True, show_progress=False,
                      requested_specs=[MatchSpec(s)._match_spec for s in specs], alternative_target_prefix=prefix,
                      config=config, **more)
    return len(records)
print(json.dumps({"installed": asyncio.run(main())}), flush=True)
if mode.endswith("+_exit"):
    os._exit(0)
"""

MODES = ("default", "default+_exit", "cpkgs", "cpkgs+_exit")
# To tell which of cpkgs' arguments goes with the crashes at exit (--modes).
MORE_MODES = ("default+client", "cpkgs-noclient")


def outcome(proc: subprocess.CompletedProcess[bytes]) -> str:
    if proc.returncode == 0:
        return "ok"
    if proc.returncode > 0:
        raise SystemExit(f"failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}")
    return C.crash_text(proc)


def part1(tmp: Path, channels: list[Path], specs: list[str], runs: int, modes: tuple[str, ...]
          ) -> dict[str, Counter[str]]:
    chans = ",".join(c.as_uri() for c in channels)
    cache = tmp / "cache"
    root = C.make_site(tmp / "site", channels[0])
    copts = [a for c in channels for a in ("-c", c.as_uri())]
    results: dict[str, Counter[str]] = {m: Counter() for m in (*modes, "cpkgs new-env")}
    for i in range(runs + 1):  # round 0 warms both caches and is not counted
        for mode in modes:
            prefix = tmp / "env"
            proc = subprocess.run([C.PYTHON, "-c", SCRIPT, chans, str(cache), str(prefix), mode, *specs],
                                  capture_output=True, check=False)
            C.rmtree(prefix)
            if i:
                results[mode][outcome(proc)] += 1
        proc = subprocess.run([C.CPKGS, "--root", str(root), "new-env", f"probe-1.{i}", *specs, *copts, "--json"],
                              capture_output=True, check=False)
        got = outcome(proc)
        if got == "ok":
            C.rmtree(Path(json.loads(proc.stdout)["prefix"]))
        if i:
            results["cpkgs new-env"][got] += 1
        C.log(f"  round {i}/{runs}: " + "; ".join(f"{m}: {dict(c)}" for m, c in results.items()))
    return results


def part2(tmp: Path, channels: list[Path], specs: list[str]) -> None:
    root = C.make_site(tmp / "site2", channels[0])
    copts = [a for c in channels for a in ("-c", c.as_uri())]
    envs = root / "anaconda3_linux" / "envs"
    for sig in (signal.SIGABRT, signal.SIGSEGV):
        name = f"crash-{sig.name.lower()}-1.0"
        # A first build warms the cache, so the crash lands in the link phase, as in a warm site's builds.
        C.cpkgs(root, "new-env", f"warm-{sig.name.lower()}-1.0", *specs, *copts)
        proc = subprocess.Popen([C.CPKGS, "--root", str(root), "new-env", name, *specs, *copts],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        # Into rattler's linking: the first package's conda-meta record is written.
        while not list(envs.glob(f".staging-{name}@*/conda-meta/*.json")) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(sig)
        records = len(list(envs.glob(f".staging-{name}@*/conda-meta/*.json")))
        proc.wait()
        print(f"{sig.name} sent to new-env {name} during the install (sent when the first conda-meta record appeared; {records} there after the crash): "
              f"exit {proc.returncode}")
        for p in sorted(envs.iterdir()):
            st = p.lstat()
            print(f"  left in envs/: {p.name}  mode {oct(st.st_mode & 0o7777)}")
        for p in sorted((root / ".cpkgs" / "locks").rglob("*.lock")):
            pid = [ln for ln in p.read_text(errors="replace").splitlines() if ln.startswith("pid=")]
            print(f"  lock file: {p.relative_to(root)} ({', '.join(pid) or 'no owner line'}; dead pid {proc.pid})")
        locks = C.cpkgs(root, "locks")
        print("  cpkgs locks: " + (locks.stdout.strip() or "(none)").replace("\n", "\n    ")
              + (f" [stderr: {locks.stderr.strip()}]" if locks.stderr.strip() else ""))
        again = subprocess.run([C.CPKGS, "--root", str(root), "-v", "new-env", name, *specs, *copts],
                               capture_output=True, text=True, check=False)
        said = [ln for ln in again.stderr.splitlines() if "leftover" in ln or "removed" in ln or "lock" in ln]
        print(f"  next new-env {name}: exit {again.returncode}; {'; '.join(said) or 'nothing said'}")
        print(f"  envs/ after it: {', '.join(sorted(p.name for p in envs.iterdir()))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--small", type=int, default=110, metavar="N",
                    help="the env: python + N packages of 400 small files (0: the standard 5 specs)")
    ap.add_argument("--part", choices=("1", "2", "both"), default="both")
    ap.add_argument("--modes", nargs="+", choices=(*MODES, *MORE_MODES), default=MODES)
    args = ap.parse_args()
    channel = C.channel_dir()
    C.print_machine()
    channels, specs = [channel], list(C.SPECS)
    if args.small:
        import _bulk_channel

        channels.append(_bulk_channel.small_channel())
        specs = ["python", *_bulk_channel.small_specs(args.small)]
    with C.temp_dir("crash") as tmp:
        if args.part in ("1", "both"):
            results = part1(tmp, channels, specs, args.runs, tuple(args.modes))
            print(f"{args.runs} runs each, env: {specs[0]} + {len(specs) - 1} more specs")
            for mode, counts in results.items():
                print(f"  {mode:15} " + "; ".join(f"{n} x {what}" for what, n in counts.most_common()))
        if args.part in ("2", "both"):
            part2(tmp, channels, specs)


if __name__ == "__main__":
    main()
