"""Wake-up sources: what tells the outbox consumer that new rows were committed.

PostgreSQL: a thread LISTENs on `models.outbox.NOTIFY_CHANNEL`; every action's
transaction NOTIFYs at commit. SQLite has no NOTIFY: a thread reads `PRAGMA
data_version`, a counter SQLite bumps whenever another connection commits, and wakes
the consumer when it changes. Either way the source only calls `wake` (thread-safely,
on the loop); it never reads the outbox itself, so a lost wake-up costs latency (the
consumer's slow safety poll catches up), never an event.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Protocol

import psycopg
from sqlalchemy.engine import make_url

from models.database import SQLITE_BUSY_TIMEOUT_SECS, Database
from models.outbox import NOTIFY_CHANNEL

log = logging.getLogger("eventq.wakeup")

# How often the SQLite watcher reads `PRAGMA data_version`. The pragma touches no
# table, so idling costs little CPU, and the median delivery delay stays under this
# interval plus one request.
SQLITE_POLL_INTERVAL_SECS = 0.005
# After the LISTEN connection fails (database down), reconnect this often.
RECONNECT_DELAY_SECS = 1.0
# How long one wait for notifications blocks before the thread checks for shutdown.
LISTEN_WAIT_SECS = 1.0


class WakeupSource(Protocol):
    """Something that calls `wake` on the loop when new outbox rows may exist."""

    def start(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None: ...

    def stop(self) -> None: ...


class _WatcherThread:
    """A daemon thread that runs `_watch` until `stop`."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        def notify() -> None:
            try:
                loop.call_soon_threadsafe(wake)
            except RuntimeError:
                self._stopping.set()  # the loop closed under us: the process is exiting

        self._thread = threading.Thread(
            target=self._watch, args=(notify,), name="eventq-outbox-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _watch(self, notify: Callable[[], None]) -> None:
        raise NotImplementedError


class PostgresListener(_WatcherThread):
    """LISTEN on a dedicated autocommit connection; each NOTIFY wakes the consumer."""

    def __init__(self, database_url: str) -> None:
        super().__init__()
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)

    def _watch(self, notify: Callable[[], None]) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    # Rows committed while we were not listening: look now.
                    notify()
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=LISTEN_WAIT_SECS):
                            notify()
            except psycopg.Error as error:
                log.warning("LISTEN connection lost (%s); reconnecting", str(error).strip())
                self._stopping.wait(RECONNECT_DELAY_SECS)


class SqliteWatcher(_WatcherThread):
    """Reads `PRAGMA data_version` every few milliseconds; a change wakes the consumer."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def _watch(self, notify: Callable[[], None]) -> None:
        try:
            connection = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_SECS)
            try:
                seen = None
                while not self._stopping.wait(SQLITE_POLL_INTERVAL_SECS):
                    version = connection.execute("PRAGMA data_version").fetchone()[0]
                    if version != seen:
                        seen = version
                        notify()
            finally:
                connection.close()
        except sqlite3.Error:
            log.exception("SQLite watcher failed; delivery falls back to the slow poll")


class NoWakeups:
    """An in-memory SQLite database has one process and one connection pool: the
    consumer is woken by the actions of this process (`EventService.wake_consumer`)."""

    def start(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        return None

    def stop(self) -> None:
        return None


def wakeup_source_for(db: Database) -> WakeupSource:
    """The wake-up source that fits the database."""
    if db.is_postgresql:
        return PostgresListener(db.url)
    path = make_url(db.url).database
    if not path or path == ":memory:":
        return NoWakeups()
    return SqliteWatcher(path)
