"""Editing, moving and deleting messages (`PATCH` and `DELETE /messages/{id}`), as Zulip does.

`check_update_message` changes a message's content, its topic (for one message, it and
the later ones of its topic, or the whole topic: `propagate_mode`), or its channel (with
the same choice of messages). `check_delete_message` deletes one message. Both check the
request first (Zulip's wording), then take the realm lock and read the actor under it
(`actions.actors.lock_realm_for_actor`), check that the actor may read the message
(`models.messages.access.access_message`, which locks its row), apply Zulip's
permission rules at the realm's settings (`models.realm_settings`), write the change and
append its events last (`models.outbox.append_events`), in the caller's transaction.

Which lock, and why:

* A content or topic edit changes what users see of messages, not who sees them: it
  shares the realm lock, like sending. The message rows it changes are locked
  (`FOR UPDATE OF message` on PostgreSQL), so two edits of one message run one after the
  other, the second reading what the first wrote and appending its events after the
  first's; every client applies them in that order.
* A move to another channel changes who sees the messages: readers of the old channel
  who may not read the new one lose them (their `user_message` rows go, and they get
  `delete_message`), subscribers of the new one gain them (rows flagged `read`). That is
  what subscribing and unsubscribing do, so it takes the lock exclusively: no message,
  subscription, flag change (which may create `historical` rows) or reaction runs
  between its reading of who has access and its commit, so nobody keeps or gains a row
  for a message in a channel they cannot read.
* A topic move of more than the one message (`change_later`, `change_all`) takes it
  exclusively too: it locks the edited message first and then the rest of its topic, so
  two such moves sharing the lock could each hold a row the other waits for.
* A deletion takes the lock exclusively too: it removes a message and every row naming
  it, and no concurrent action (a flag change creating a row for it, a reaction) may
  write a row for a message that is gone.

The events, in Zulip's shapes at feature level 377:

* `update_message` to every user who has one of the messages (after a move: who still
  has them), grouped by the user's `flags` on the edited message (a content edit sets
  and clears the `mentioned` and wildcard bits as Zulip does at send,
  `models.messages.mentions`); and, as Zulip does for a channel whose history is
  public, to the active subscribers of the channel (of both channels for a move) who
  may see the channel the messages were in, with no flags. A content edit carries `orig_content`,
  `orig_rendered_content`, `content`, `rendered_content`, `is_me_message`; a move
  `propagate_mode`, `orig_subject`, `subject` (topic changed) and `new_stream_id`
  (channel changed), with `message_ids` naming every moved message.
* After a move to another channel, `delete_message` (`message_ids`, `message_type`,
  `stream_id`, `topic` of the old place) to each user who lost access: who may not read
  the new channel (not subscribed to a private one; a guest not subscribed to a public
  one), whose rows go. A move to a private channel (whose history is not public) gives
  its subscribers rows flagged `read`, as Zulip does; when the messages came from a
  private channel, those new readers get no event, which would name a channel they may
  not see (Zulip sends none either: it notifies subscribers only for a public channel).
  A non-guest who may read a public destination keeps their rows (Zulip deletes them
  and keeps the user informed by `update_message`, so the messages leave their own
  history while staying in the channel's).
* `delete_message` of a deleted message to everyone who had it and to the actor, with
  both `message_id` (clients without the `bulk_message_deletion` capability) and
  `message_ids` (clients with it): one message per request, so both are exact.

Zulip's Notification Bot messages after a move (`send_notification_to_old_thread`,
`send_notification_to_new_thread`) are not posted: eventq has no Notification Bot. The
parameters are accepted and documented (docs/api.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, delete, func, insert, literal, select, true, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from actions.actors import lock_realm_for_actor
from actions.errors import ActionError, InvalidInput
from actions.messages import check_wildcard_mentions, normalize_content, normalize_topic
from models.messages.access import AccessedMessage, access_message
from models.messages.flags import (
    MENTIONED_FLAG,
    READ_FLAG,
    STREAM_WILDCARD_MENTIONED_FLAG,
    TOPIC_WILDCARD_MENTIONED_FLAG,
    flag_names,
)
from models.messages.mentions import RenderedMessage, render_message_content
from models.messages.recipients import RECIPIENT_STREAM
from models.messages.search import html_has_link
from models.messages.wire import is_me_message, timestamp_of
from models.outbox import PendingEvent, append_events
from models.queries import values_as_table
from models.realm_settings import (
    ALLOW_MESSAGE_EDITING,
    CAN_DELETE_ANY_MESSAGE_GROUP,
    CAN_DELETE_OWN_MESSAGE_GROUP,
    CAN_MOVE_MESSAGES_BETWEEN_CHANNELS_GROUP,
    CAN_MOVE_MESSAGES_BETWEEN_TOPICS_GROUP,
    CAN_RESOLVE_TOPICS_GROUP,
    MESSAGE_CONTENT_DELETE_LIMIT_SECONDS,
    MESSAGE_CONTENT_EDIT_LIMIT_SECONDS,
    MOVE_MESSAGES_BETWEEN_STREAMS_LIMIT_SECONDS,
    MOVE_MESSAGES_WITHIN_STREAM_LIMIT_SECONDS,
    role_in_group,
)
from models.tables import (
    Message,
    MessageEdit,
    Reaction,
    Recipient,
    Role,
    Stream,
    Subscription,
    UserMessage,
    UserProfile,
    utcnow,
)
from models.visibility import active_subscribers, can_see_stream

PROPAGATE_MODES = ("change_one", "change_later", "change_all")
# What Zulip stores for content edited to nothing.
DELETED_CONTENT = "(deleted)"
# Zulip's prefix of a resolved topic: adding or removing it is resolving, not moving.
RESOLVED_TOPIC_PREFIX = "✔ "
_MENTION_BITS = MENTIONED_FLAG | STREAM_WILDCARD_MENTIONED_FLAG | TOPIC_WILDCARD_MENTIONED_FLAG


class MoveTimeLimitExceeded(ActionError):
    """A topic or channel move reaches messages older than the actor may move."""

    code = "MOVE_MESSAGES_TIME_LIMIT_EXCEEDED"


@dataclass(frozen=True, slots=True)
class MessageUpdate:
    """What `PATCH /messages/{id}` asks to change (None: leave as it is)."""

    content: str | None = None
    topic: str | None = None
    stream_id: int | None = None
    propagate_mode: str = "change_one"
    # Accepted, not acted on: eventq posts no Notification Bot messages.
    send_notification_to_old_thread: bool = False
    send_notification_to_new_thread: bool = True


@dataclass(frozen=True, slots=True)
class _Moved:
    """The messages a topic or channel change applies to, and where they were."""

    ids: tuple[int, ...]
    recipient_id: int
    stream: Stream
    topic: str


def _check_request(update_request: MessageUpdate) -> MessageUpdate:
    """The request with its content and topic normalized; Zulip's refusals first."""
    if update_request.propagate_mode not in PROPAGATE_MODES:
        raise InvalidInput("Invalid propagate_mode")
    content, topic, stream_id = (
        update_request.content,
        update_request.topic,
        update_request.stream_id,
    )
    if content is None and topic is None and stream_id is None:
        raise InvalidInput("Nothing to change")
    if content is not None and stream_id is not None:
        raise InvalidInput("Cannot change message content while changing channel")
    if update_request.propagate_mode != "change_one" and topic is None and stream_id is None:
        raise InvalidInput("Invalid propagate_mode without topic edit")
    if content is not None:
        if not ALLOW_MESSAGE_EDITING:
            raise InvalidInput("Your organization has turned off message editing")
        # Zulip keeps a message emptied by an edit, reading "(deleted)".
        content = normalize_content(content if content.strip() else DELETED_CONTENT)
    if topic is not None:
        topic = normalize_topic(topic)
    return MessageUpdate(
        content,
        topic,
        stream_id,
        update_request.propagate_mode,
        update_request.send_notification_to_old_thread,
        update_request.send_notification_to_new_thread,
    )


