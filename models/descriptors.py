"""Durable queue descriptors (docs/architecture.md §5): create, load, checkpoint, delete, expire.

A descriptor plus the outbox is enough to rebuild a queue with the same event IDs,
so the server writes one at register, refreshes its checkpoint and `last_active` as
clients acknowledge events, and deletes it when the queue is deleted or expires.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, cast

from sqlalchemy import Table, bindparam, delete, insert, or_, select, text, update
from sqlalchemy.orm import Session

from models.messages.narrows import NarrowTerm, narrow_from_json, narrow_to_json
from models.tables import QueueDescriptorRow

# `apply_markdown` is stored with the capabilities: like them, a choice of what the client
# receives, fixed at register. Only `false` is written, so a descriptor of a client that
# never asked stores exactly its declared capabilities.
APPLY_MARKDOWN_KEY = "apply_markdown"


@dataclass(frozen=True, slots=True)
class DescriptorRecord:
    """A descriptor as plain values, detached from any session."""

    queue_id: str
    realm_id: int
    user_id: int
    event_types: tuple[str, ...] | None
    capabilities: dict[str, bool]
    client_name: str
    client_version: str | None
    legacy_deactivation: bool
    lifespan_secs: int
    last_active: float
    checkpoint_seq: int
    checkpoint_event_id: int
    # The register's `narrow` (filters `message` events only); () for none.
    narrow: tuple[NarrowTerm, ...] = ()
    # False: `message` events carry the content as written (raw Markdown).
    apply_markdown: bool = True
    # The shard holding the queue and its fencing epoch (`claim_descriptor`).
    owner_shard: str | None = None
    owner_epoch: int = 0


@dataclass(frozen=True, slots=True)
class CheckpointUpdate:
    """A newer acknowledged position and activity time of one queue."""

    queue_id: str
    checkpoint_seq: int
    checkpoint_event_id: int
    last_active: float
    # Written only while the descriptor still carries this epoch: a shard that lost
    # the queue to another cannot move its checkpoint.
    owner_epoch: int


def _record(row: QueueDescriptorRow) -> DescriptorRecord:
    capabilities = json.loads(row.capabilities)
    apply_markdown = bool(capabilities.pop(APPLY_MARKDOWN_KEY, True))
    return DescriptorRecord(
        queue_id=row.queue_id,
        realm_id=row.realm_id,
        user_id=row.user_id,
        event_types=tuple(json.loads(row.event_types)) if row.event_types is not None else None,
        capabilities=capabilities,
        client_name=row.client_name,
        client_version=row.client_version,
        legacy_deactivation=row.legacy_deactivation,
        lifespan_secs=row.lifespan_secs,
        last_active=row.last_active,
        checkpoint_seq=row.checkpoint_seq,
        checkpoint_event_id=row.checkpoint_event_id,
        narrow=narrow_from_json(row.narrow),
        apply_markdown=apply_markdown,
        owner_shard=row.owner_shard,
        owner_epoch=row.owner_epoch,
    )


def _row_values(record: DescriptorRecord) -> dict[str, object]:
    capabilities: dict[str, bool] = dict(record.capabilities)
    if not record.apply_markdown:
        capabilities[APPLY_MARKDOWN_KEY] = False
    return {
        "queue_id": record.queue_id,
        "realm_id": record.realm_id,
        "user_id": record.user_id,
        "event_types": json.dumps(list(record.event_types))
        if record.event_types is not None
        else None,
        "capabilities": json.dumps(capabilities, sort_keys=True),
        "client_name": record.client_name[:100],
        "client_version": record.client_version[:100] if record.client_version else None,
        "legacy_deactivation": record.legacy_deactivation,
        "lifespan_secs": record.lifespan_secs,
        "last_active": record.last_active,
        "checkpoint_seq": record.checkpoint_seq,
        "checkpoint_event_id": record.checkpoint_event_id,
        "narrow": narrow_to_json(record.narrow),
        "owner_shard": record.owner_shard,
        "owner_epoch": record.owner_epoch,
        "created_at": datetime.now(UTC),
    }


def create_descriptors(session: Session, records: Collection[DescriptorRecord]) -> None:
    """Insert new descriptors in one statement, however many."""
    if records:
        session.execute(insert(QueueDescriptorRow), [_row_values(r) for r in records])


class HeldQueue(NamedTuple):
    """One of a user's queues, as the per-user cap weighs it."""

    queue_id: str
    last_active: float
    owner_epoch: int


