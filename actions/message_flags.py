"""Changing one's own message flags (`POST /messages/flags`), as Zulip does.

`check_update_message_flags` adds or removes one editable flag (`read`, `starred`,
`collapsed`: `models.messages.flags.EDITABLE_FLAGS`) on any number of the user's
messages, and writes one `update_message_flags` event to the user's own queues naming
exactly the messages whose flag changed. It checks the flag and the operation before it
takes the lock (Zulip's wording: "Invalid flag: 'x'", "Flag not editable: 'x'",
"Invalid message flag operation: 'x'"), then takes the realm lock in its shared
mode (`actions.actors.lock_realm_for_actor`): flags change what no one else sees, so any
number of flag changes and messages run at once.

What happens to each message named, as in Zulip:

* one the user received (a `user_message` row): its bit is set or cleared;
* one without a row whose flags would not change (marking read, unstarring or
  uncollapsing a message read from public history, which reads as `read` and
  `historical`, or a message that does not exist at all): skipped, not refused;
* one without a row whose flags would change (starring, collapsing or marking unread):
  if the user may read it in a channel's public history, a row is created for it, with
  the `historical` flag and the change made; if not (it does not exist, is in another
  realm, a private channel or a conversation the user is not in), the whole request is
  refused with "Invalid message(s)" and nothing changes;
* marking unread (`remove` `read`) skips every channel message of a channel the user is
  not subscribed to (Zulip keeps unread messages to subscribed channels), and the answer
  lists those channels in `ignored_because_not_subscribed_channels` (only channels the
  user knows of: one they can see or once subscribed to).

`check_update_message_flags_for_narrow` (`POST /messages/flags/narrow`) does the same
to the messages a narrow and an anchor name, as `GET /messages` would find them
(`models.messages.history.fetch_message_ids`, two indexed queries of ids alone), at most
`MAX_MESSAGES_PER_UPDATE` of them, clamped as Zulip clamps `num_before` and `num_after`;
the client pages on with the answer's `last_processed_id` / `first_processed_id` until
`found_newest` / `found_oldest`.

The change is one `UPDATE` however many messages (plus, when needed, one statement that
classifies them and one `INSERT` of the historical rows), and `append_events` runs last.
A request that changes nothing writes no event.

Concurrency. Two changes of the same user's flags may run at once, and their events,
applied in sequence order, must give the flags the rows end with. The `UPDATE` tests the
bit in its `WHERE` clause and returns the rows it changed. On PostgreSQL (READ COMMITTED)
an `UPDATE` that meets a row another transaction changed and has not committed waits for
it, then evaluates its `WHERE` again on the committed row: so a row counts as changed
only if this transaction really flipped its bit from the value the other one left, and
this transaction, which waited for the other's commit before its own `append_events`,
gets the later sequence number. Ids are sorted, so two transactions lock shared rows in
the same order. SQLite runs one writer at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, literal, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from actions.actors import lock_realm_for_actor
from actions.errors import InvalidInput
from models.messages.flags import (
    EDITABLE_FLAGS,
    HISTORICAL_DEFAULT_FLAGS,
    MENTION_FLAGS,
    NON_EDITABLE_FLAGS,
)
from models.messages.history import fetch_message_ids
from models.messages.narrows import NarrowTerm
from models.messages.recipients import RECIPIENT_STREAM
from models.messages.unreads import Conversation, message_details
from models.outbox import PendingEvent, append_events
from models.queries import values_as_table
from models.tables import Message, Recipient, Stream, Subscription, UserMessage, UserProfile
from models.visibility import can_see_stream

OPERATIONS = ("add", "remove")
# Zulip's bound of one `POST /messages/flags/narrow`: `num_before + num_after`.
MAX_MESSAGES_PER_UPDATE = 5000


class InvalidFlag(InvalidInput):
    """A flag Zulip's API does not have."""

    def __init__(self, flag: str) -> None:
        super().__init__(f"Invalid flag: '{flag}'")


