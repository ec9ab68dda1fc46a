"""Worker processes for a full render: the env pages of a 500-env site are most of its time and each needs only its
own family's records, so shares of whole families are rendered side by side (issue 17: a full render in ~2 s).

Forked, never spawned: a worker inherits the render's inputs (site, listing, usage panels) instead of re-importing
cpkgs and pickling them. Fork copies only the calling thread, so it is used only while the process has no thread but
the site lock's lease heartbeat (filelock resets its lease state in a forked child): a lock held by any other, e.g.
in rattler's runtime or the template warm-up of new-env, would stay held in the child. Otherwise, off Linux, on one
CPU or for a small site, the caller renders in-process as before.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from cpkgs_admin.errors import CpkgsError, UsageError
from cpkgs_admin.site.names import parse_name

T = TypeVar("T")
R = TypeVar("R")

# Below this many envs the forks (~10 ms each) and the results' pickling cost more than they save.
MIN_ENVS = 64
MAX_WORKERS = 8
_HEARTBEAT = "filelock-lease-"  # filelock's name for the thread that renews a lease

_TASK: tuple[Callable[[Any], Any], Sequence[Any]] | None = None  # set by map_forked for the forked workers


def worker_count(envs: int) -> int:
    """How many workers a full render of ENVS envs gets here: 1 means render in-process."""
    if sys.platform != "linux" or envs < MIN_ENVS or not _fork_safe():
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS, envs // (MIN_ENVS // 2)))


def _fork_safe() -> bool:
    """Every thread of the process (native ones included: /proc counts them, threading does not) is the caller's
    or a filelock heartbeat."""
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        return False
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    return native == len(others) + 1 and all(t.name.startswith(_HEARTBEAT) for t in others)


def family_shares(names: Iterable[str], count: int) -> list[list[str]]:
    """NAMES in COUNT shares of whole families (by the family in the name), the largest families placed first on
    the smallest share. A name the naming rules reject is a family of its own (records made by hand)."""
    families: dict[str, list[str]] = {}
    for name in sorted(names):
        try:
            family = parse_name(name).family
        except UsageError:
            family = name
        families.setdefault(family, []).append(name)
    shares: list[list[str]] = [[] for _ in range(count)]
    for members in sorted(families.values(), key=len, reverse=True):
        min(shares, key=len).extend(members)
    return [s for s in shares if s]


def map_forked(fn: Callable[[T], R], items: Sequence[T]) -> list[R] | None:
    """[fn(item) for item in ITEMS], one forked worker per item; None when a worker died (the caller then does the
    work in-process). FN and ITEMS are inherited by the workers, only the results are pickled."""
    global _TASK
    _TASK = (fn, items)
    try:
        # The processes are forked before the pool starts its manager thread (ProcessPoolExecutor launches every
        # worker up front for the fork method).
        pool = ProcessPoolExecutor(len(items), mp_context=multiprocessing.get_context("fork"), initializer=_worker_init)
        with pool:
            return list(pool.map(_run, range(len(items))))
    except BrokenProcessPool:  # a worker killed (OOM, kill -9): its share is redone by the caller
        return None
    finally:
        _TASK = None


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: the parent alone reports it (the CLI's one line); a worker finishes
    # its share, which the parent's shutdown waits for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(index: int) -> Any:
    if _TASK is None:  # pragma: no cover - only reachable if the pool were not forked from map_forked
        raise CpkgsError("catalog worker started without its task")
    fn, items = _TASK
    return fn(items[index])
