"""Shell benchmarks for conda.sh / conda.csh: start-up cost, `conda activate` cost, system calls on the root.

Builds its own site from the local test channel (so `make bench` works on a fresh machine), then times real
shells: medians of alternating runs (A, B, A, B, ...) so drift hits both sides alike.
Targets (issue 4): sourcing conda.sh adds <= 3 ms to `bash -c :`; `conda activate` <= 10 ms; <= 5 system
calls on the site root per shell start.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "channel"))

from build_channel import ensure_channel  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "30"))


def cpkgs(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "cpkgs_admin", "--root", str(root), *args], check=True,
                   capture_output=True, cwd=str(REPO))


def build_site(tmp: Path) -> Path:
    root = tmp / "site"
    cpkgs(root, "init", "-c", ensure_channel().as_uri())
    cpkgs(root, "new-env", "demo-1.0", "python", "cpkgs-test-app", "cpkgs-test-activate", "cpkgs-test-lib 1.1.*")
    return root


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def alternate(a: list[str], b: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Median seconds of a and of b, run alternately RUNS times each (after one warm-up of each)."""
    timed(a, env)
    timed(b, env)
    ta, tb = [], []
    for _ in range(RUNS):
        ta.append(timed(a, env))
        tb.append(timed(b, env))
    return statistics.median(ta), statistics.median(tb)


def strace_counts(cmd: list[str], env: dict[str, str], root: Path, tmp: Path) -> tuple[int, int]:
    """(file system calls naming a path under the root, processes forked) for one run of cmd."""
    out = tmp / "strace.out"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,fork,vfork,clone,clone3", "-o", str(out), *cmd],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = out.read_text().splitlines()
    on_root = sum(1 for ln in lines if f'"{root}' in ln)
    forks = sum(1 for ln in lines if any(f" {c}(" in ln for c in ("fork", "vfork", "clone", "clone3")))
    return on_root, forks


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="cpkgs-bench-"))
    try:
        root = build_site(tmp)
        (tmp / "localtmp").mkdir()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp / "localtmp"),
               "LC_ALL": "C"}
        sh_prof = root / "etc" / "profile.d" / "conda.sh"
        csh_prof = root / "etc" / "profile.d" / "conda.csh"
        src = f". '{sh_prof}'"
        act = f"{src}; conda activate demo-1.0"
        subprocess.run(["bash", "-c", src], env=env, check=True)  # first source creates the package cache dir

        print(f"# shell benchmarks: medians of {RUNS} alternating runs; site {root}")
        print("| measurement | shell | bare | with cpkgs | added |")
        print("|---|---|---|---|---|")
        results: dict[tuple[str, str], float] = {}
        shells = [s for s in ("bash", "dash", "zsh", "ksh") if shutil.which(s)]
        for sh in shells:
            bare, with_src = alternate([sh, "-c", ":"], [sh, "-c", src], env)
            results[("startup", sh)] = with_src - bare
            print(f"| start-up: source conda.sh | {sh} | {bare * 1e3:.2f} ms | {with_src * 1e3:.2f} ms "
                  f"| {(with_src - bare) * 1e3:.2f} ms |")
        for sh in shells:
            base, with_act = alternate([sh, "-c", src], [sh, "-c", act], env)
            results[("activate", sh)] = with_act - base
            print(f"| conda activate demo-1.0 | {sh} | {base * 1e3:.2f} ms | {with_act * 1e3:.2f} ms "
                  f"| {(with_act - base) * 1e3:.2f} ms |")
        if shutil.which("tcsh"):
            bare, with_src = alternate(["tcsh", "-f", "-c", ":"], ["tcsh", "-f", "-c", f"source '{csh_prof}'"], env)
            print(f"| start-up: source conda.csh | tcsh | {bare * 1e3:.2f} ms | {with_src * 1e3:.2f} ms "
                  f"| {(with_src - bare) * 1e3:.2f} ms |")
            script = tmp / "act.csh"
            script.write_text(f"source '{csh_prof}'\nconda activate demo-1.0\n")
            base, with_act = alternate(["tcsh", "-f", "-c", f"source '{csh_prof}'"], ["tcsh", "-f", str(script)], env)
            print(f"| conda activate demo-1.0 | tcsh | {base * 1e3:.2f} ms | {with_act * 1e3:.2f} ms "
                  f"| {(with_act - base) * 1e3:.2f} ms |")
        print("(for scale: conda's own `conda shell.bash hook` starts Python, about 65 ms at best)")

        ok = True
        if shutil.which("strace"):
            print()
            print("| per shell start (strace -f) | shell | file syscalls on the root | forks added |")
            print("|---|---|---|---|")
            for sh in shells:
                on_root, forks = strace_counts([sh, "-c", src], env, root, tmp)
                _, bare_forks = strace_counts([sh, "-c", ":"], env, root, tmp)
                print(f"| source conda.sh | {sh} | {on_root} | {forks - bare_forks} |")
                if sh == "bash":
                    ok &= on_root <= 5 and forks - bare_forks <= 1
            on_root, forks = strace_counts(["tcsh", "-f", "-c", f"source '{csh_prof}'"], env, root, tmp)
            print(f"| source conda.csh | tcsh | {on_root} | {forks} |")
        else:
            print("strace not installed: system-call counts skipped (make sysdeps installs it)")
        ok &= results[("startup", "bash")] <= 0.003 and results[("activate", "bash")] <= 0.010
        print()
        print("targets (bash: start-up <= 3 ms, activate <= 10 ms, <= 5 root syscalls, 1 fork):",
              "met" if ok else "NOT met")
        return 0
    finally:
        for dirpath, dirnames, _ in os.walk(tmp):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
