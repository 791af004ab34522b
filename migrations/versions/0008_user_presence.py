"""`user_presence`: each user's last connected and last active times (Zulip's presence).

One row per user, written by `POST /users/me/presence` (`actions.presence`); the index
`(realm_id, last_update_id)` serves a realm's full read and its incremental one. No
existing data: every user starts with no row, as a user who never pinged.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_presence",
        sa.Column("user_profile_id", sa.Integer(), nullable=False),
        sa.Column("realm_id", sa.Integer(), nullable=False),
        sa.Column("last_connected_time", sa.Float(), nullable=False),
        sa.Column("last_active_time", sa.Float(), nullable=True),
        sa.Column("last_update_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_profile_id"],
            ["user_profile.id"],
            name=op.f("fk_user_presence_user_profile_id_user_profile"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_profile_id", name=op.f("pk_user_presence")),
    )
    with op.batch_alter_table("user_presence") as batch:
        batch.create_index(
            "ix_user_presence_realm_id_last_update_id", ["realm_id", "last_update_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("user_presence") as batch:
        batch.drop_index("ix_user_presence_realm_id_last_update_id")
    op.drop_table("user_presence")
