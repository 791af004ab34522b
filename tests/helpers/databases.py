"""Test databases: a fresh SQLite file, or a fresh schema in the test PostgreSQL.

PostgreSQL comes from `EVENTQ_TEST_POSTGRES_URL` (default: the local server's `test`
database). Each test gets its own schema, created empty and dropped afterwards, so tests
are isolated without creating databases. When PostgreSQL is unreachable a developer's
run skips the PostgreSQL half and says so; under `CI=true` that is a failure.

`postmaster_identity` tells which server process answers at a URL, so a test that must
leave the shared server alone (the outage test restarts a private cluster) can check
that it did.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import NoReturn
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


def skip_or_fail(needed: str, problem: str) -> NoReturn:
    """Skip the current test on a developer's machine; under CI=true, fail it instead.

    CI must never turn green by skipping what it was meant to test, while a developer
    without, say, PostgreSQL can still run the rest of the suite.
    """
    if IN_CI:
        pytest.fail(f"CI=true requires {needed}: {problem}")
    pytest.skip(problem)


def require_postgres() -> None:
    """Skip (developer) or fail (CI) the current test when PostgreSQL is unreachable."""
    problem = postgres_problem()
    if problem is not None:
        skip_or_fail("PostgreSQL", problem)


def postmaster_identity(url: str | None = None) -> str | None:
    """Which server process answers at `url` (default: the test PostgreSQL), or None.

    The postmaster's PID and start time: a restart changes both. The PID comes from the
    server's own postmaster.pid, read through SQL so that no file permissions on this
    machine matter; it needs a superuser (the test URLs use one), and without one the
    start time alone still tells a restart apart. None when nothing answers.
    """
    try:
        with psycopg.connect(url or postgres_url(), connect_timeout=3, autocommit=True) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
            started = "unknown" if row is None else str(row[0])
            try:
                pid_row = conn.execute(
                    "SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1)"
                ).fetchone()
            except psycopg.errors.InsufficientPrivilege:
                pid_row = None
    except psycopg.OperationalError:
        return None
    pid = "unknown" if pid_row is None else str(pid_row[0])
    return f"postmaster PID {pid}, started {started}"


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
