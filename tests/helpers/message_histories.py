"""Every user's message history, kept true by the events that change messages.

`verify_action` (`tests.helpers.verify`) captures, before the action, each active user's
history as `GET /messages` answers it (`models.messages.history.fetch_messages`: the
messages they received, with their flags, reactions and edits) and, for the privacy
check, which messages each could read. After the action, `check` applies to each copy
exactly the events addressed to that user, the way a client does (`message` adds a
message; `update_message` edits the content of `message_id` and moves every message of
`message_ids`, recording the edit in `edit_history`; `delete_message` removes; `reaction`
adds or removes a reaction), and compares it with a fresh fetch, message by message.

What a client does not learn from these events is taken from the fresh fetch, and
checked to be only that: messages moved into a channel the user reads, which the move
gives them (flagged `read`, named by the action's `update_message` events); and the flags
of the messages the user's `update_message_flags` events name (with the `historical`
rows such a change creates), which `verify_action` checks on their own.

Privacy: every `update_message`, `delete_message` and `reaction` event a user receives
names only messages that user could read before the action (received, or in a channel
whose history is public to them) or can read after it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.database import Database
from models.messages.history import MAX_MESSAGES_PER_FETCH, fetch_messages
from models.outbox import StoredEvent
from models.tables import Message, Recipient, Stream, UserProfile
from queues.types import SharedEvent

# The events that change a message a client holds.
MESSAGE_CHANGE_TYPES = frozenset({"update_message", "delete_message", "reaction"})
RESOLVED_TOPIC_PREFIX = "✔ "

History = dict[int, dict[str, Any]]


@dataclass
class Captured:
    """Before the action: each active user's history, and what each could read."""

    histories: dict[int, History]
    readable: dict[int, set[int]]
    # The realm had no message: nothing could change one (most actions of the property
    # tests), so nothing is fetched or compared.
    empty: bool = False


def _history(session: Session, user_id: int) -> History:
    answer = fetch_messages(
        session, user_id, anchor="newest", num_before=MAX_MESSAGES_PER_FETCH, num_after=0
    )
    messages = answer["messages"]
    assert answer["found_oldest"], "the check needs a user's whole history"
    return {message["id"]: message for message in messages}


def _active_users(session: Session, realm_id: int) -> list[UserProfile]:
    return list(
        session.scalars(
            select(UserProfile).where(UserProfile.realm_id == realm_id, UserProfile.is_active)
        )
    )


def _readable(session: Session, realm_id: int, state: dict[str, Any], history: History) -> set[int]:
    """The messages a user may read: received, or in a channel whose history is public
    to them (the channels their register `state` shows that are not private)."""
    public = {s["stream_id"] for s in state.get("streams", []) if not s["invite_only"]}
    in_public = session.scalars(
        select(Message.id)
        .join(Recipient, Recipient.id == Message.recipient_id)
        .where(Message.realm_id == realm_id, Recipient.stream_id.in_(sorted(public)))
    )
    return set(history) | {int(message_id) for message_id in in_public}


def capture(session: Session, realm_id: int, states: dict[int, dict[str, Any]]) -> Captured:
    """Every active user's history and readable messages, in the caller's snapshot;
    `states` are their register states of the same snapshot (with `streams`)."""
    histories: dict[int, History] = {}
    readable: dict[int, set[int]] = {}
    if session.scalar(select(Message.id).where(Message.realm_id == realm_id).limit(1)) is None:
        return Captured(histories, readable, empty=True)
    for user in _active_users(session, realm_id):
        histories[user.id] = _history(session, user.id)
        readable[user.id] = _readable(session, realm_id, states[user.id], histories[user.id])
    return Captured(histories, readable)


def _delivered(stored: StoredEvent) -> dict[str, Any]:
    shared = SharedEvent(stored.realm_id, stored.seq, stored.event, stored.user_ids)
    decoded: dict[str, Any] = json.loads(shared.encode_with_id(0))
    return decoded


@dataclass(frozen=True)
class _Channels:
    names: dict[int, str]
    recipients: dict[int, int]


def _apply_update(history: History, event: dict[str, Any], channels: _Channels) -> None:
    """A client's handling of `update_message` (Zulip's web app does the same)."""
    target = event["message_id"]
    new_stream = event.get("new_stream_id")
    new_topic = event.get("subject")
    moved = new_stream is not None or new_topic is not None
    resolving = new_topic is not None and (
        new_topic == RESOLVED_TOPIC_PREFIX + event["orig_subject"]
        or event["orig_subject"] == RESOLVED_TOPIC_PREFIX + new_topic
    )
    for message_id in event["message_ids"]:
        message = history.get(message_id)
        if message is None:
            continue
        entry: dict[str, Any] = {"user_id": event["user_id"], "timestamp": event["edit_timestamp"]}
        if message_id == target and "orig_content" in event:
            entry["prev_content"] = event["orig_content"]
            entry["prev_rendered_content"] = event["orig_rendered_content"]
            message["content"] = event["rendered_content"]
            message["is_me_message"] = event["is_me_message"]
            message["last_edit_timestamp"] = event["edit_timestamp"]
        if new_topic is not None:
            entry["prev_topic"] = message["subject"]
            entry["topic"] = new_topic
            message["subject"] = new_topic
        if new_stream is not None:
            entry["prev_stream"] = message["stream_id"]
            entry["stream"] = new_stream
            message["stream_id"] = new_stream
            message["display_recipient"] = channels.names[new_stream]
            message["recipient_id"] = channels.recipients[new_stream]
        if moved and (new_stream is not None or not resolving):
            message["last_moved_timestamp"] = event["edit_timestamp"]
        if message_id == target:
            message["flags"] = event["flags"]
        message["edit_history"] = [entry, *message.get("edit_history", [])]


