"""One user's message state in `register`: `unread_msgs` and `starred_messages`.

This module owns the per-user part of the `register` answer (`user_state`), in Zulip's
shapes: `unread_msgs` when `message` and `update_message_flags` are both fetched,
`starred_messages` when `starred_messages` is; and `message_details`, the description of
messages marked unread that Zulip's `update_message_flags` `remove` event carries so a
client can file them in its `unread_msgs`. Both describe a message's conversation the
same way (`Conversation`), so a client filing the event's details ends with what a fresh
`register` reads.

This state is the user's own, unlike the realm state `server.engine.registration` reads
once and shares between registers: it changes with every `message` event, which does not
move the realm's state position, so it is always read for the one user, never kept.

Bounds: `unread_msgs` holds the newest `MAX_UNREAD_MESSAGES` unread messages, Zulip's
bound, with `old_unreads_missing` true when there are more; it is one query, walking the
user's `user_message` rows newest first through their primary key. `mentions` holds the
unread messages with a mention flag (mentioned by name, or by a channel or topic
wildcard), as Zulip's does; eventq has no muting, so a wildcard mention always counts and
`count` counts every message held.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Select, select, union_all
from sqlalchemy.orm import Session

from models.messages.flags import MENTION_FLAGS, READ_FLAG, STARRED_FLAG
from models.messages.recipients import RECIPIENT_STREAM
from models.tables import Message, Recipient, UserMessage

# Zulip's bound on the unread messages `register` describes (its MAX_UNREAD_MESSAGES):
# the newest ones; `old_unreads_missing` says that older ones were left out.
MAX_UNREAD_MESSAGES = 50_000
# The fetch types that select per-user message state, read by `user_state`.
UNREAD_EVENT_TYPES = frozenset({"message", "update_message_flags"})
STARRED_EVENT_TYPE = "starred_messages"
USER_STATE_EVENT_TYPES = UNREAD_EVENT_TYPES | {STARRED_EVENT_TYPE}
# A select of any columns (one user's rows, for `newest_rows_per_user`).
AnySelect = Select[*tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Conversation:
    """Where a message belongs in `unread_msgs`: a channel and topic, or the sorted ids of
    a direct-message conversation's participants (the viewer included)."""

    stream_id: int | None
    topic: str
    participants: tuple[int, ...]

    @classmethod
    def of(
        cls, recipient_type: int, stream_id: int | None, subject: str, dm_user_ids: str | None
    ) -> Conversation:
        """The conversation of a message from its recipient's columns."""
        if recipient_type == RECIPIENT_STREAM and stream_id is not None:
            return cls(int(stream_id), subject, ())
        return cls(None, "", tuple(sorted(int(u) for u in json.loads(dm_user_ids or "[]"))))


def wants_user_state(fetch_event_types: Collection[str]) -> bool:
    """Whether a register fetching these types needs any per-user message state."""
    return UNREAD_EVENT_TYPES <= set(fetch_event_types) or STARRED_EVENT_TYPE in set(
        fetch_event_types
    )


def user_state(
    session: Session, user_id: int, fetch_event_types: Collection[str]
) -> dict[str, Any]:
    """The per-user keys of a `register` answer for these fetch types (see the module),
    read in the caller's snapshot; empty when none is asked for."""
    return users_state(session, [user_id], fetch_event_types)[user_id]


def users_state(
    session: Session, user_ids: Collection[int], fetch_event_types: Collection[str]
) -> dict[int, dict[str, Any]]:
    """`user_state` of each of `user_ids`, in the same statements whatever their number
    (registers arriving together share them: `server.engine.registration`)."""
    fetched = set(fetch_event_types)
    states: dict[int, dict[str, Any]] = {user_id: {} for user_id in user_ids}
    if not states:
        return states
    if UNREAD_EVENT_TYPES <= fetched:
        for user_id, unread in unread_msgs_of(session, states).items():
            states[user_id]["unread_msgs"] = unread
    if STARRED_EVENT_TYPE in fetched:
        for user_id, starred in starred_message_ids_of(session, states).items():
            states[user_id]["starred_messages"] = starred
    return states


def newest_rows_per_user(
    user_ids: Collection[int], newest_first: Callable[[int], AnySelect], limit: int
) -> AnySelect:
    """One statement for the `limit` first rows of `newest_first(user_id)` of each user: a
    `UNION ALL` of one limited select per user, so each still stops at its limit through
    the user's index, as it would alone."""
    parts = [newest_first(user_id).limit(limit).subquery() for user_id in sorted(user_ids)]
    selects = [select(*part.c) for part in parts]
    if len(selects) == 1:
        return selects[0]
    return cast(AnySelect, union_all(*selects))


def unread_msgs(session: Session, user_id: int) -> dict[str, Any]:
    """Zulip's `unread_msgs` for the user: their newest `MAX_UNREAD_MESSAGES` unread
    messages by conversation, in one query."""
    return unread_msgs_of(session, [user_id])[user_id]


