"""Fixtures shared by the suite: a migrated database on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from migrations import upgrade
from models.database import Database
from tests.helpers.databases import BACKENDS, database_url_for


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test; every database test runs on both."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an empty database, migrated to the newest schema."""
    with database_url_for(backend, str(tmp_path_factory.mktemp("db"))) as url:
        upgrade(url)
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A `Database` on the migrated test database."""
    database = Database(database_url)
    yield database
    database.dispose()