class FlagNotEditable(InvalidInput):
    """One of Zulip's flags that no request changes (mentions, alert words, historical)."""

    def __init__(self, flag: str) -> None:
        super().__init__(f"Flag not editable: '{flag}'")


class InvalidFlagOperation(InvalidInput):
    """An `op` other than `add` and `remove`."""

    def __init__(self, operation: str) -> None:
        super().__init__(f"Invalid message flag operation: '{operation}'")


class InvalidMessages(InvalidInput):
    """A message the change would need a row for, which the user may not read."""

    def __init__(self) -> None:
        super().__init__("Invalid message(s)")


@dataclass(frozen=True, slots=True)
class FlagsChange:
    """What a flag change did: the ids whose flag changed (ascending), and for marking
    unread the channels whose messages were skipped."""

    messages: list[int]
    ignored_channels: list[int] | None = field(default=None)

    def to_api(self) -> dict[str, Any]:
        """The answer of `POST /messages/flags`."""
        answer: dict[str, Any] = {"messages": self.messages}
        if self.ignored_channels is not None:
            answer["ignored_because_not_subscribed_channels"] = self.ignored_channels
        return answer


@dataclass(frozen=True, slots=True)
class NarrowFlagsChange:
    """What a flag change over a narrow did: the ids it processed (ascending), how many
    changed, and whether the range reached the narrow's oldest and newest messages."""

    processed: list[int]
    updated_count: int
    found_oldest: bool
    found_newest: bool
    ignored_channels: list[int]

    def to_api(self) -> dict[str, Any]:
        """The answer of `POST /messages/flags/narrow`."""
        return {
            "processed_count": len(self.processed),
            "updated_count": self.updated_count,
            "first_processed_id": self.processed[0] if self.processed else None,
            "last_processed_id": self.processed[-1] if self.processed else None,
            "found_oldest": self.found_oldest,
            "found_newest": self.found_newest,
            "ignored_because_not_subscribed_channels": self.ignored_channels,
        }


def check_flag(operation: str, flag: str) -> int:
    """The bit of an editable `flag`, after Zulip's checks in Zulip's order."""
    bit = EDITABLE_FLAGS.get(flag)
    if bit is None:
        if flag in NON_EDITABLE_FLAGS:
            raise FlagNotEditable(flag)
        raise InvalidFlag(flag)
    if operation not in OPERATIONS:
        raise InvalidFlagOperation(operation)
    return bit


@dataclass(slots=True)
class _Classified:
    """The requested messages as the classifying statement found them."""

    # Ids to change: the requested ones, less the unsubscribed channels' when marking
    # unread.
    targets: list[int]
    # Ids with no row whose flags the change would alter, which the user may read.
    historical: list[int]
    ignored_channels: list[int]
    # The conversation of every message found, for `message_details`.
    conversations: dict[int, Conversation]
    # The ids whose row has a mention flag (`message_details`' `mentioned`).
    mentioned: set[int] = field(default_factory=set)


