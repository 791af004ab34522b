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
from typing import Any, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    false,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import Session, aliased

from actions.errors import InvalidInput
from models.messages.flags import flag_names
from models.messages.narrows import MAX_ID, RESOLVED_TOPIC_PREFIX, BadNarrow, NarrowTerm, Operand
from models.messages.recipients import RECIPIENT_DIRECT, RECIPIENT_STREAM, dm_key
from models.messages.search import (
    SearchQuery,
    highlight_html,
    highlight_topic,
    parse_search,
    search_condition,
)
from models.messages.wire import load_message_views, message_to_api
from models.queries import get_stream_by_name
from models.state import ViewerDeactivated
from models.tables import (
    USER_MESSAGE_MENTIONED_WHERE,
    USER_MESSAGE_STARRED_WHERE,
    USER_MESSAGE_UNREAD_WHERE,
    Message,
    Reaction,
    Recipient,
    Role,
    Stream,
    Subscription,
    UserMessage,
    UserProfile,
)
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
    """How one history read runs: from public channel history (`public_history`: the
    messages of a public channel the viewer may see, or of every public channel) or from
    the viewer's `user_message` rows, with the narrow's conditions."""

    public_history: ColumnElement[bool] | None = None
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    # A positive term names something that has no messages at all: the answer is empty.
    empty: bool = False
    # The words and phrases of the narrow's `search` terms, for `match_content`.
    search: SearchQuery | None = None


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


def _flag_condition(where: str) -> ColumnElement[bool]:
    """A condition on the viewer's flags written as the partial index's `where` is (the
    constants inline, never bound), so that both backends prove the index applies."""
    # Untyped: a Boolean expression would be compared with 1 on SQLite, which the index's
    # predicate does not imply.
    condition: ColumnElement[object] = literal_column(
        "(" + where.replace("flags", "user_message.flags", 1) + ")"
    )
    return cast(ColumnElement[bool], condition)


def _is_condition(operand: Operand) -> ColumnElement[bool]:
    if operand == "dm":
        return Recipient.type == RECIPIENT_DIRECT
    if operand == "starred":
        return _flag_condition(USER_MESSAGE_STARRED_WHERE)
    if operand == "unread":
        return _flag_condition(USER_MESSAGE_UNREAD_WHERE)
    if operand == "mentioned":
        return _flag_condition(USER_MESSAGE_MENTIONED_WHERE)
    if operand == "resolved":
        return and_(
            Recipient.type == RECIPIENT_STREAM,
            Message.subject.startswith(RESOLVED_TOPIC_PREFIX, autoescape=True),
        )
    # `alerted`, `followed`, `muted`: eventq has no alert words, following or muting.
    return false()


def _has_condition(operand: Operand, dialect: str) -> ColumnElement[bool]:
    if operand == "link":
        # Written as the partial index `ix_message_has_link` is, per backend.
        if dialect == "postgresql":
            return Message.has_link.expression
        return Message.has_link == literal_column("1")
    if operand == "reaction":
        # Through `reaction`'s unique key, which leads with `message_id`.
        return exists(select(Reaction.id).where(Reaction.message_id == Message.id))
    # `attachment`, `image`: eventq stores no uploads.
    return false()


def _including_condition(
    session: Session, viewer: UserProfile, operand: Operand, groups_only: bool
) -> ColumnElement[bool]:
    """`dm-including` (every direct message the named user is in too) and
    `group-pm-with` (the same, of three or more people). A direct message's rows are
    exactly its participants', so the named user's `user_message` row, found by its key,
    says whether they are in it."""
    key = operand if isinstance(operand, int | str) else ""
    (other,) = _realm_user_ids(session, viewer.realm_id, [key])
    theirs = aliased(UserMessage)
    conditions = [
        Recipient.type == RECIPIENT_DIRECT,
        exists(
            select(theirs.message_id).where(
                theirs.user_profile_id == other, theirs.message_id == Message.id
            )
        ),
    ]
    if groups_only:
        # Three or more participants: two commas or more in the sorted id list.
        ids = Recipient.dm_user_ids
        commas = func.length(ids) - func.length(func.replace(ids, ",", ""))
        conditions.append(commas >= 2)
    return and_(*conditions)


