"""A real process using cpkgs' site lock, for the lock tests.

usage: lock_worker.py ROOT count N COUNTER     increment COUNTER N times, each under the site lock
       lock_worker.py ROOT hold                take the site lock, print 'held', sleep until killed
       lock_worker.py ROOT take TIMEOUT        take the site lock within TIMEOUT s, print seconds waited
       lock_worker.py ROOT nolock N COUNTER    the unlocked control: lost updates expected
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cpkgs_admin.errors import LockBusy
from cpkgs_admin.site.locks import site_locked
from cpkgs_admin.site.paths import open_site


def bump(counter: Path) -> None:
    value = int(counter.read_text() or "0")
    time.sleep(0.001)  # widen the read-modify-write window so a missing lock shows
    counter.write_text(str(value + 1))


def main() -> int:
    site = open_site(Path(sys.argv[1]))
    mode = sys.argv[2]
    if mode == "count":
        n, counter = int(sys.argv[3]), Path(sys.argv[4])
        for _ in range(n):
            with site_locked(site):
                bump(counter)
    elif mode == "nolock":
        n, counter = int(sys.argv[3]), Path(sys.argv[4])
        for _ in range(n):
            bump(counter)
    elif mode == "hold":
        with site_locked(site):
            print("held", flush=True)
            time.sleep(3600)
    elif mode == "take":
        t = time.monotonic()
        try:
            with site_locked(site, timeout=float(sys.argv[3])):
                print(f"{time.monotonic() - t:.3f}", flush=True)
        except LockBusy as exc:
            print(f"busy: {exc}", flush=True)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
