"""Durable queue descriptors (docs/architecture.md §5): create, load, checkpoint, delete, expire.

A descriptor plus the outbox is enough to rebuild a queue with the same event IDs,
so the server writes one at register, refreshes its checkpoint and `last_active` as
clients acknowledge events, and deletes it when the queue is deleted or expires.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from models.messages import NarrowTerm, narrow_from_json, narrow_to_json
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


@dataclass(frozen=True, slots=True)
class CheckpointUpdate:
    """A newer acknowledged position and activity time of one queue."""

    queue_id: str
    checkpoint_seq: int
    checkpoint_event_id: int
    last_active: float


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
        "created_at": datetime.now(UTC),
    }


def create_descriptors(session: Session, records: Collection[DescriptorRecord]) -> None:
    """Insert new descriptors in one statement, however many."""
    if records:
        session.execute(insert(QueueDescriptorRow), [_row_values(r) for r in records])


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


def save_checkpoints(session: Session, updates: Iterable[CheckpointUpdate]) -> None:
    """Write acknowledged positions in one executemany statement."""
    rows = [
        {
            "queue_id": u.queue_id,
            "checkpoint_seq": u.checkpoint_seq,
            "checkpoint_event_id": u.checkpoint_event_id,
            "last_active": u.last_active,
        }
        for u in updates
    ]
    if rows:
        session.execute(update(QueueDescriptorRow), rows)


def delete_descriptors(session: Session, queue_ids: Collection[str]) -> None:
    """Delete these descriptors (deleted, expired or overflowed queues)."""
    if queue_ids:
        session.execute(
            delete(QueueDescriptorRow).where(QueueDescriptorRow.queue_id.in_(list(queue_ids)))
        )


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


def delete_expired_descriptors(session: Session, now: float, keep: Collection[str]) -> list[str]:
    """Delete descriptors idle past their lifespan, except the `keep` ids (live queues).

    Returns the deleted ids. Queues in memory are expired by `queues.gc`; this covers
    the descriptors of queues that are not (evicted, or never polled since a restart).
    """
    rows = session.execute(
        select(QueueDescriptorRow.queue_id).where(
            QueueDescriptorRow.last_active + QueueDescriptorRow.lifespan_secs < now
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