def held_queues(session: Session, user_ids: Collection[int]) -> dict[int, list[HeldQueue]]:
    """Each user's queue descriptors, in one statement."""
    held: dict[int, list[HeldQueue]] = {user_id: [] for user_id in user_ids}
    if not held:
        return held
    rows = session.execute(
        select(
            QueueDescriptorRow.user_id,
            QueueDescriptorRow.queue_id,
            QueueDescriptorRow.last_active,
            QueueDescriptorRow.owner_epoch,
        ).where(QueueDescriptorRow.user_id.in_(list(held)))
    )
    for user_id, queue_id, last_active, owner_epoch in rows:
        held[int(user_id)].append(HeldQueue(queue_id, float(last_active), int(owner_epoch)))
    return held


def create_descriptor(session: Session, record: DescriptorRecord) -> None:
    """Insert one new descriptor."""
    create_descriptors(session, [record])


def load_descriptor(session: Session, queue_id: str) -> DescriptorRecord | None:
    """The descriptor of `queue_id`, or None."""
    row = session.get(QueueDescriptorRow, queue_id)
    return _record(row) if row is not None else None


def load_descriptors(session: Session, realm_id: int | None = None) -> list[DescriptorRecord]:
    """Every descriptor (of one realm, if given), oldest first."""
    query = select(QueueDescriptorRow).order_by(QueueDescriptorRow.created_at)
    if realm_id is not None:
        query = query.where(QueueDescriptorRow.realm_id == realm_id)
    return [_record(row) for row in session.scalars(query)]


_TABLE = cast(Table, QueueDescriptorRow.__table__)

# One statement for a batch of checkpoints, each conditioned on its holder's epoch.
_FENCED_CHECKPOINT = (
    update(_TABLE)
    .where(_TABLE.c.queue_id == bindparam("b_queue_id"))
    .where(_TABLE.c.owner_epoch == bindparam("b_epoch"))
    .values(
        checkpoint_seq=bindparam("b_seq"),
        checkpoint_event_id=bindparam("b_event_id"),
        last_active=bindparam("b_last_active"),
    )
)
_FENCED_DELETE = delete(_TABLE).where(
    _TABLE.c.queue_id == bindparam("b_queue_id"), _TABLE.c.owner_epoch == bindparam("b_epoch")
)


# PostgreSQL: one statement for the whole batch, the values as five arrays. An
# executemany of 10,000 UPDATEs costs PostgreSQL 10,000 executions and the writer's thread
# (which shares the interpreter with the event loop) a parameter set each.
_PG_FENCED_CHECKPOINTS = text(
    "UPDATE queue_descriptor AS d SET checkpoint_seq = v.seq, "
    "checkpoint_event_id = v.event_id, last_active = v.last_active "
    "FROM unnest(CAST(:ids AS text[]), CAST(:epochs AS bigint[]), CAST(:seqs AS bigint[]), "
    "CAST(:event_ids AS bigint[]), CAST(:actives AS double precision[])) "
    "AS v(queue_id, epoch, seq, event_id, last_active) "
    "WHERE d.queue_id = v.queue_id AND d.owner_epoch = v.epoch"
)


