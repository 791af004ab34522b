"""Messages as clients see them: the wire shape, the narrow, and who may read what.

This module owns

* the rendering of a message's content (`render_markdown`: Markdown with raw HTML
  disabled, so nothing a sender writes reaches another client as markup), refused as
  Zulip refuses it, "Unable to render message", when the HTML would pass
  `MAX_RENDERED_LENGTH`;
* the wire shape of a message (`message_to_api`), the same in a `message` event and in
  `GET /messages`, following Zulip's API documentation, and the stored form of the event
  (`message_event`), which carries the raw-Markdown form for queues that ask for it;
* the narrow (`parse_narrow`): Zulip's operators `channel`/`stream`, `topic`/`subject`,
  `dm`/`pm-with`, `sender` and `is:dm`/`is:private`, each possibly negated, as a queue's
  event filter (`EventNarrow`, which reads nothing but the event, so a rebuilt queue
  filters identically, and which prepares its terms once so that filtering one message
  costs the same whatever the size of its operands) and as the conditions of a history
  query; its size is bounded (`MAX_NARROW_TERMS`, `MAX_NARROW_USERS`,
  `MAX_NARROW_OPERAND_CHARS`);
* history (`fetch_messages`): a user reads what they received (`user_message`, newest
  first through its primary key), plus, with a channel narrow, the whole history of a
  channel whose history is public to them: a public channel they may see, or a
  web-public one. A private channel's history is not public, not even to its
  subscribers (its `history_public_to_subscribers` is false, `models.wire`): they read
  what they received while subscribed, and nobody else reads any of it. Every read is
  an indexed walk (`user_message`'s key, `message (recipient_id, id)`), never a scan of
  the realm's messages, and one answer holds at most `MAX_FETCH_ANSWER_BYTES` of
  messages: the messages farthest from the anchor are left out, and `found_oldest` or
  `found_newest` says so, so that the client pages on.

Fields Zulip sends that eventq has no concept of have the value that says so:
`avatar_url` null (every avatar is the Gravatar of the sender's email, computed by the
client as with `client_gravatar`), `reactions`, `submessages` and `topic_links` empty
(no reactions, widgets or linkifiers), `is_mirror_dummy` false.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session

from actions.errors import ActionError, InvalidInput
from models.queries import get_stream_by_name
from models.state import ViewerDeactivated
from models.tables import (
    MAX_MESSAGE_LENGTH,
    Message,
    Realm,
    Recipient,
    Stream,
    Subscription,
    UserMessage,
    UserProfile,
)
from models.visibility import can_see_stream

# Zulip's `Recipient.type` values eventq uses: a channel, and a direct-message
# conversation of any size (Zulip's "direct message group").
RECIPIENT_STREAM = 2
RECIPIENT_DIRECT = 3
# Zulip's `UserMessage` flag bit for `read`, the only flag eventq sets.
READ_FLAG = 1
CONTENT_TYPE_HTML = "text/html"
CONTENT_TYPE_MARKDOWN = "text/x-markdown"
# Zulip's anchor value for "newest": above any message id, so "before it" is everything.
LARGER_THAN_MAX_MESSAGE_ID = 10_000_000_000_000_000
# Zulip's cap on `num_before + num_after` of one `GET /messages`.
MAX_MESSAGES_PER_FETCH = 5000
# The most bytes of messages one `GET /messages` answer holds (its JSON as sent, less the
# envelope). Zulip has no such bound; without it, 5,000 messages of the largest rendering
# (`MAX_RENDERED_LENGTH`, about 108 KB each as sent) make a 540 MB answer, built on a
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
# No client narrows by more than a few terms; the cap bounds the SQL of one history read
# and the work of one queue's filter per message.
MAX_NARROW_TERMS = 16
# The most users a narrow's `dm` terms name in all, and the most characters of its text
# operands in all (channel names, topics and emails, those of `dm` terms included). Zulip
# bounds neither (only its request size does); eventq's 256 KiB request bound let one
# register name 40,000 users, which its queue kept for life (1.2-1.5 MB each, measured)
# and, before filters were prepared once (`EventNarrow`), walked on every message routed
# to it. A `dm` term names one conversation, so the figures are for a client that names
# sixteen conversations (`MAX_NARROW_TERMS`) of up to fifteen people each, or one of 250,
# by ids or by emails of up to 65 characters; a narrow beyond them is refused as
# BAD_NARROW, at register and in `GET /messages` alike.
MAX_NARROW_USERS = 250
MAX_NARROW_OPERAND_CHARS = 16_384
# The longest HTML a message may render to: Zulip refuses a message whose rendered
# content exceeds 100 times MAX_MESSAGE_LENGTH (zerver/lib/markdown/__init__.py,
# `do_convert`: "Rendered content exceeds ... characters", a MarkdownRenderingError that
# zerver/actions/message_send.py's `render_incoming_message` answers as "Unable to render
# message"), and stops any rendering after 5 s. eventq stores the HTML three times (the
# message row and its two `message` events) and sends it in every event and history read,
# so it refuses at ten times: a 7,203-character table that markdown-it completes to 65,536
# cells renders to 668,004 characters (the review measured 2.2 MB stored for it). Text
# renders to at most six times its length (`"` is `&quot;`), a table of one-character
# cells to about five: of Markdown not built to expand, only such a table with column
# alignments (36 characters a cell) of more than about 2,700 cells passes the bound.
MAX_RENDERED_LENGTH = 10 * MAX_MESSAGE_LENGTH
# The most block tokens one rendering may make, checked as the parser makes them, so that
# source which would be refused for its length is refused before most of the work: a
# table cell is three block tokens and renders to at least `<td></td>` and a newline, ten
# characters, so a table of more cells than a third of this renders past
# MAX_RENDERED_LENGTH anyway. Written Markdown makes at most about three block tokens a
# character (a `|` in a table row); only the cells markdown-it fills in (up to 65,536 a
# table, its `MAX_AUTOCOMPLETED_CELLS`) make more, and those cost the CPU: rendering the
# table above took 0.9 s, six smaller ones in one 9,245-character message 6.2 s; refusing
# them at this bound takes 0.10 s and 0.14 s (measured on this project's 2-core machine).
MAX_RENDER_BLOCK_TOKENS = 3 * MAX_RENDERED_LENGTH // 10
# Must equal `queues.types.RAW_MARKDOWN_KEY` (models may not import queues; a unit test
# checks they agree): the stored event's raw-Markdown fields for `apply_markdown` false.
RAW_MARKDOWN_KEY = "eventq_raw_markdown"
# Ids are 32-bit INTEGER columns; an operand outside this range names nothing, and is
# refused before it reaches the database (which would fail on it, not find nothing).
_MIN_ID = -(2**31)
_MAX_ID = 2**31 - 1

# Raw HTML disabled: `<b>` is shown as text, never as markup; images disabled: a sender
# cannot make every recipient's client load a remote image. Newlines are line breaks, as
# in Zulip. markdown-it also refuses `javascript:` and similar links.
_MARKDOWN = (
    MarkdownIt("commonmark", {"html": False, "breaks": True})
    .enable(["strikethrough", "table"])
    .disable("image")
)


class MarkdownRenderingError(InvalidInput):
    """Raised by `render_markdown` for content whose HTML would be longer than
    MAX_RENDERED_LENGTH: Zulip's exception of that name, answered with Zulip's wording
    (BAD_REQUEST). Raised before the message's transaction writes anything."""

    def __init__(self) -> None:
        super().__init__("Unable to render message")


