"""Alembic migrations of the eventq schema, and the helpers that run them.

`upgrade(url)` brings a database to the newest revision; `alembic_config(url)` builds
the configuration without an alembic.ini on disk, so the installed package migrates
from any working directory. Every revision runs on SQLite (batch mode) and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the database at `url`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would treat a '%' in a password as a reference.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision`."""
    command.upgrade(alembic_config(url), revision)


class SchemaOutOfDate(RuntimeError):
    """Raised by `check_schema` when the database is not at the newest revision."""


def check_schema(url: str) -> None:
    """Refuse to run against a database that is not migrated to the newest revision."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema is at revision {current or 'none'}, this eventq needs "
            f"{head}: run `eventq migrate` first"
        )