def save_checkpoints(session: Session, updates: Collection[CheckpointUpdate]) -> list[str]:
    """Write acknowledged positions in one statement (one executemany on SQLite); returns
    the ids of queues whose descriptor no longer carries the writer's epoch (claimed by
    another shard, or deleted), which were not written."""
    if not updates:
        return []
    if session.get_bind().dialect.name == "postgresql":
        written = session.execute(
            _PG_FENCED_CHECKPOINTS,
            {
                "ids": [u.queue_id for u in updates],
                "epochs": [u.owner_epoch for u in updates],
                "seqs": [u.checkpoint_seq for u in updates],
                "event_ids": [u.checkpoint_event_id for u in updates],
                "actives": [u.last_active for u in updates],
            },
        )
        landed = written.rowcount  # type: ignore[attr-defined]
    else:
        rows = [
            {
                "b_queue_id": u.queue_id,
                "b_epoch": u.owner_epoch,
                "b_seq": u.checkpoint_seq,
                "b_event_id": u.checkpoint_event_id,
                "b_last_active": u.last_active,
            }
            for u in updates
        ]
        landed = session.execute(_FENCED_CHECKPOINT, rows).rowcount  # type: ignore[attr-defined]
    if landed == len(updates):
        return []  # every one landed: no need to look for lost ones
    return lost_queues(session, {u.queue_id: u.owner_epoch for u in updates})


def lost_queues(session: Session, held: dict[str, int]) -> list[str]:
    """Of the queues `held` (id -> epoch), those whose descriptor is gone or carries
    another epoch."""
    current: dict[str, int] = {}
    ids = list(held)
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        current.update(
            session.execute(
                select(QueueDescriptorRow.queue_id, QueueDescriptorRow.owner_epoch).where(
                    QueueDescriptorRow.queue_id.in_(chunk)
                )
            ).all()
        )
    return [queue_id for queue_id, epoch in held.items() if current.get(queue_id) != epoch]


# Ids per IN list: far below SQLite's limit on bound parameters (32,766).
_ID_CHUNK = 5000


def delete_descriptors(session: Session, queue_ids: Collection[str]) -> None:
    """Delete these descriptors, whoever holds them (history pruned under them)."""
    if queue_ids:
        session.execute(
            delete(QueueDescriptorRow).where(QueueDescriptorRow.queue_id.in_(list(queue_ids)))
        )


def delete_held_descriptors(session: Session, held: dict[str, int]) -> None:
    """Delete the descriptors of dropped queues (id -> epoch), each only if it still
    carries that epoch: a copy of a queue another shard claimed deletes nothing."""
    if held:
        session.execute(_FENCED_DELETE, [{"b_queue_id": q, "b_epoch": e} for q, e in held.items()])


def delete_user_descriptors(session: Session, user_id: int, before_seq: int) -> None:
    """Delete a deactivated user's descriptors registered before their deactivation.

    `before_seq` is the deactivation's outbox position: a queue registered after a
    later reactivation starts past it and is kept.
    """
    session.execute(
        delete(QueueDescriptorRow).where(
            QueueDescriptorRow.user_id == user_id, QueueDescriptorRow.checkpoint_seq < before_seq
        )
    )


def delete_expired_descriptors(
    session: Session, now: float, keep: Collection[str], shard: str, grace_secs: float
) -> list[str]:
    """Delete descriptors idle past their lifespan, except the `keep` ids (live queues).

    Returns the deleted ids. Queues in memory are expired by `queues.gc`; this covers
    the descriptors of queues that are not (evicted, or never polled since a restart).
    A queue another shard holds gets `grace_secs` more: its activity time is written
    behind by that shard, and a dead shard's queues are still expired by the others.
    """
    lifespan_end = QueueDescriptorRow.last_active + QueueDescriptorRow.lifespan_secs
    rows = session.execute(
        select(QueueDescriptorRow.queue_id).where(
            lifespan_end < now,
            or_(
                QueueDescriptorRow.owner_shard == shard,
                QueueDescriptorRow.owner_shard.is_(None),
                lifespan_end + grace_secs < now,
            ),
        )
    ).scalars()
    expired = [queue_id for queue_id in rows if queue_id not in keep]
    delete_descriptors(session, expired)
    return expired


def delete_descriptors_behind(session: Session, realm_id: int, seq: int) -> list[str]:
    """Delete the realm's descriptors whose checkpoint is before `seq` (history pruned)."""
    behind = list(
        session.execute(
            select(QueueDescriptorRow.queue_id).where(
                QueueDescriptorRow.realm_id == realm_id, QueueDescriptorRow.checkpoint_seq < seq
            )
        ).scalars()
    )
    delete_descriptors(session, behind)
    return behind
