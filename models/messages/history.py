"""History: the messages `GET /messages` answers, read through indexes and bounded.

This module owns history (`fetch_messages`): a user reads what they received
(`user_message`, newest first through its primary key), plus, with a channel narrow, the
whole history of a channel whose history is public to them: a public channel they may
see, or a web-public one. A private channel's history is not public, not even to its
subscribers (its `history_public_to_subscribers` is false, `models.wire`): they read what
they received while subscribed, and nobody else reads any of it. Every read is an indexed
walk (`user_message`'s key, `message (recipient_id, id)`), never a scan of the realm's
messages, and one answer holds at most `MAX_FETCH_ANSWER_BYTES` of messages: the
messages farthest from the anchor are left out, and `found_oldest` or `found_newest` says
so, so that the client pages on. It also owns the anchor (`parse_anchor`) and the SQL
conditions a narrow's terms (`models.messages.narrows`) become.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session

from actions.errors import InvalidInput
from models.messages.flags import READ_FLAG, flag_names
from models.messages.narrows import MAX_ID, BadNarrow, NarrowTerm, Operand
from models.messages.recipients import RECIPIENT_DIRECT, RECIPIENT_STREAM, dm_key
from models.messages.wire import load_message_views, message_to_api
from models.queries import get_stream_by_name
from models.state import ViewerDeactivated
from models.tables import Message, Recipient, Stream, Subscription, UserMessage, UserProfile
from models.visibility import can_see_stream

# Zulip's anchor value for "newest": above any message id, so "before it" is everything.
LARGER_THAN_MAX_MESSAGE_ID = 10_000_000_000_000_000
# Zulip's cap on `num_before + num_after` of one `GET /messages`.
MAX_MESSAGES_PER_FETCH = 5000
# The most bytes of messages one `GET /messages` answer holds (its JSON as sent, less the
# envelope). Zulip has no such bound; without it, 5,000 messages of the largest rendering
# (`rendering.MAX_RENDERED_LENGTH`, about 108 KB each as sent) make a 540 MB answer, built on a
# database thread, encoded on the event loop and buffered per reader. An ordinary message
# is 0.5-1.5 KB in this encoding (measured: 518 bytes for a two-line channel message), so
# a full answer of 5,000 of them fits and only answers inflated by large messages are
# cut, at about 77 messages of the largest rendering. The messages farthest from
# the anchor are the ones left out, and the side they were on answers `found_oldest` or
# `found_newest` false, as when `num_before` or `num_after` stops short: a client pages on
# from the last message it got, as Zulip's clients do.
MAX_FETCH_ANSWER_BYTES = 8 * 1024 * 1024
# What the answer holds besides its messages (`result`, `msg`, `anchor`, the `found_*`
# flags), with a wide margin: it is a few hundred bytes.
_FETCH_ENVELOPE_BYTES = 1024
# Messages are loaded and measured this many at a time, nearest the anchor first, so a
# read that stops at MAX_FETCH_ANSWER_BYTES holds at most this many beyond it (about
# 55 MB if each had the largest rendering) instead of all 5,000.
_FETCH_LOAD_BATCH = 500


def _active_viewer(session: Session, viewer_id: int) -> UserProfile:
    viewer = session.get(UserProfile, viewer_id)
    if viewer is None or not viewer.is_active:
        raise ViewerDeactivated()
    return viewer


@dataclass
class _Plan:
    """How one history read runs: from a public channel's messages or from the viewer's
    `user_message` rows, with the narrow's conditions."""

    public_recipient: int | None = None
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    # A positive term names something that has no messages at all: the answer is empty.
    empty: bool = False


def _named_channel(session: Session, viewer: UserProfile, operand: Operand) -> tuple[Stream, bool]:
    """The channel a narrow names, and whether its whole history is public to the viewer
    (a public channel they may see, or a web-public one)."""
    if isinstance(operand, int):
        stream = session.get(Stream, operand)
    else:
        stream = get_stream_by_name(session, viewer.realm_id, str(operand))
    if stream is not None and stream.realm_id == viewer.realm_id:
        active = session.scalar(
            select(Subscription.active).where(
                Subscription.user_profile_id == viewer.id, Subscription.stream_id == stream.id
            )
        )
        sees = can_see_stream(viewer.role, stream, bool(active))
        # A former subscriber knows the channel, and reads what they received in it.
        if sees or active is not None:
            return stream, sees and not stream.invite_only
    # A channel the viewer may not see is answered like one that does not exist.
    raise BadNarrow(f"unknown channel {operand}")


