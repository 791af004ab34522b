"""The database handle: engine, write transactions and snapshot reads.

Two kinds of transaction exist, and every caller picks one:

* `Database.write()`: a transaction that may append outbox events. On SQLite it starts
  with `BEGIN IMMEDIATE`, which takes the database's write lock before anything is
  read, so that the realm lock of docs/architecture.md §4 holds on SQLite too. On
  PostgreSQL the action takes the realm lock itself (`models.outbox.lock_realm`).
* `Database.snapshot()`: a read-only transaction in which every query sees the same
  snapshot (REPEATABLE READ on PostgreSQL; a deferred SQLite transaction in WAL mode).
  `register` reads its state and the realm's outbox position in one of these.

Both are synchronous; the server runs them on a thread pool, never on the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# Where `make run` keeps its embedded database when EVENTQ_DATABASE_URL is not set: the
# checkout's var/ (eventq runs from its checkout, installed editable by `make`), so that
# a command run from another directory finds the same file instead of making a new one.
PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_DIR / "var" / "eventq.sqlite3"
# SQLite writers wait this long for the write lock before failing with "database is
# locked": long enough for any single action, short enough to surface a stuck writer.
SQLITE_BUSY_TIMEOUT_SECS = 30.0
_WRITE_OPTION = "eventq_write"


def default_database_url() -> str:
    """`EVENTQ_DATABASE_URL`, or the SQLite file under the checkout's `var/`."""
    url = os.environ.get("EVENTQ_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


def normalize_url(url: str) -> str:
    """Make `postgresql://` URLs use psycopg 3, the driver eventq pins."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _configure_sqlite(engine: Engine) -> None:
    """Let eventq own SQLite transactions so it can choose BEGIN vs BEGIN IMMEDIATE."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN would start transactions too late and deferred.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets snapshot readers run while a writer holds the lock.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


class Database:
    """One database: an engine plus the two session factories described above."""

    def __init__(self, url: str | None = None, *, echo: bool = False) -> None:
        self.url = normalize_url(url or default_database_url())
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgresql = parsed.get_backend_name() == "postgresql"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(
                self.url,
                echo=echo,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECS, "check_same_thread": False},
            )
            _configure_sqlite(self.engine)
            snapshot_engine = self.engine
        else:
            self.engine = create_engine(self.url, echo=echo, pool_pre_ping=True)
            snapshot_engine = self.engine.execution_options(isolation_level="REPEATABLE READ")
        write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        self._write_sessions = sessionmaker(bind=write_engine, expire_on_commit=False)
        self._snapshot_sessions = sessionmaker(bind=snapshot_engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: commits on success, rolls back on any exception."""
        with self._write_sessions.begin() as session:
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read-only transaction whose queries all see one snapshot; never commits.

        Closing the session ends the transaction (the pool rolls the connection back)
        without expiring the objects read, so callers may use them afterwards.
        """
        with self._snapshot_sessions() as session:
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
