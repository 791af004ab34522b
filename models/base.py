"""The declarative base shared by every table, with a naming convention for constraints.

Named constraints let Alembic drop and alter them by name on both SQLite (batch mode)
and PostgreSQL, so one migration runs unchanged on each.
"""

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base class of every eventq table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
