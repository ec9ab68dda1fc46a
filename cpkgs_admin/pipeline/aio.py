"""asyncio.run for py-rattler's coroutines, with Ctrl-C never lost.

asyncio.run (3.11+) replaces Python's SIGINT handler by one that only cancels the running task and raises
KeyboardInterrupt once the task has ended cancelled. A rattler future that finishes before the cancellation reaches
it ends normally, and the interrupt is gone: the user's Ctrl-C during a solve or an install is ignored and the build
goes on. A SIGINT that arrives while the loop is being set up is handled by that handler as well, with the same
result (seen: a test interrupting at the first event loop's creation got a finished build one run in three).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(CORO) with a plain raising SIGINT handler in place: asyncio installs its own only when it finds
    Python's default one, so the interrupt stops the loop at once (asyncio then cancels the task and waits for it)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return asyncio.run(coro)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return asyncio.run(coro)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