def check_update_message_flags(
    session: Session,
    realm_id: int,
    user_id: int,
    operation: str,
    flag: str,
    message_ids: Sequence[int],
) -> FlagsChange:
    """Add or remove `flag` on the user's messages `message_ids` (see the module)."""
    bit = check_flag(operation, flag)
    adding = operation == "add"
    marking_unread = flag == "read" and not adding
    # Sorted: concurrent changes of shared rows lock them in the same order.
    asked = sorted(set(message_ids))
    # Authenticated before this transaction: the user is read again under the lock.
    user = lock_realm_for_actor(session, realm_id, user_id, shared=True).user
    # A message without a row reads as `read` and `historical`: the change alters that
    # only when adding a flag it lacks or removing `read`.
    alters_default = bool(HISTORICAL_DEFAULT_FLAGS & bit) != adding
    classified: _Classified | None = None
    targets = asked
    changed: list[int] = []
    if asked and (alters_default or marking_unread):
        classified = _classify(session, user, asked, marking_unread)
        targets = classified.targets
        if classified.historical:
            flags = HISTORICAL_DEFAULT_FLAGS | bit if adding else HISTORICAL_DEFAULT_FLAGS & ~bit
            changed += _insert_historical(session, user.id, classified.historical, flags)
    if targets:
        changed += _update_rows(session, user.id, targets, bit, adding)
    changed.sort()
    ignored = classified.ignored_channels if classified is not None else []
    result = FlagsChange(changed, ignored if marking_unread else None)
    if not changed:
        return result
    event: dict[str, Any] = {
        "type": "update_message_flags",
        "op": operation,
        # The name of `op` before Zulip's feature level 32, still sent.
        "operation": operation,
        "flag": flag,
        "messages": changed,
        "all": False,
    }
    if marking_unread:
        assert classified is not None  # marking unread always classifies
        event["message_details"] = message_details(
            user.id, {m: classified.conversations[m] for m in changed}, classified.mentioned
        )
    append_events(session, realm_id, [PendingEvent(event, [user.id])])
    return result


def _classify(
    session: Session, user: UserProfile, asked: list[int], marking_unread: bool
) -> _Classified:
    """One statement over the requested ids: whether the user has a row for each, and
    the message's realm, conversation, channel and the user's subscription to it."""
    ids = values_as_table(session, "asked", asked, Integer)
    rows = session.execute(
        select(
            ids.c.value,
            UserMessage.message_id,
            UserMessage.flags,
            Message.id,
            Recipient.type,
            Recipient.stream_id,
            Message.subject,
            Recipient.dm_user_ids,
            Stream,
            Subscription.active,
        )
        .select_from(ids)
        .outerjoin(
            UserMessage,
            (UserMessage.user_profile_id == user.id) & (UserMessage.message_id == ids.c.value),
        )
        .outerjoin(Message, (Message.id == ids.c.value) & (Message.realm_id == user.realm_id))
        .outerjoin(Recipient, Recipient.id == Message.recipient_id)
        .outerjoin(Stream, Stream.id == Recipient.stream_id)
        .outerjoin(
            Subscription,
            (Subscription.stream_id == Stream.id) & (Subscription.user_profile_id == user.id),
        )
    ).all()
    targets: list[int] = []
    historical: list[int] = []
    ignored: set[int] = set()
    conversations: dict[int, Conversation] = {}
    mentioned: set[int] = set()
    refused = False
    for row in rows:
        asked_id, row_id, row_flags, found_id, kind, stream_id, subject, dm_user_ids = row[:8]
        stream, active = row[8], row[9]
        message_id = int(asked_id)
        if row_flags is not None and int(row_flags) & MENTION_FLAGS:
            mentioned.add(message_id)
        if found_id is not None:
            conversations[message_id] = Conversation.of(int(kind), stream_id, subject, dm_user_ids)
        is_channel_message = found_id is not None and int(kind) == RECIPIENT_STREAM
        if marking_unread and is_channel_message and not active:
            # Zulip's invariant: unread channel messages are in subscribed channels. The
            # channel is named only to a user who knows it (sees it, or was subscribed).
            if active is not None or can_see_stream(user.role, stream, False):
                ignored.add(int(stream.id))
            continue
        targets.append(message_id)
        if row_id is not None:
            continue
        # No row: the change would create one, for a message of a channel's public
        # history only (a public channel the user sees, or a web-public one).
        readable = (
            is_channel_message
            and stream is not None
            and not stream.invite_only
            and can_see_stream(user.role, stream, bool(active))
        )
        if not readable:
            refused = True
        historical.append(message_id)
    if refused:
        raise InvalidMessages()
    return _Classified(
        sorted(targets), sorted(historical), sorted(ignored), conversations, mentioned
    )


