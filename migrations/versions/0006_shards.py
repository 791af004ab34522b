"""Shards: queue ownership with a fencing epoch, the claim feed, and the shard list.

`queue_descriptor.owner_shard` / `owner_epoch` record which server process holds a
queue; existing descriptors get no owner and epoch 0, so the first shard that polls one
claims it. `queue_claim` is the feed through which a shard learns that another claimed
one of its queues; `shard` lists the running processes for the admin views.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 18:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("queue_descriptor") as batch:
        batch.add_column(sa.Column("owner_shard", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("owner_epoch", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "queue_claim",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("queue_id", sa.String(length=64), nullable=False),
        sa.Column("shard", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("claimed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_claim")),
    )
    op.create_table(
        "shard",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_shard")),
    )


def downgrade() -> None:
    op.drop_table("shard")
    op.drop_table("queue_claim")
    with op.batch_alter_table("queue_descriptor") as batch:
        batch.drop_column("owner_epoch")
        batch.drop_column("owner_shard")
