"""reaction: emoji reactions on messages (Zulip's `Reaction`).

One row per (message, user, reaction type, emoji code), which is also the unique key;
its leading `message_id` serves reading a message's reactions. No existing data.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 23:59:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reaction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("user_profile_id", sa.Integer(), nullable=False),
        sa.Column("emoji_name", sa.String(length=100), nullable=False),
        sa.Column("emoji_code", sa.String(length=100), nullable=False),
        sa.Column("reaction_type", sa.String(length=30), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["message.id"],
            name=op.f("fk_reaction_message_id_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_profile_id"],
            ["user_profile.id"],
            name=op.f("fk_reaction_user_profile_id_user_profile"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reaction")),
        sa.UniqueConstraint(
            "message_id",
            "user_profile_id",
            "reaction_type",
            "emoji_code",
            name=op.f("uq_reaction_message_id_user_profile_id_reaction_type_emoji_code"),
        ),
    )


def downgrade() -> None:
    op.drop_table("reaction")
