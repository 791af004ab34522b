"""The sample realm in a fresh SQLite database, for tests whose subject does not depend
on the database backend (a page, an exposition format, a log format): they run once,
not once per backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from migrations import upgrade
from models.database import Database
from tests.helpers.databases import database_url_for
from tests.helpers.realms import SampleRealm, make_sample_realm


@contextmanager
def sqlite_sample_realm(directory: Path) -> Iterator[tuple[str, SampleRealm]]:
    """(database URL, sample realm) of a migrated SQLite database in `directory`."""
    with database_url_for("sqlite", str(directory)) as url:
        upgrade(url)
        db = Database(url)
        try:
            realm = make_sample_realm(db)
        finally:
            db.dispose()
        yield url, realm
