"""The bridge from the event loop to blocking database work: a bounded thread pool.

The Tornado loop never runs SQL itself; everything that touches the database goes
through `DatabaseThreads.run`, which hands the call to one of a few worker threads and
awaits its result. SQLAlchemy sessions are opened and closed inside the worker call, so
no session ever crosses threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from server.metrics import DATABASE_WAIT_BUCKETS, LockedHistogram

P = ParamSpec("P")
R = TypeVar("R")

# Enough threads for concurrent registers and cold-queue rebuilds while the consumer
# reads; more would only queue on the connection pool (and SQLite serializes writers
# anyway).
DATABASE_THREADS = 8


class DatabaseThreads:
    """Runs blocking callables on worker threads and awaits them from the loop."""

    def __init__(self, threads: int = DATABASE_THREADS) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="eventq-db")
        # From submit to the call's start: how long work queued for a free thread.
        self.wait = LockedHistogram(DATABASE_WAIT_BUCKETS)

    async def run(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`func(*args, **kwargs)` on a worker thread; its exception is raised here."""
        loop = asyncio.get_running_loop()
        submitted = time.monotonic()

        def call() -> R:
            self.wait.observe(time.monotonic() - submitted)
            return func(*args, **kwargs)

        return await loop.run_in_executor(self._executor, call)

    def shutdown(self) -> None:
        """Wait for the calls in flight, then stop the threads."""
        self._executor.shutdown(wait=True)
