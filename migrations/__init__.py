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
    from sqlalchemy import create_engine, make_url, pool

    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # Connecting would create an empty file: say which one is missing instead.
        path = Path(parsed.database).resolve()
        if not path.exists():
            raise SchemaOutOfDate(
                f"there is no database at {path}: run `eventq migrate` to create it there, "
                "or set EVENTQ_DATABASE_URL (or --database-url) to the one you meant"
            )
        shown = str(path)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema of {shown} is at revision {current or 'none'}, this eventq "
            f"needs {head}: run `eventq migrate` first"
        )
