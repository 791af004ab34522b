"""`verify_action`: run an action, capture its events, prove every client converges.

Zulip's habit (zerver/tests/test_events.py), with our additions: for every active user
of the realm, fetch the `register` state before, run the action in one write
transaction while counting its SQL statements, read the outbox rows it wrote (gap-free
sequence numbers), check their count and shape, apply to each user's state exactly the
events addressed to them, and compare with a fresh `register` state after. It also
checks that no user receives an event naming a channel they could see neither before
nor after, so private channels never leak, and that every state and every event has
Zulip's documented shape (`tests.helpers.zulip_schema`).

`message` events get checks of their own (`_check_messages`): each is delivered in both
renderings (HTML, and the raw Markdown a queue registered with `apply_markdown` false
gets) with Zulip's shape and eventq's documented one; a message reaches exactly its
recipients (the channel's active subscribers and the sender, or the conversation's
participants), each once, the sender flagged `read`; and each recipient's history
(`GET /messages`) ends with exactly the messages its events carried, in both renderings,
while nobody else's history grows.

The states include each user's own message state (`unread_msgs`, `starred_messages`),
so `message` and `update_message_flags` events are proved to keep it too; a flag event
is checked to go to its user alone, naming each changed message once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clients.state import REGISTER_STATE_KEYS, StateCache
from models.database import Database
from models.messages.flags import HISTORICAL_FLAG
from models.messages.history import fetch_messages
from models.messages.unreads import USER_STATE_EVENT_TYPES
from models.messages.wire import RAW_MARKDOWN_KEY
from models.outbox import StoredEvent, read_events
from models.presence import PRESENCE_EVENT_TYPE, USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS
from models.register_keys import AS_OF_REGISTER_KEYS, USER_GROUPS_TYPE
from models.state import STATE_EVENT_TYPES, fetch_initial_state
from models.tables import Realm, UserMessage, UserProfile
from queues.types import SharedEvent
from tests.helpers import message_histories, zulip_messages, zulip_schema
from tests.helpers.events import check_event_shape
from tests.helpers.openapi import validate_event
from tests.helpers.statements import count_statements

# Message events and the message endpoints join Zulip's conformance tables.
zulip_messages.install()
# Every state a register can return: the realm's, and the user's own message state
# (`unread_msgs`, `starred_messages`), which `message` and `update_message_flags` events
# change.
FETCHED_TYPES = STATE_EVENT_TYPES | USER_STATE_EVENT_TYPES | {USER_GROUPS_TYPE}
# With `verify_action(..., with_presence=True)`, the realm's presence too (legacy shape).
WITH_PRESENCE = FETCHED_TYPES | {PRESENCE_EVENT_TYPE}
# What a client polls for rather than learns from events: not part of the comparison.
PRESENCE_POLL_KEYS = ("presence_last_update_id", "server_timestamp")
# The keys of `models.register_keys` that the client cache (`clients.state`) does not
# hold: constants, which must be equal before and after every action, and the keys Zulip
# documents as of the register (`AS_OF_REGISTER_KEYS`: `max_message_id`,
# `recent_private_conversations`, and the system groups' members, for which eventq sends
# no `user_group` events), which are excluded from the comparison.
CACHED_KEYS = frozenset(REGISTER_STATE_KEYS)

T = TypeVar("T")


@dataclass
class VerifiedAction(Generic[T]):
    """What the action returned, the events it wrote and how many statements it ran."""

    result: T
    events: list[StoredEvent]
    statements: int

    def received_by(self, user_id: int, legacy: bool = False) -> list[dict[str, Any]]:
        """The events this user's queue receives, in order."""
        return [
            e.event for e in self.events if user_id in e.user_ids and not (legacy and e.legacy_skip)
        ]


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _states(
    session: Session, realm_id: int, include_subscribers: bool, with_presence: bool = False
) -> dict[int, Any]:
    users = session.scalars(
        select(UserProfile).where(UserProfile.realm_id == realm_id, UserProfile.is_active)
    ).all()
    fetched = WITH_PRESENCE if with_presence else FETCHED_TYPES
    return {
        u.id: _json(
            fetch_initial_state(session, u, fetched, include_subscribers, register_keys=True)
        )
        for u in users
    }


