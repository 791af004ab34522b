"""Alembic environment: migrates the database named in the configuration's URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

import models.tables  # noqa: F401  (registers every table on Base.metadata)
from models.base import Base
from models.database import Database
from models.messages.search import include_name

# The full-text search structures (an FTS5 table and its shadow tables on SQLite, an
# expression GIN index on PostgreSQL) exist only in migration 0011: no portable model
# object declares them, so a comparison with the models (`alembic revision
# --autogenerate`, tests/test_migrations.py) leaves them out instead of proposing to
# drop them. `models.messages.search.include_name` names them.

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade --sql`)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a live connection."""
    url = config.get_main_option("sqlalchemy.url")
    assert url, "alembic_config() always sets sqlalchemy.url"
    database = Database(url)
    connectable = database.engine.execution_options(poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            compare_type=True,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
    database.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
