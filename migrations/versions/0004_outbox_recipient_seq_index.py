"""Index outbox recipients by (realm_id, seq): pruning at volume.

Deleting old outbox_event rows cascades to outbox_recipient by (realm_id, seq), which
the primary key (realm_id, user_id, seq) cannot serve: every deleted event scanned the
recipient table, so pruning was quadratic in the history. The batch boundary of a prune
walks the same index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:10:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_recipient", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_recipient_realm_id_seq", ["realm_id", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox_recipient", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_recipient_realm_id_seq")