def _public_channels(viewer: UserProfile, operand: Operand) -> ColumnElement[bool]:
    """`channels:public` / `channels:web-public`: messages of those channels of the
    realm (a recipient of a channel of the realm that is not private, or web-public)."""
    public = (
        Stream.is_web_public.is_(True) if operand == "web-public" else Stream.invite_only.is_(False)
    )
    recipients = (
        select(Recipient.id)
        .join(Stream, Stream.id == Recipient.stream_id)
        .where(Stream.realm_id == viewer.realm_id, public)
    )
    return Message.recipient_id.in_(recipients)


def _plan(session: Session, viewer: UserProfile, terms: Sequence[NarrowTerm]) -> _Plan:
    plan = _Plan()
    conditions = plan.conditions
    dialect = session.get_bind().dialect.name
    searches: list[str] = []
    channel_history: ColumnElement[bool] | None = None
    all_channels_history: ColumnElement[bool] | None = None
    reads_flags = False
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
            condition = Message.recipient_id == recipient_id
            if not term.negated and channel_history is None and public:
                channel_history = condition
        elif term.operator == "channels":
            condition = _public_channels(viewer, term.operand)
            # Zulip: every public channel's history, for a user who may read public
            # channels (not a guest); a guest reads what they received in them.
            if not term.negated and viewer.role != Role.GUEST:
                all_channels_history = condition
        elif term.operator == "topic":
            condition = and_(
                Recipient.type == RECIPIENT_STREAM,
                func.lower(Message.subject) == str(term.operand).lower(),
            )
        elif term.operator == "sender":
            sender = term.operand if isinstance(term.operand, int | str) else ""
            (sender_id,) = _realm_user_ids(session, viewer.realm_id, [sender])
            condition = Message.sender_id == sender_id
        elif term.operator == "id":
            condition = Message.id == int(str(term.operand))
        elif term.operator in ("near", "in", "with"):
            # `near` only says where to look (the anchor does); `in:home` and `in:all`
            # read the same, eventq having no muting; `with` was resolved before.
            continue
        elif term.operator == "is":
            reads_flags = True
            condition = _is_condition(term.operand)
        elif term.operator == "has":
            condition = _has_condition(term.operand, dialect)
        elif term.operator == "search":
            if term.negated:
                # Zulip searches for the joined operands; a negated one excludes.
                condition = ~search_condition(dialect, parse_search([str(term.operand)]))
                conditions.append(condition)
            else:
                searches.append(str(term.operand))
            continue
        elif term.operator in ("dm-including", "group-pm-with"):
            condition = _including_condition(
                session, viewer, term.operand, term.operator == "group-pm-with"
            )
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
    if searches:
        plan.search = parse_search(searches)
        conditions.append(search_condition(dialect, plan.search))
    # Zulip reads no public history for a narrow on the viewer's own flags (`is:`).
    if not reads_flags:
        plan.public_history = (
            channel_history if channel_history is not None else all_channels_history
        )
    return plan


def _resolve_with(
    session: Session, viewer: UserProfile, terms: Sequence[NarrowTerm]
) -> Sequence[NarrowTerm]:
    """The narrow with its `with` term read: the conversation of the message it names
    (its channel and topic, or its direct-message participants) replaces the narrow's
    own `channel`, `topic` and `dm` terms, if the viewer may read that message. If not,
    the term is ignored when the rest names a conversation, and refused otherwise."""
    named = [t for t in terms if t.operator == "with"]
    if not named:
        return terms
    rest = [t for t in terms if t.operator != "with"]
    message_id = int(str(named[-1].operand))
    row = session.execute(
        select(Message.subject, Recipient.type, Recipient.stream_id, Recipient.dm_user_ids)
        .join(Recipient, Recipient.id == Message.recipient_id)
        .where(Message.id == message_id, Message.realm_id == viewer.realm_id)
    ).first()
    readable = False
    if row is not None:
        received = session.scalar(
            select(UserMessage.message_id).where(
                UserMessage.user_profile_id == viewer.id, UserMessage.message_id == message_id
            )
        )
        readable = received is not None
        if not readable and row.stream_id is not None:
            stream = session.get(Stream, row.stream_id)
            active = session.scalar(
                select(Subscription.active).where(
                    Subscription.user_profile_id == viewer.id,
                    Subscription.stream_id == row.stream_id,
                )
            )
            readable = (
                stream is not None
                and not stream.invite_only
                and can_see_stream(viewer.role, stream, bool(active))
            )
    if row is None or not readable:
        operators = {t.operator for t in rest if not t.negated}
        if {"channel", "topic"} <= operators or "dm" in operators:
            return rest
        raise BadNarrow("Invalid 'with' operator")
    kept = [t for t in rest if t.operator not in ("channel", "topic", "dm")]
    if row.stream_id is not None:
        return [*kept, NarrowTerm("channel", int(row.stream_id)), NarrowTerm("topic", row.subject)]
    participants = tuple(sorted(int(i) for i in orjson.loads(row.dm_user_ids or "[]")))
    return [*kept, NarrowTerm("dm", participants)]


