"""`realm.state_seq`: the seq of the newest event that may change the register state.

Registers read the realm's users, channels and subscriptions once and reuse that read
while no such event follows it (`server.engine.registration`). Existing realms start at their
`last_event_seq`: no read made before the upgrade may be reused.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 22:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("realm") as batch:
        batch.add_column(
            sa.Column("state_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.execute("UPDATE realm SET state_seq = last_event_seq")


def downgrade() -> None:
    with op.batch_alter_table("realm") as batch:
        batch.drop_column("state_seq")
