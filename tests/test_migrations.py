"""The Alembic migrations and the models agree, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from migrations import alembic_config, upgrade
from models.base import Base
from models.database import Database
from models.messages.search import include_name


def test_models_match_migrations(db: Database) -> None:
    """Autogenerate against the migrated database finds no difference."""
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            # Leaves out the full-text search structures, as migrations/env.py does.
            opts={"compare_type": True, "render_as_batch": True, "include_name": include_name},
        )
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_is_idempotent_and_reaches_head(database_url: str, db: Database) -> None:
    upgrade(database_url)  # a second run is a no-op
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    with db.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head


def test_every_constraint_is_named(db: Database) -> None:
    for table in Base.metadata.tables.values():
        for constraint in table.constraints:
            assert constraint.name, f"unnamed constraint on {table.name}"