def check_update_message(
    session: Session,
    realm_id: int,
    user_id: int,
    message_id: int,
    update_request: MessageUpdate,
) -> dict[str, Any]:
    """Edit or move the message as `user_id` (see the module); returns the answer's keys."""
    request = _check_request(update_request)
    # A channel move changes who sees the messages, and a move of many messages locks
    # rows besides the edited one: both exclusive (see the module).
    shared = request.stream_id is None and request.propagate_mode == "change_one"
    actor = lock_realm_for_actor(session, realm_id, user_id, shared=shared).user
    accessed = access_message(session, actor, message_id, for_update=True)
    message = accessed.message
    now = utcnow()
    if accessed.stream is None:
        if request.stream_id is not None:
            raise InvalidInput("Direct messages cannot be moved to channels.")
        if request.topic is not None:
            raise InvalidInput("Direct messages cannot have topics.")
    content_changes = request.content is not None and request.content != message.content
    topic_changes = request.topic is not None and request.topic != message.subject
    new_stream: Stream | None = None
    if (
        request.stream_id is not None
        and accessed.stream is not None
        and request.stream_id != accessed.stream.id
    ):
        new_stream = _destination(session, actor, request.stream_id)
    if not content_changes and not topic_changes and new_stream is None:
        if request.content is not None and request.topic is None and request.stream_id is None:
            _check_content_permission(actor, message, now)
            return {"detached_uploads": []}
        raise InvalidInput("Nothing to change")
    if content_changes:
        _check_content_permission(actor, message, now)
    resolving = topic_changes and _is_resolving(message.subject, request.topic or "")
    if topic_changes:
        group = CAN_RESOLVE_TOPICS_GROUP if resolving else CAN_MOVE_MESSAGES_BETWEEN_TOPICS_GROUP
        if not role_in_group(actor.role, group):
            raise InvalidInput("You don't have permission to edit this message")
    if new_stream is not None and not role_in_group(
        actor.role, CAN_MOVE_MESSAGES_BETWEEN_CHANNELS_GROUP
    ):
        raise InvalidInput("You don't have permission to move this message")
    moved: _Moved | None = None
    if topic_changes or new_stream is not None:
        assert accessed.stream is not None
        moved = _messages_to_move(session, actor, accessed, request.propagate_mode)
        _check_move_time_limit(session, actor, message, moved, topic_changes, new_stream, now)
    rendered: RenderedMessage | None = None
    # Who gets the topic wildcard bit, when the new content has `@**topic**`.
    participants: frozenset[int] = frozenset()
    if content_changes:
        rendered = render_message_content(session, realm_id, request.content or "")
        if accessed.stream is not None:
            # Zulip's wildcard rule applies to an edit as to a send.
            subscribers = active_subscribers(session, [accessed.stream.id])[accessed.stream.id]
            participants = check_wildcard_mentions(
                session, actor, rendered, message.recipient_id, message.subject, len(subscribers)
            )
    return _write_update(
        session,
        realm_id,
        actor,
        accessed,
        request,
        rendered,
        moved,
        new_stream,
        topic_changes and not resolving,
        now,
        participants,
    )