def _without_poll_keys(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key not in PRESENCE_POLL_KEYS}


def _cached_part(state: dict[str, Any]) -> dict[str, Any]:
    """The keys the client cache holds (never the presence poll's bookkeeping)."""
    return {key: value for key, value in state.items() if key in CACHED_KEYS}


def _check_uncached_keys(user_id: int, before: dict[str, Any], after: dict[str, Any]) -> None:
    """No action changes a constant of the register answer (see `CACHED_KEYS`)."""
    for key in set(before) - CACHED_KEYS - AS_OF_REGISTER_KEYS - set(PRESENCE_POLL_KEYS):
        assert before[key] == after.get(key), f"user {user_id}'s {key} changed without an event"


def _visible_stream_ids(state: dict[str, Any]) -> set[int]:
    return {s["stream_id"] for s in state.get("streams", [])}


def _named_stream_ids(event: dict[str, Any]) -> set[int]:
    if event["type"] == "message":
        stream_id = event["message"].get("stream_id")
        return {stream_id} if stream_id is not None else set()
    if event["type"] == "stream":
        return {s["stream_id"] for s in event["streams"]}
    if event["type"] == "subscription":
        if "stream_ids" in event:
            return set(event["stream_ids"])
        if "stream_id" in event:  # `update`: one of the user's own settings
            return {event["stream_id"]}
        return {s["stream_id"] for s in event["subscriptions"]}
    return set()


def verify_action(
    db: Database,
    realm_id: int,
    action: Callable[[Session], T],
    *,
    num_events: int | None = None,
    include_subscribers: bool = True,
    legacy_users: Collection[int] = (),
    max_statements: int | None = None,
    with_presence: bool = False,
) -> VerifiedAction[T]:
    """Run `action` in a write transaction and check every client converges (see module).

    `with_presence`: the states hold the realm's presence too, and the comparison covers
    `presences` (not the two keys a client polls for, `PRESENCE_POLL_KEYS`). Only for
    actions whose presence changes all reach clients as events: a ping in a realm too
    large for events changes presence that clients learn by polling.
    """
    with db.snapshot() as session:
        before_seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == realm_id)
        ).scalar_one()
        before = _states(session, realm_id, include_subscribers, with_presence)
        histories_before = message_histories.capture(session, realm_id, before)
        received_before = _received_count(session, realm_id)

    with count_statements(db.engine) as statements, db.write() as session:
        result = action(session)

    with db.snapshot() as session:
        after_seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == realm_id)
        ).scalar_one()
        events = read_events(session, realm_id, before_seq)
        after = _states(session, realm_id, include_subscribers, with_presence)

    assert [e.seq for e in events] == list(range(before_seq + 1, after_seq + 1)), (
        "outbox sequence numbers must be gap-free and match the realm counter"
    )
    if num_events is not None:
        assert len(events) == num_events, [e.event for e in events]
    if max_statements is not None:
        assert statements.count <= max_statements, statements.statements
    # The state part of a register answer: wrapped in the keys every answer has.
    envelope = {"result": "success", "msg": "", "queue_id": "q", "last_event_id": -1}
    envelope |= {"zulip_version": "", "zulip_feature_level": 0, "zulip_merge_base": ""}
    register_schema = zulip_schema.register(
        WITH_PRESENCE if with_presence else FETCHED_TYPES, include_subscribers, complete=True
    )
    # Every user's state is built by the same builders (`models.wire`), so one state
    # shows the shapes; checking all of them would cost O(users^2) for nothing more.
    for user_id in sorted(after)[:1]:
        state = {**envelope, **after[user_id]}
        zulip_schema.check(register_schema, state, f"user {user_id}'s state")
    for stored in events:
        if stored.event.get("type") == "message":
            _check_message_shape(stored)
        elif stored.event.get("type") == "update_message_flags":
            _check_flags_shape(stored)
        elif stored.event.get("type") == PRESENCE_EVENT_TYPE:
            _check_presence_shape(stored)
        elif stored.event.get("type") in message_histories.MESSAGE_CHANGE_TYPES:
            validate_event({**stored.event, "id": 0})  # eventq's document, then Zulip's
        else:
            check_event_shape(stored.event)
        assert stored.user_ids, "an outbox event without recipients is never written"
        for user_id in stored.user_ids:
            assert user_id in before or user_id in after, (
                f"event {stored.event} went to user {user_id}, who is not active"
            )

    verified = VerifiedAction(result, events, statements.count)
    _check_messages(db, realm_id, verified, after, received_before)
    # Edits, moves, deletions and reactions: each user's history converges (new module).
    message_histories.check(db, realm_id, events, histories_before)
    for user_id, state in before.items():
        received = verified.received_by(user_id, legacy=user_id in legacy_users)
        visible = _visible_stream_ids(state) | _visible_stream_ids(after.get(user_id, {}))
        for event in received:
            leaked = _named_stream_ids(event) - visible
            assert not leaked, f"user {user_id} was told about channels {leaked} it cannot see"
        if user_id not in after:
            continue  # deactivated by this action; its queues are gone
        cache = StateCache.from_register(
            state,
            user_id,
            removes_deactivated_users=user_id in legacy_users,
            include_subscribers=include_subscribers,
        )
        cache.apply_all(received)
        assert _without_poll_keys(cache.to_register_shape()) == _cached_part(after[user_id]), (
            f"user {user_id}'s state after applying {received} differs from a fresh register"
        )
        _check_uncached_keys(user_id, state, after[user_id])
    return verified


