"""Fixtures shared by the suite: a migrated database on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from migrations import upgrade
from models.database import Database
from tests.helpers.databases import BACKENDS, database_url_for
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server


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


@pytest.fixture
def realm(db: Database) -> SampleRealm:
    """The sample realm: a user of every viewpoint, a channel of every kind."""
    return make_sample_realm(db)


@pytest.fixture
def server(database_url: str, realm: SampleRealm) -> Iterator[LiveServer]:
    """A real `eventq serve` process on the sample realm's database."""
    with live_server(database_url) as running:
        yield running
