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

from server.engine.errors import ApiError
from server.engine.metrics import DATABASE_WAIT_BUCKETS, LockedHistogram

P = ParamSpec("P")
R = TypeVar("R")

# Enough threads for concurrent registers and cold-queue rebuilds while the consumer
# reads; more would only queue on the connection pool (and SQLite serializes writers
# anyway).
DATABASE_THREADS = 8


class ShuttingDown(ApiError):
    """A request that needs the database arrived while the server stops: 503, and the
    client retries (Zulip's clients back off and retry on 5xx), on the next process."""

    status = 503

    def __init__(self) -> None:
        super().__init__("The server is restarting; try again.")


class DatabaseThreads:
    """Runs blocking callables on worker threads and awaits them from the loop."""

    def __init__(self, threads: int = DATABASE_THREADS) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="eventq-db")
        self._closed = False
        # From submit to the call's start: how long work queued for a free thread.
        self.wait = LockedHistogram(DATABASE_WAIT_BUCKETS)

    async def run(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`func(*args, **kwargs)` on a worker thread; its exception is raised here."""
        loop = asyncio.get_running_loop()
        submitted = time.monotonic()

        def call() -> R:
            self.wait.observe(time.monotonic() - submitted)
            return func(*args, **kwargs)

        try:
            return await loop.run_in_executor(self._executor, call)
        except RuntimeError as error:
            if self._closed:  # "cannot schedule new futures after shutdown"
                raise ShuttingDown() from error
            raise

    def shutdown(self) -> None:
        """Wait for the calls in flight, then stop the threads; later calls raise
        `ShuttingDown` (a request that arrives while the server stops)."""
        self._closed = True
        self._executor.shutdown(wait=True)
