"""The transactional outbox (docs/architecture.md §4): the realm lock, appending and reading
events.

Every action takes its realm's lock (`lock_realm`) before it reads anything and calls
`append_events` last, once it knows its events. The lock has two modes. Actions that
change who sees what (users, channels, subscriptions) take it exclusively; actions that
only add to what users see (messages, flags, presence) share it, so they run at the same
time as each other. Sequence numbers are allocated at the very end, by `append_events`,
under the realm row's lock, which is held until commit: numbers are gap-free and their
order is commit order. The outbox row *is* the event, so a committed event cannot be
lost between commit and delivery.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from models.queries import array_literal
from models.tables import OutboxEvent, OutboxRecipient, Realm, utcnow

# The PostgreSQL channel the outbox consumer LISTENs on; the payload is the realm id.
NOTIFY_CHANNEL = "eventq_outbox"
# Event types that never change the realm state `register` shares between users (a
# user's own messages, flags and unreads, and presence, are read per register; so are
# edits, deletions and reactions, which change messages only); every other type
# advances `realm.state_seq` (an unknown type does too: a stale shared read is the risk).
STATELESS_EVENT_TYPES = frozenset(
    {
        "message",
        "update_message_flags",
        "presence",
        "update_message",
        "delete_message",
        "reaction",
    }
)
# The first key of the PostgreSQL advisory lock that orders a realm's writers is a hash
# of this and the schema's name (the second is the realm id): advisory locks belong to
# the whole database, and two deployments (or two test runs) in schemas of their own
# must not wait for each other's realm 1.
REALM_LOCK_NAME = "eventq_realm:"


class RealmNotFound(LookupError):
    """Raised by `lock_realm` when the realm id does not exist."""


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event an action wants to write, with the users who must receive it."""

    event: dict[str, Any]
    user_ids: Collection[int]
    # True for the deactivation peer_remove events that legacy clients must not get.
    legacy_skip: bool = False
    # The user this event deactivates: the server cuts off their queues once it routes it.
    cut_off_user_id: int | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One outbox row as the consumer reads it."""

    realm_id: int
    seq: int
    event_json: str
    user_ids: tuple[int, ...] = field(default=())
    legacy_skip: bool = False
    cut_off_user_id: int | None = None
    # The decoded event, decoded where the row is read (a database thread, not the
    # event loop); None when the stored JSON is not an object.
    data: dict[str, Any] | None = None
    # When the row was written (Unix time; 0.0 when unknown): the start of its delivery
    # lag (`server.engine.metrics`).
    created_at: float = 0.0

    @property
    def event(self) -> dict[str, Any]:
        """The decoded event; raises ValueError for a row whose JSON is not an object."""
        if self.data is not None:
            return self.data
        decoded = orjson.loads(self.event_json)
        if not isinstance(decoded, dict):
            raise ValueError(f"outbox row {self.seq} is not a JSON object")
        return decoded


def encode_event(event: dict[str, Any]) -> str:
    """The compact JSON form stored in the outbox and sent on the wire."""
    return orjson.dumps(event).decode("utf-8")


def lock_realm(session: Session, realm_id: int, *, shared: bool = False) -> None:
    """Take the realm's writer lock: exclusive by default, shared with `shared=True`.

    Exclusive holders wait for every other holder and make every newcomer wait; shared
    holders wait only for an exclusive one. On PostgreSQL this is a transaction-level
    advisory lock on (a hash of `REALM_LOCK_NAME` and the schema, realm id), taken in
    the statement that checks the realm exists; PostgreSQL grants it in the order it
    was asked for, so a stream of shared holders never starves an exclusive one. It is
    released at commit or rollback, after the commit is visible: what the holder before
    wrote, every later statement of this transaction reads. On SQLite the write
    transaction already holds the database's only write lock since `BEGIN IMMEDIATE`,
    so both modes are that lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        query = _LOCK_SHARED if shared else _LOCK_EXCLUSIVE
    else:
        query = _REALM_EXISTS
    if session.execute(query, {"realm_id": realm_id}).first() is None:
        raise RealmNotFound(f"no realm with id {realm_id}")


# `lock_realm`'s statements, built once: the lock is the first statement of every
# action, and building a statement costs more CPU than PostgreSQL spends running it.
# The lock function is in the select list, so it runs once, for the realm's row, only
# if there is one.
_REALM_EXISTS = text("SELECT realm.id FROM realm WHERE realm.id = :realm_id")
_LOCK_SQL = (
    "SELECT realm.id, {function}(hashtext('{name}' || current_schema()), realm.id) "
    "FROM realm WHERE realm.id = :realm_id"
)
_LOCK_SHARED = text(_LOCK_SQL.format(function="pg_advisory_xact_lock_shared", name=REALM_LOCK_NAME))
_LOCK_EXCLUSIVE = text(_LOCK_SQL.format(function="pg_advisory_xact_lock", name=REALM_LOCK_NAME))


