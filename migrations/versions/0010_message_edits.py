"""message edits: the last edit and move times, and one row per edit (`message_edit`).

`message.last_edit_time` (content) and `message.last_moved_time` (topic or channel)
are NULL for every existing message, which was never edited. `message_edit` holds each
edit of each message (Zulip's `edit_history`), read per message through its index.
`user_message` gains an index on `message_id`: who has a message, the recipients of its
edit, deletion and reaction events.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 23:59:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("last_edit_time", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_moved_time", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "message_edit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("edit_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_content", sa.Text(), nullable=True),
        sa.Column("prev_rendered_content", sa.Text(), nullable=True),
        sa.Column("prev_subject", sa.String(length=60), nullable=True),
        sa.Column("subject", sa.String(length=60), nullable=True),
        sa.Column("prev_stream_id", sa.Integer(), nullable=True),
        sa.Column("stream_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["message.id"],
            name=op.f("fk_message_edit_message_id_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user_profile.id"],
            name=op.f("fk_message_edit_user_id_user_profile"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_edit")),
    )
    with op.batch_alter_table("message_edit") as batch:
        batch.create_index("ix_message_edit_message_id_id", ["message_id", "id"], unique=False)
    with op.batch_alter_table("user_message") as batch:
        batch.create_index("ix_user_message_message_id", ["message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("user_message") as batch:
        batch.drop_index("ix_user_message_message_id")
    with op.batch_alter_table("message_edit") as batch:
        batch.drop_index("ix_message_edit_message_id_id")
    op.drop_table("message_edit")
    with op.batch_alter_table("message") as batch:
        batch.drop_column("last_moved_time")
        batch.drop_column("last_edit_time")