def _is_resolving(before: str, after: str) -> bool:
    """Whether the topic change only adds or removes Zulip's resolved prefix."""
    return after == RESOLVED_TOPIC_PREFIX + before or before == RESOLVED_TOPIC_PREFIX + after


def _check_content_permission(actor: UserProfile, message: Message, now: datetime) -> None:
    """Zulip's rules for content: only the sender, within the edit time limit."""
    if message.sender_id != actor.id:
        raise InvalidInput("You don't have permission to edit this message")
    limit = MESSAGE_CONTENT_EDIT_LIMIT_SECONDS
    if limit is not None and _age(message, now) > timedelta(seconds=limit):
        raise InvalidInput("The time limit for editing this message has past")


def _age(message: Message, now: datetime) -> timedelta:
    return timedelta(seconds=timestamp_of(now) - timestamp_of(message.date_sent))


def _destination(session: Session, actor: UserProfile, stream_id: int) -> Stream:
    """The channel to move to: one whose messages the actor may post and read (a
    private one only while subscribed); any other is "Invalid channel ID", as Zulip
    answers for a channel the actor may not access."""
    stream = session.get(Stream, stream_id)
    if stream is None or stream.realm_id != actor.realm_id:
        raise InvalidInput("Invalid channel ID")
    subscribed = bool(
        session.scalar(
            select(Subscription.active).where(
                Subscription.user_profile_id == actor.id, Subscription.stream_id == stream.id
            )
        )
    )
    if not can_see_stream(actor.role, stream, subscribed):
        raise InvalidInput("Invalid channel ID")
    if stream.invite_only and not subscribed:
        raise InvalidInput("Invalid channel ID")
    return stream


