"""A request that reaches the realm lock while another transaction holds it.

PostgreSQL readers do not wait for writers, so a request that read its actor before
taking the realm lock would read them as the last commit left them, and then act on
that stale read once the lock was free. `request_behind_the_lock` runs that race in a
fixed order: the holder's transaction does its work, the request starts on a thread of
its own, and the holder commits only once the request is about to lock (its
advisory lock statement is being sent).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

from models.database import Database

# How long the request may take to reach the lock, and to finish once it is free.
THREAD_TIMEOUT_SECS = 30.0
T = TypeVar("T")


def request_behind_the_lock(
    db: Database, holder: Callable[[Session], T], request: Callable[[Session], object]
) -> tuple[T, object]:
    """Run `holder(session)` in a write transaction, start `request(session)` in another
    on a thread, commit the holder's once the request is about to lock, and return what
    the holder returned and what the request returned or raised."""
    about_to_lock = threading.Event()
    outcome: list[object] = []

    def run_request() -> None:
        try:
            with db.write() as session:
                outcome.append(request(session))
        except Exception as error:  # handed to the test thread, which asserts on it
            outcome.append(error)

    worker = threading.Thread(target=run_request, name="request-behind-the-lock")

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if threading.current_thread() is worker and "pg_advisory_xact_lock" in statement:
            about_to_lock.set()

    event.listen(db.engine, "before_cursor_execute", before_cursor_execute)
    try:
        with db.write() as holding:
            held = holder(holding)
            worker.start()
            assert about_to_lock.wait(THREAD_TIMEOUT_SECS), "the request never tried to lock"
        # Committed: the request's lock is free now.
        worker.join(THREAD_TIMEOUT_SECS)
        assert not worker.is_alive(), "the request is still waiting"
    finally:
        event.remove(db.engine, "before_cursor_execute", before_cursor_execute)
    [result] = outcome
    return held, result