def _base_query(plan: _Plan, viewer_id: int) -> tuple[Select[int, int], Any]:
    """(query of (message id, flags), the id column to order and bound by)."""
    if plan.public_history is not None:
        # The channel's (or channels') whole history, through (recipient_id, id); the
        # viewer's own flags where they received the message.
        query = (
            select(Message.id, UserMessage.flags)
            .outerjoin(
                UserMessage,
                (UserMessage.message_id == Message.id) & (UserMessage.user_profile_id == viewer_id),
            )
            .join(Recipient, Recipient.id == Message.recipient_id)
            .where(plan.public_history)
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


@dataclass
class _Range:
    """The rows (message id, flags) of one read, oldest first on each side, and what it
    found."""

    answer: dict[str, Any]
    before: list[Any] = field(default_factory=list)
    anchor_rows: list[Any] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)
    search: SearchQuery | None = None


def _read_range(
    session: Session,
    viewer_id: int,
    *,
    anchor: int | str,
    num_before: int,
    num_after: int,
    narrow: Sequence[NarrowTerm],
    include_anchor: bool,
) -> _Range:
    """The ids and flags of the messages a read names, with Zulip's `anchor`,
    `found_anchor`, `found_oldest`, `found_newest` and `history_limited` (see
    `fetch_messages`); nothing is loaded beyond the two columns."""
    if num_before < 0 or num_after < 0:
        raise InvalidInput("num_before and num_after must not be negative")
    if num_before + num_after > MAX_MESSAGES_PER_FETCH:
        raise InvalidInput(f"Too many messages requested (maximum {MAX_MESSAGES_PER_FETCH}).")
    viewer = _active_viewer(session, viewer_id)
    plan = _plan(session, viewer, _resolve_with(session, viewer, narrow))
    query, id_column = _base_query(plan, viewer.id)
    if anchor == "first_unread":
        unread = query.where(_flag_condition(USER_MESSAGE_UNREAD_WHERE))
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
    read = _Range(answer, search=plan.search)
    if plan.empty:
        return read

    # Ids are 32-bit: an anchor above every possible id bounds nothing before it and
    # leaves nothing after it (and must not reach the database as a parameter).
    beyond_ids = anchor_value > MAX_ID
    if not anchored_left:
        older = query if beyond_ids else query.where(id_column < anchor_value)
        before = list(session.execute(older.order_by(id_column.desc()).limit(num_before + 1)))
        answer["found_oldest"] = len(before) <= num_before
        read.before = before[:num_before][::-1]
    if not anchored_right and not beyond_ids:
        bound = id_column >= anchor_value if include_anchor else id_column > anchor_value
        after = list(
            session.execute(query.where(bound).order_by(id_column.asc()).limit(num_after + 2))
        )
        if after and include_anchor and int(after[0][0]) == anchor_value:
            read.anchor_rows, after = after[:1], after[1:]
        answer["found_newest"] = len(after) <= num_after
        read.after = after[:num_after]
    answer["found_anchor"] = bool(read.anchor_rows)
    return read


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
    they were on, so a client pages on from the last message it got. A narrow with
    `search` terms gives each message Zulip's `match_content` and `match_subject`.
    """
    read = _read_range(
        session,
        viewer_id,
        anchor=anchor,
        num_before=num_before,
        num_after=num_after,
        narrow=narrow,
        include_anchor=include_anchor,
    )
    answer = read.answer
    if not (read.before or read.anchor_rows or read.after):
        return answer
    kept_before, anchor_messages, kept_after = _within_answer_bound(
        session, read.before, read.anchor_rows, read.after, apply_markdown, read.search
    )
    # Messages left out for the byte bound: the side they were on has more, and says so.
    if len(kept_before) < len(read.before):
        answer["found_oldest"] = False
    if len(kept_after) < len(read.after):
        answer["found_newest"] = False
    answer["messages"] = [*kept_before, *anchor_messages, *kept_after]
    return answer


@dataclass(frozen=True, slots=True)
class MessageIdRange:
    """The ids a narrow and an anchor name (`POST /messages/flags/narrow`), ascending,
    and whether they reach the oldest and newest matching messages."""

    message_ids: list[int]
    found_oldest: bool
    found_newest: bool


def fetch_message_ids(
    session: Session,
    viewer_id: int,
    *,
    anchor: int | str,
    num_before: int,
    num_after: int,
    narrow: Sequence[NarrowTerm] = (),
    include_anchor: bool = True,
) -> MessageIdRange:
    """The ids `fetch_messages` would answer with the same arguments (without its byte
    bound, as nothing is loaded), by the same two indexed queries."""
    read = _read_range(
        session,
        viewer_id,
        anchor=anchor,
        num_before=num_before,
        num_after=num_after,
        narrow=narrow,
        include_anchor=include_anchor,
    )
    ids = [int(row[0]) for row in (*read.before, *read.anchor_rows, *read.after)]
    return MessageIdRange(ids, read.answer["found_oldest"], read.answer["found_newest"])


def _within_answer_bound(
    session: Session,
    before: Sequence[Any],
    anchor_rows: Sequence[Any],
    after: Sequence[Any],
    apply_markdown: bool,
    search: SearchQuery | None = None,
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
            view = views[int(message_id)]
            data = message_to_api(view, apply_markdown)
            data["flags"] = flag_names(None if flags is None else int(flags))
            if search is not None:
                # Zulip marks the match in the rendering and the topic, whatever the
                # `apply_markdown` of the request.
                data["match_content"] = highlight_html(view.rendered_content, search)
                data["match_subject"] = highlight_topic(view.subject, search)
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


class InvalidChannelId(InvalidInput):
    """Zulip's refusal of a channel the caller may not read (or that does not exist)."""

    def __init__(self) -> None:
        super().__init__("Invalid channel ID")


