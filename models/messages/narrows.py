"""The narrow: which messages a client asks for, parsed, bounded, stored and matched.

This module owns the narrow (`parse_narrow`): every operator Zulip accepts at feature
level 377, under each of its spellings (`_OPERATORS`: `channel`/`stream`,
`channels`/`streams`, `topic`/`subject`, `dm`/`pm-with`/`pm_with`,
`dm-including`/`dm_including`, `group-pm-with`/`group_pm_with`, `sender`, `id`, `near`,
`with`, `is`, `has`, `in`, `search`; Zulip finds an operator's method by its name with
`-` read as `_`, so both spellings work there too), each possibly negated, as terms
(`NarrowTerm`), in their stored JSON form (`narrow_to_json`, `narrow_from_json`), and as
a queue's event filter (`EventNarrow`, which reads nothing but the event, so a rebuilt
queue filters identically, and which prepares its terms once (`PreparedTerm`) so that
filtering one message costs the same whatever the size of its operands). A queue's
narrow takes the operators Zulip's event filter takes (`check_event_narrow`), plus
eventq's `dm`. Its size is bounded (`MAX_NARROW_TERMS`, `MAX_NARROW_USERS`,
`MAX_NARROW_OPERAND_CHARS`). The same terms are the conditions of a history query;
`models.messages.history` turns them into SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actions.errors import ActionError, InvalidInput

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
# Ids are 32-bit INTEGER columns; an operand outside this range names nothing, and is
# refused before it reaches the database (which would fail on it, not find nothing).
# History bounds its anchors by the same range, so it reads it from here.
MIN_ID = -(2**31)
MAX_ID = 2**31 - 1


class BadNarrow(ActionError):
    """A narrow Zulip would refuse as BAD_NARROW: an unknown operator, or an operand
    naming no channel or user the caller may see."""

    code = "BAD_NARROW"

    def __init__(self, description: str) -> None:
        super().__init__(f"Invalid narrow operator: {description}")


# Zulip's operator names, old and new, to the one each term is stored under.
_OPERATORS = {
    "channel": "channel",
    "stream": "channel",
    "channels": "channels",
    "streams": "channels",
    "topic": "topic",
    "subject": "topic",
    "dm": "dm",
    "pm-with": "dm",
    "pm_with": "dm",
    "dm-including": "dm-including",
    "dm_including": "dm-including",
    "group-pm-with": "group-pm-with",
    "group_pm_with": "group-pm-with",
    "sender": "sender",
    "id": "id",
    "near": "near",
    "with": "with",
    "is": "is",
    "has": "has",
    "in": "in",
    "search": "search",
}
# `is:` operands Zulip accepts, to the one stored: `private` is the old name of `dm`.
# eventq has no alert words, topic following or muting, so `alerted`, `followed` and
# `muted` match nothing (`models.messages.history`), as for a user who set none.
_IS_OPERANDS = {
    "dm": "dm",
    "private": "dm",
    "starred": "starred",
    "unread": "unread",
    "mentioned": "mentioned",
    "alerted": "alerted",
    "resolved": "resolved",
    "followed": "followed",
    "muted": "muted",
}
# `has:` operands Zulip accepts. eventq stores no uploads: no message has an attachment
# or an image, so those match nothing.
HAS_OPERANDS = frozenset({"link", "attachment", "image", "reaction"})
# `in:` operands: `home` leaves out muted channels and topics, which eventq does not
# have, so both read everything.
IN_OPERANDS = frozenset({"home", "all"})
# `channels:` operands: every public channel, or every web-public one.
CHANNELS_OPERANDS = frozenset({"public", "web-public"})
# The operators Zulip's queue filter (a `register` narrow) takes; others are refused
# there with Zulip's "Operator x not supported." eventq's filter takes `dm` too.
EVENT_OPERATORS = frozenset({"channel", "topic", "sender", "is", "dm"})
# Zulip's topic prefix of a resolved topic, for `is:resolved`.
RESOLVED_TOPIC_PREFIX = "\u2714 "

Operand = str | int | tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class NarrowTerm:
    """One narrow term: a canonical operator, its normalized operand, and negation.

    `channel`, `sender`, `dm-including` and `group-pm-with` operands are ids (int) or a
    name or email (str); `dm` is a tuple of ids and lower-case emails; `id` and `with` a
    message id; `topic`, `search` and `near` strings; `is`, `has`, `in` and `channels`
    one of their canonical operands.
    """

    operator: str
    operand: Operand
    negated: bool = False

    def to_json(self) -> list[Any]:
        operand = list(self.operand) if isinstance(self.operand, tuple) else self.operand
        return [self.operator, operand, self.negated]


def _id_operand(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_ID <= value <= MAX_ID:
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


def _message_id_operand(value: Any, what: str) -> int:
    """A message id, as a number or a string of digits (Zulip takes both)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise BadNarrow(what)
    return value


