"""The tables: realms, users, channels, subscriptions, messages, the outbox and queue
descriptors.

Field names and limits follow Zulip's models (`Realm`, `UserProfile`, `Stream`,
`Subscription`, `Recipient`, `Message`, `UserMessage`), so the wire format can be
produced without renaming. Roles use
Zulip's numbers. The outbox (`OutboxEvent`) and the durable queue descriptors
(`QueueDescriptorRow`) are described in docs/architecture.md §4 and §5.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# Zulip's limits (zerver/models): names longer than these are refused at the action layer.
MAX_REALM_NAME_LENGTH = 40
MAX_REALM_SUBDOMAIN_LENGTH = 40
MAX_FULL_NAME_LENGTH = 100
MAX_EMAIL_LENGTH = 254
MAX_STREAM_NAME_LENGTH = 60
MAX_STREAM_DESCRIPTION_LENGTH = 1024
# Zulip's message limits: longer topics and contents are truncated, as Zulip does.
MAX_TOPIC_NAME_LENGTH = 60
MAX_MESSAGE_LENGTH = 10_000
# Zulip's `Client.name`: the sending client's name (its User-Agent's first token).
MAX_CLIENT_NAME_LENGTH = 30
# A direct-message conversation is keyed by the SHA-256 of its sorted participants.
DM_KEY_LENGTH = 64
# Reactions: an emoji's name, its code (hex code points joined by "-") and its type
# ("unicode_emoji", "realm_emoji", "zulip_extra_emoji").
MAX_EMOJI_NAME_LENGTH = 100
MAX_EMOJI_CODE_LENGTH = 100
MAX_REACTION_TYPE_LENGTH = 30
# 32 characters of a 62-letter alphabet: about 190 bits, as Zulip's generate_api_key.
API_KEY_LENGTH = 32


class Role(enum.IntEnum):
    """Zulip's role numbers; a lower number has more power."""

    OWNER = 100
    ADMINISTRATOR = 200
    MODERATOR = 300
    MEMBER = 400
    GUEST = 600

    @classmethod
    def from_name(cls, name: str) -> Role:
        """Parse `owner`, `admin`/`administrator`, `moderator`, `member` or `guest`."""
        aliases = {"admin": cls.ADMINISTRATOR}
        key = name.strip().lower()
        if key in aliases:
            return aliases[key]
        try:
            return cls[key.upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {name!r}; expected owner, admin, moderator, member or guest"
            ) from None


def utcnow() -> datetime:
    """The current time, timezone-aware, for `date_created`-style columns."""
    return datetime.now(UTC)


