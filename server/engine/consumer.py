"""The outbox consumer: reads each realm's committed events in sequence and routes them.

`routed[realm]` is the newest outbox sequence number routed to the live queues of this
process; rows are routed strictly in order, one realm at a time, and `routed` moves
with every row, so a queue being built (`server.engine.activation`) can catch up to it and join
the registry with nothing missed.

A failure stays in its realm: a row that cannot be routed (or a read that fails) stops
that realm only, is logged with its traceback and counted, and the realm is retried
with a doubling delay capped at `MAX_RETRY_DELAY_SECS`; every other realm goes on. The
realm never skips the row: its order and IDs are the delivery guarantee. `status`
reports it to the admin views. Routing yields to the event loop once it has run for
`ROUTING_SLICE_SECS`, so other requests go on while a large batch is routed; the polls
the batch reached are answered when it is routed (at least every
`MAX_ANSWER_DEFERRAL_SECS`), so one action's rows reach a client in one answer.

Every drain also reads the claim feed (`models.ownership`) in the same snapshot as the
positions: a queue of this shard that another shard claimed is fenced at once
(`LiveQueues.fence`), before any row after the claim is routed to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.database import Database
from models.outbox import StoredEvent, read_events, realm_positions
from models.ownership import QueueClaimView, newest_claim_id, read_claims
from queues.descriptor import ClientDescriptor
from queues.routing import route
from queues.types import SharedEvent
from server.engine.database_threads import DatabaseThreads
from server.engine.live_queues import LiveQueues

log = logging.getLogger("eventq.consumer")

# Rows read per outbox query: bounds the memory of one catch-up step (a few MB), and
# holds the rows of one large action (a deactivation writes one per channel) together.
OUTBOX_BATCH_SIZE = 5000
# Routing hands the loop back once it has run this long, so that other requests go on
# while a large batch is routed.
ROUTING_SLICE_SECS = 0.02
# The polls that routed rows reached are answered once the batch is routed, so a client
# gets all the rows of one action (a deactivation in a large realm writes a thousand and
# routes them in tens of milliseconds) in one answer rather than one per slice; a long
# catch-up answers them at least this often.
MAX_ANSWER_DEFERRAL_SECS = 0.2
# NOTIFY (PostgreSQL) and the watcher (SQLite) wake the consumer; this slow poll only
# covers a wake-up lost while the listener reconnected.
SAFETY_POLL_SECS = 1.0
# A failing realm is retried after 1, 2, 4 ... seconds, never more than a minute apart:
# fast enough to recover soon after a transient fault, slow enough that a row that
# always fails does not flood the log with tracebacks.
FIRST_RETRY_DELAY_SECS = 1.0
MAX_RETRY_DELAY_SECS = 60.0


@dataclass(slots=True)
class RealmFailure:
    """A realm whose delivery is stopped by an error, and when it is tried again."""

    consecutive: int
    last_error: str
    retry_at: float


def shared_event(row: StoredEvent) -> SharedEvent:
    """The in-memory event every accepting queue of this process shares."""
    return SharedEvent(
        row.realm_id,
        row.seq,
        row.event,
        row.user_ids,
        row.legacy_skip,
        encoded=row.event_json.encode("utf-8"),
        created_at=row.created_at,
    )


class OutboxConsumer:
    """Routes committed outbox rows to the live queues, realm by realm, in order."""

    def __init__(
        self,
        db: Database,
        threads: DatabaseThreads,
        live: LiveQueues,
        *,
        on_drops: Callable[[], None],
        on_user_changed: Callable[[int], None] = lambda user_id: None,
        monotonic: Callable[[], float] = time.monotonic,
        shard: str = "",
    ) -> None:
        self.db = db
        self.threads = threads
        self.live = live
        self.routed: dict[int, int] = {}
        self.shard = shard
        # The newest claim of the feed this shard has read.
        self.claims_seen = 0
        # Routing failures so far, per realm (a realm id is a bounded label).
        self.failure_counts: Counter[int] = Counter()
        self._failures: dict[int, RealmFailure] = {}
        self._on_drops = on_drops
        self._on_user_changed = on_user_changed
        # The clock of retry times; tests move it instead of waiting.
        self.monotonic = monotonic
        self._wake = asyncio.Event()
        # One drain at a time: two interleaved drains could move `routed` backwards
        # between their yields, and a queue catching up to it would miss rows.
        self._draining = asyncio.Lock()

    async def start(self) -> None:
        """Start from the realms' current positions: earlier rows belong to queues that
        are rebuilt from their descriptors when they are next polled."""
        self.routed, self.claims_seen = await self.threads.run(self._read_start)

    def wake(self) -> None:
        """New rows may exist: look now."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Drain, then sleep until woken (or the safety poll, or a realm's retry)."""
        while True:
            try:
                await self.drain()
            except Exception as error:  # the positions query: the database is down
                log.warning("outbox consumer: %s; retrying in %ss", error, FIRST_RETRY_DELAY_SECS)
                await asyncio.sleep(FIRST_RETRY_DELAY_SECS)  # a back-off timer
                continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stop() sends when the wake-up lands in the same loop turn.
            try:
                async with asyncio.timeout(self._next_wait()):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def _next_wait(self) -> float:
        if not self._failures:
            return SAFETY_POLL_SECS
        soonest = min(failure.retry_at for failure in self._failures.values())
        return max(0.0, min(SAFETY_POLL_SECS, soonest - self.monotonic()))

    async def drain(self) -> None:
        """Route every committed row not yet routed, realm by realm; a realm that fails
        is recorded and skipped until its retry time."""
        async with self._draining:
            await self._drain_all()

    async def _drain_all(self) -> None:
        positions, claims = await self.threads.run(self._read_positions_and_claims)
        self._fence_claimed(claims)
        for realm_id, newest in positions.items():
            failure = self._failures.get(realm_id)
            if failure is not None and self.monotonic() < failure.retry_at:
                continue
            try:
                await self._drain_realm(realm_id, newest)
            except Exception as error:
                self._record_failure(realm_id, error)
            else:
                if self._failures.pop(realm_id, None) is not None:
                    log.info("realm %d: delivery resumed at seq %d", realm_id, newest)

    async def _drain_realm(self, realm_id: int, newest: int) -> None:
        routed_before = self.routed.setdefault(realm_id, 0)
        woken: list[ClientDescriptor] = []
        try:
            while self.routed[realm_id] < newest:
                rows = await self.threads.run(
                    self._read_rows, realm_id, self.routed[realm_id], newest, OUTBOX_BATCH_SIZE
                )
                if not rows:
                    break
                deferred_since = time.monotonic()
                slice_ends = deferred_since + ROUTING_SLICE_SECS
                for row in rows:
                    woken += self._route(row)
                    # Per row, before any yield: an activation catching up reads this.
                    self.routed[realm_id] = row.seq
                    now = time.monotonic()
                    if now >= slice_ends:
                        if now - deferred_since >= MAX_ANSWER_DEFERRAL_SECS:
                            self._answer(woken)
                            deferred_since = now
                        await asyncio.sleep(0)  # let other requests go on
                        slice_ends = time.monotonic() + ROUTING_SLICE_SECS
                self._answer(woken)
        finally:
            # A failed row: what was routed before it is answered all the same.
            self._answer(woken)
        if self.live.tombstone_count and self.routed[realm_id] != routed_before:
            self._on_drops()

    def _answer(self, woken: list[ClientDescriptor]) -> None:
        self.live.answer_woken(woken)
        woken.clear()

    def _route(self, row: StoredEvent) -> list[ClientDescriptor]:
        """Offer the row to its queues; the clients with a waiting poll it reached."""
        # Decoding first: a row that cannot be decoded fails before any queue saw it.
        event = shared_event(row)
        result = route(self.live.registry, event)
        self.live.drop_overflowed(result)
        if event.type == "realm_user":
            # A user was created or changed: what authentication cached of them is stale.
            self._on_user_changed(int(event.data["person"]["user_id"]))
        if row.cut_off_user_id is not None:
            self._on_user_changed(row.cut_off_user_id)
            self.live.cut_off_user(row.cut_off_user_id, row.seq)
        return result.woken

    def _record_failure(self, realm_id: int, error: Exception) -> None:
        previous = self._failures.get(realm_id)
        consecutive = 1 if previous is None else previous.consecutive + 1
        delay = min(MAX_RETRY_DELAY_SECS, FIRST_RETRY_DELAY_SECS * 2 ** (consecutive - 1))
        self.failure_counts[realm_id] += 1
        self._failures[realm_id] = RealmFailure(
            consecutive=consecutive,
            last_error=f"{type(error).__name__}: {error}",
            retry_at=self.monotonic() + delay,
        )
        log.error(
            "realm %d: cannot route the outbox after seq %d (failure %d in a row); "
            "its delivery is paused, other realms go on; retrying in %.0fs",
            realm_id,
            self.routed.get(realm_id, 0),
            consecutive,
            delay,
            exc_info=error,
        )

    def status(self, realm_id: int) -> dict[str, Any]:
        """The realm's delivery, for the admin views."""
        failure = self._failures.get(realm_id)
        return {
            "routed_seq": self.routed.get(realm_id, 0),
            "failing": failure is not None,
            "consecutive_failures": failure.consecutive if failure else 0,
            "last_error": failure.last_error if failure else None,
            "retry_in_secs": max(0.0, failure.retry_at - self.monotonic()) if failure else None,
            "failures_total": self.failure_counts[realm_id],
        }

    def _fence_claimed(self, claims: list[QueueClaimView]) -> None:
        for claim in claims:
            if claim.shard != self.shard:
                self.live.fence(claim.queue_id, claim.epoch)
            self.claims_seen = max(self.claims_seen, claim.id)

    def _read_start(self) -> tuple[dict[int, int], int]:
        with self.db.snapshot() as session:
            return realm_positions(session), newest_claim_id(session)

    def _read_positions_and_claims(self) -> tuple[dict[int, int], list[QueueClaimView]]:
        with self.db.snapshot() as session:
            return realm_positions(session), read_claims(session, self.claims_seen)

    def _read_rows(
        self, realm_id: int, after: int, up_to: int | None, limit: int
    ) -> list[StoredEvent]:
        with self.db.snapshot() as session:
            return read_events(session, realm_id, after, up_to, limit)
