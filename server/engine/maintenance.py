"""Maintenance of the live queues and the outbox: the work no request waits for.

* checkpoints: acknowledged positions and activity times are written behind, batched,
  every `CHECKPOINT_FLUSH_INTERVAL_SECS` (a stale checkpoint only means a longer replay
  after a crash, never a lost or renumbered event);
* deletions: the descriptors of dropped queues and of deactivated users are deleted as
  soon as they are dropped, and retried by every sweep until the deletion commits;
* the sweep, every `GC_INTERVAL_SECS`: queues idle past their lifespan are dropped
  (expiry), queues idle for `COLD_QUEUE_IDLE_SECS` leave memory (eviction), and outbox
  rows no queue can need any more are deleted in short batches (`models.retention`);
* shards: this process's entry in the shard list is refreshed every
  `SHARD_HEARTBEAT_SECS`, and claims older than `CLAIM_RETENTION_SECS` are pruned.

Every write of a queue's descriptor is fenced by the epoch this shard holds it under: a
checkpoint that finds the epoch gone means another shard claimed the queue, and this
process's copy is fenced (`LiveQueues.fence`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from models.database import Database
from models.descriptors import (
    CheckpointUpdate,
    delete_expired_descriptors,
    delete_held_descriptors,
    delete_user_descriptors,
    save_checkpoints,
)
from models.ownership import DEFAULT_SHARD_NAME, mark_shard_seen, prune_claims
from models.retention import (
    MAX_RETAINED_EVENTS_PER_REALM,
    PRUNE_PAUSE_RATIO,
    BatchResult,
    prune_batch,
)
from queues.gc import GC_INTERVAL_SECS, find_expired
from server.engine.consumer import OutboxConsumer
from server.engine.database_threads import DatabaseThreads
from server.engine.live_queues import DropCause, LiveQueue, LiveQueues, PendingDeletions, QueueState

log = logging.getLogger("eventq.maintenance")

# Outbox rows younger than this are never pruned (`EVENTQ_OUTBOX_MIN_AGE_SECS`): a short
# audit trail of what every action wrote.
DEFAULT_OUTBOX_MIN_AGE_SECS = 3600.0
# Acknowledged positions are written behind, batched, this often.
CHECKPOINT_FLUSH_INTERVAL_SECS = 1.0
# A queue with no poll for this long leaves memory (its descriptor stays); its next poll
# rebuilds it from the outbox. A minute keeps active clients, which poll at least every
# 55 s, in memory, while idle ones cost nothing.
COLD_QUEUE_IDLE_SECS = 60.0
# A queue another shard holds is expired by this one only this long after its lifespan
# ends: its holder writes activity behind, and a parked poll lasts up to 55 s.
OTHER_SHARD_EXPIRY_GRACE_SECS = 120.0
# A running shard says so this often; the admin views list shards seen within a minute.
SHARD_HEARTBEAT_SECS = 10.0
# Claims are read within milliseconds by every running shard; a shard that starts later
# starts past them. An hour is ample.
CLAIM_RETENTION_SECS = 3600.0


class Maintenance:
    """Checkpoints, deletions, expiry, eviction and pruning for one process."""

    def __init__(
        self,
        db: Database,
        threads: DatabaseThreads,
        live: LiveQueues,
        consumer: OutboxConsumer,
        clock: Callable[[], float],
        outbox_min_age_secs: float = DEFAULT_OUTBOX_MIN_AGE_SECS,
        shard: str = DEFAULT_SHARD_NAME,
    ) -> None:
        self.db = db
        self.shard = shard
        self.outbox_min_age_secs = outbox_min_age_secs
        self.max_retained_events = MAX_RETAINED_EVENTS_PER_REALM
        # How long the last prune pass took, and the rows pruned so far (metrics).
        self.last_prune_secs = 0.0
        self.pruned_rows_total = 0
        self.threads = threads
        self.live = live
        self.consumer = consumer
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._deleting: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(GC_INTERVAL_SECS, self.collect_garbage), name="gc"),
            loop.create_task(
                self._every(CHECKPOINT_FLUSH_INTERVAL_SECS, self.flush_checkpoints),
                name="checkpoints",
            ),
            loop.create_task(self._every(SHARD_HEARTBEAT_SECS, self.mark_seen), name="shard"),
        ]

    async def stop(self) -> None:
        """Stop the timers, finish the deletion in flight, write every checkpoint."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._deleting is not None:
            await asyncio.gather(self._deleting, return_exceptions=True)
        await self.flush_checkpoints()

    async def _every(self, interval: float, work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        while True:
            await asyncio.sleep(interval)  # a timer, not a wait for a condition
            try:
                await work()
            except Exception:
                log.exception("%s failed; retrying next interval", work.__name__)

    # -- checkpoints ----------------------------------------------------------------------

    async def flush_checkpoints(self, queues: list[LiveQueue] | None = None) -> None:
        """Write the acknowledged positions and activity times of polled queues."""
        updates = self.live.take_checkpoints(queues)
        if not updates:
            return
        try:
            lost = await self.threads.run(self._save, updates)
        except BaseException:
            # Not written: mark them dirty again so the next flush retries.
            for update in updates:
                live = self.live.get(update.queue_id)
                if live is not None and live.state is QueueState.WARM:
                    live.dirty = True
            raise
        for queue_id in lost:
            # Claimed by another shard (or deleted by one) since this one held it.
            self.live.fence(queue_id)

    def _save(self, updates: list[CheckpointUpdate]) -> list[str]:
        with self.db.write() as session:
            return save_checkpoints(session, updates)

    async def mark_seen(self) -> None:
        """Refresh this shard's entry in the shard list."""

        def work() -> None:
            with self.db.write() as session:
                mark_shard_seen(session, self.shard, self.clock())

        await self.threads.run(work)

    # -- deletions ------------------------------------------------------------------------

    def request_deletions(self) -> None:
        """Delete dropped queues' descriptors soon, in the background (coalesced)."""
        if self._deleting is None or self._deleting.done():
            self._deleting = asyncio.get_running_loop().create_task(
                self._delete_quietly(), name="delete-dropped"
            )

    async def _delete_quietly(self) -> None:
        try:
            await self.delete_dropped()
        except Exception:
            # The tombstones stay, so the queues stay gone; the next sweep retries.
            log.exception("could not delete dropped queues' descriptors; the sweep retries")

    async def delete_dropped(self) -> None:
        """Durably delete what dropped queues and deactivations left behind."""
        pending = self.live.pending_deletions()
        if not pending.queue_ids and not pending.cut_offs:
            return
        await self.threads.run(self._delete, pending)
        self.live.deletions_done(pending)

    def _delete(self, pending: PendingDeletions) -> None:
        with self.db.write() as session:
            delete_held_descriptors(session, pending.queue_ids)
            for user_id, seq in pending.cut_offs.items():
                delete_user_descriptors(session, user_id, seq)

    # -- the sweep ------------------------------------------------------------------------

    async def collect_garbage(self) -> None:
        """Expire idle queues, evict cold ones, prune the outbox, retry deletions."""
        await self.expire_queues()
        await self.evict_cold_queues()
        await self.prune_outbox_history()
        await self.delete_dropped()
        await self.prune_claim_feed()

    async def prune_claim_feed(self) -> None:
        """Delete claims every running shard has read long ago."""

        def work() -> int:
            with self.db.write() as session:
                return prune_claims(session, self.clock() - CLAIM_RETENTION_SECS)

        await self.threads.run(work)

    async def expire_queues(self) -> None:
        """Drop queues idle past their lifespan, in memory and on disk."""
        now = self.clock()
        expired = find_expired(self.live.registry, now)
        for client in expired:
            live = self.live.get(client.queue_id)
            if live is not None:
                self.live.drop(live, DropCause.EXPIRED)
        in_memory = {live.queue_id for live in self.live}

        def work() -> list[str]:
            with self.db.write() as session:
                return delete_expired_descriptors(
                    session, now, in_memory, self.shard, OTHER_SHARD_EXPIRY_GRACE_SECS
                )

        cold = await self.threads.run(work)
        if expired or cold:
            log.info("GC: %d live and %d cold queues expired", len(expired), len(cold))
        if expired:
            self.request_deletions()

    async def evict_cold_queues(self) -> int:
        """Forget idle queues in memory; their descriptors and the outbox rebuild them.

        A queue without a waiting poll for COLD_QUEUE_IDLE_SECS leaves memory after its
        checkpoint is saved, so an idle registered queue costs no server memory.
        """
        now = self.clock()
        cold = [
            live
            for live in self.live
            if live.state is QueueState.WARM
            and live.client is not None
            and live.client.waiter is None
            and now - live.client.last_active >= COLD_QUEUE_IDLE_SECS
        ]
        if not cold:
            return 0
        for live in cold:
            live.dirty = True  # write its last activity even if nothing was acknowledged
        await self.flush_checkpoints(cold)
        evicted = 0
        for live in cold:
            # A poll may have arrived (or acknowledged) while the checkpoints were written:
            # keep that queue; it is evicted by a later sweep if it goes idle again.
            client = live.client
            if live.state is QueueState.WARM and not live.dirty and client and not client.waiter:
                self.live.make_cold(live)
                evicted += 1
        log.info("evicted %d cold queues from memory", evicted)
        return evicted

    async def prune_outbox_history(self) -> int:
        """Delete outbox history no queue can need any more, realm by realm, in short
        batches (`models.retention`); returns how many events went.

        Each batch is its own transaction on a database thread, so polls and actions
        never wait long behind a prune, and `stop()` (which cancels the sweep) waits for
        one batch at most. Queues whose history went are dropped: their clients get
        BAD_EVENT_QUEUE_ID and re-register instead of missing events.
        """
        started = time.monotonic()
        older_than = self.clock() - self.outbox_min_age_secs
        events = recipients = dropped = 0
        for realm_id, position in sorted(self.consumer.routed.items()):
            while True:
                batch_started = time.monotonic()
                batch = await self.threads.run(self._prune_batch, realm_id, position, older_than)
                if batch.busy:
                    log.debug("outbox: realm %d is being pruned elsewhere; next pass", realm_id)
                pause = (time.monotonic() - batch_started) * PRUNE_PAUSE_RATIO
                events += batch.events
                recipients += batch.recipients
                dropped += len(batch.dropped_queue_ids)
                for queue_id in batch.dropped_queue_ids:
                    live = self.live.get(queue_id)
                    if live is not None:
                        self.live.drop(live, DropCause.BEHIND_OUTBOX)
                if batch.done:
                    break
                await asyncio.sleep(pause)  # rest: the prune is background work
        self.last_prune_secs = time.monotonic() - started
        self.pruned_rows_total += events
        if events or dropped:
            log.info(
                "outbox: pruned %d events (%d recipient rows) in %.2fs; dropped %d queues "
                "too far behind",
                events,
                recipients,
                self.last_prune_secs,
                dropped,
            )
        return events

    def _prune_batch(self, realm_id: int, routed_seq: int, older_than: float) -> BatchResult:
        with self.db.write() as session:
            return prune_batch(session, realm_id, routed_seq, older_than, self.max_retained_events)