def _apply_reaction(history: History, event: dict[str, Any]) -> None:
    message = history.get(event["message_id"])
    if message is None:
        return
    reaction = {
        "emoji_name": event["emoji_name"],
        "emoji_code": event["emoji_code"],
        "reaction_type": event["reaction_type"],
        "user_id": event["user_id"],
    }
    if event["op"] == "add":
        message["reactions"] = [*message["reactions"], reaction]
    else:
        key = (reaction["user_id"], reaction["reaction_type"], reaction["emoji_code"])
        message["reactions"] = [
            r
            for r in message["reactions"]
            if (r["user_id"], r["reaction_type"], r["emoji_code"]) != key
        ]


def apply_events(history: History, events: Sequence[dict[str, Any]], channels: _Channels) -> None:
    """The user's events, in order, applied to their copy of their history."""
    for event in events:
        kind = event["type"]
        if kind == "message":
            history[event["message"]["id"]] = {**event["message"], "flags": event["flags"]}
        elif kind == "update_message":
            _apply_update(history, event, channels)
        elif kind == "delete_message":
            ids = event.get("message_ids", [event.get("message_id")])
            for message_id in ids:
                history.pop(message_id, None)
        elif kind == "reaction":
            _apply_reaction(history, event)


def changes_rows(events: Sequence[StoredEvent]) -> bool:
    """Whether the events delete messages or move them to another channel (which removes
    and gives `user_message` rows without `message` events)."""
    return any(
        stored.event.get("type") == "delete_message"
        or (stored.event.get("type") == "update_message" and "new_stream_id" in stored.event)
        for stored in events
    )


def check(db: Database, realm_id: int, events: Sequence[StoredEvent], before: Captured) -> None:
    """Apply each user's events to their history from before and compare (see module)."""
    if before.empty:
        changes = [e.event for e in events if e.event.get("type") in MESSAGE_CHANGE_TYPES]
        assert not changes, f"events changing messages of a realm that had none: {changes}"
        return
    with db.snapshot() as session:
        after = {user.id: _history(session, user.id) for user in _active_users(session, realm_id)}
        names = {
            int(stream_id): str(name)
            for stream_id, name in session.execute(
                select(Stream.id, Stream.name).where(Stream.realm_id == realm_id)
            )
        }
        recipients = {
            int(stream_id or 0): int(recipient_id)
            for recipient_id, stream_id in session.execute(
                select(Recipient.id, Recipient.stream_id).where(
                    Recipient.realm_id == realm_id, Recipient.stream_id.is_not(None)
                )
            )
        }
    channels = _Channels(names, recipients)
    moved_in: set[int] = set()
    flagged: dict[int, set[int] | None] = {}
    for stored in events:
        if stored.event.get("type") == "update_message_flags":
            for user_id in stored.user_ids:
                named = flagged.setdefault(user_id, set())
                if stored.event.get("all") or named is None:
                    flagged[user_id] = None  # every message
                else:
                    named.update(stored.event["messages"])
        if stored.event.get("type") == "update_message" and "new_stream_id" in stored.event:
            moved_in.update(stored.event["message_ids"])
    for user_id, history_before in before.histories.items():
        received = [_delivered(e) for e in events if user_id in e.user_ids]
        for event in received:
            if event["type"] not in MESSAGE_CHANGE_TYPES:
                continue
            named = set(event.get("message_ids", [])) | {
                event[key] for key in ("message_id",) if key in event
            }
            unknown = named - before.readable[user_id] - set(after.get(user_id, {}))
            assert not unknown, (
                f"user {user_id} received {event['type']} naming messages {sorted(unknown)} "
                "they could read neither before nor after"
            )
        if user_id not in after:
            continue  # deactivated by this action
        history = copy.deepcopy(history_before)
        apply_events(history, received, channels)
        fresh = after[user_id]
        named_by_flags = flagged.get(user_id, set())
        flags_changed = set(fresh) if named_by_flags is None else named_by_flags
        gained = set(fresh) - set(history)
        allowed = moved_in | (flags_changed or set())
        assert gained <= allowed, (
            f"user {user_id} gained messages {sorted(gained - allowed)} without an event"
        )
        for message_id in gained:
            if message_id in moved_in:
                assert fresh[message_id]["flags"] == ["read"], fresh[message_id]
            history[message_id] = copy.deepcopy(fresh[message_id])
        for message_id in flags_changed or ():
            if message_id in history and message_id in fresh:
                history[message_id]["flags"] = fresh[message_id]["flags"]
        assert set(history) == set(fresh), (
            f"user {user_id}'s history holds {sorted(set(history) - set(fresh))} "
            f"that a fresh fetch does not"
        )
        for message_id, message in fresh.items():
            assert history[message_id] == message, (
                f"user {user_id}'s message {message_id} after its events:\n"
                f"{history[message_id]}\nfresh:\n{message}"
            )
