"""Outbox cut-off signal: a deactivation event names the user whose queues it ends.

The consumer used to recognise a deactivation by parsing every event's JSON; this
typed column makes the cut-off an explicit property of the outbox row. Rows written
before it are not back-filled: they were routed by the server that wrote them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 15:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cut_off_user_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_event", schema=None) as batch_op:
        batch_op.drop_column("cut_off_user_id")