# -- presence ---------------------------------------------------------------------------------


def _check_presence_shape(stored: StoredEvent) -> None:
    """A `presence` event: Zulip's shape, sent only within a realm small enough for it."""
    event = stored.event
    assert "id" not in event, "the per-queue id is added at delivery, never stored"
    validate_event({**event, "id": 0})  # eventq's document, then Zulip's shape
    assert len(stored.user_ids) <= USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS, (
        f"a presence event went to {len(stored.user_ids)} users"
    )


# -- messages ---------------------------------------------------------------------------------


def delivered(stored: StoredEvent, apply_markdown: bool = True) -> dict[str, Any]:
    """The event as a queue with this `apply_markdown` hands it out (with an id of 0),
    through the queues' own code: the stored raw fields never reach a client."""
    shared = SharedEvent(stored.realm_id, stored.seq, stored.event, stored.user_ids)
    if not apply_markdown:
        shared = shared.raw_markdown_variant()
    decoded: dict[str, Any] = json.loads(shared.encode_with_id(0))
    return decoded


def _received_count(session: Session, realm_id: int) -> int:
    """The realm's received (user, message) pairs; a `historical` row, created when a
    user changes a flag of a message they did not receive, is not one."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(UserMessage)
            .join(UserProfile, UserProfile.id == UserMessage.user_profile_id)
            .where(
                UserProfile.realm_id == realm_id,
                UserMessage.flags.op("&")(HISTORICAL_FLAG) == 0,
            )
        )
        or 0
    )


def _check_flags_shape(stored: StoredEvent) -> None:
    """An `update_message_flags` event: eventq's document and Zulip's shape, sent to its
    user alone, naming each changed message once, in order."""
    event = stored.event
    assert "id" not in event, "the per-queue id is added at delivery, never stored"
    validate_event({**event, "id": 0})
    assert len(stored.user_ids) == 1, f"flag events go to their user alone: {stored.user_ids}"
    assert event["messages"] and event["messages"] == sorted(set(event["messages"])), event
    assert event["op"] == event["operation"], event
    if event["flag"] == "read" and event["op"] == "remove":
        assert set(event["message_details"]) == {str(m) for m in event["messages"]}, event


# The flags a message can carry when sent: the sender's `read` and the mention flags.
_SEND_FLAGS = frozenset(
    {
        "read",
        "mentioned",
        "stream_wildcard_mentioned",
        "topic_wildcard_mentioned",
        "wildcard_mentioned",
    }
)


def _check_message_shape(stored: StoredEvent) -> None:
    event = stored.event
    assert "id" not in event, "the per-queue id is added at delivery, never stored"
    raw = event.get(RAW_MARKDOWN_KEY)
    assert isinstance(raw, dict) and raw["content_type"] == "text/x-markdown", event
    for apply_markdown in (True, False):
        shown = delivered(stored, apply_markdown)
        assert RAW_MARKDOWN_KEY not in shown, shown
        validate_event(shown)  # eventq's document, then Zulip's shape
        message = shown["message"]
        if apply_markdown:
            assert message["content_type"] == "text/html", message
        else:
            assert message["content"] == raw["content"], message
            assert message["content_type"] == "text/x-markdown", message
    # Each recipient's flags are their row's (history, read from the rows, is compared
    # with the events in `_check_messages`): the sender's own copy alone is `read`, and
    # only mentions add flags, the legacy `wildcard_mentioned` with either wildcard.
    sender = event["message"]["sender_id"]
    flags = event["flags"]
    if sender in stored.user_ids:
        assert set(stored.user_ids) == {sender} and flags[:1] == ["read"], event
    else:
        assert "read" not in flags, event
    assert set(flags) <= _SEND_FLAGS and len(flags) == len(set(flags)), event
    wildcard = {"stream_wildcard_mentioned", "topic_wildcard_mentioned"} & set(flags)
    assert ("wildcard_mentioned" in flags) == bool(wildcard), event


def _check_messages(
    db: Database,
    realm_id: int,
    verified: VerifiedAction[Any],
    after: dict[int, Any],
    received_before: int,
) -> None:
    """Recipients, and events against history (see the module)."""
    by_message: dict[int, list[StoredEvent]] = {}
    for stored in verified.events:
        if stored.event.get("type") == "message":
            by_message.setdefault(stored.event["message"]["id"], []).append(stored)
    per_user: dict[int, list[StoredEvent]] = {}
    pairs = 0
    for message_id, stored_events in by_message.items():
        message = stored_events[0].event["message"]
        recipients: list[int] = [u for stored in stored_events for u in stored.user_ids]
        assert len(recipients) == len(set(recipients)), f"message {message_id} sent twice"
        if message["type"] == "stream":
            stream_id = message["stream_id"]
            subscribers = {
                user_id
                for user_id, state in after.items()
                if any(s["stream_id"] == stream_id for s in state.get("subscriptions", []))
            }
            expected = subscribers | {message["sender_id"]}
        else:
            expected = {person["id"] for person in message["display_recipient"]}
        assert set(recipients) == expected, (
            f"message {message_id} went to {sorted(recipients)}, not to {sorted(expected)}"
        )
        pairs += len(recipients)
        for stored in stored_events:
            for user_id in stored.user_ids:
                per_user.setdefault(user_id, []).append(stored)
    with db.snapshot() as session:
        grown = _received_count(session, realm_id) - received_before
        # Deletions and channel moves remove and give rows without `message` events: their
        # histories are checked by `message_histories` instead.
        if not message_histories.changes_rows(verified.events):
            assert grown == pairs, f"{grown} messages received in history, {pairs} by events"
        for user_id, stored_events in per_user.items():
            for apply_markdown in (True, False):
                history = fetch_messages(
                    session,
                    user_id,
                    anchor="newest",
                    num_before=len(stored_events),
                    num_after=0,
                    apply_markdown=apply_markdown,
                )["messages"]
                expected_messages = []
                for stored in stored_events:
                    shown = delivered(stored, apply_markdown)
                    expected_messages.append({**shown["message"], "flags": shown["flags"]})
                assert history == expected_messages, (
                    f"user {user_id}'s history does not end with the messages its events "
                    f"carried (apply_markdown={apply_markdown})"
                )
