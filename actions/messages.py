"""Sending a message: Zulip's checks, the message, who receives it, and its events.

`check_send_message` serves the API, the CLI and the benchmarks alike. It normalizes
and renders the content first (pure work, no statement), then takes the realm's writer
lock in its shared mode and reads the sender under it
(`actions.actors.lock_realm_for_actor`, as every action reads its actor), then reads the
channel or the participants, and writes in one transaction:

* the `message` row, and its `recipient` (created with the first message to a channel or
  a conversation);
* one `user_message` row per recipient: a channel's active subscribers and the sender
  (who always receives their own message, flagged `read`), or a direct message's
  participants;
* the `message` events: one to the recipients other than the sender, with no flags, and
  one to the sender, flagged `read`; each recipient gets exactly one.

The statements are a fixed number whatever the number of recipients (one bulk insert for
every `user_message` row, and `append_events`' three or four).

Messages share the realm lock, so any number are sent at once; what they read cannot
change under them, because every action that changes a subscription, a user's activity
or a role takes the lock exclusively. A message that commits after a removal from a
private channel was computed after it, and one that commits before it gets a lower
sequence number (docs/architecture.md §4). The `recipient` row of a first message is
created with `ON CONFLICT DO NOTHING`, since two first messages may now race for it.

Refusals, with Zulip's codes and wording: a channel the sender may not see (including
one that does not exist) is STREAM_DOES_NOT_EXIST; a channel the sender sees but may not
post to (a private one they are not subscribed to, or any channel a guest is not
subscribed to) is "Not authorized to send to channel"; an empty content or topic, an
unknown or deactivated direct-message recipient are BAD_REQUEST; a sender deactivated
since the server authenticated them is USER_DEACTIVATED, and the role the channel rules
judge is the one read under the lock. Content and topic longer than Zulip's limits are
truncated, as Zulip truncates them.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    case,
    func,
    insert,
    literal,
    select,
    union,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from actions.actors import lock_realm_for_actor
from actions.errors import ActionError, InvalidInput
from models.messages.flags import (
    MENTIONED_FLAG,
    READ_FLAG,
    STREAM_WILDCARD_MENTIONED_FLAG,
    TOPIC_WILDCARD_MENTIONED_FLAG,
    flag_names,
)
from models.messages.mentions import RenderedMessage, render_message_content
from models.messages.recipients import RECIPIENT_DIRECT, RECIPIENT_STREAM, dm_key
from models.messages.search import html_has_link
from models.messages.wire import MessageView, Participant, message_event, timestamp_of
from models.outbox import PendingEvent, append_events
from models.queries import get_stream_by_name, get_users_by_ids_and_emails, values_as_table
from models.tables import (
    MAX_CLIENT_NAME_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_TOPIC_NAME_LENGTH,
    Message,
    Reaction,
    Recipient,
    Role,
    Stream,
    UserMessage,
    UserProfile,
    utcnow,
)
from models.visibility import active_subscribers, can_see_stream

# The tables themselves, for Core inserts (see `_write`).
_MESSAGE_TABLE = cast(Table, Message.__table__)
_USER_MESSAGE_TABLE = cast(Table, UserMessage.__table__)
# Zulip's truncation markers: what a too-long content or topic ends with once cut.
CONTENT_TRUNCATED = "\n[message truncated]"
TOPIC_TRUNCATED = "..."
# Zulip's Realm.WILDCARD_MENTION_THRESHOLD: a channel with more active subscribers, or a
# topic with more participants, is "large" for wildcard mentions.
WILDCARD_MENTION_THRESHOLD = 15
# Unicode categories Zulip refuses in a topic: control, surrogate and unassigned code
# points, which no client can show.
_UNPRINTABLE = frozenset({"Cc", "Cs", "Cn"})


@dataclass(frozen=True, slots=True)
class ChannelTarget:
    """A channel message's destination: the channel's id, or its name."""

    channel: int | str


@dataclass(frozen=True, slots=True)
class DirectTarget:
    """A direct message's recipients, by user id or by email (Zulip allows one kind)."""

    user_ids: tuple[int, ...] = ()
    emails: tuple[str, ...] = ()


class StreamDoesNotExist(ActionError):
    """The channel does not exist, or the sender may not see it (never told apart)."""

    code = "STREAM_DOES_NOT_EXIST"

    def __init__(self, channel: int | str) -> None:
        self.channel = channel
        if isinstance(channel, int):
            super().__init__(f"Channel with ID '{channel}' does not exist")
        else:
            super().__init__(f"Channel '{channel}' does not exist")


