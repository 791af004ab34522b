"""Counting the SQL statements an action runs (the `before_cursor_execute` listener)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event

# Transaction control is not work the action chose to do.
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@dataclass
class StatementLog:
    """The statements seen while the listener was attached."""

    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)


@contextmanager
def count_statements(engine: Engine) -> Iterator[StatementLog]:
    """Count the statements of every connection of `engine` inside the block.

    Attached to the Engine (not a connection) before the block opens any connection, so
    nothing is missed; option engines derived from it share its listeners.
    """
    log = StatementLog()

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if not statement.lstrip().upper().startswith(_CONTROL):
            log.statements.append(statement)

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield log
    finally:
        event.remove(engine, "before_cursor_execute", before_cursor_execute)


def is_realm_lock(statement: str, is_sqlite: bool, *, shared: bool = False) -> bool:
    """Whether `statement` is `models.outbox.lock_realm`'s, in the mode asked for.

    On SQLite the write transaction is the lock, and the statement only reads the realm.
    """
    flat = " ".join(statement.split())
    if not flat.startswith("SELECT realm.id") or "FROM realm WHERE realm.id" not in flat:
        return False
    function = "pg_advisory_xact_lock_shared(" if shared else "pg_advisory_xact_lock("
    return is_sqlite or function in flat
