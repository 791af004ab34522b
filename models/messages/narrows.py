"""The narrow: which messages a client asks for, parsed, bounded, stored and matched.

This module owns the narrow (`parse_narrow`): Zulip's operators `channel`/`stream`,
`topic`/`subject`, `dm`/`pm-with`, `sender` and `is:dm`/`is:private`, each possibly
negated, as terms (`NarrowTerm`), in their stored JSON form (`narrow_to_json`,
`narrow_from_json`), and as a queue's event filter (`EventNarrow`, which reads nothing
but the event, so a rebuilt queue filters identically, and which prepares its terms once
(`PreparedTerm`) so that filtering one message costs the same whatever the size of its
operands). Its size is bounded (`MAX_NARROW_TERMS`, `MAX_NARROW_USERS`,
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