def fetch_stream_topics(session: Session, viewer_id: int, stream_id: int) -> list[dict[str, Any]]:
    """`GET /users/me/{stream_id}/topics`: the channel's topics the viewer may read, each
    `{"name", "max_id"}` (its newest message's id, and the topic as that message spells
    it), newest first.

    Zulip's rules: a channel whose history is public (a public channel the viewer may
    see, a web-public one) lists the topics of all its messages; a private one, whose
    history eventq never shares, lists only the topics of messages the viewer received,
    and only to an active subscriber: anyone else, administrators included, is refused
    with "Invalid channel ID", as for a channel that does not exist. One grouped query
    over the channel's messages through `(recipient_id, id)` (and, for a private
    channel, the viewer's `user_message` keys), never over the realm's."""
    viewer = _active_viewer(session, viewer_id)
    stream = session.get(Stream, stream_id)
    if stream is None or stream.realm_id != viewer.realm_id:
        raise InvalidChannelId()
    active = bool(
        session.scalar(
            select(Subscription.active).where(
                Subscription.user_profile_id == viewer.id, Subscription.stream_id == stream.id
            )
        )
    )
    public_history = not stream.invite_only
    if not (can_see_stream(viewer.role, stream, active) and (public_history or active)):
        raise InvalidChannelId()
    recipient_id = session.scalar(select(Recipient.id).where(Recipient.stream_id == stream.id))
    if recipient_id is None:
        return []
    newest = select(func.max(Message.id).label("max_id")).where(
        Message.recipient_id == recipient_id
    )
    if not public_history:
        newest = newest.join(
            UserMessage,
            (UserMessage.message_id == Message.id) & (UserMessage.user_profile_id == viewer.id),
        )
    # Topics are case-insensitive: one per lower-cased name, named as its newest message.
    per_topic = newest.group_by(func.lower(Message.subject)).subquery()
    rows = session.execute(
        select(Message.subject, per_topic.c.max_id)
        .join(per_topic, Message.id == per_topic.c.max_id)
        .order_by(per_topic.c.max_id.desc())
    )
    return [{"name": subject, "max_id": int(max_id)} for subject, max_id in rows]