def _messages_to_move(
    session: Session, actor: UserProfile, accessed: AccessedMessage, propagate_mode: str
) -> _Moved:
    """The messages a topic or channel change applies to, locked: the one, or it and the
    topic's later ones, or the whole topic (topics compare case-insensitively), limited
    to those the actor may read (in a private channel, those they received), in one
    statement through the channel's `(recipient_id, id)` index."""
    message = accessed.message
    assert accessed.stream is not None
    if propagate_mode == "change_one":
        ids: tuple[int, ...] = (message.id,)
    else:
        query = select(Message.id).where(
            Message.recipient_id == message.recipient_id,
            func.lower(Message.subject) == message.subject.lower(),
        )
        if propagate_mode == "change_later":
            query = query.where(Message.id >= message.id)
        if accessed.stream.invite_only:
            query = query.join(
                UserMessage,
                (UserMessage.message_id == Message.id) & (UserMessage.user_profile_id == actor.id),
            )
        ids = tuple(sorted(int(i) for i in session.scalars(query.with_for_update(of=Message))))
    return _Moved(ids, message.recipient_id, accessed.stream, message.subject)


def _check_move_time_limit(
    session: Session,
    actor: UserProfile,
    message: Message,
    moved: _Moved,
    topic_changes: bool,
    new_stream: Stream | None,
    now: datetime,
) -> None:
    """Zulip's time limits for moving: below moderator, only messages sent within the
    realm's limits (the stricter of the two when both change)."""
    if actor.role <= Role.MODERATOR:
        return
    candidates: list[int | None] = []
    if topic_changes:
        candidates.append(MOVE_MESSAGES_WITHIN_STREAM_LIMIT_SECONDS)
    if new_stream is not None:
        candidates.append(MOVE_MESSAGES_BETWEEN_STREAMS_LIMIT_SECONDS)
    limits = [limit for limit in candidates if limit is not None]
    if not limits:
        return
    oldest_allowed = now - timedelta(seconds=min(limits))
    if message.date_sent.replace(tzinfo=now.tzinfo) < oldest_allowed:
        what = "channel" if new_stream is not None else "topic"
        raise InvalidInput(f"The time limit for editing this message's {what} has passed")
    if len(moved.ids) == 1:
        return
    too_old = session.scalar(
        select(func.count())
        .select_from(Message)
        .where(Message.id.in_(list(moved.ids)), Message.date_sent < oldest_allowed)
    )
    if too_old:
        allowed = len(moved.ids) - int(too_old)
        raise MoveTimeLimitExceeded(
            f"You only have permission to move the {allowed}/{len(moved.ids)} "
            "most recent messages in this topic."
        )


