"""Test databases: a fresh SQLite file, or a fresh schema in the test PostgreSQL.

PostgreSQL comes from `EVENTQ_TEST_POSTGRES_URL` (default: the local server's `test`
database). Each test gets its own schema, created empty and dropped afterwards, so tests
are isolated without creating databases. When PostgreSQL is unreachable a developer's
run skips the PostgreSQL half and says so; under `CI=true` that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from urllib.parse import quote

import psycopg
import pytest

DEFAULT_TEST_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql")


def postgres_url() -> str:
    """The base URL of the test PostgreSQL."""
    return os.environ.get("EVENTQ_TEST_POSTGRES_URL") or DEFAULT_TEST_POSTGRES_URL


@cache
def postgres_problem() -> str | None:
    """Why the test PostgreSQL cannot be used, or None when it can."""
    try:
        with psycopg.connect(postgres_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return f"PostgreSQL at {postgres_url()} is unreachable: {str(error).strip()}"
    return None


def require_postgres() -> None:
    """Skip (developer) or fail (CI) the current test when PostgreSQL is unreachable."""
    problem = postgres_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true requires PostgreSQL: {problem}")
    pytest.skip(problem)


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A SQLAlchemy URL whose connections use a fresh, empty schema, dropped afterwards."""
    schema = f"eventq_test_{uuid.uuid4().hex[:12]}"
    base = postgres_url()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base else "?"
    url = base + separator + "options=" + quote(f"-csearch_path={schema}")
    try:
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def database_url_for(backend: str, directory: str) -> Iterator[str]:
    """A URL of an empty database of `backend` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        yield f"sqlite:///{directory}/eventq.sqlite3"
        return
    require_postgres()
    with postgres_schema_url() as url:
        yield url