def _realm_user_ids(session: Session, realm_id: int, keys: Iterable[int | str]) -> list[int]:
    """The ids of the users of the realm named by id or email; BadNarrow if any is not."""
    wanted = list(keys)
    ids = {k for k in wanted if isinstance(k, int)}
    emails = {k for k in wanted if isinstance(k, str)}
    rows = session.execute(
        select(UserProfile.id, UserProfile.email).where(
            UserProfile.realm_id == realm_id,
            UserProfile.id.in_(sorted(ids)) | UserProfile.email.in_(sorted(emails)),
        )
    ).all()
    found_ids = {int(r.id) for r in rows}
    found_emails = {r.email for r in rows}
    if ids - found_ids or emails - found_emails:
        raise BadNarrow("unknown user")
    return sorted(found_ids)


def _plan(session: Session, viewer: UserProfile, terms: Sequence[NarrowTerm]) -> _Plan:
    plan = _Plan()
    conditions = plan.conditions
    for term in terms:
        condition: ColumnElement[bool]
        if term.operator == "channel":
            stream, public = _named_channel(session, viewer, term.operand)
            recipient_id = session.scalar(
                select(Recipient.id).where(Recipient.stream_id == stream.id)
            )
            if recipient_id is None:
                # No message was ever sent to it.
                plan.empty = plan.empty or not term.negated
                continue
            if not term.negated and plan.public_recipient is None and public:
                plan.public_recipient = recipient_id
            condition = Message.recipient_id == recipient_id
        elif term.operator == "topic":
            condition = and_(
                Recipient.type == RECIPIENT_STREAM,
                func.lower(Message.subject) == str(term.operand).lower(),
            )
        elif term.operator == "sender":
            sender = term.operand if isinstance(term.operand, int | str) else ""
            (sender_id,) = _realm_user_ids(session, viewer.realm_id, [sender])
            condition = Message.sender_id == sender_id
        elif term.operator == "is":
            condition = Recipient.type == RECIPIENT_DIRECT
        else:
            operand = term.operand if isinstance(term.operand, tuple) else (term.operand,)
            participants = {viewer.id, *_realm_user_ids(session, viewer.realm_id, operand)}
            recipient_id = session.scalar(
                select(Recipient.id).where(
                    Recipient.realm_id == viewer.realm_id,
                    Recipient.dm_key == dm_key(participants),
                )
            )
            if recipient_id is None:
                plan.empty = plan.empty or not term.negated
                continue
            condition = Message.recipient_id == recipient_id
        conditions.append(~condition if term.negated else condition)
    return plan


def _base_query(plan: _Plan, viewer_id: int) -> tuple[Select[int, int], Any]:
    """(query of (message id, flags), the id column to order and bound by)."""
    if plan.public_recipient is not None:
        # The channel's whole history, through (recipient_id, id); the viewer's own flags
        # where they received the message.
        query = (
            select(Message.id, UserMessage.flags)
            .outerjoin(
                UserMessage,
                (UserMessage.message_id == Message.id) & (UserMessage.user_profile_id == viewer_id),
            )
            .join(Recipient, Recipient.id == Message.recipient_id)
            .where(Message.recipient_id == plan.public_recipient)
        )
        id_column: Any = Message.id
    else:
        # What the viewer received, through user_message's (user_profile_id, message_id).
        query = (
            select(UserMessage.message_id, UserMessage.flags)
            .join(Message, Message.id == UserMessage.message_id)
            .join(Recipient, Recipient.id == Message.recipient_id)
            .where(UserMessage.user_profile_id == viewer_id)
        )
        id_column = UserMessage.message_id
    for condition in plan.conditions:
        query = query.where(condition)
    return query, id_column


def parse_anchor(raw: str) -> int | str:
    """`anchor`: "newest", "oldest", "first_unread", or a message id (clamped into
    [0, LARGER_THAN_MAX_MESSAGE_ID] as Zulip does). Raises `InvalidInput`."""
    text = raw.strip()
    if text in ("newest", "oldest", "first_unread"):
        return text
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        raise InvalidInput("Invalid anchor")
    return max(0, min(LARGER_THAN_MAX_MESSAGE_ID, int(text)))