def append_events(session: Session, realm_id: int, events: Sequence[PendingEvent]) -> list[int]:
    """Write `events` to the outbox in order and advance the realm counter; return their
    sequence numbers.

    The caller holds the realm lock (`lock_realm`, either mode) and calls this last,
    just before its commit: the counter's `UPDATE` locks the realm row until the
    transaction ends, so the next transaction of the realm to append waits here, reads
    the counter this one committed, and commits after it. That short stretch is the only
    part of concurrent actions that runs one at a time; it is what makes sequence numbers
    gap-free and in commit order (docs/architecture.md §4).

    Events with no recipient are dropped: nobody could ever receive them. On PostgreSQL
    the counter, both inserts and the NOTIFY (delivered at commit, never for a
    rolled-back transaction) are one statement, so the row is held for one round trip
    and the commit; on SQLite, which has one writer anyway, they are three.
    """
    kept = [pending for pending in events if pending.user_ids]
    if not kept:
        return []
    changes_state = any(pending.event.get("type") not in STATELESS_EVENT_TYPES for pending in kept)
    recipients = [sorted({int(user_id) for user_id in pending.user_ids}) for pending in kept]
    rows = [
        {
            "event": encode_event(pending.event),
            "user_ids": json.dumps(users, separators=(",", ":")),
            "legacy_skip": pending.legacy_skip,
            "cut_off_user_id": pending.cut_off_user_id,
        }
        for pending, users in zip(kept, recipients, strict=True)
    ]
    if session.get_bind().dialect.name == "postgresql":
        last = _append_postgresql(session, realm_id, rows, recipients, changes_state)
        return list(range(last - len(kept) + 1, last + 1))
    advanced: dict[str, Any] = {"last_event_seq": Realm.last_event_seq + len(kept)}
    if changes_state:
        advanced["state_seq"] = Realm.last_event_seq + len(kept)
    last = int(
        session.execute(
            update(Realm)
            .where(Realm.id == realm_id)
            .values(advanced)
            .returning(Realm.last_event_seq)
        ).scalar_one()
    )
    seqs = list(range(last - len(kept) + 1, last + 1))
    session.execute(
        insert(OutboxEvent),
        [{"realm_id": realm_id, "seq": seq, **row} for seq, row in zip(seqs, rows, strict=True)],
    )
    # One row per (recipient, event), in one statement however many: a deactivation in
    # a 10,000-user realm has tens of thousands of pairs, and an executemany would cost
    # a statement per thousand rows.
    pairs = [
        [user_id, seq] for seq, users in zip(seqs, recipients, strict=True) for user_id in users
    ]
    session.execute(
        text(
            "INSERT INTO outbox_recipient (realm_id, user_id, seq) "
            "SELECT :realm_id, json_extract(value, '$[0]'), json_extract(value, '$[1]') "
            "FROM json_each(:pairs)"
        ),
        {"realm_id": realm_id, "pairs": json.dumps(pairs)},
    )
    return seqs


# The counter, the events, their recipients and the NOTIFY in one PostgreSQL statement.
# The events travel as one JSON document of rows and the (recipient, event) pairs as two
# integer arrays written as array literals: a driver's list parameters cost more to
# encode than the statement costs to run. Each event is numbered by its position
# (`ordinality`): the new counter minus the number of events plus that position is its
# sequence number.
_APPEND_POSTGRESQL = """
WITH counter AS (
    UPDATE realm SET last_event_seq = last_event_seq + :count{state}
    WHERE id = :realm_id RETURNING last_event_seq
), events AS (
    INSERT INTO outbox_event
        (realm_id, seq, event, user_ids, legacy_skip, cut_off_user_id, created_at)
    SELECT :realm_id, counter.last_event_seq - :count + e.position, e.event, e.user_ids,
           e.legacy_skip, e.cut_off_user_id, :created_at
    FROM counter, ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS (
        event text, user_ids text, legacy_skip boolean, cut_off_user_id integer
    )) WITH ORDINALITY AS e(event, user_ids, legacy_skip, cut_off_user_id, position)
), recipients AS (
    INSERT INTO outbox_recipient (realm_id, user_id, seq)
    SELECT :realm_id, pair.user_id, counter.last_event_seq - :count + pair.position
    FROM counter, unnest(CAST(:users AS integer[]), CAST(:positions AS bigint[]))
        AS pair(user_id, position)
)
SELECT counter.last_event_seq, pg_notify(:channel, :payload) FROM counter
"""


def _append_postgresql(
    session: Session,
    realm_id: int,
    rows: list[dict[str, Any]],
    recipients: list[list[int]],
    changes_state: bool,
) -> int:
    """`append_events` on PostgreSQL, in one statement; the new counter."""
    state = ", state_seq = last_event_seq + :count" if changes_state else ""
    users: list[int] = []
    positions: list[int] = []
    for position, event_users in enumerate(recipients, start=1):
        users.extend(event_users)
        positions.extend([position] * len(event_users))
    last = session.execute(
        text(_APPEND_POSTGRESQL.format(state=state)),
        {
            "realm_id": realm_id,
            "count": len(rows),
            "rows": orjson.dumps(rows).decode(),
            "created_at": utcnow(),
            "users": array_literal(users),
            "positions": array_literal(positions),
            "channel": NOTIFY_CHANNEL,
            "payload": str(realm_id),
        },
    ).scalar_one_or_none()
    if last is None:
        raise RealmNotFound(f"no realm with id {realm_id}")
    return int(last)


