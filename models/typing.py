"""Typing notifications (Zulip's `POST /typing`, feature level 377): the request's checks
and who receives the `typing` event, read-only.

A typing notification changes nothing: `typing_notification` only reads (the sender,
the named users or the channel and its subscribers), in the caller's snapshot, and
returns the event and its recipients for the server to send without storing it
(`server.engine.ephemeral`; docs/architecture.md §5, "Ephemeral events").

Zulip's rules, with its wording:

* `type` is `direct` (the default), or `stream` / `channel` for a channel; anything
  else, `private` included (no longer accepted since feature level 215), is "Invalid
  type". `op` is `start` or `stop` ("Invalid op").
* Direct: `to` is the list of recipient ids ("Missing 'to' argument", "Empty 'to'
  list", "Invalid user ID N" for an id naming no user of the realm). The sender is
  always among the recipients. The event lists every recipient, deactivated ones
  included (they name the conversation); it goes to the active ones, the sender
  included.
* Channel: `stream_id` and `topic` ("Missing channel ID", "Missing topic"); a channel
  the sender may not see, or that does not exist, is "Invalid channel ID", and one they
  may not post to is refused as a message would be ("Not authorized to send to channel
  'NAME'"). The event goes to the channel's active subscribers (the sender among them
  only if subscribed), and to none at all when the channel has more than
  `MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS` (the request still succeeds). Only clients
  that declared the `stream_typing_notifications` capability receive it
  (`STREAM_TYPING_CAPABILITY`). A subscriber always sees the channel, so nobody who
  cannot see it is told.

eventq has none of Zulip's per-user typing settings (`send_private_typing_notifications`,
`send_stream_typing_notifications`, `receives_typing_notifications`): everyone sends and
receives, as with Zulip's defaults. The topic is cut as a message's would be (at
`MAX_TOPIC_NAME_LENGTH`, ending in `...`), so the indicator names the topic the message
will land in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, select
from sqlalchemy.orm import Session

from actions.errors import ActorDeactivated, InvalidInput
from models.queries import values_as_table
from models.tables import MAX_TOPIC_NAME_LENGTH, Role, Stream, UserProfile
from models.visibility import active_subscribers, can_see_stream

# Zulip's typing protocol parameters, announced by `register` with `realm` state
# (`models.state`). Clients send `start` every 10 s while the user composes, `stop` after
# 5 s without activity, and drop an indicator 15 s after its last `start`; the server's
# side buffer of undelivered typing events keeps them as long (`queues.queue`).
TYPING_STARTED_EXPIRY_PERIOD_MILLISECONDS = 15_000
TYPING_STOPPED_WAIT_PERIOD_MILLISECONDS = 5_000
TYPING_STARTED_WAIT_PERIOD_MILLISECONDS = 10_000
TYPING_PROTOCOL_KEYS: dict[str, int] = {
    "server_typing_started_expiry_period_milliseconds": TYPING_STARTED_EXPIRY_PERIOD_MILLISECONDS,
    "server_typing_stopped_wait_period_milliseconds": TYPING_STOPPED_WAIT_PERIOD_MILLISECONDS,
    "server_typing_started_wait_period_milliseconds": TYPING_STARTED_WAIT_PERIOD_MILLISECONDS,
}

# Zulip's MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS: a channel with more active
# subscribers gets no typing notifications at all (Zulip: "for performance reasons").
# It also keeps every channel typing event far below the 8,000 bytes a NOTIFY carries.
MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS = 100
# The client capability (a field of `queues.types.Capabilities`) that channel typing
# events require of a queue.
STREAM_TYPING_CAPABILITY = "stream_typing_notifications"

DIRECT = "direct"
CHANNEL = "stream"
# `type` values and the `message_type` of their events; `channel` is the new name of
# `stream` (feature level 248), and `private` is no longer accepted (level 215).
MESSAGE_TYPES = {"direct": DIRECT, "stream": CHANNEL, "channel": CHANNEL}
OPS = frozenset({"start", "stop"})
_TOPIC_TRUNCATED = "..."
# Ids are 32-bit columns: a larger one names no row, and PostgreSQL refuses to compare
# with it, so it is reported without being looked up.
_MAX_ID = 2**31 - 1


class InvalidChannel(InvalidInput):
    """The channel does not exist, or the sender may not see it (never told apart)."""

    def __init__(self) -> None:
        super().__init__("Invalid channel ID")


class NotAuthorizedToType(InvalidInput):
    """The sender sees the channel but may not post to it (a message's refusal)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Not authorized to send to channel '{name}'")


@dataclass(frozen=True, slots=True)
class TypingRequest:
    """A checked `POST /typing`: the event's `message_type` and `op`, and either the
    named recipients (direct) or the channel and topic."""

    message_type: str
    op: str
    user_ids: tuple[int, ...] = ()
    stream_id: int | None = None
    topic: str = ""


@dataclass(frozen=True, slots=True)
class TypingNotification:
    """A `typing` event and the users to send it to (`server.engine.ephemeral`)."""

    realm_id: int
    user_ids: tuple[int, ...]
    event: dict[str, Any]
    required_capability: str | None = None


def message_type_of(value: str) -> str:
    """The event's `message_type` for the request's `type`; "Invalid type" otherwise."""
    kind = MESSAGE_TYPES.get(value)
    if kind is None:
        raise InvalidInput("Invalid type")
    return kind


def check_op(value: str) -> str:
    if value not in OPS:
        raise InvalidInput("Invalid op")
    return value


def typing_request(
    message_type: str,
    op: str,
    to: Sequence[int] | None,
    stream_id: int | None,
    topic: str | None,
) -> TypingRequest:
    """The request once its parameters are decoded: what each type requires, with
    Zulip's wording; the parameters of the other type are ignored."""
    if message_type == CHANNEL:
        if stream_id is None:
            raise InvalidInput("Missing channel ID")
        if topic is None:
            raise InvalidInput("Missing topic")
        if len(topic) > MAX_TOPIC_NAME_LENGTH:
            topic = topic[: MAX_TOPIC_NAME_LENGTH - len(_TOPIC_TRUNCATED)] + _TOPIC_TRUNCATED
        return TypingRequest(CHANNEL, op, stream_id=stream_id, topic=topic)
    if to is None:
        raise InvalidInput("Missing 'to' argument")
    if not to:
        raise InvalidInput("Empty 'to' list")
    # Each recipient once, in the order given: the conversation is a set of users.
    return TypingRequest(DIRECT, op, user_ids=tuple(dict.fromkeys(to)))


def typing_notification(
    session: Session, sender_id: int, request: TypingRequest
) -> TypingNotification | None:
    """The `typing` event of `request` by `sender_id` and who receives it, read in the
    caller's snapshot; None when nobody is to be told (a channel over the size cap).
    Raises `actions.errors.InvalidInput` with Zulip's wording, and `ActorDeactivated`
    for a sender deactivated since the server authenticated them."""
    sender = session.get(UserProfile, sender_id)
    if sender is None or not sender.is_active:
        raise ActorDeactivated()
    if request.message_type == CHANNEL:
        return _channel_notification(session, sender, request)
    return _direct_notification(session, sender, request)


def _sender_of(user: UserProfile) -> dict[str, Any]:
    return {"user_id": user.id, "email": user.email}


def _direct_notification(
    session: Session, sender: UserProfile, request: TypingRequest
) -> TypingNotification:
    wanted = [user_id for user_id in request.user_ids if 0 < user_id <= _MAX_ID]
    by_id: dict[int, UserProfile] = {}
    if wanted:
        ids = values_as_table(session, "ids", sorted(set(wanted)), Integer)
        found = session.scalars(
            select(UserProfile).where(
                UserProfile.realm_id == sender.realm_id,
                UserProfile.id.in_(select(ids.c.value)),
            )
        )
        by_id = {user.id: user for user in found}
    for user_id in request.user_ids:
        if user_id not in by_id:
            # The whole request is refused: a partial conversation would name another one.
            raise InvalidInput(f"Invalid user ID {user_id}")
    by_id[sender.id] = sender
    people = [by_id[user_id] for user_id in sorted(by_id)]
    event = {
        "type": "typing",
        "op": request.op,
        "message_type": DIRECT,
        "sender": _sender_of(sender),
        "recipients": [_sender_of(user) for user in people],
    }
    # Deactivated users name the conversation but are told nothing.
    notified = tuple(user.id for user in people if user.is_active)
    return TypingNotification(sender.realm_id, notified, event)


def _channel_notification(
    session: Session, sender: UserProfile, request: TypingRequest
) -> TypingNotification | None:
    stream_id = request.stream_id
    stream = session.get(Stream, stream_id) if stream_id and 0 < stream_id <= _MAX_ID else None
    if stream is None or stream.realm_id != sender.realm_id:
        raise InvalidChannel()
    subscribers = active_subscribers(session, [stream.id]).get(stream.id, set())
    subscribed = sender.id in subscribers
    if not can_see_stream(sender.role, stream, subscribed):
        raise InvalidChannel()
    if not subscribed and (stream.invite_only or sender.role == Role.GUEST):
        raise NotAuthorizedToType(stream.name)
    if len(subscribers) > MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS:
        return None
    event = {
        "type": "typing",
        "op": request.op,
        "message_type": CHANNEL,
        "sender": _sender_of(sender),
        "stream_id": stream.id,
        "topic": request.topic,
    }
    return TypingNotification(
        sender.realm_id, tuple(sorted(subscribers)), event, STREAM_TYPING_CAPABILITY
    )