def _word_operand(operator: str, operand: Any, allowed: Any) -> str:
    text = operand.strip().lower() if isinstance(operand, str) else None
    if text is None or text not in allowed:
        raise BadNarrow(f"unknown '{operator}' operand {operand}")
    return str(allowed[text]) if isinstance(allowed, dict) else text


def _term(operator: Any, operand: Any, negated: Any, index: int) -> NarrowTerm:
    if not isinstance(operator, str) or not isinstance(negated, bool):
        raise InvalidInput(f"Invalid narrow[{index}]")
    canonical = _OPERATORS.get(operator.strip().lower())
    if canonical is None:
        raise BadNarrow(f"unknown operator {operator}")
    value: Operand
    if canonical == "is":
        value = _word_operand("is", operand, _IS_OPERANDS)
    elif canonical == "has":
        value = _word_operand("has", operand, HAS_OPERANDS)
    elif canonical == "in":
        value = _word_operand("in", operand, IN_OPERANDS)
    elif canonical == "channels":
        if not isinstance(operand, str) or operand.strip().lower() not in CHANNELS_OPERANDS:
            raise BadNarrow(f"unknown channels operand {operand}")
        value = operand.strip().lower()
    elif canonical == "id":
        value = _message_id_operand(operand, "Invalid message ID")
    elif canonical == "with":
        value = _message_id_operand(operand, "Invalid 'with' operator")
    elif canonical == "near":
        # Zulip reads nothing from it: the client's anchor says where to look.
        value = str(operand) if isinstance(operand, str | int) else ""
    elif canonical == "search":
        if not isinstance(operand, str) or not operand.strip():
            raise InvalidInput(f"narrow[{index}]['operand'] cannot be blank.")
        value = operand.strip()
    elif canonical in ("channel", "sender", "dm-including", "group-pm-with"):
        if isinstance(operand, str):
            text = operand.strip()
            value = text if canonical == "channel" else text.lower()
        else:
            value = _id_operand(operand, canonical)
    elif canonical == "topic":
        if not isinstance(operand, str):
            raise BadNarrow("invalid topic operand")
        value = operand.strip()
    else:
        value = _dm_operand(operand)
    return NarrowTerm(canonical, value, negated)


def check_event_narrow(terms: Iterable[NarrowTerm]) -> None:
    """Refuse, as Zulip's `register` does, a queue narrow with an operator its event
    filter does not take ("Operator search not supported.")."""
    for term in terms:
        if term.operator not in EVENT_OPERATORS:
            raise InvalidInput(f"Operator {term.operator} not supported.")


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


# The flags of an event's message that `is:mentioned` reads (Zulip's: a mention of the
# user, or a wildcard mention).
_MENTION_FLAG_NAMES = frozenset(
    {"mentioned", "wildcard_mentioned", "stream_wildcard_mentioned", "topic_wildcard_mentioned"}
)


def _is_matches(operand: str | None, message: dict[str, Any], flags: frozenset[str]) -> bool:
    """`is:` on a message event, from the event alone: its type, topic and flags."""
    is_stream = message.get("type") == "stream"
    if operand == "dm":
        return not is_stream
    if operand == "starred":
        return "starred" in flags
    if operand == "unread":
        return "read" not in flags
    if operand == "mentioned":
        return bool(flags & _MENTION_FLAG_NAMES)
    if operand == "resolved":
        return is_stream and str(message.get("subject", "")).startswith(RESOLVED_TOPIC_PREFIX)
    # `alerted`, `followed`, `muted`: eventq has no alert words, following or muting.
    return False


def _event_term_matches(
    term: PreparedTerm,
    message: dict[str, Any],
    owner_id: int,
    conversation: _Conversation | None,
    flags: frozenset[str],
) -> bool:
    is_stream = message.get("type") == "stream"
    if term.operator == "is":
        return _is_matches(term.text_operand, message, flags)
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
    if is_stream or term.operator != "dm" or conversation is None:
        # Operators a queue's narrow never holds (`check_event_narrow`) match nothing.
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
    # Whether a term reads the event's flags (`is:`): only then are they collected.
    reads_flags: bool = field(init=False, default=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prepared", tuple(prepare_term(t) for t in self.terms))
        object.__setattr__(self, "reads_flags", any(t.operator == "is" for t in self.terms))

    def __call__(self, event: dict[str, Any]) -> bool:
        message = event.get("message")
        if not isinstance(message, dict):
            return False
        participants = message.get("display_recipient")
        conversation = _Conversation(participants) if isinstance(participants, list) else None
        raw_flags = event.get("flags") if self.reads_flags else None
        flags = (
            frozenset(f for f in raw_flags if isinstance(f, str))
            if isinstance(raw_flags, list)
            else frozenset()
        )
        return all(
            _event_term_matches(term, message, self.owner_id, conversation, flags) != term.negated
            for term in self.prepared
        )