def state_positions(session: Session, realm_ids: Collection[int]) -> dict[int, tuple[int, int]]:
    """Each realm's (`last_event_seq`, `state_seq`), in one statement; a realm that does
    not exist is left out."""
    if not realm_ids:
        return {}
    rows = session.execute(
        select(Realm.id, Realm.last_event_seq, Realm.state_seq).where(
            Realm.id.in_(sorted(realm_ids))
        )
    )
    return {int(realm_id): (int(seq), int(state_seq)) for realm_id, seq, state_seq in rows}


def state_position(session: Session, realm_id: int) -> tuple[int, int] | None:
    """The realm's (`last_event_seq`, `state_seq`); None if there is no such realm."""
    return state_positions(session, [realm_id]).get(realm_id)


def realm_positions(session: Session) -> dict[int, int]:
    """Every realm's `last_event_seq`: what the SQLite consumer polls."""
    rows = session.execute(select(Realm.id, Realm.last_event_seq)).all()
    return {int(realm_id): int(seq) for realm_id, seq in rows}


# The columns a `StoredEvent` is built from, in `_stored`'s order.
_STORED_COLUMNS = (
    OutboxEvent.seq,
    OutboxEvent.event,
    OutboxEvent.user_ids,
    OutboxEvent.legacy_skip,
    OutboxEvent.cut_off_user_id,
    OutboxEvent.created_at,
)


def _stored(realm_id: int, row: Any) -> StoredEvent:
    seq, event_json, user_ids, legacy_skip, cut_off_user_id, created_at = row
    try:
        decoded = orjson.loads(event_json)
    except orjson.JSONDecodeError:
        decoded = None  # a corrupt row fails where it is routed, in its own realm only
    return StoredEvent(
        realm_id=realm_id,
        seq=int(seq),
        event_json=event_json,
        user_ids=tuple(orjson.loads(user_ids)),
        legacy_skip=bool(legacy_skip),
        cut_off_user_id=int(cut_off_user_id) if cut_off_user_id is not None else None,
        data=decoded if isinstance(decoded, dict) else None,
        created_at=_unix_time(created_at),
    )


def _unix_time(value: datetime | None) -> float:
    """A `created_at` as Unix time; SQLite hands back naive datetimes, written in UTC."""
    if value is None:
        return 0.0
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def read_events(
    session: Session,
    realm_id: int,
    after_seq: int,
    up_to_seq: int | None = None,
    limit: int | None = None,
) -> list[StoredEvent]:
    """The realm's outbox rows with `after_seq < seq <= up_to_seq`, in sequence order."""
    query = (
        select(*_STORED_COLUMNS)
        .where(OutboxEvent.realm_id == realm_id, OutboxEvent.seq > after_seq)
        .order_by(OutboxEvent.seq)
    )
    if up_to_seq is not None:
        query = query.where(OutboxEvent.seq <= up_to_seq)
    if limit is not None:
        query = query.limit(limit)
    return [_stored(realm_id, row) for row in session.execute(query)]


def read_user_events(
    session: Session, realm_id: int, user_id: int, after_seq: int, up_to_seq: int, limit: int
) -> list[StoredEvent]:
    """The realm's outbox rows addressed to `user_id` with `after_seq < seq <= up_to_seq`.

    Walks the recipient index, so rebuilding a queue reads only its user's events.
    """
    query = (
        select(*_STORED_COLUMNS)
        .join(
            OutboxRecipient,
            (OutboxRecipient.realm_id == OutboxEvent.realm_id)
            & (OutboxRecipient.seq == OutboxEvent.seq),
        )
        .where(
            OutboxRecipient.realm_id == realm_id,
            OutboxRecipient.user_id == user_id,
            OutboxRecipient.seq > after_seq,
            OutboxRecipient.seq <= up_to_seq,
        )
        .order_by(OutboxRecipient.seq)
        .limit(limit)
    )
    return [_stored(realm_id, row) for row in session.execute(query)]


def outbox_pruned_seq(session: Session, realm_id: int) -> int:
    """Every row of the realm up to this sequence number has been pruned."""
    return int(
        session.execute(
            select(Realm.outbox_pruned_seq).where(Realm.id == realm_id)
        ).scalar_one_or_none()
        or 0
    )


def outbox_count(session: Session, realm_id: int) -> int:
    """How many outbox rows the realm holds (for tests and admin output)."""
    return int(
        session.execute(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.realm_id == realm_id)
        ).scalar_one()
    )
