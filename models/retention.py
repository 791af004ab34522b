"""Outbox retention: which history may go, and deleting it in short batches.

A realm's outbox row may be deleted once all of these hold:

* it is older than the minimum age (an audit trail of what every action wrote);
* it is routed (`routed_seq`: the server's consumer has handed it to its queues);
* no queue descriptor's checkpoint is before it, unless keeping it would retain more
  than `max_rows` rows: descriptors further behind are deleted with the history they
  need, and their clients re-register on BAD_EVENT_QUEUE_ID.

`prune_batch` deletes at most about `BATCH_RECIPIENT_ROWS` recipient rows of one realm,
oldest first, in the caller's transaction, and reports whether the realm is done. The
server and `eventq prune-outbox` both call it once per short transaction, so a prune of
a million rows never holds a lock (the realm row, SQLite's database lock) for long, and
both rest between batches (`PRUNE_PAUSE_RATIO`) so that it never takes the whole
machine either.
The recipient index on (realm_id, seq) serves both the batch boundary and the delete
cascade from `outbox_event`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from models.descriptors import delete_descriptors_behind
from models.tables import OutboxEvent, OutboxRecipient, QueueDescriptorRow, Realm

# Recipient rows deleted per transaction: ~20,000 index entries take tens of
# milliseconds on PostgreSQL and SQLite, short enough that actions and polls waiting on
# the same locks do not notice.
BATCH_RECIPIENT_ROWS = 20_000
# After each batch a pruner rests this many times as long as the batch took, so that a
# long prune takes at most half of one database core and the deletes' disk writes come
# in bursts with room between them for polls and actions (`eventq prune-outbox --pause`).
PRUNE_PAUSE_RATIO = 1.0
# At most this many rows per realm are kept for queues that fall behind: about a week of
# a busy realm. A queue further behind is dropped and its client re-registers.
MAX_RETAINED_EVENTS_PER_REALM = 1_000_000
# The first key of the PostgreSQL advisory lock a prune batch takes per realm (the second
# is the realm id): shards share the database, and one pruner per realm is enough.
PRUNE_LOCK_SPACE = 0x6576_71  # "evq"


@dataclass
class BatchResult:
    """What one batch deleted."""

    events: int = 0
    recipients: int = 0
    dropped_queue_ids: list[str] = field(default_factory=list)
    # Nothing more of this realm may be deleted now.
    done: bool = True
    # Another pruner held the realm, so this batch looked at nothing (PostgreSQL only).
    busy: bool = False


def prune_batch(
    session: Session,
    realm_id: int,
    routed_seq: int,
    older_than: float,
    max_rows: int = MAX_RETAINED_EVENTS_PER_REALM,
    batch_rows: int = BATCH_RECIPIENT_ROWS,
    *,
    wait_for_other_pruner: bool = False,
) -> BatchResult:
    """Delete the realm's oldest deletable rows, about `batch_rows` recipients' worth.

    `older_than` is a Unix time: only rows created before it may go. On PostgreSQL one
    pruner per realm runs at a time: with `wait_for_other_pruner` False (the servers'
    sweeps) a batch that finds another pruner at work does nothing and says `busy`;
    with True (`eventq prune-outbox`, asked to prune everything) it waits for that
    pruner's batch to commit, then goes on from where it stopped.
    """
    if session.get_bind().dialect.name == "postgresql":
        lock = {"space": PRUNE_LOCK_SPACE, "realm": realm_id}
        if wait_for_other_pruner:
            session.execute(text("SELECT pg_advisory_xact_lock(:space, :realm)"), lock)
        elif not session.execute(
            text("SELECT pg_try_advisory_xact_lock(:space, :realm)"), lock
        ).scalar_one():
            # Another shard is pruning this realm right now; its pass covers this one's.
            return BatchResult(busy=True)
    pruned = session.execute(
        select(Realm.outbox_pruned_seq).where(Realm.id == realm_id)
    ).scalar_one_or_none()
    if pruned is None:
        return BatchResult()
    limit = routed_seq
    oldest_checkpoint = session.execute(
        select(func.min(QueueDescriptorRow.checkpoint_seq)).where(
            QueueDescriptorRow.realm_id == realm_id
        )
    ).scalar_one_or_none()
    if oldest_checkpoint is not None:
        limit = min(limit, max(int(oldest_checkpoint), routed_seq - max_rows))
    if limit <= pruned:
        return BatchResult()
    # The batch ends before the recipient row `batch_rows` places on, or at `limit`.
    boundary = session.execute(
        select(OutboxRecipient.seq)
        .where(OutboxRecipient.realm_id == realm_id, OutboxRecipient.seq > pruned)
        .order_by(OutboxRecipient.seq)
        .offset(batch_rows)
        .limit(1)
    ).scalar_one_or_none()
    window_end = limit if boundary is None else min(limit, max(int(boundary) - 1, pruned + 1))
    # Rows are created in sequence order, so the old ones are a prefix of the window.
    end = session.execute(
        select(func.max(OutboxEvent.seq)).where(
            OutboxEvent.realm_id == realm_id,
            OutboxEvent.seq > pruned,
            OutboxEvent.seq <= window_end,
            OutboxEvent.created_at < datetime.fromtimestamp(older_than, UTC),
        )
    ).scalar_one_or_none()
    if end is None:
        return BatchResult()
    end = int(end)
    result = BatchResult(done=end < window_end or end >= limit)
    result.dropped_queue_ids = delete_descriptors_behind(session, realm_id, end)
    recipients = session.execute(
        delete(OutboxRecipient).where(
            OutboxRecipient.realm_id == realm_id,
            OutboxRecipient.seq > pruned,
            OutboxRecipient.seq <= end,
        )
    )
    events = session.execute(
        delete(OutboxEvent).where(
            OutboxEvent.realm_id == realm_id, OutboxEvent.seq > pruned, OutboxEvent.seq <= end
        )
    )
    # Last, so the realm row (which every action locks first) is held only to commit.
    # Never backwards, whatever else pruned meanwhile (SQLite serializes writers; the
    # PostgreSQL advisory lock above keeps two shards from pruning one realm at once).
    session.execute(
        update(Realm)
        .where(Realm.id == realm_id, Realm.outbox_pruned_seq < end)
        .values(outbox_pruned_seq=end)
    )
    result.recipients = int(recipients.rowcount or 0)  # type: ignore[attr-defined]
    result.events = int(events.rowcount or 0)  # type: ignore[attr-defined]
    return result


def realm_ids(session: Session) -> list[int]:
    """Every realm, for a prune pass over all of them."""
    return [int(realm_id) for realm_id in session.scalars(select(Realm.id).order_by(Realm.id))]
