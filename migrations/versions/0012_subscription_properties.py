"""Subscription properties: each user's colour, muting, pinning and notifications per channel.

Zulip's personal settings of a subscription, as columns of `subscription`: `color`,
`is_muted`, `pin_to_top`, and five notification settings where null means "inherit the
user's global setting". Existing subscriptions keep what they were shown as before the
upgrade: Zulip's default colour `#c2c2c2`, not muted, not pinned, every notification
inherited. New subscriptions get a colour from Zulip's palette at subscribe time
(`actions.subscription_properties.pick_colors`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 23:59:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The five settings that inherit the user's global one while null.
NOTIFICATION_COLUMNS = (
    "desktop_notifications",
    "audible_notifications",
    "push_notifications",
    "email_notifications",
    "wildcard_mentions_notify",
)


def upgrade() -> None:
    with op.batch_alter_table("subscription") as batch:
        batch.add_column(
            sa.Column("color", sa.String(length=10), nullable=False, server_default="#c2c2c2")
        )
        batch.add_column(
            sa.Column("is_muted", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("pin_to_top", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        for name in NOTIFICATION_COLUMNS:
            batch.add_column(sa.Column(name, sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscription") as batch:
        for name in reversed(NOTIFICATION_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("pin_to_top")
        batch.drop_column("is_muted")
        batch.drop_column("color")