def _write_update(
    session: Session,
    realm_id: int,
    actor: UserProfile,
    accessed: AccessedMessage,
    request: MessageUpdate,
    rendered: RenderedMessage | None,
    moved: _Moved | None,
    new_stream: Stream | None,
    counts_as_move: bool,
    now: datetime,
    topic_participants: frozenset[int],
) -> dict[str, Any]:
    message = accessed.message
    orig_content, orig_rendered = message.content, message.rendered_content
    # The edits first: each moved message's topic before is read from its row.
    _insert_edits(session, actor, accessed, request, rendered, moved, new_stream, now)
    if rendered is not None:
        values: dict[str, Any] = {
            "content": request.content,
            "rendered_content": rendered.html,
            "has_link": html_has_link(rendered.html),
            "last_edit_time": now,
        }
        session.execute(
            update(Message)
            .where(Message.id == message.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        _update_mention_flags(session, message, rendered, topic_participants)
    new_recipient_id: int | None = None
    if moved is not None:
        new_topic = request.topic if request.topic is not None else moved.topic
        move_values: dict[str, Any] = {"subject": new_topic}
        if new_stream is not None:
            new_recipient_id = _stream_recipient_id(session, realm_id, new_stream.id)
            move_values["recipient_id"] = new_recipient_id
        if counts_as_move or new_stream is not None:
            move_values["last_moved_time"] = now
        session.execute(
            update(Message)
            .where(Message.id.in_(select(_ids_table(session, moved.ids).c.value)))
            .values(**move_values)
            .execution_options(synchronize_session=False)
        )
    events: list[PendingEvent] = []
    access = _AccessChange([], set(), set())
    if moved is not None and new_stream is not None:
        access = _change_access(session, moved, new_stream)
        events.extend(access.events)
    events.extend(
        _update_events(
            session,
            actor,
            accessed,
            request,
            rendered,
            moved,
            new_stream,
            (orig_content, orig_rendered),
            access,
            now,
        )
    )
    append_events(session, realm_id, events)
    return {"detached_uploads": []}


def _ids_table(session: Session, ids: Sequence[int]) -> Any:
    return values_as_table(session, "message_ids", list(ids), Integer)


def _stream_recipient_id(session: Session, realm_id: int, stream_id: int) -> int:
    """The channel's `recipient` row, created if no message was ever sent to it (the
    exclusive lock holds off a first message racing for it)."""
    found = session.scalar(select(Recipient.id).where(Recipient.stream_id == stream_id))
    if found is not None:
        return int(found)
    return int(
        session.execute(
            insert(Recipient)
            .values(realm_id=realm_id, type=RECIPIENT_STREAM, stream_id=stream_id)
            .returning(Recipient.id)
        ).scalar_one()
    )


def _update_mention_flags(
    session: Session,
    message: Message,
    rendered: RenderedMessage,
    topic_participants: frozenset[int],
) -> None:
    """Set each holder's mention bits as the new content's mentions make them (Zulip's
    rules at send, `actions.messages`): `mentioned` for the users named, the channel
    wildcard bit for everyone, the topic wildcard bit for the topic's participants
    (`actions.messages.check_wildcard_mentions`, empty without `@**topic**`)."""
    flags = UserMessage.flags.op("&")(~_MENTION_BITS)
    if rendered.stream_wildcard:
        flags = flags.op("|")(STREAM_WILDCARD_MENTIONED_FLAG)
    statement = update(UserMessage).where(UserMessage.message_id == message.id)
    if rendered.mentioned_user_ids:
        named = values_as_table(session, "mentioned", sorted(rendered.mentioned_user_ids), Integer)
        session.execute(
            statement.where(UserMessage.user_profile_id.in_(select(named.c.value)))
            .values(flags=flags.op("|")(MENTIONED_FLAG))
            .execution_options(synchronize_session=False)
        )
        statement = statement.where(UserMessage.user_profile_id.not_in(select(named.c.value)))
    session.execute(statement.values(flags=flags).execution_options(synchronize_session=False))
    if topic_participants:
        people = values_as_table(session, "participants", sorted(topic_participants), Integer)
        session.execute(
            update(UserMessage)
            .where(
                UserMessage.message_id == message.id,
                UserMessage.user_profile_id.in_(select(people.c.value)),
            )
            .values(flags=UserMessage.flags.op("|")(TOPIC_WILDCARD_MENTIONED_FLAG))
            .execution_options(synchronize_session=False)
        )


def _insert_edits(
    session: Session,
    actor: UserProfile,
    accessed: AccessedMessage,
    request: MessageUpdate,
    rendered: RenderedMessage | None,
    moved: _Moved | None,
    new_stream: Stream | None,
    now: datetime,
) -> None:
    """One `message_edit` row per changed message, in one statement for a move; run
    before the messages change, since each moved message's own topic (topics compare
    case-insensitively, so they may differ in case) is its `prev_subject`."""
    message = accessed.message
    topic_changed = moved is not None and request.topic is not None and request.topic != moved.topic
    move_fields: dict[str, Any] = {}
    if moved is not None:
        if topic_changed:
            move_fields["prev_subject"] = message.subject
            move_fields["subject"] = request.topic
        if new_stream is not None:
            move_fields["prev_stream_id"] = moved.stream.id
            move_fields["stream_id"] = new_stream.id
    content_fields: dict[str, Any] = {}
    if rendered is not None:
        content_fields = {
            "prev_content": message.content,
            "prev_rendered_content": message.rendered_content,
        }
    # The edited message's row (content and move together); the others moved with it.
    session.execute(
        insert(MessageEdit).values(
            message_id=message.id,
            user_id=actor.id,
            edit_time=now,
            **content_fields,
            **move_fields,
        )
    )
    others = [i for i in (moved.ids if moved is not None else ()) if i != message.id]
    if not others:
        return
    ids = _ids_table(session, others)
    columns = ["message_id", "user_id", "edit_time", *move_fields]
    session.execute(
        insert(MessageEdit).from_select(
            columns,
            select(
                Message.id,
                literal(actor.id, Integer),
                literal(now, MessageEdit.edit_time.type),
                *(
                    Message.subject
                    if name == "prev_subject"
                    else literal(value, getattr(MessageEdit, name).type)
                    for name, value in move_fields.items()
                ),
            ).where(Message.id.in_(select(ids.c.value))),
        )
    )


def _holders(session: Session, message_ids: Collection[int]) -> list[Any]:
    """(user id, message id, flags, role, is_active) of every row of these messages, in
    one statement through `user_message`'s `message_id` index."""
    ids = _ids_table(session, sorted(message_ids))
    return list(
        session.execute(
            select(
                UserMessage.user_profile_id,
                UserMessage.message_id,
                UserMessage.flags,
                UserProfile.role,
                UserProfile.is_active,
            )
            .join(UserProfile, UserProfile.id == UserMessage.user_profile_id)
            .where(UserMessage.message_id.in_(select(ids.c.value)))
        )
    )


@dataclass(frozen=True, slots=True)
class _AccessChange:
    """What a move to another channel did to who has the messages."""

    events: list[PendingEvent]
    # Users given their first rows of the messages, and users who lost their rows.
    gainers: set[int]
    losers: set[int]


def _change_access(session: Session, moved: _Moved, new_stream: Stream) -> _AccessChange:
    """After a move to `new_stream`: drop the rows of holders who may not read it, with
    their `delete_message` events; and, the new channel being private (whose history is
    not public, so a subscriber reads only what they have rows for), give its subscribers
    rows flagged `read`, as Zulip does."""
    subscribers = active_subscribers(session, [new_stream.id]).get(new_stream.id, set())
    lost: dict[int, list[int]] = defaultdict(list)
    holders: set[int] = set()
    active: set[int] = set()
    for user_id, message_id, _flags, role, is_active in _holders(session, moved.ids):
        user = int(user_id)
        holders.add(user)
        if is_active:
            active.add(user)
        keeps = user in subscribers or (
            not new_stream.invite_only and can_see_stream(int(role), new_stream, False)
        )
        if not keeps:
            lost[user].append(int(message_id))
    events: list[PendingEvent] = []
    if lost:
        users = values_as_table(session, "losers", sorted(lost), Integer)
        session.execute(
            delete(UserMessage)
            .where(
                UserMessage.user_profile_id.in_(select(users.c.value)),
                UserMessage.message_id.in_(select(_ids_table(session, moved.ids).c.value)),
            )
            .execution_options(synchronize_session=False)
        )
        by_ids: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for user, lost_ids in lost.items():
            # A deactivated user has no queue; their rows go all the same.
            if user in active:
                by_ids[tuple(sorted(lost_ids))].append(user)
        for message_ids, users_losing in sorted(by_ids.items()):
            event = {
                "type": "delete_message",
                "message_ids": list(message_ids),
                "message_type": "stream",
                "stream_id": moved.stream.id,
                "topic": moved.topic,
            }
            events.append(PendingEvent(event, sorted(users_losing)))
    gainers: set[int] = set()
    if subscribers and new_stream.invite_only:
        _give_rows(session, sorted(subscribers), moved.ids)
        gainers = subscribers - holders
    return _AccessChange(events, gainers, set(lost))


def _public_channel_readers(
    session: Session, old_channel: Stream, new_stream: Stream | None, losers: set[int]
) -> set[int]:
    """Zulip's live updates for a public channel's history: the active subscribers of the
    channel the messages are in now, and of the one they left, who may see the channel
    they left (a guest subscribed to the new one only is left out), losers excepted."""
    channels = [old_channel] if new_stream is None else [old_channel, new_stream]
    subscribers = active_subscribers(session, [c.id for c in channels])
    candidates = set().union(*(subscribers.get(c.id, set()) for c in channels)) - losers
    if not candidates:
        return set()
    people = values_as_table(session, "subscribers", sorted(candidates), Integer)
    roles = session.execute(
        select(UserProfile.id, UserProfile.role).where(UserProfile.id.in_(select(people.c.value)))
    )
    old_subscribers = subscribers.get(old_channel.id, set())
    return {
        int(user_id)
        for user_id, role in roles
        if can_see_stream(int(role), old_channel, int(user_id) in old_subscribers)
    }


def _give_rows(session: Session, user_ids: Sequence[int], message_ids: Sequence[int]) -> None:
    """Rows flagged `read` for every (user, message) pair that has none, in one statement."""
    users = values_as_table(session, "gainers", list(user_ids), Integer)
    messages = _ids_table(session, message_ids)
    dialect_insert = (
        postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    )
    session.execute(
        dialect_insert(UserMessage)
        .from_select(
            ["user_profile_id", "message_id", "flags"],
            # Every pair: a join on true, which SQLAlchemy accepts as intended.
            select(users.c.value, messages.c.value, literal(READ_FLAG, Integer))
            .select_from(users.join(messages, true()))
            .where(users.c.value.is_not(None)),
        )
        .on_conflict_do_nothing(index_elements=["user_profile_id", "message_id"])
    )


def _update_events(
    session: Session,
    actor: UserProfile,
    accessed: AccessedMessage,
    request: MessageUpdate,
    rendered: RenderedMessage | None,
    moved: _Moved | None,
    new_stream: Stream | None,
    original: tuple[str, str],
    access: _AccessChange,
    now: datetime,
) -> list[PendingEvent]:
    """`update_message` to every active holder of the messages (after a move, those who
    still have them), grouped by their flags on the edited message; and, as Zulip does
    for a channel whose history is public, to the active subscribers of the channel (of
    both channels, for a move) who may see where the messages were, with no flags.
    Gainers of a private channel's messages hear nothing (see the module)."""
    message = accessed.message
    ids = moved.ids if moved is not None else (message.id,)
    base: dict[str, Any] = {
        "type": "update_message",
        "user_id": actor.id,
        "edit_timestamp": timestamp_of(now),
        "message_id": message.id,
        "message_ids": list(ids),
        "rendering_only": False,
    }
    if accessed.stream is not None:
        base["stream_name"] = accessed.stream.name
        base["stream_id"] = accessed.stream.id
    if rendered is not None:
        base |= {
            "orig_content": original[0],
            "orig_rendered_content": original[1],
            "content": request.content,
            "rendered_content": rendered.html,
            "is_me_message": is_me_message(request.content or ""),
        }
    if moved is not None:
        base["propagate_mode"] = request.propagate_mode
        base["orig_subject"] = moved.topic
        if request.topic is not None and request.topic != moved.topic:
            base["subject"] = request.topic
            base["topic_links"] = []
        if new_stream is not None:
            base["new_stream_id"] = new_stream.id
    # Holders read after the change: after a move, the rows of who kept access. Users who
    # only now gained rows (a move's new readers, all flagged `read` alone) are left out.
    old_channel = accessed.stream
    history_public = old_channel is not None and not old_channel.invite_only
    flags_by_user: dict[int, list[str]] = {}
    for user_id, message_id, flags, _role, active in _holders(session, ids):
        user = int(user_id)
        if not active or (user in access.gainers and not history_public):
            continue
        if int(message_id) == message.id:
            flags_by_user[user] = flag_names(int(flags))
        else:
            flags_by_user.setdefault(user, [])
    if history_public and old_channel is not None:
        for user in _public_channel_readers(session, old_channel, new_stream, access.losers):
            flags_by_user.setdefault(user, [])
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for user, names in flags_by_user.items():
        groups[tuple(names)].append(user)
    return [
        PendingEvent({**base, "flags": list(names)}, sorted(users))
        for names, users in sorted(groups.items())
    ]


def check_delete_message(session: Session, realm_id: int, user_id: int, message_id: int) -> None:
    """Delete the message as `user_id` (see the module): administrators any message they
    may read; its sender their own, within the realm's deletion time limit."""
    actor = lock_realm_for_actor(session, realm_id, user_id).user
    accessed = access_message(session, actor, message_id, for_update=True)
    message = accessed.message
    if not role_in_group(actor.role, CAN_DELETE_ANY_MESSAGE_GROUP):
        if message.sender_id != actor.id or not role_in_group(
            actor.role, CAN_DELETE_OWN_MESSAGE_GROUP
        ):
            raise InvalidInput("You don't have permission to delete this message")
        limit = MESSAGE_CONTENT_DELETE_LIMIT_SECONDS
        if limit is not None and _age(message, utcnow()) > timedelta(seconds=limit):
            raise InvalidInput("The time limit for deleting this message has passed")
    holders = {
        int(user_id)
        for user_id, _message_id, _flags, _role, active in _holders(session, [message.id])
        if active
    }
    # Every row naming the message goes with it (the foreign keys cascade on PostgreSQL;
    # the statements make SQLite, and `user_message`, which has none, do the same).
    session.execute(delete(UserMessage).where(UserMessage.message_id == message.id))
    session.execute(delete(Reaction).where(Reaction.message_id == message.id))
    session.execute(delete(MessageEdit).where(MessageEdit.message_id == message.id))
    session.execute(
        delete(Message).where(Message.id == message.id).execution_options(synchronize_session=False)
    )
    event: dict[str, Any] = {
        "type": "delete_message",
        "message_id": message.id,
        "message_ids": [message.id],
    }
    if accessed.stream is not None:
        event |= {
            "message_type": "stream",
            "stream_id": accessed.stream.id,
            "topic": message.subject,
        }
    else:
        event["message_type"] = "private"
    append_events(session, realm_id, [PendingEvent(event, sorted(holders | {actor.id}))])
