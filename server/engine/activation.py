"""Activation: making a queue live in memory from its durable descriptor and the outbox.

Owns the step from a descriptor to a warm queue, for a new queue (`register`) and for a
cold one on its first poll: loading the descriptor (`load_record`), replaying the
outbox (`catch_up`), claiming a queue another shard holds (`_rebuild`, `_claim`), and
what a poll of a queue that cannot be served is answered with (`refusal`).

Queues are a cache. A queue's durable descriptor records its filter and a checkpoint
(outbox seq, event id); replaying the outbox after the checkpoint through the same
filter reproduces the same event IDs (`queues.queue`). So a queue missing from memory
(evicted, or after a restart) is rebuilt from its descriptor, exactly like a new one.

Catch-up. `catch_up` replays the owner's outbox rows up to what the consumer has routed,
and the caller adds the queue to the registry (`LiveQueues.finish_activation`) with no
await in between, so the consumer's next row is the queue's next row.

Deactivation. A queue is claimed in memory (`LiveQueues.begin_activation`) *before*
the snapshot that checks its owner is active; a deactivation committed after that
snapshot is routed later and finds the queue (activating or warm) to cut off, and one
committed before it is seen by the check. Either way no queue of a deactivated user
outlives the cut-off.

Claims, epochs, fencing (docs/architecture.md §10). A cold queue another shard holds is
claimed first: one write transaction raises its descriptor's epoch
(`models.ownership.claim_descriptor`), and the queue in memory carries that epoch
(`load_record`), which fences every later write of it, so a shard that lost the queue
cannot change it. The catch-up then reads at least to the realm's position at the
claim, since the previous holder may have handed out events that far. A queue this
shard holds already costs only a read.

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select

from models.database import Database
from models.descriptors import DescriptorRecord, load_descriptor
from models.messages.narrows import EventNarrow
from models.outbox import StoredEvent, outbox_pruned_seq, read_user_events
from models.ownership import MAX_CLAIM_TRIES, Claim, ClaimContended, claim_descriptor
from models.tables import Realm, UserProfile
from queues.descriptor import ClientDescriptor
from queues.queue import EventQueue, QueueOverflow
from queues.types import Capabilities
from server.engine.authentication import AuthenticatedUser
from server.engine.consumer import OUTBOX_BATCH_SIZE, OutboxConsumer, shared_event
from server.engine.database_threads import DatabaseThreads
from server.engine.errors import BadEventQueueId, QueueMoving, UserDeactivated
from server.engine.live_queues import (
    DropCause,
    LiveQueue,
    LiveQueues,
    QueueDropped,
    QueueMoved,
    QueueState,
)
from server.engine.metrics import DROPPED_QUEUE, EXPIRED_QUEUE, UNKNOWN_QUEUE, ServiceMetrics

# The service's logger still: activation was part of it, and log filters name it.
log = logging.getLogger("eventq.service")

# A poll that finds its queue half-built by another poll whose build then failed on a
# transient error, or claimed by another shard meanwhile, builds (claims) it itself; past
# this many tries it gives up.
MAX_ACTIVATION_TRIES = 3

# Distinct filters and capability sets are few (one per kind of client); sharing one
# object per value saves a few hundred bytes per queue. Bounded against odd clients.
MAX_SHARED_VALUES = 1024
_shared_values: dict[object, object] = {}
T = TypeVar("T")


def _shared_value(value: T) -> T:
    """One object per distinct (hashable, immutable) value, shared by every queue."""
    shared = _shared_values.get(value)
    if shared is not None:
        return shared  # type: ignore[return-value]
    if len(_shared_values) < MAX_SHARED_VALUES and value is not None:
        _shared_values[value] = value
    return value


class Activator:
    """Builds queues in memory from their descriptors, and refuses the ones it cannot."""

    def __init__(
        self,
        db: Database,
        threads: DatabaseThreads,
        live: LiveQueues,
        consumer: OutboxConsumer,
        metrics: ServiceMetrics,
        *,
        clock: Callable[[], float],
        shard: str,
        on_drops: Callable[[], None],
    ) -> None:
        self.db = db
        self.threads = threads
        self.live = live
        # Read for its position (`routed`) only, which it replaces when it starts.
        self.consumer = consumer
        self.metrics = metrics
        self.clock = clock
        self.shard = shard
        # Asks for the durable deletion of queues dropped here (`Maintenance`).
        self._on_drops = on_drops

    def load_record(self, live: LiveQueue, record: DescriptorRecord) -> None:
        """Give an activating queue its data, positioned at the descriptor's checkpoint."""
        checkpoint_id = record.checkpoint_event_id
        live.checkpoint = (record.checkpoint_seq, checkpoint_id)
        live.epoch = record.owner_epoch
        live.client = ClientDescriptor(
            queue_id=record.queue_id,
            realm_id=record.realm_id,
            user_id=record.user_id,
            event_types=_shared_value(
                frozenset(record.event_types) if record.event_types is not None else None
            ),
            capabilities=_shared_value(Capabilities.from_client_capabilities(record.capabilities)),
            client_name=sys.intern(record.client_name),
            client_version=sys.intern(record.client_version) if record.client_version else None,
            lifespan_secs=record.lifespan_secs,
            now=record.last_active,
            queue=EventQueue(
                next_event_id=checkpoint_id + 1,
                last_seq=record.checkpoint_seq,
                newest_pruned_id=checkpoint_id if checkpoint_id >= 0 else None,
            ),
            legacy_deactivation=record.legacy_deactivation,
            narrow=_shared_value(EventNarrow(record.narrow, record.user_id))
            if record.narrow
            else None,
            apply_markdown=record.apply_markdown,
        )

    async def catch_up(
        self, live: LiveQueue, *, check_owner_active: bool, at_least: int = 0
    ) -> None:
        """Replay the owner's outbox rows into the queue up to what the consumer routed.

        With `check_owner_active`, the first read also checks, in the same snapshot,
        that the owner is still active. Raises `QueueDropped` if the queue was dropped
        meanwhile (e.g. cut off by the owner's deactivation). Returns with the queue
        caught up; the caller must add it to the registry without awaiting.

        `at_least`: read that far even if the consumer has not routed it yet (a queue
        that moved here may have been handed out that far by its previous shard). Rows
        the consumer routes afterwards up to there are ignored by the queue, as
        duplicates (`ClientDescriptor.deliver`).
        """
        client = live.client
        if client is None:
            raise ValueError(f"queue {live.queue_id!r} has no data to catch up")
        queue = client.queue
        must_check = check_owner_active
        while True:
            target = max(self.consumer.routed.get(live.realm_id, 0), at_least)
            if queue.last_seq >= target and not must_check:
                return
            active, rows = await self.threads.run(
                self._read_user_outbox,
                live.realm_id,
                live.user_id,
                queue.last_seq,
                max(target, queue.last_seq),
                must_check,
            )
            must_check = False
            if live.state is QueueState.DROPPED:
                raise QueueDropped(live.drop_cause or DropCause.ACTIVATION_FAILED)
            if live.state is QueueState.MOVED:
                raise QueueMoved(live.queue_id)
            if not active:
                self.live.drop(live, DropCause.DEACTIVATED)
                raise QueueDropped(DropCause.DEACTIVATED)
            for row in rows:
                if row.seq > queue.last_seq:
                    client.deliver(shared_event(row))
            # A short page means nothing else up to `target` is addressed to this user.
            if len(rows) < OUTBOX_BATCH_SIZE and target > queue.last_seq:
                queue.skip(target)

    def _read_user_outbox(
        self, realm_id: int, user_id: int, after: int, up_to: int, check_active: bool
    ) -> tuple[bool, list[StoredEvent]]:
        with self.db.snapshot() as session:
            active = True
            if check_active:
                active = bool(
                    session.execute(
                        select(UserProfile.is_active).where(UserProfile.id == user_id)
                    ).scalar_one_or_none()
                )
            if up_to <= after:
                return active, []
            rows = read_user_events(session, realm_id, user_id, after, up_to, OUTBOX_BATCH_SIZE)
            return active, rows

    async def live_queue_for(self, user: AuthenticatedUser, queue_id: str) -> LiveQueue:
        """The caller's warm queue, rebuilt from its descriptor if it is not in memory.

        Another user's queue, an unknown one and an expired one all raise the same error.
        """
        moved = False
        for _ in range(MAX_ACTIVATION_TRIES):
            live = self.live.get(queue_id)
            if live is None:
                if self.live.is_tombstoned(queue_id):
                    raise self.bad_queue_id(queue_id, DROPPED_QUEUE)
                live = await self._rebuild(user, queue_id)
            if live.state is QueueState.ACTIVATING and live.activation is not None:
                # Another poll is building it: share that build.
                await asyncio.shield(live.activation)
            if live.user_id != user.id:
                raise self.bad_queue_id(queue_id, UNKNOWN_QUEUE)
            if live.state is QueueState.WARM:
                return live
            if live.state is QueueState.DROPPED:
                raise self.refusal(live.drop_cause, queue_id)
            # The other poll's build failed and left the queue cold, or another shard
            # claimed it meanwhile: build (claim) it ourselves.
            moved = live.state is QueueState.MOVED
        if moved:
            raise QueueMoving(queue_id)
        raise self.bad_queue_id(queue_id, DropCause.ACTIVATION_FAILED.value)

    def refusal(self, cause: DropCause | None, queue_id: str) -> Exception:
        """What a poll of a queue dropped for `cause` is answered with."""
        if cause is DropCause.DEACTIVATED:
            return UserDeactivated()
        return self.bad_queue_id(queue_id, (cause or DropCause.ACTIVATION_FAILED).value)

    def bad_queue_id(self, queue_id: str, cause: str) -> BadEventQueueId:
        """The BAD_EVENT_QUEUE_ID answer, counted by `cause` for the metrics."""
        self.metrics.bad_queue_ids[cause] += 1
        return BadEventQueueId(queue_id)

    async def _rebuild(self, user: AuthenticatedUser, queue_id: str) -> LiveQueue:
        """Activate a cold queue of the caller from its descriptor and the outbox,
        claiming it first if another shard holds it (docs/architecture.md §10)."""
        now = self.clock()
        try:
            claim = await self.threads.run(self._claim, queue_id, user.id, now)
        except ClaimContended:
            # Other shards won every round: the queue is there, just busy moving.
            log.info("queue %s: lost %d claim races in a row", queue_id, MAX_CLAIM_TRIES)
            raise QueueMoving(queue_id) from None
        record = claim.record if claim is not None else None
        if record is None or record.user_id != user.id:
            raise self.bad_queue_id(queue_id, UNKNOWN_QUEUE)
        if now >= record.last_active + record.lifespan_secs:
            raise self.bad_queue_id(queue_id, EXPIRED_QUEUE)
        if claim is not None and claim.moved_from is not None:
            self.live.moves_in += 1
            log.info(
                "queue %s moved from %s to %s (epoch %d)",
                queue_id,
                claim.moved_from,
                self.shard,
                record.owner_epoch,
            )
        existing = self.live.get(queue_id)
        if existing is not None:
            return existing  # another poll claimed it while we read the descriptor
        if self.live.is_tombstoned(queue_id):
            raise self.bad_queue_id(queue_id, DROPPED_QUEUE)
        live = self.live.begin_activation(queue_id, record.realm_id, record.user_id)
        self.load_record(live, record)
        try:
            await self.catch_up(
                live, check_owner_active=True, at_least=claim.realm_seq if claim else 0
            )
            self.live.finish_activation(live)
        except QueueDropped:
            self._on_drops()
        except QueueMoved:
            pass  # claimed by another shard meanwhile: the caller decides what to do
        except QueueOverflow:
            self.live.drop(live, DropCause.OVERFLOWED)
            self._on_drops()
        except BaseException:
            # A transient failure (the database): the descriptor stays, a poll retries.
            self.live.make_cold(live)
            raise
        return live

    def _claim(self, queue_id: str, user_id: int, now: float) -> Claim | None:
        """The descriptor, held by this shard; None when there is none, it is another
        user's (left unclaimed) or its history was pruned.

        A queue this shard holds already (evicted, or after a restart) needs only a read;
        a write transaction, which on SQLite takes the database's one write lock, is
        taken only to claim a queue from another shard.
        """
        with self.db.snapshot() as session:
            record = load_descriptor(session, queue_id)
            if record is None or record.user_id != user_id:
                return None
            if record.checkpoint_seq < outbox_pruned_seq(session, record.realm_id):
                log.info(
                    "queue %s is behind the retained outbox; its client must re-register", queue_id
                )
                return None
            if record.owner_shard == self.shard:
                realm_seq = session.execute(
                    select(Realm.last_event_seq).where(Realm.id == record.realm_id)
                ).scalar_one()
                return Claim(record, None, int(realm_seq))
        with self.db.write() as session:
            return claim_descriptor(session, queue_id, self.shard, now)
