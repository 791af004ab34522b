"""message search: has_link, the flag partial indexes and the full-text index

`message.has_link` (Zulip's, for `has:link`) with a partial index for channel history;
Zulip's partial indexes of `user_message` for `is:starred`, `is:unread` and
`is:mentioned`; and the full-text search structure of each backend
(`models.messages.search`): on PostgreSQL a GIN index of the expression
`to_tsvector('english', subject || ' ' || content)`, which PostgreSQL keeps itself; on
SQLite an FTS5 table over `message` (external content, rowid = message id, Porter
stemming) kept by three triggers. A later migration that makes Alembic's batch mode
recreate `message` on SQLite drops those triggers and must create them again.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 23:59:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here, not imported: a migration keeps the schema of its day.
_FLAG_INDEXES = (
    ("ix_user_message_starred", "(flags & 2) <> 0"),
    ("ix_user_message_unread", "(flags & 1) = 0"),
    ("ix_user_message_mentioned", "(flags & 56) <> 0"),
)
_PG_SEARCH_INDEX_SQL = (
    "CREATE INDEX ix_message_search_tsvector ON message USING gin "
    "(to_tsvector('english'::regconfig, (subject || ' ') || content))"
)
_SQLITE_FTS_SQL = (
    "CREATE VIRTUAL TABLE message_fts USING fts5("
    "subject, content, content='message', content_rowid='id', "
    "tokenize='porter unicode61')",
    "CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN "
    "INSERT INTO message_fts(rowid, subject, content) "
    "VALUES (new.id, new.subject, new.content); END",
    "CREATE TRIGGER message_fts_delete AFTER DELETE ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, subject, content) "
    "VALUES ('delete', old.id, old.subject, old.content); END",
    "CREATE TRIGGER message_fts_update AFTER UPDATE OF subject, content ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, subject, content) "
    "VALUES ('delete', old.id, old.subject, old.content); "
    "INSERT INTO message_fts(rowid, subject, content) "
    "VALUES (new.id, new.subject, new.content); END",
    # Index the messages already there.
    "INSERT INTO message_fts(message_fts) VALUES ('rebuild')",
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("has_link", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # Messages sent before: a rendering with an absolute link. The send path decides with
    # an HTML parser (`models.messages.search.html_has_link`); this is its SQL form.
    op.execute(
        "UPDATE message SET has_link = "
        + ("true" if dialect == "postgresql" else "1")
        + " WHERE rendered_content LIKE '%<a %href=\"http%' "
        "OR rendered_content LIKE '%<a %href=\"mailto:%'"
    )
    op.create_index(
        "ix_message_has_link",
        "message",
        ["recipient_id", "id"],
        unique=False,
        postgresql_where=sa.text("has_link"),
        sqlite_where=sa.text("has_link = 1"),
    )
    for name, where in _FLAG_INDEXES:
        op.create_index(
            name,
            "user_message",
            ["user_profile_id", "message_id", "flags"],
            unique=False,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )
    if dialect == "postgresql":
        op.execute(_PG_SEARCH_INDEX_SQL)
    else:
        for statement in _SQLITE_FTS_SQL:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP INDEX ix_message_search_tsvector")
    else:
        for trigger in ("message_fts_insert", "message_fts_delete", "message_fts_update"):
            op.execute(f"DROP TRIGGER {trigger}")
        op.execute("DROP TABLE message_fts")
    for name, _ in reversed(_FLAG_INDEXES):
        op.drop_index(name, table_name="user_message")
    op.drop_index("ix_message_has_link", table_name="message")
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("has_link")