def unread_msgs_of(session: Session, user_ids: Collection[int]) -> dict[int, dict[str, Any]]:
    """`unread_msgs` of each user, in one query."""

    def newest_unread(user_id: int) -> AnySelect:
        return (
            select(
                UserMessage.user_profile_id,
                UserMessage.message_id,
                Recipient.type,
                Recipient.stream_id,
                Message.subject,
                Recipient.dm_user_ids,
                UserMessage.flags,
            )
            .join(Message, Message.id == UserMessage.message_id)
            .join(Recipient, Recipient.id == Message.recipient_id)
            .where(
                UserMessage.user_profile_id == user_id,
                UserMessage.flags.op("&")(READ_FLAG) == 0,
            )
            .order_by(UserMessage.message_id.desc())
        )

    rows: dict[int, list[Any]] = {user_id: [] for user_id in user_ids}
    for row in session.execute(
        newest_rows_per_user(user_ids, newest_unread, MAX_UNREAD_MESSAGES + 1)
    ):
        rows[int(row[0])].append(row[1:])
    answers: dict[int, dict[str, Any]] = {}
    for user_id, found in rows.items():
        found.sort(key=lambda row: -int(row[0]))  # a UNION ALL keeps no order
        kept = found[:MAX_UNREAD_MESSAGES]
        answers[user_id] = group_unreads(
            user_id,
            (
                (int(message_id), Conversation.of(int(kind), stream_id, subject, dm_user_ids))
                for message_id, kind, stream_id, subject, dm_user_ids, _ in kept
            ),
            old_unreads_missing=len(found) > MAX_UNREAD_MESSAGES,
            mentions=[int(row[0]) for row in kept if int(row[5]) & MENTION_FLAGS],
        )
    return answers


def group_unreads(
    user_id: int,
    unread: Iterable[tuple[int, Conversation]],
    *,
    old_unreads_missing: bool,
    mentions: Iterable[int] = (),
) -> dict[str, Any]:
    """`unread_msgs` from (message id, conversation) pairs: one entry per channel and
    topic, per one-on-one conversation (`pms`, keyed by the other participant, or the
    user for a conversation with themselves) and per group conversation (`huddles`);
    entries sorted by key, ids ascending; `mentions` the ids of those with a mention
    flag, ascending."""
    by_conversation: dict[Conversation, list[int]] = {}
    count = 0
    for message_id, conversation in unread:
        by_conversation.setdefault(conversation, []).append(message_id)
        count += 1
    streams: list[dict[str, Any]] = []
    pms: list[dict[str, Any]] = []
    huddles: list[dict[str, Any]] = []
    for conversation in sorted(
        by_conversation, key=lambda c: (c.stream_id or 0, c.topic, c.participants)
    ):
        ids = sorted(by_conversation[conversation])
        if conversation.stream_id is not None:
            streams.append(
                {
                    "stream_id": conversation.stream_id,
                    "topic": conversation.topic,
                    "unread_message_ids": ids,
                }
            )
            continue
        others = [u for u in conversation.participants if u != user_id]
        if len(others) <= 1:
            other = others[0] if others else user_id
            # `sender_id` is the deprecated name Zulip still sends beside `other_user_id`.
            pms.append({"other_user_id": other, "sender_id": other, "unread_message_ids": ids})
        else:
            huddles.append(
                {
                    "user_ids_string": ",".join(str(u) for u in conversation.participants),
                    "unread_message_ids": ids,
                }
            )
    return {
        "count": count,
        "pms": sorted(pms, key=lambda entry: entry["other_user_id"]),
        "streams": streams,
        "huddles": huddles,
        "mentions": sorted(set(mentions)),
        "old_unreads_missing": old_unreads_missing,
    }


def message_details(
    user_id: int, messages: dict[int, Conversation], mentioned: Collection[int] = ()
) -> dict[str, Any]:
    """Zulip's `message_details` of an `update_message_flags` `remove` event of `read`:
    for each message, keyed by its id as a string, `type` and its channel and topic, or
    the other participants of its direct-message conversation (`user_ids`, empty for one
    with oneself); and `mentioned: true` for the messages in `mentioned` (those whose row
    has a mention flag, `MENTION_FLAGS`), which a client files in `mentions`, as Zulip
    sends it (absent, never false, otherwise)."""
    details: dict[str, Any] = {}
    for message_id in sorted(messages):
        conversation = messages[message_id]
        detail: dict[str, Any]
        if conversation.stream_id is not None:
            detail = {
                "type": "stream",
                "stream_id": conversation.stream_id,
                "topic": conversation.topic,
            }
        else:
            detail = {
                "type": "private",
                "user_ids": [u for u in conversation.participants if u != user_id],
            }
        if message_id in mentioned:
            detail["mentioned"] = True
        details[str(message_id)] = detail
    return details


def starred_message_ids(session: Session, user_id: int) -> list[int]:
    """Zulip's `starred_messages`: the ids of every message the user starred, ascending."""
    return starred_message_ids_of(session, [user_id])[user_id]


def starred_message_ids_of(session: Session, user_ids: Collection[int]) -> dict[int, list[int]]:
    """`starred_messages` of each user, in one query."""
    starred: dict[int, list[int]] = {user_id: [] for user_id in user_ids}
    for user_id, message_id in session.execute(
        select(UserMessage.user_profile_id, UserMessage.message_id)
        .where(
            UserMessage.user_profile_id.in_(sorted(starred)),
            UserMessage.flags.op("&")(STARRED_FLAG) != 0,
        )
        .order_by(UserMessage.user_profile_id, UserMessage.message_id)
    ):
        starred[int(user_id)].append(int(message_id))
    return starred