def fetch_messages(
    session: Session,
    viewer_id: int,
    *,
    anchor: int | str,
    num_before: int,
    num_after: int,
    narrow: Sequence[NarrowTerm] = (),
    include_anchor: bool = True,
    apply_markdown: bool = True,
) -> dict[str, Any]:
    """`GET /messages`: up to `num_before` messages before the anchor, the anchor itself
    (if `include_anchor` and it matches), and up to `num_after` after it, oldest first,
    with Zulip's `found_anchor`, `found_oldest`, `found_newest` and `history_limited`.

    Each side is one indexed query that fetches one row more than asked, so the answer
    says exactly whether the oldest and newest matching messages are included. An answer
    holds at most MAX_FETCH_ANSWER_BYTES of messages: past it, the messages farthest from
    the anchor are left out, and `found_oldest` / `found_newest` are false for the side
    they were on, so a client pages on from the last message it got.
    """
    if num_before < 0 or num_after < 0:
        raise InvalidInput("num_before and num_after must not be negative")
    if num_before + num_after > MAX_MESSAGES_PER_FETCH:
        raise InvalidInput(f"Too many messages requested (maximum {MAX_MESSAGES_PER_FETCH}).")
    viewer = _active_viewer(session, viewer_id)
    plan = _plan(session, viewer, narrow)
    query, id_column = _base_query(plan, viewer.id)
    if anchor == "first_unread":
        unread = query.where(UserMessage.flags.op("&")(READ_FLAG) == 0)
        first = session.scalar(unread.with_only_columns(func.min(id_column)).order_by(None))
        anchor = int(first) if first is not None else "newest"
    anchored_left = anchor == "oldest"
    anchored_right = anchor == "newest"
    anchor_id = 0 if anchored_left else LARGER_THAN_MAX_MESSAGE_ID if anchored_right else anchor
    anchor_value = int(anchor_id)
    answer: dict[str, Any] = {
        "anchor": anchor_value,
        "found_anchor": False,
        "found_oldest": True,
        "found_newest": True,
        "history_limited": False,
        "messages": [],
    }
    if plan.empty:
        return answer

    # Ids are 32-bit: an anchor above every possible id bounds nothing before it and
    # leaves nothing after it (and must not reach the database as a parameter).
    beyond_ids = anchor_value > MAX_ID
    before: list[Any] = []
    if not anchored_left:
        older = query if beyond_ids else query.where(id_column < anchor_value)
        before = list(session.execute(older.order_by(id_column.desc()).limit(num_before + 1)))
        answer["found_oldest"] = len(before) <= num_before
        before = before[:num_before][::-1]
    after: list[Any] = []
    anchor_rows: list[Any] = []
    if not anchored_right and not beyond_ids:
        bound = id_column >= anchor_value if include_anchor else id_column > anchor_value
        after = list(
            session.execute(query.where(bound).order_by(id_column.asc()).limit(num_after + 2))
        )
        if after and include_anchor and int(after[0][0]) == anchor_value:
            anchor_rows, after = after[:1], after[1:]
        answer["found_newest"] = len(after) <= num_after
        after = after[:num_after]
    answer["found_anchor"] = bool(anchor_rows)
    kept_before, anchor_messages, kept_after = _within_answer_bound(
        session, before, anchor_rows, after, apply_markdown
    )
    # Messages left out for the byte bound: the side they were on has more, and says so.
    if len(kept_before) < len(before):
        answer["found_oldest"] = False
    if len(kept_after) < len(after):
        answer["found_newest"] = False
    answer["messages"] = [*kept_before, *anchor_messages, *kept_after]
    return answer


def _within_answer_bound(
    session: Session,
    before: Sequence[Any],
    anchor_rows: Sequence[Any],
    after: Sequence[Any],
    apply_markdown: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The wire shapes of the rows (each (message id, flags), oldest first), nearest the
    anchor first, as long as their JSON fits MAX_FETCH_ANSWER_BYTES: (the kept messages
    before the anchor, the anchor's, those after it), each oldest first.

    The anchor comes first, then the sides alternately, so a cut one leaves both sides
    about as long; the first message is always kept, so a client paging on always gets
    one. Rows are loaded `_FETCH_LOAD_BATCH` at a time, in that order, and the encoding
    measured is the one the answer is sent in (orjson's)."""
    order: list[tuple[int, Any]] = [(0, row) for row in anchor_rows]
    nearest_before, nearest_after = before[::-1], list(after)
    for index in range(max(len(nearest_before), len(nearest_after))):
        if index < len(nearest_before):
            order.append((-1, nearest_before[index]))
        if index < len(nearest_after):
            order.append((1, nearest_after[index]))
    budget = MAX_FETCH_ANSWER_BYTES - _FETCH_ENVELOPE_BYTES
    used = 0
    kept: dict[int, list[dict[str, Any]]] = {-1: [], 0: [], 1: []}
    for start in range(0, len(order), _FETCH_LOAD_BATCH):
        batch = order[start : start + _FETCH_LOAD_BATCH]
        views = load_message_views(session, [int(row[0]) for _, row in batch])
        for side, (message_id, flags) in batch:
            data = message_to_api(views[int(message_id)], apply_markdown)
            data["flags"] = flag_names(None if flags is None else int(flags))
            # Its JSON and the comma before the next one.
            size = len(orjson.dumps(data)) + 1
            if used + size > budget and used > 0:
                return kept[-1][::-1], kept[0], kept[1]
            used += size
            kept[side].append(data)
    return kept[-1][::-1], kept[0], kept[1]


def received_message_count(session: Session, user_ids: Collection[int] | None = None) -> int:
    """How many (user, message) pairs were received, for tests and the admin views."""
    query = select(func.count()).select_from(UserMessage)
    if user_ids is not None:
        query = query.where(UserMessage.user_profile_id.in_(sorted(user_ids)))
    return int(session.scalar(query) or 0)