class _BoundedBlockTokens(list[Token]):
    """The block token stream of one rendering: the parser appends every block token
    here (`StateBlock.push`), and the one past MAX_RENDER_BLOCK_TOKENS stops it."""

    __slots__ = ()

    def append(self, token: Token) -> None:
        if len(self) >= MAX_RENDER_BLOCK_TOKENS:
            raise MarkdownRenderingError()
        super().append(token)


def _bound_block_tokens(state: StateCore) -> None:
    state.tokens = _BoundedBlockTokens(state.tokens)


_MARKDOWN.core.ruler.before("block", "eventq_block_token_bound", _bound_block_tokens)


def render_markdown(content: str) -> str:
    """The HTML a client shows for `content` (`apply_markdown` true). Raises
    `MarkdownRenderingError` for content whose HTML would pass MAX_RENDERED_LENGTH."""
    html = _MARKDOWN.render(content)
    if len(html) > MAX_RENDERED_LENGTH:
        raise MarkdownRenderingError()
    return html


def dm_key(user_ids: Iterable[int]) -> str:
    """The key of the direct-message conversation of exactly these participants."""
    joined = ",".join(str(user_id) for user_id in sorted(set(user_ids)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


class BadNarrow(ActionError):
    """A narrow Zulip would refuse as BAD_NARROW: an unknown operator, or an operand
    naming no channel or user the caller may see."""

    code = "BAD_NARROW"

    def __init__(self, description: str) -> None:
        super().__init__(f"Invalid narrow operator: {description}")


# -- the wire shape -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Participant:
    """A user as a message names them: sender, or a direct message's participant."""

    id: int
    email: str
    full_name: str


@dataclass(frozen=True, slots=True)
class MessageView:
    """Everything a message's wire shape is built from, detached from any session."""

    id: int
    sender: Participant
    realm_str: str
    recipient_id: int
    # (id, name) of the channel; None for a direct message.
    stream: tuple[int, str] | None
    # A direct message's participants, sender included, by id; () for a channel message.
    participants: tuple[Participant, ...]
    subject: str
    content: str
    rendered_content: str
    timestamp: int
    client: str


def is_me_message(content: str) -> bool:
    """Zulip's `/me` status message: one line starting with `/me `."""
    return content.startswith("/me ") and "\n" not in content


def message_to_api(view: MessageView, apply_markdown: bool) -> dict[str, Any]:
    """A message as Zulip's `message` event and `GET /messages` show it (without the
    per-user `flags`, which travel beside it in an event and inside it in history)."""
    data: dict[str, Any] = {
        "id": view.id,
        "sender_id": view.sender.id,
        "sender_email": view.sender.email,
        "sender_full_name": view.sender.full_name,
        "sender_realm_str": view.realm_str,
        "recipient_id": view.recipient_id,
        "subject": view.subject,
        "topic_links": [],
        "timestamp": view.timestamp,
        "client": view.client,
        "avatar_url": None,
        "is_me_message": is_me_message(view.content),
        "reactions": [],
        "submessages": [],
    }
    if view.stream is not None:
        data["type"] = "stream"
        data["stream_id"] = view.stream[0]
        data["display_recipient"] = view.stream[1]
    else:
        data["type"] = "private"
        data["display_recipient"] = [
            {"id": p.id, "email": p.email, "full_name": p.full_name, "is_mirror_dummy": False}
            for p in view.participants
        ]
    if apply_markdown:
        data["content"] = view.rendered_content
        data["content_type"] = CONTENT_TYPE_HTML
    else:
        data["content"] = view.content
        data["content_type"] = CONTENT_TYPE_MARKDOWN
    return data


def message_event(view: MessageView, flags: Sequence[str]) -> dict[str, Any]:
    """The stored `message` event: the rendered form, plus (under RAW_MARKDOWN_KEY, which
    no client ever sees) what a queue registered with `apply_markdown` false gets instead."""
    return {
        "type": "message",
        "message": message_to_api(view, apply_markdown=True),
        "flags": list(flags),
        RAW_MARKDOWN_KEY: {"content": view.content, "content_type": CONTENT_TYPE_MARKDOWN},
    }


def flag_names(flags: int | None) -> list[str]:
    """Zulip's flag names of a `user_message` row; None (no row: a message read from
    public channel history) is Zulip's `read` and `historical`."""
    if flags is None:
        return ["read", "historical"]
    return ["read"] if flags & READ_FLAG else []


def timestamp_of(moment: datetime) -> int:
    """Unix seconds; SQLite returns naive datetimes, which eventq writes in UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


# -- the narrow --------------------------------------------------------------------------------

# Zulip's operator names, old and new, to the one each term is stored under.
_OPERATORS = {
    "channel": "channel",
    "stream": "channel",
    "topic": "topic",
    "subject": "topic",
    "dm": "dm",
    "pm-with": "dm",
    "sender": "sender",
    "is": "is",
}
# `is:` operands eventq supports: both name direct messages.
_IS_DM = frozenset({"dm", "private"})

Operand = str | int | tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class NarrowTerm:
    """One narrow term: a canonical operator, its normalized operand, and negation.

    `channel` and `sender` operands are ids (int) or a name or email (str); `dm` is a
    tuple of ids and lower-case emails; `topic` a string; `is` always "dm".
    """

    operator: str
    operand: Operand
    negated: bool = False

    def to_json(self) -> list[Any]:
        operand = list(self.operand) if isinstance(self.operand, tuple) else self.operand
        return [self.operator, operand, self.negated]


def _id_operand(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not _MIN_ID <= value <= _MAX_ID:
        raise BadNarrow(f"invalid {what} operand")
    return value


def _dm_operand(value: Any) -> tuple[int | str, ...]:
    """Zulip accepts a list of user ids, a list of emails, a single id, or emails
    separated by commas; never ids and emails mixed."""
    if isinstance(value, str):
        items: list[Any] = [part for part in (p.strip() for p in value.split(",")) if part]
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    if not items:
        raise BadNarrow("empty dm operand")
    if all(isinstance(item, str) for item in items):
        return tuple(sorted({item.strip().lower() for item in items}))
    return tuple(sorted({_id_operand(item, "dm") for item in items}))


def _term(operator: Any, operand: Any, negated: Any, index: int) -> NarrowTerm:
    if not isinstance(operator, str) or not isinstance(negated, bool):
        raise InvalidInput(f"Invalid narrow[{index}]")
    canonical = _OPERATORS.get(operator.strip().lower())
    if canonical is None:
        raise BadNarrow(f"unknown operator {operator}")
    if canonical in ("channel", "sender"):
        if isinstance(operand, str):
            text = operand.strip()
            value: Operand = text.lower() if canonical == "sender" else text
        else:
            value = _id_operand(operand, canonical)
    elif canonical == "topic":
        if not isinstance(operand, str):
            raise BadNarrow("invalid topic operand")
        value = operand.strip()
    elif canonical == "dm":
        value = _dm_operand(operand)
    else:
        if not isinstance(operand, str) or operand.strip().lower() not in _IS_DM:
            raise BadNarrow(f"unknown 'is' operand {operand}")
        value = "dm"
    return NarrowTerm(canonical, value, negated)


def parse_narrow(raw: Any) -> tuple[NarrowTerm, ...]:
    """The terms of a decoded `narrow` parameter: `[[operator, operand], ...]` or
    `[{"operator", "operand", "negated"?}, ...]`. Raises `BadNarrow` or `InvalidInput`."""
    if not isinstance(raw, list):
        raise InvalidInput("narrow is not a list")
    if len(raw) > MAX_NARROW_TERMS:
        raise InvalidInput(f"A narrow has at most {MAX_NARROW_TERMS} terms.")
    terms = []
    for index, item in enumerate(raw):
        if isinstance(item, list) and len(item) == 2:
            terms.append(_term(item[0], item[1], False, index))
        elif isinstance(item, dict) and "operator" in item and "operand" in item:
            terms.append(
                _term(item["operator"], item["operand"], item.get("negated", False), index)
            )
        else:
            raise InvalidInput(f"Invalid narrow[{index}]")
    users, characters = narrow_size(terms)
    if users > MAX_NARROW_USERS:
        raise BadNarrow(f"dm operands name more than {MAX_NARROW_USERS} users")
    if characters > MAX_NARROW_OPERAND_CHARS:
        raise BadNarrow(f"operands longer than {MAX_NARROW_OPERAND_CHARS} characters in all")
    return tuple(terms)


def narrow_size(terms: Iterable[NarrowTerm]) -> tuple[int, int]:
    """(users its `dm` terms name, characters of its text operands) of a narrow, as
    MAX_NARROW_USERS and MAX_NARROW_OPERAND_CHARS bound them."""
    users = characters = 0
    for term in terms:
        items = term.operand if isinstance(term.operand, tuple) else (term.operand,)
        if term.operator == "dm":
            users += len(items)
        characters += sum(len(item) for item in items if isinstance(item, str))
    return users, characters


def narrow_to_json(terms: Sequence[NarrowTerm]) -> str | None:
    """The stored form of a queue's narrow (None: no narrow)."""
    if not terms:
        return None
    return json.dumps([term.to_json() for term in terms], separators=(",", ":"))


def narrow_from_json(text: str | None) -> tuple[NarrowTerm, ...]:
    """The terms of a stored narrow, as `narrow_to_json` wrote them.

    Not checked against MAX_NARROW_USERS and MAX_NARROW_OPERAND_CHARS: a descriptor
    written before those bounds (or under larger ones) still rebuilds its queue, which
    filters as its client registered it, at the per-message cost of any other queue
    (`EventNarrow`), and is gone when the queue expires. Refusing it would drop a queue
    whose id the client holds; cutting it would change what the client receives."""
    if not text:
        return ()
    terms = []
    for operator, operand, negated in json.loads(text):
        value = tuple(operand) if isinstance(operand, list) else operand
        terms.append(NarrowTerm(str(operator), value, bool(negated)))
    return tuple(terms)


def _lower(value: Any) -> str:
    return value.lower() if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class PreparedTerm:
    """A narrow term as a queue's filter reads it, prepared once per queue: operands
    lower-cased once, and a `dm` term's users as sets, so that matching a message costs
    the same whatever the number of users the term names."""

    operator: str
    negated: bool
    # A `channel` or `sender` named by id.
    id_operand: int | None = None
    # A `channel` name, `topic` or `sender` email, lower-cased.
    text_operand: str | None = None
    # The users a `dm` term names, by id and by (lower-case) email.
    dm_ids: frozenset[int] = frozenset()
    dm_emails: frozenset[str] = frozenset()


def prepare_term(term: NarrowTerm) -> PreparedTerm:
    """`term` as `EventNarrow` matches it."""
    operand = term.operand
    if term.operator == "dm":
        items = operand if isinstance(operand, tuple) else (operand,)
        return PreparedTerm(
            term.operator,
            term.negated,
            dm_ids=frozenset(i for i in items if isinstance(i, int)),
            dm_emails=frozenset(i.lower() for i in items if isinstance(i, str)),
        )
    if isinstance(operand, int):
        return PreparedTerm(term.operator, term.negated, id_operand=operand)
    return PreparedTerm(term.operator, term.negated, text_operand=_lower(operand))


class _Conversation:
    """A direct message's participants, as the `dm` terms of one filter read them: the
    sets are built on first use, once per message, whatever the number of terms."""

    __slots__ = ("_listed", "_participants", "_ids", "_emails")

    def __init__(self, participants: list[Any]) -> None:
        self._listed = participants
        self._participants: list[dict[str, Any]] | None = None
        self._ids: frozenset[Any] | None = None
        self._emails: frozenset[str] | None = None

    @property
    def participants(self) -> list[dict[str, Any]]:
        if self._participants is None:
            self._participants = [p for p in self._listed if isinstance(p, dict)]
        return self._participants

    @property
    def ids(self) -> frozenset[Any]:
        if self._ids is None:
            self._ids = frozenset(p.get("id") for p in self.participants)
        return self._ids

    @property
    def emails(self) -> frozenset[str]:
        if self._emails is None:
            self._emails = frozenset(_lower(p.get("email")) for p in self.participants)
        return self._emails


def _dm_matches(term: PreparedTerm, conversation: _Conversation, owner_id: int) -> bool:
    """Whether the conversation is exactly the named users and the queue's owner. Costs
    the conversation's size, never the term's: a term naming more users than the
    conversation has is answered by the sizes alone."""
    ids, emails = conversation.ids, conversation.emails
    if len(term.dm_ids) > len(ids) or len(term.dm_emails) > len(emails):
        return False
    if not (term.dm_ids <= ids and term.dm_emails <= emails):
        return False
    return all(
        p.get("id") == owner_id
        or p.get("id") in term.dm_ids
        or _lower(p.get("email")) in term.dm_emails
        for p in conversation.participants
    )


def _event_term_matches(
    term: PreparedTerm,
    message: dict[str, Any],
    owner_id: int,
    conversation: _Conversation | None,
) -> bool:
    is_stream = message.get("type") == "stream"
    if term.operator == "channel":
        if term.id_operand is not None:
            return is_stream and message.get("stream_id") == term.id_operand
        return is_stream and _lower(message.get("display_recipient")) == term.text_operand
    if term.operator == "topic":
        return is_stream and _lower(message.get("subject")) == term.text_operand
    if term.operator == "sender":
        if term.id_operand is not None:
            return bool(message.get("sender_id") == term.id_operand)
        return _lower(message.get("sender_email")) == term.text_operand
    if is_stream:
        return False
    if term.operator == "is":
        return True
    if conversation is None:
        return False
    return _dm_matches(term, conversation, owner_id)


@dataclass(frozen=True, slots=True)
class EventNarrow:
    """A queue's narrow as its filter of `message` events (`queues.types.MessageFilter`).

    It reads only the event (channel name or id, topic, sender, participants), never the
    database: the outbox row is the same on every replay, so a rebuilt queue accepts the
    same events. Hashable, so queues with the same narrow and owner share one.

    Its terms are prepared once, when the filter is built (at register, and when a queue
    is rebuilt from its descriptor): `prepared` holds them, so one message costs
    O(terms × participants), never the number of users the terms name.
    """

    terms: tuple[NarrowTerm, ...]
    owner_id: int
    prepared: tuple[PreparedTerm, ...] = field(
        init=False, default=(), repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "prepared", tuple(prepare_term(t) for t in self.terms))

    def __call__(self, event: dict[str, Any]) -> bool:
        message = event.get("message")
        if not isinstance(message, dict):
            return False
        participants = message.get("display_recipient")
        conversation = _Conversation(participants) if isinstance(participants, list) else None
        return all(
            _event_term_matches(term, message, self.owner_id, conversation) != term.negated
            for term in self.prepared
        )


# -- reading messages -----------------------------------------------------------------------


def load_message_views(session: Session, message_ids: Collection[int]) -> dict[int, MessageView]:
    """The messages with these ids, in two statements however many: the messages with
    their senders, realms and channels, then every direct-message participant."""
    if not message_ids:
        return {}
    rows = session.execute(
        select(
            Message,
            UserProfile.email,
            UserProfile.full_name,
            Realm.string_id,
            Recipient.stream_id,
            Recipient.dm_user_ids,
            Stream.name,
        )
        .join(UserProfile, UserProfile.id == Message.sender_id)
        .join(Realm, Realm.id == Message.realm_id)
        .join(Recipient, Recipient.id == Message.recipient_id)
        .outerjoin(Stream, Stream.id == Recipient.stream_id)
        .where(Message.id.in_(sorted(set(message_ids))))
    ).all()
    participant_ids: set[int] = set()
    for row in rows:
        if row.dm_user_ids:
            participant_ids.update(json.loads(row.dm_user_ids))
    people: dict[int, Participant] = {}
    if participant_ids:
        for user_id, email, full_name in session.execute(
            select(UserProfile.id, UserProfile.email, UserProfile.full_name).where(
                UserProfile.id.in_(sorted(participant_ids))
            )
        ):
            people[int(user_id)] = Participant(int(user_id), email, full_name)
    views = {}
    for row in rows:
        message: Message = row.Message
        stream = None
        participants: tuple[Participant, ...] = ()
        if row.stream_id is not None:
            stream = (int(row.stream_id), str(row.name))
        else:
            participants = tuple(people[int(i)] for i in json.loads(row.dm_user_ids or "[]"))
        views[message.id] = MessageView(
            id=message.id,
            sender=Participant(message.sender_id, row.email, row.full_name),
            realm_str=row.string_id,
            recipient_id=message.recipient_id,
            stream=stream,
            participants=participants,
            subject=message.subject,
            content=message.content,
            rendered_content=message.rendered_content,
            timestamp=timestamp_of(message.date_sent),
            client=message.sending_client,
        )
    return views


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
    beyond_ids = anchor_value > _MAX_ID
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