class StreamWildcardMentionNotAllowed(ActionError):
    """A channel wildcard in a large channel by a sender who may not use one."""

    code = "STREAM_WILDCARD_MENTION_NOT_ALLOWED"

    def __init__(self) -> None:
        super().__init__(
            "You do not have permission to use channel wildcard mentions in this channel."
        )


class TopicWildcardMentionNotAllowed(ActionError):
    """`@**topic**` in a topic of many participants by a sender who may not use it."""

    code = "TOPIC_WILDCARD_MENTION_NOT_ALLOWED"

    def __init__(self) -> None:
        super().__init__("You do not have permission to use topic wildcard mentions in this topic.")


class NotAuthorizedToSend(InvalidInput):
    """The sender sees the channel but may not post to it."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Not authorized to send to channel '{name}'")


def _truncate(text: str, limit: int, marker: str) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(marker)] + marker


def normalize_content(content: str) -> str:
    """The content as stored: Zulip strips trailing whitespace and leading blank lines,
    refuses what is left empty, and truncates past `MAX_MESSAGE_LENGTH`."""
    body = content.rstrip().lstrip("\n")
    if not body:
        raise InvalidInput("Message must not be empty")
    if "\x00" in body:
        raise InvalidInput("Message must not contain null bytes")
    return _truncate(body, MAX_MESSAGE_LENGTH, CONTENT_TRUNCATED)


def normalize_topic(topic: str | None) -> str:
    """A channel message's topic: stripped, non-empty, printable, truncated past
    `MAX_TOPIC_NAME_LENGTH` (Zulip's rules and wording)."""
    if topic is None:
        raise InvalidInput("Missing topic")
    name = topic.strip()
    if not name:
        raise InvalidInput("Topic can't be empty!")
    for position, character in enumerate(name):
        if unicodedata.category(character) in _UNPRINTABLE:
            raise InvalidInput(f"Invalid character in topic, at position {position}!")
    return _truncate(name, MAX_TOPIC_NAME_LENGTH, TOPIC_TRUNCATED)


@dataclass(frozen=True, slots=True)
class _Draft:
    """What the message holds once checked, before its rows exist."""

    sender: UserProfile
    realm_str: str
    subject: str
    content: str
    rendered: str
    client: str
    # Who the content mentions (`models.messages.mentions`), for the recipients' flags.
    mentions: RenderedMessage


def check_send_message(
    session: Session,
    realm_id: int,
    sender_id: int,
    target: ChannelTarget | DirectTarget,
    topic: str | None,
    content: str,
    client: str,
) -> int:
    """Send a message as `sender_id` (see the module); returns its id.

    `topic` is ignored for a direct message. `client` is the sending client's name
    (Zulip's `client` field), cut to `MAX_CLIENT_NAME_LENGTH`.
    """
    body = normalize_content(content)
    subject = normalize_topic(topic) if isinstance(target, ChannelTarget) else ""
    # Content without mention syntax runs no statement here.
    rendering = render_message_content(session, realm_id, body)
    # Authenticated before this transaction: the sender is read again under the lock.
    locked = lock_realm_for_actor(session, realm_id, sender_id, shared=True)
    draft = _Draft(
        locked.user,
        locked.realm_str,
        subject,
        body,
        rendering.html,
        client[:MAX_CLIENT_NAME_LENGTH],
        rendering,
    )
    if isinstance(target, ChannelTarget):
        return _send_to_channel(session, draft, target.channel)
    return _send_direct(session, draft, target)


def _send_to_channel(session: Session, draft: _Draft, channel: int | str) -> int:
    sender = draft.sender
    stream: Stream | None
    if isinstance(channel, int):
        stream = session.get(Stream, channel)
    else:
        stream = get_stream_by_name(session, sender.realm_id, channel)
    if stream is None or stream.realm_id != sender.realm_id:
        raise StreamDoesNotExist(channel)
    subscribers = active_subscribers(session, [stream.id]).get(stream.id, set())
    subscribed = sender.id in subscribers
    if not can_see_stream(sender.role, stream, subscribed):
        raise StreamDoesNotExist(channel)
    if not subscribed and (stream.invite_only or sender.role == Role.GUEST):
        raise NotAuthorizedToSend(stream.name)
    recipient_id = _recipient_id(
        session,
        select(Recipient.id).where(Recipient.stream_id == stream.id),
        {"realm_id": sender.realm_id, "type": RECIPIENT_STREAM, "stream_id": stream.id},
    )
    topic_participants = check_wildcard_mentions(
        session, draft.sender, draft.mentions, int(recipient_id), draft.subject, len(subscribers)
    )
    # The sender receives their own message even when not subscribed (a member posting to
    # a public channel), so their clients show what they sent.
    return _write(
        session,
        draft,
        int(recipient_id),
        (stream.id, stream.name),
        (),
        subscribers,
        topic_participants,
    )


def check_wildcard_mentions(
    session: Session,
    sender: UserProfile,
    mentions: RenderedMessage,
    recipient_id: int,
    topic: str,
    subscriber_count: int,
) -> frozenset[int]:
    """Zulip's rule for wildcards in a channel message, sent or edited: in a channel of
    more than `WILDCARD_MENTION_THRESHOLD` active subscribers (or a topic of more
    participants) only the realm's `can_mention_many_users_group`, administrators at
    Zulip's default, may use them. Returns the topic's participants when the content has
    `@**topic**` (they get the topic wildcard flag), else nothing; content without
    wildcards reads nothing."""
    may_mention_many = sender.role <= Role.ADMINISTRATOR
    if (
        mentions.stream_wildcard
        and subscriber_count > WILDCARD_MENTION_THRESHOLD
        and not may_mention_many
    ):
        raise StreamWildcardMentionNotAllowed()
    if not mentions.topic_wildcard:
        return frozenset()
    participants = topic_participants(session, recipient_id, topic) | {sender.id}
    if len(participants) > WILDCARD_MENTION_THRESHOLD and not may_mention_many:
        raise TopicWildcardMentionNotAllowed()
    return frozenset(participants)


def topic_participants(session: Session, recipient_id: int, topic: str) -> set[int]:
    """Zulip's topic participants: whoever sent a message to the topic or reacted to one
    (topics compare case-insensitively), in one statement through the channel's history
    index."""
    in_topic = (Message.recipient_id == recipient_id) & (
        func.lower(Message.subject) == topic.lower()
    )
    senders = select(Message.sender_id.label("user_id")).where(in_topic)
    reactors = (
        select(Reaction.user_profile_id.label("user_id"))
        .join(Message, Message.id == Reaction.message_id)
        .where(in_topic)
    )
    return {int(user_id) for user_id in session.scalars(union(senders, reactors))}


def _send_direct(session: Session, draft: _Draft, target: DirectTarget) -> int:
    sender = draft.sender
    emails = tuple(email.strip().lower() for email in target.emails)
    if not target.user_ids and not emails:
        raise InvalidInput("Message must have recipients")
    found = get_users_by_ids_and_emails(session, sender.realm_id, target.user_ids, emails)
    by_id = {user.id: user for user in found}
    by_email = {user.email: user for user in found}
    named: dict[int, UserProfile] = {}
    for user_id in target.user_ids:
        if user_id not in by_id:
            raise InvalidInput(f"Invalid user ID {user_id}")
        named[user_id] = by_id[user_id]
    for email in emails:
        if email not in by_email:
            raise InvalidInput(f"Invalid email '{email}'")
        named[by_email[email].id] = by_email[email]
    for user in named.values():
        if not user.is_active:
            raise InvalidInput(f"'{user.email}' is no longer using Zulip.")
    named[sender.id] = sender
    people = tuple(
        Participant(user.id, user.email, user.full_name)
        for user in sorted(named.values(), key=lambda u: u.id)
    )
    ids = [person.id for person in people]
    key = dm_key(ids)
    recipient_id = _recipient_id(
        session,
        select(Recipient.id).where(Recipient.realm_id == sender.realm_id, Recipient.dm_key == key),
        {
            "realm_id": sender.realm_id,
            "type": RECIPIENT_DIRECT,
            "dm_key": key,
            "dm_user_ids": json.dumps(ids, separators=(",", ":")),
        },
    )
    return _write(session, draft, int(recipient_id), None, people, set(ids))


def _recipient_id(session: Session, find: Select[int], row: dict[str, object]) -> int:
    """The id of the recipient `find` selects, created from `row` with the first message.

    Messages run concurrently, so two first messages to one conversation may both find
    no row: the insert does nothing on the unique key's conflict (it waits for the other
    transaction and sees its row), and the select after it finds the winner's.
    """
    recipient_id = session.scalar(find)
    if recipient_id is not None:
        return int(recipient_id)
    insert_row = (
        postgresql_insert(Recipient)
        if session.get_bind().dialect.name == "postgresql"
        else sqlite_insert(Recipient)
    )
    session.execute(insert_row.values(**row).on_conflict_do_nothing())
    return int(session.execute(find).scalar_one())


def _write(
    session: Session,
    draft: _Draft,
    recipient_id: int,
    stream: tuple[int, str] | None,
    participants: tuple[Participant, ...],
    receivers: set[int],
    topic_participants: frozenset[int] = frozenset(),
) -> int:
    """Insert the message, its `user_message` rows and its events (the lock is shared).

    Each recipient's flags: `read` for the sender; the mention flags of what the content
    mentions (`_recipient_flags`). The events go out grouped by flag set, each recipient
    in exactly one."""
    sender = draft.sender
    sent_at: datetime = utcnow()
    message_id = int(
        session.execute(
            # The table, not the mapped class: a Core insert skips the ORM's bulk machinery,
            # which cost about a millisecond of CPU per message.
            insert(_MESSAGE_TABLE)
            .values(
                realm_id=sender.realm_id,
                sender_id=sender.id,
                recipient_id=recipient_id,
                subject=draft.subject,
                content=draft.content,
                rendered_content=draft.rendered,
                date_sent=sent_at,
                sending_client=draft.client,
                has_link=html_has_link(draft.rendered),
            )
            .returning(_MESSAGE_TABLE.c.id)
        ).scalar_one()
    )
    everyone = sorted(receivers | {sender.id})
    # One statement for every recipient's row, however many (`values_as_table`).
    users = values_as_table(session, "receivers", everyone, Integer)
    session.execute(
        insert(_USER_MESSAGE_TABLE).from_select(
            ["user_profile_id", "message_id", "flags"],
            select(
                users.c.value,
                literal(message_id, Integer),
                _flags_column(
                    session, users.c.value, sender.id, draft.mentions, topic_participants
                ),
            ),
        )
    )
    view = MessageView(
        id=message_id,
        sender=Participant(sender.id, sender.email, sender.full_name),
        realm_str=draft.realm_str,
        recipient_id=recipient_id,
        stream=stream,
        participants=participants,
        subject=draft.subject,
        content=draft.content,
        rendered_content=draft.rendered,
        timestamp=timestamp_of(sent_at),
        client=draft.client,
    )
    by_flags: dict[int, list[int]] = {READ_FLAG: [sender.id]}
    if draft.mentions.mentions_anyone:
        by_flags = {}
        for user_id in everyone:
            flags = _recipient_flags(user_id, sender.id, draft.mentions, topic_participants)
            by_flags.setdefault(flags, []).append(user_id)
    else:
        # No per-recipient work for a message without mentions (the common case).
        by_flags[0] = [user_id for user_id in everyone if user_id != sender.id]
    # The other recipients' events first, then the sender's (flagged `read`); a message
    # without mentions is the two events it always was.
    groups = sorted(by_flags.items(), key=lambda group: (bool(group[0] & READ_FLAG), group[0]))
    append_events(
        session,
        sender.realm_id,
        [PendingEvent(message_event(view, flag_names(flags)), users) for flags, users in groups],
    )
    return message_id


def _recipient_flags(
    user_id: int, sender_id: int, mentions: RenderedMessage, topic_participants: frozenset[int]
) -> int:
    """One recipient's flags, Zulip's rules (zerver/actions/message_send.py): `read` for
    the sender; `mentioned` when named (not silently); `stream_wildcard_mentioned` for
    every recipient of a message with a channel wildcard, direct messages included;
    `topic_wildcard_mentioned` for the topic's participants (none in a direct message)."""
    flags = READ_FLAG if user_id == sender_id else 0
    if mentions.stream_wildcard:
        flags |= STREAM_WILDCARD_MENTIONED_FLAG
    if user_id in mentions.mentioned_user_ids:
        flags |= MENTIONED_FLAG
    if mentions.topic_wildcard and user_id in topic_participants:
        flags |= TOPIC_WILDCARD_MENTIONED_FLAG
    return flags


def _flags_column(
    session: Session,
    user_id: ColumnElement[Any],
    sender_id: int,
    mentions: RenderedMessage,
    topic_participants: frozenset[int],
) -> ColumnElement[Any]:
    """`_recipient_flags` as SQL over the recipients' ids, for the one bulk insert: the
    sender's `read` alone for a message without mentions (the statement it always was);
    each set of users as one bound array, whatever its size."""
    flags: ColumnElement[Any] = case((user_id == sender_id, READ_FLAG), else_=0)
    if mentions.stream_wildcard:
        flags = flags + STREAM_WILDCARD_MENTIONED_FLAG
    if mentions.mentioned_user_ids:
        named = values_as_table(session, "mentioned", sorted(mentions.mentioned_user_ids), Integer)
        flags = flags + case((user_id.in_(select(named.c.value)), MENTIONED_FLAG), else_=0)
    if mentions.topic_wildcard and topic_participants:
        topic = values_as_table(session, "topic_participants", sorted(topic_participants), Integer)
        flags = flags + case(
            (user_id.in_(select(topic.c.value)), TOPIC_WILDCARD_MENTIONED_FLAG), else_=0
        )
    return flags