class Realm(Base):
    """An organization. `last_event_seq` is the realm's outbox counter (docs/architecture.md §4)."""

    __tablename__ = "realm"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    string_id: Mapped[str] = mapped_column(String(MAX_REALM_SUBDOMAIN_LENGTH), unique=True)
    name: Mapped[str] = mapped_column(String(MAX_REALM_NAME_LENGTH))
    # The sequence number of the newest outbox event of this realm; advanced by every
    # action in the same transaction that inserts the events, under the row lock.
    last_event_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Every outbox row with seq <= this has been pruned; a queue whose checkpoint is
    # older cannot be rebuilt and is dropped (its client re-registers).
    outbox_pruned_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The seq of the newest event that may change what `register` shows (users,
    # channels, subscriptions; any event but a message), written with `last_event_seq`.
    # A state read at seq S is still true at a later seq while this is <= S, which lets
    # registers share one read (`server.engine.registration`).
    state_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    date_created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserProfile(Base):
    """A user of one realm; `email` is unique within the realm (stored lower-case)."""

    __tablename__ = "user_profile"
    __table_args__ = (
        UniqueConstraint("realm_id", "email"),
        # Authentication looks a user up by email alone (the realm comes from the user).
        Index("ix_user_profile_email", "email"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    realm_id: Mapped[int] = mapped_column(ForeignKey("realm.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(MAX_EMAIL_LENGTH))
    full_name: Mapped[str] = mapped_column(String(MAX_FULL_NAME_LENGTH))
    role: Mapped[int] = mapped_column(Integer, default=int(Role.MEMBER))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_bot: Mapped[bool] = mapped_column(Boolean, default=False)
    api_key: Mapped[str] = mapped_column(String(API_KEY_LENGTH), unique=True)
    date_joined: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Stream(Base):
    """A channel. Zulip's API still calls it a stream, so the code does too."""

    __tablename__ = "stream"
    __table_args__ = (UniqueConstraint("realm_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    realm_id: Mapped[int] = mapped_column(ForeignKey("realm.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(MAX_STREAM_NAME_LENGTH))
    description: Mapped[str] = mapped_column(String(MAX_STREAM_DESCRIPTION_LENGTH), default="")
    invite_only: Mapped[bool] = mapped_column(Boolean, default=False)
    is_web_public: Mapped[bool] = mapped_column(Boolean, default=False)
    date_created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Subscription(Base):
    """One user's membership of one channel.

    A row counts as a subscriber only when `active` (not unsubscribed) and
    `is_user_active` (the user is not deactivated) are both true; deactivation
    flips `is_user_active` and keeps the row so reactivation restores it.
    """

    __tablename__ = "subscription"
    __table_args__ = (
        UniqueConstraint("user_profile_id", "stream_id"),
        # Subscriber lists are read per channel, so index the channel side too.
        Index("ix_subscription_stream_id_active", "stream_id", "active", "is_user_active"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_profile_id: Mapped[int] = mapped_column(ForeignKey("user_profile.id", ondelete="CASCADE"))
    stream_id: Mapped[int] = mapped_column(ForeignKey("stream.id", ondelete="CASCADE"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_user_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The user's own settings for the channel (revision 0012), Zulip's columns: the colour
    # is picked at subscribe time (`actions.subscription_properties.pick_colors`); a null
    # notification setting inherits the user's global one.
    color: Mapped[str] = mapped_column(String(10), default="#c2c2c2", server_default="#c2c2c2")
    is_muted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pin_to_top: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    desktop_notifications: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    audible_notifications: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    push_notifications: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    email_notifications: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    wildcard_mentions_notify: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class OutboxEvent(Base):
    """One event, written by the action that caused it in the same transaction.

    `seq` is gap-free per realm and equals commit order (docs/architecture.md §4). `event` is the
    compact JSON the clients receive (without the per-queue `id`), `user_ids` the JSON
    list of recipients computed at write time. `legacy_skip` marks events that queues
    on the legacy deactivation path do not receive; `cut_off_user_id` marks the event
    after which a deactivated user's queues stop.
    """

    __tablename__ = "outbox_event"

    realm_id: Mapped[int] = mapped_column(
        ForeignKey("realm.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event: Mapped[str] = mapped_column(Text)
    user_ids: Mapped[str] = mapped_column(Text)
    legacy_skip: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set on a user's deactivation event: once routed, that user's queues are cut off
    # (waiting polls get USER_DEACTIVATED, queues and descriptors are deleted). A typed
    # column, so the consumer never has to recognise a deactivation by its JSON.
    cut_off_user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxRecipient(Base):
    """One (recipient, event) pair: the index that rebuilds one user's queue.

    A cold queue is rebuilt from its checkpoint by reading only the events addressed to
    its user, not the realm's whole history after the checkpoint.
    """

    __tablename__ = "outbox_recipient"
    __table_args__ = (
        ForeignKeyConstraint(
            ["realm_id", "seq"], ["outbox_event.realm_id", "outbox_event.seq"], ondelete="CASCADE"
        ),
        # Pruning walks and deletes by (realm_id, seq), and so does the cascade check of
        # every deleted outbox_event row: without it each check scans the table.
        Index("ix_outbox_recipient_realm_id_seq", "realm_id", "seq"),
    )

    realm_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class QueueDescriptorRow(Base):
    """The durable part of an event queue (docs/architecture.md §5).

    With the outbox it is enough to rebuild the queue: replaying the realm's outbox
    after `checkpoint_seq` through the same filter, numbering from
    `checkpoint_event_id + 1`, reproduces the same event IDs.
    """

    __tablename__ = "queue_descriptor"

    queue_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    realm_id: Mapped[int] = mapped_column(ForeignKey("realm.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_profile.id", ondelete="CASCADE"), index=True
    )
    # JSON list of accepted event types, or NULL for every type.
    event_types: Mapped[str | None] = mapped_column(Text, nullable=True)
    capabilities: Mapped[str] = mapped_column(Text, default="{}")
    client_name: Mapped[str] = mapped_column(String(100))
    client_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    legacy_deactivation: Mapped[bool] = mapped_column(Boolean, default=False)
    lifespan_secs: Mapped[int] = mapped_column(Integer)
    # Unix time of the last poll or register; the queue expires lifespan_secs after it.
    last_active: Mapped[float] = mapped_column(Float)
    checkpoint_seq: Mapped[int] = mapped_column(BigInteger)
    checkpoint_event_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # JSON list of the register's `narrow` terms (`models.messages.narrows.NarrowTerm`), or NULL:
    # part of the filter, fixed at register, so a rebuilt queue filters identically.
    narrow: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    # The shard that holds the queue, and its fencing token: the epoch goes up whenever
    # another shard claims the queue, and every write a shard makes to the descriptor
    # is conditioned on the epoch it holds (docs/architecture.md §10).
    owner_shard: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    owner_epoch: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class QueueClaim(Base):
    """A queue claimed by a shard from another: the feed that fences the old holder.

    Every shard's consumer reads the claims newer than the last it saw and forgets its
    copy of a queue claimed at a higher epoch. Pruned after `CLAIM_RETENTION_SECS`.
    """

    __tablename__ = "queue_claim"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    queue_id: Mapped[str] = mapped_column(String(64))
    shard: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[int] = mapped_column(BigInteger)
    # Unix time of the claim.
    claimed_at: Mapped[float] = mapped_column(Float)


class Shard(Base):
    """A server process of the cluster, as it announced itself: for the admin views."""

    __tablename__ = "shard"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Where its own (not the proxy's) API answers, e.g. http://127.0.0.1:9994.
    url: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    # Unix times: when the process started, and when it last said it was alive.
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)


class Recipient(Base):
    """Where a message goes: one channel, or one direct-message conversation.

    Zulip's `Recipient`: `type` is 2 for a channel (`stream_id` set) and 3 for a
    direct-message conversation (`dm_key` and `dm_user_ids` set), whatever its size, so
    `recipient_id` names the set of users a message is for. A conversation's
    participants never change: `dm_key` (a hash of their sorted ids) finds it again.
    """

    __tablename__ = "recipient"
    __table_args__ = (UniqueConstraint("stream_id"), UniqueConstraint("realm_id", "dm_key"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    realm_id: Mapped[int] = mapped_column(ForeignKey("realm.id", ondelete="CASCADE"))
    type: Mapped[int] = mapped_column(Integer)
    stream_id: Mapped[int | None] = mapped_column(
        ForeignKey("stream.id", ondelete="CASCADE"), nullable=True
    )
    dm_key: Mapped[str | None] = mapped_column(String(DM_KEY_LENGTH), nullable=True)
    # JSON list of the participants' ids, sorted: `display_recipient` of the conversation.
    dm_user_ids: Mapped[str | None] = mapped_column(Text, nullable=True)


class Message(Base):
    """One message, as sent: the content as the sender wrote it and its rendering.

    A channel's history is read newest first through `(recipient_id, id)`; a user's own
    history through `UserMessage`. A message is deleted only by `DELETE /messages/{id}`
    (`actions.message_edits`), never because its sender is deactivated.
    """

    __tablename__ = "message"
    __table_args__ = (
        Index("ix_message_recipient_id_id", "recipient_id", "id"),
        # `has:link` in a channel's history (migration 0011). The full-text index is
        # not declared here: `models.messages.search` owns it, per backend.
        Index(
            "ix_message_has_link",
            "recipient_id",
            "id",
            postgresql_where=text("has_link"),
            # SQLite stores a boolean as 0/1 and compares it so (`history` writes it so).
            sqlite_where=text("has_link = 1"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    realm_id: Mapped[int] = mapped_column(ForeignKey("realm.id", ondelete="CASCADE"), index=True)
    sender_id: Mapped[int] = mapped_column(ForeignKey("user_profile.id", ondelete="CASCADE"))
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipient.id", ondelete="CASCADE"))
    # Zulip's `subject`: the topic; "" for direct messages.
    subject: Mapped[str] = mapped_column(String(MAX_TOPIC_NAME_LENGTH))
    content: Mapped[str] = mapped_column(Text)
    rendered_content: Mapped[str] = mapped_column(Text)
    date_sent: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sending_client: Mapped[str] = mapped_column(String(MAX_CLIENT_NAME_LENGTH))
    # When the content was last edited, and when the message was last moved to another
    # topic or channel (Zulip's `last_edit_timestamp`, `last_moved_timestamp`); NULL
    # until then. The edits themselves are `MessageEdit` rows (revision 0010).
    last_edit_time: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, default=None
    )
    last_moved_time: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, default=None
    )
    # Zulip's `has_link`: the rendering links somewhere (`models.messages.search`).
    has_link: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


# Zulip's partial indexes of `user_message` for `is:starred`, `is:unread` and
# `is:mentioned` (the bits of `models.messages.flags`: starred 2, read 1, and mentioned
# 8 | stream wildcard 16 | topic wildcard 32). A query uses one only when its condition
# is written with these very constants (`models.messages.history`).
USER_MESSAGE_STARRED_WHERE = "(flags & 2) <> 0"
USER_MESSAGE_UNREAD_WHERE = "(flags & 1) = 0"
USER_MESSAGE_MENTIONED_WHERE = "(flags & 56) <> 0"


def _flag_index(name: str, where: str) -> Index:
    # `flags` rides along so the index covers the read (SQLite then prefers it to the
    # primary key; the predicate reads `flags` anyway, so updates lose nothing).
    return Index(
        name,
        "user_profile_id",
        "message_id",
        "flags",
        postgresql_where=text(where),
        sqlite_where=text(where),
    )


class MessageEdit(Base):
    """One edit or move of one message (an entry of Zulip's `edit_history`), written by
    `actions.message_edits` (revision 0010).

    Each row holds what changed: the content before (`prev_content` and its rendering,
    NULL when the content did not change), the topic before and after (NULL when it did
    not change), the channel before and after (NULL when it did not change). A move of
    many messages writes one row per message, in one statement. Read per message through
    the index, newest first.
    """

    __tablename__ = "message_edit"
    __table_args__ = (Index("ix_message_edit_message_id_id", "message_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("user_profile.id", ondelete="CASCADE"))
    edit_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    prev_content: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    prev_rendered_content: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    prev_subject: Mapped[str | None] = mapped_column(
        String(MAX_TOPIC_NAME_LENGTH), nullable=True, default=None
    )
    subject: Mapped[str | None] = mapped_column(
        String(MAX_TOPIC_NAME_LENGTH), nullable=True, default=None
    )
    prev_stream_id: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    stream_id: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)


class Reaction(Base):
    """One user's emoji reaction to one message (Zulip's `Reaction`, revision 0009).

    Zulip's uniqueness: one reaction per (message, user, reaction type, emoji code); its
    leading `message_id` also serves reading a message's reactions.
    """

    __tablename__ = "reaction"
    __table_args__ = (
        UniqueConstraint("message_id", "user_profile_id", "reaction_type", "emoji_code"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"))
    user_profile_id: Mapped[int] = mapped_column(ForeignKey("user_profile.id", ondelete="CASCADE"))
    emoji_name: Mapped[str] = mapped_column(String(MAX_EMOJI_NAME_LENGTH))
    emoji_code: Mapped[str] = mapped_column(String(MAX_EMOJI_CODE_LENGTH))
    reaction_type: Mapped[str] = mapped_column(String(MAX_REACTION_TYPE_LENGTH))


class UserMessage(Base):
    """A message one user received (Zulip's `UserMessage`), with that user's flags.

    Written for every recipient when the message is sent: a channel's active subscribers
    and the sender, or a conversation's participants. What a user may read beyond these
    rows is public channel history (`models.messages.history`). The primary key is the index of
    one user's history, newest first.

    No foreign keys: a message to a channel of 1,000 subscribers writes 1,000 rows, and
    PostgreSQL checks each foreign key of each row with a trigger, which made that insert
    four to five times slower (15 ms instead of 3.4 ms). The rows are written under the
    realm lock, for users and messages just read or inserted: by `actions.messages`, and
    by `actions.message_edits` when a move to another channel gives its readers the
    messages; eventq deletes no user, and deletes a message's rows with it
    (`actions.message_edits`, under the exclusive realm lock).
    """

    __tablename__ = "user_message"
    __table_args__ = (
        _flag_index("ix_user_message_starred", USER_MESSAGE_STARRED_WHERE),
        _flag_index("ix_user_message_unread", USER_MESSAGE_UNREAD_WHERE),
        _flag_index("ix_user_message_mentioned", USER_MESSAGE_MENTIONED_WHERE),
        # Who has a message: the recipients of its edit, deletion and reaction events,
        # read by `message_id` without a scan (revision 0010).
        Index("ix_user_message_message_id", "message_id"),
    )

    user_profile_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Zulip's bit flags; eventq sets only `read` (1), on the sender's own message.
    flags: Mapped[int] = mapped_column(Integer, default=0)


class UserPresence(Base):
    """One user's presence (Zulip's `UserPresence`): when a client last said the user
    was connected, and when last actively using it (docs/architecture.md §4).

    Times are Unix seconds. `last_active_time` is NULL until a client reports the user
    `active`. `last_update_id` is what `POST /users/me/presence` clients page by: every
    write gives the row a new, larger one, taken without a shared counter so concurrent
    pings never wait for each other (`actions.presence`). The index serves both reads of
    a realm: all its rows, and those changed after a client's `last_update_id`.
    """

    __tablename__ = "user_presence"
    __table_args__ = (
        Index("ix_user_presence_realm_id_last_update_id", "realm_id", "last_update_id"),
    )

    user_profile_id: Mapped[int] = mapped_column(
        ForeignKey("user_profile.id", ondelete="CASCADE"), primary_key=True
    )
    # The user's realm, copied for the realm's reads. No foreign key: PostgreSQL would
    # lock the realm's row (FOR KEY SHARE) for every user's first ping; the user's key
    # already ties the row to the realm, and deleting either deletes it.
    realm_id: Mapped[int] = mapped_column(Integer)
    last_connected_time: Mapped[float] = mapped_column(Float)
    last_active_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_update_id: Mapped[int] = mapped_column(BigInteger)
