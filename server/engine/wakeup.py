"""Wake-up sources: what tells the outbox consumer that new rows were committed.

PostgreSQL: a thread LISTENs on `models.outbox.NOTIFY_CHANNEL`; every action's
transaction NOTIFYs at commit. SQLite has no NOTIFY: a thread reads `PRAGMA
data_version`, a counter SQLite bumps whenever another connection commits, and wakes
the consumer when it changes. Either way the source only calls `wake` (thread-safely,
on the loop); it never reads the outbox itself, so a lost wake-up costs latency (the
consumer's slow safety poll catches up), never an event.

The PostgreSQL listener also LISTENs on the ephemeral channel of its schema
(`server.engine.ephemeral`) and hands each payload, on the loop, to the callback given
to `start`: typing notifications sent by any shard, this one included. Those are not
wake-ups: a payload lost while the connection was down is lost for good, as an
ephemeral event may be. SQLite and in-memory databases have one process, which
delivers its ephemeral events itself.
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
from server.engine.ephemeral import ephemeral_channel

log = logging.getLogger("eventq.wakeup")

# How often the SQLite watcher reads `PRAGMA data_version`. The pragma touches no
# table, so idling costs little CPU, and the median delivery delay stays under this
# interval plus one request.
SQLITE_POLL_INTERVAL_SECS = 0.005
# After the LISTEN connection fails (database down), reconnect this often.
RECONNECT_DELAY_SECS = 1.0
# How long one wait for notifications blocks before the thread checks for shutdown.
LISTEN_WAIT_SECS = 1.0


# Called on the loop with the payload of each ephemeral notification.
EphemeralCallback = Callable[[str], None]


class WakeupSource(Protocol):
    """Something that calls `wake` on the loop when new outbox rows may exist, and
    `ephemeral` with each ephemeral payload other processes may send (PostgreSQL).

    `listening` is set while the source hears every commit and every ephemeral payload
    (on PostgreSQL: while its LISTEN connection is up), so a caller can wait for it.
    """

    listening: threading.Event

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        ephemeral: EphemeralCallback | None = None,
    ) -> None: ...

    def stop(self) -> None: ...


class _WatcherThread:
    """A daemon thread that runs `_watch` until `stop`."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        ephemeral: EphemeralCallback | None = None,
    ) -> None:
        def notify() -> None:
            try:
                loop.call_soon_threadsafe(wake)
            except RuntimeError:
                self._stopping.set()  # the loop closed under us: the process is exiting

        forward: EphemeralCallback | None = None
        if ephemeral is not None:
            callback = ephemeral

            def forward(payload: str) -> None:
                try:
                    loop.call_soon_threadsafe(callback, payload)
                except RuntimeError:
                    self._stopping.set()

        self._thread = threading.Thread(
            target=self._watch, args=(notify, forward), name="eventq-outbox-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _watch(self, notify: Callable[[], None], forward: EphemeralCallback | None) -> None:
        raise NotImplementedError


class PostgresListener(_WatcherThread):
    """LISTEN on a dedicated autocommit connection; each NOTIFY on the outbox channel
    wakes the consumer, each on the ephemeral channel is forwarded with its payload."""

    def __init__(self, database_url: str) -> None:
        super().__init__()
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)

    def _watch(self, notify: Callable[[], None], forward: EphemeralCallback | None) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    ephemeral: str | None = None
                    if forward is not None:
                        row = conn.execute("SELECT current_schema()").fetchone()
                        ephemeral = ephemeral_channel(str(row[0]) if row else "public")
                        conn.execute(f"LISTEN {ephemeral}")
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    log.info(
                        "listening for outbox wake-ups on %s and ephemeral events on %s",
                        NOTIFY_CHANNEL,
                        ephemeral or "no channel",
                    )
                    self.listening.set()
                    # Rows committed while we were not listening: look now.
                    notify()
                    while not self._stopping.is_set():
                        for notification in conn.notifies(timeout=LISTEN_WAIT_SECS):
                            if forward is not None and notification.channel == ephemeral:
                                forward(notification.payload)
                            else:
                                notify()
            except psycopg.Error as error:
                self.listening.clear()
                log.warning("LISTEN connection lost (%s); reconnecting", str(error).strip())
                self._stopping.wait(RECONNECT_DELAY_SECS)


class SqliteWatcher(_WatcherThread):
    """Reads `PRAGMA data_version` every few milliseconds; a change wakes the consumer."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def _watch(self, notify: Callable[[], None], forward: EphemeralCallback | None) -> None:
        # One process per SQLite database: ephemeral events never come from elsewhere.
        try:
            connection = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_SECS)
            self.listening.set()
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

    def __init__(self) -> None:
        # Nothing can happen that this process would not see itself.
        self.listening = threading.Event()
        self.listening.set()

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        ephemeral: EphemeralCallback | None = None,
    ) -> None:
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