def _insert_historical(
    session: Session, user_id: int, message_ids: list[int], flags: int
) -> list[int]:
    """Create the user's rows for these messages with `flags`; returns the ids created.

    A concurrent change of the same user may create one first: the insert then does
    nothing for it (on PostgreSQL after waiting for that transaction), and the `UPDATE`
    that follows, a later statement, sees the committed row and changes it if needed.
    """
    ids = values_as_table(session, "historical", message_ids, Integer)
    dialect_insert = (
        postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    )
    statement = (
        dialect_insert(UserMessage)
        .from_select(
            ["user_profile_id", "message_id", "flags"],
            # SQLite needs a WHERE in an INSERT ... SELECT ... ON CONFLICT (its parser
            # would take ON CONFLICT for a join constraint).
            select(literal(user_id, Integer), ids.c.value, literal(flags, Integer)).where(
                ids.c.value.is_not(None)
            ),
        )
        .on_conflict_do_nothing(index_elements=["user_profile_id", "message_id"])
        .returning(UserMessage.message_id)
    )
    return [int(message_id) for message_id in session.scalars(statement)]


def _update_rows(
    session: Session, user_id: int, message_ids: list[int], bit: int, adding: bool
) -> list[int]:
    """Set or clear `bit` on the user's rows of these messages, in one statement, and
    return the ids whose bit it flipped.

    The bit is tested in the WHERE clause, so that PostgreSQL's re-evaluation of a row a
    concurrent transaction changed (see the module) decides on the committed value.
    """
    ids = values_as_table(session, "targets", message_ids, Integer)
    flags = UserMessage.flags
    statement = (
        update(UserMessage)
        .where(
            UserMessage.user_profile_id == user_id,
            UserMessage.message_id.in_(select(ids.c.value)),
            (flags.op("&")(bit) == 0) if adding else (flags.op("&")(bit) != 0),
        )
        .values(flags=flags.op("|")(bit) if adding else flags.op("&")(~bit))
        .returning(UserMessage.message_id)
        # The session holds no row of this user's flags to keep in step.
        .execution_options(synchronize_session=False)
    )
    return [int(message_id) for message_id in session.scalars(statement)]


def check_update_message_flags_for_narrow(
    session: Session,
    realm_id: int,
    user_id: int,
    operation: str,
    flag: str,
    *,
    anchor: int | str,
    include_anchor: bool,
    num_before: int,
    num_after: int,
    narrow: Sequence[NarrowTerm],
) -> NarrowFlagsChange:
    """Add or remove `flag` on the user's messages that `narrow` and the anchor name, as
    Zulip's `POST /messages/flags/narrow`: one `update_message_flags` event, as for a
    list of ids (`check_update_message_flags`)."""
    check_flag(operation, flag)
    if num_before < 0 or num_after < 0:
        raise InvalidInput("num_before and num_after must not be negative")
    if num_before > 0 and num_after > 0 and not include_anchor:
        raise InvalidInput("The anchor can only be excluded at an end of the range")
    # Zulip's clamp: num_before + num_after <= MAX_MESSAGES_PER_UPDATE, half of it at
    # least for the side before when both ask for more.
    num_before = min(
        num_before, max(MAX_MESSAGES_PER_UPDATE - num_after, MAX_MESSAGES_PER_UPDATE // 2)
    )
    num_after = min(num_after, MAX_MESSAGES_PER_UPDATE - num_before)
    found = fetch_message_ids(
        session,
        user_id,
        anchor=anchor,
        num_before=num_before,
        num_after=num_after,
        narrow=narrow,
        include_anchor=include_anchor,
    )
    change = check_update_message_flags(
        session, realm_id, user_id, operation, flag, found.message_ids
    )
    return NarrowFlagsChange(
        found.message_ids,
        len(change.messages),
        found.found_oldest,
        found.found_newest,
        change.ignored_channels or [],
    )
