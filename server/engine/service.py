"""The event service: what the handlers call (authenticate, register, long-poll,
delete) and the composition of the parts that keep queues fed.

The parts, each in its own module:

* `server.engine.authentication` — who is calling, from the credentials cache;
* `server.engine.registration` — new queues: descriptor, state snapshot, per-user cap;
* `server.engine.activation` — a queue from its descriptor and the outbox into memory,
  claimed from another shard if need be (registers, and cold queues on first poll);
* `server.engine.live_queues` — the queues in memory and each queue's lifecycle;
* `server.engine.consumer` — routes committed outbox rows to them, realm by realm, in order;
* `server.engine.wakeup` — tells the consumer that rows were committed (LISTEN or a watcher);
* `server.engine.ephemeral` — events never stored (typing), sent to every shard's queues;
* `server.engine.maintenance` — checkpoints, deletions, expiry, eviction, outbox pruning;
* `server.engine.database_threads` — runs blocking database work off the event loop.

This module owns the long-poll (`get_events`): acknowledging, answering and waiting.
Its invariants are in `get_events`' docstring.

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from models.database import Database
from models.ownership import DEFAULT_SHARD_NAME, ShardView, announce_shard, check_shard_name
from queues.descriptor import LegacyClientRule
from queues.queue import BadLastEventId, EventQueue
from queues.registry import QueueRegistry
from server.engine.abuse import AbuseMonitor
from server.engine.activation import Activator
from server.engine.authentication import AuthenticatedUser, Authenticator
from server.engine.consumer import OutboxConsumer
from server.engine.credentials import CredentialsCache
from server.engine.database_threads import DatabaseThreads
from server.engine.descriptor_writer import DescriptorWriter
from server.engine.ephemeral import EphemeralBus, EphemeralNotification
from server.engine.errors import BadEventQueueId, BadRequest
from server.engine.live_queues import DropCause, LiveQueues, QueueState, Wake, WakeReason
from server.engine.maintenance import DEFAULT_OUTBOX_MIN_AGE_SECS, SHARD_HEARTBEAT_SECS, Maintenance
from server.engine.metrics import ServiceMetrics
from server.engine.registration import RegisterRequest, Registrar
from server.engine.wakeup import WakeupSource, wakeup_source_for

log = logging.getLogger("eventq.service")

P = ParamSpec("P")
R = TypeVar("R")

# Zulip's clients time a long-poll out after 90 s; answering with a heartbeat 45-55 s
# in (random per connection, so parked polls do not all wake together) stays well
# inside that and keeps proxies from closing idle connections.
HEARTBEAT_MIN_SECS = 45.0
HEARTBEAT_MAX_SECS = 55.0
# Zulip's feature level whose deactivation sequence eventq implements
# (docs/architecture.md §4).
ZULIP_FEATURE_LEVEL = 377
ZULIP_VERSION = "11.0-eventq"


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """What a long-poll answers: encoded events (or one heartbeat) for a queue."""

    queue_id: str
    events: list[bytes]
    heartbeat: bool = False
    # It handed out ephemeral events (typing): never handed out before, so the poll did
    # work for its client even when its ids did not advance (`server.api.ratelimit`).
    ephemeral: bool = False


def _resolve_wait(waiter: asyncio.Future[WakeReason], reason: WakeReason) -> None:
    """End this one wait (not whichever poll holds the queue's slot by now)."""
    if not waiter.done():
        waiter.set_result(reason)


class EventService:
    """Live queues of every realm this process serves, and their delivery."""

    def __init__(
        self,
        db: Database,
        *,
        legacy_rules: Iterable[LegacyClientRule] = (),
        clock: Callable[[], float] = time.time,
        heartbeat_secs: tuple[float, float] = (HEARTBEAT_MIN_SECS, HEARTBEAT_MAX_SECS),
        outbox_min_age_secs: float = DEFAULT_OUTBOX_MIN_AGE_SECS,
        max_queues_per_user: int | None = None,
        abuse: AbuseMonitor | None = None,
        shard: str = DEFAULT_SHARD_NAME,
    ) -> None:
        self.db = db
        # This process's name among the shards: the prefix of the queue ids it creates
        # and the holder it records in their descriptors (docs/architecture.md §10).
        self.shard = check_shard_name(shard)
        # Refusals and quota drops of this process (server.engine.abuse), shared with the HTTP
        # layer's rate limits.
        self.abuse = abuse if abuse is not None else AbuseMonitor()
        self.heartbeat_secs = heartbeat_secs
        self.clock = clock
        self.threads = DatabaseThreads()
        # What the metrics count beyond the parts' own counters (`server.engine.metrics`).
        self.metrics = ServiceMetrics()
        self.live = LiveQueues()
        # Shared by authentication, which fills it, and the consumer, which forgets
        # every user a routed event changes.
        self.credentials = CredentialsCache()
        self.authenticator = Authenticator(db, self.threads, self.credentials)
        self.descriptors = DescriptorWriter(db, self.threads)
        self.consumer = OutboxConsumer(
            db,
            self.threads,
            self.live,
            on_drops=self._request_deletions,
            on_user_changed=self.credentials.forget_user,
            shard=self.shard,
        )
        self.maintenance = Maintenance(
            db, self.threads, self.live, self.consumer, clock, outbox_min_age_secs, self.shard
        )
        self.activator = Activator(
            db,
            self.threads,
            self.live,
            self.consumer,
            self.metrics,
            clock=clock,
            shard=self.shard,
            on_drops=self._request_deletions,
        )
        self.registrar = Registrar(
            db,
            self.threads,
            self.live,
            self.descriptors,
            self.activator,
            self.maintenance,
            self.abuse,
            clock=clock,
            shard=self.shard,
            legacy_rules=legacy_rules,
            max_queues_per_user=max_queues_per_user,
        )
        # Typing notifications and any other event that is never stored.
        self.ephemeral = EphemeralBus(db, self.threads, self.live, clock)
        self._wakeup: WakeupSource = wakeup_source_for(db)
        self._consumer_task: asyncio.Task[None] | None = None
        self._polls_in_flight = 0
        self._no_polls = asyncio.Event()
        self._no_polls.set()
        self.started = False

    @property
    def registry(self) -> QueueRegistry:
        """The warm queues, as routing sees them."""
        return self.live.registry

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering from the realms' current positions (queues load lazily)."""
        await self.consumer.start()
        loop = asyncio.get_running_loop()
        self._consumer_task = loop.create_task(self.consumer.run_forever(), name="consumer")
        self.maintenance.start()
        self._wakeup.start(loop, self.consumer.wake, self.ephemeral.receive)
        self.started = True
        log.info("event service started; realms at %s", self.consumer.routed)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Answer every waiting poll, save every checkpoint, stop the background work.

        Queues stay durable: after a restart clients poll the same `queue_id` with the
        same `last_event_id` and miss nothing.
        """
        self._wakeup.stop()
        for client in list(self.live.registry):
            self.live.wake(client, Wake.SHUTDOWN)
        try:
            async with asyncio.timeout(drain_timeout):
                await self._no_polls.wait()
        except TimeoutError:
            log.warning("%d polls still open at shutdown", self._polls_in_flight)
        if self._consumer_task is not None:
            self._consumer_task.cancel()
            await asyncio.gather(self._consumer_task, return_exceptions=True)
        await self.descriptors.stop()
        await self.maintenance.stop()
        self.threads.shutdown()
        log.info("event service stopped; %d queues kept for the next start", len(self.live))

    async def announce(self, url: str) -> None:
        """Enter this shard in the shard list, where `url` reaches it directly."""

        def work() -> ShardView | None:
            with self.db.write() as session:
                return announce_shard(
                    session, self.shard, url, os.getpid(), self.clock(), 2 * SHARD_HEARTBEAT_SECS
                )

        other = await self.threads.run(work)
        if other is not None:
            log.warning(
                "shard %s was running at %s (pid %d) %.0fs ago: if that process still runs, "
                "two processes share one shard name and serve the same queues unfenced; "
                "give each its own --shard",
                self.shard,
                other.url,
                other.pid,
                self.clock() - other.seen_at,
            )

    async def run_db(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking database work on the database threads."""
        return await self.threads.run(func, *args, **kwargs)

    def wake_consumer(self) -> None:
        """Ask the consumer to look for new outbox rows now."""
        self.consumer.wake()

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until the wake-up source hears every commit and every ephemeral event
        of other processes (on PostgreSQL its LISTEN connection is up: an ephemeral event
        sent before then never reaches this process). False after `timeout`."""
        return await asyncio.to_thread(self._wakeup.listening.wait, timeout)

    async def send_ephemeral(
        self,
        compute: Callable[Concatenate[Session, P], EphemeralNotification | None],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> bool:
        """Compute an ephemeral event read-only (`compute(session, ...)` in a snapshot,
        which may refuse the request) and send it to its users' queues on every shard;
        nothing is written (`server.engine.ephemeral`). False: nothing was sent."""
        return await self.ephemeral.send(compute, *args, **kwargs)

    def _request_deletions(self) -> None:
        self.maintenance.request_deletions()

    # Maintenance and delivery entry points, for tests, benchmarks and the CLI.

    async def drain_outbox(self) -> None:
        await self.consumer.drain()

    async def flush_checkpoints(self) -> None:
        await self.maintenance.flush_checkpoints()

    async def evict_cold_queues(self) -> int:
        return await self.maintenance.evict_cold_queues()

    async def prune_outbox_history(self) -> int:
        return await self.maintenance.prune_outbox_history()

    async def collect_garbage(self) -> None:
        await self.maintenance.collect_garbage()

    # -- authentication and register (`server.engine.authentication`, `.registration`) --

    def authenticate_cached(self, email: str, api_key: str) -> AuthenticatedUser | None:
        """`authenticate` from the cache alone; None if the email is not cached."""
        return self.authenticator.authenticate_cached(email, api_key)

    async def authenticate(self, email: str, api_key: str) -> AuthenticatedUser:
        """The user whose email and API key these are; a warm cache needs no database."""
        return await self.authenticator.authenticate(email, api_key)

    async def register(self, user: AuthenticatedUser, request: RegisterRequest) -> dict[str, Any]:
        """Create a queue and return it with the state snapshot it starts from."""
        return await self.registrar.register(user, request)

    # -- long-poll ------------------------------------------------------------------------

    def _answer(self, queue_id: str, queue: EventQueue, now: float) -> PollAnswer:
        """Hand out what the queue holds now: its durable events and its ephemeral ones."""
        self.metrics.handed_out(queue.contents())
        durable = len(queue)
        events = queue.take_answer(now)
        return PollAnswer(queue_id, events, ephemeral=len(events) > durable)

    async def get_events(
        self,
        user: AuthenticatedUser,
        queue_id: str,
        last_event_id: int | None,
        dont_block: bool,
        waiter: asyncio.Future[WakeReason] | None = None,
    ) -> PollAnswer:
        """Acknowledge up to `last_event_id`, then answer with events or wait for them.

        `waiter`, if given, is the future this poll waits on; the caller keeps it to
        end the wait itself (`cancel_wait`) when its connection closes.

        Invariants:

        * Acknowledgement: the acknowledged entry's (seq, id) becomes the checkpoint and
          every entry up to it is pruned, never more, so a queue rebuilt from its
          checkpoint (`server.engine.activation`) hands out again, with the same ids,
          exactly what was not acknowledged. Every poll marks the queue dirty; the
          checkpoint and activity time are written behind (`Maintenance`).
        * One waiting poll per queue: a newer poll answers the parked one first
          (`Wake.REPLACED`); a closed connection frees the slot (`cancel_wait`).
        * A heartbeat is never stored and carries an id already handed out (for a
          moved queue, already acknowledged), so acknowledging it skips no event.
        * Ephemeral events (typing) take no id either: each carries the newest durable
          id of its queue when it arrived, comes once, in arrival order among the
          durable events of the answer, and is then forgotten (`EventQueue.take_answer`).
          A poll that finds only ephemeral events is answered at once with them.
        * The hot path (the caller's warm queue) awaits nothing before it answers or
          parks, so a warm poll costs no database work.
        """
        live = self.live.get(queue_id)
        if live is None or live.state is not QueueState.WARM or live.user_id != user.id:
            # Not the hot path (a warm queue of the caller's): build it, or refuse.
            live = await self.activator.live_queue_for(user, queue_id)
        client = live.client
        if client is None:  # cannot happen: a warm queue has its data
            raise BadEventQueueId(queue_id)
        now = self.clock()
        client.touch(now)
        queue = client.queue
        checkpoint = None
        if last_event_id is not None:
            try:
                queue.check_last_event_id(last_event_id)
            except BadLastEventId as error:
                raise BadRequest(str(error)) from None
            checkpoint = queue.checkpoint_after_ack(last_event_id)
            queue.prune(last_event_id)
        self.live.acknowledge(live, checkpoint)
        if dont_block or queue.has_pending(now):
            return self._answer(queue_id, queue, now)

        if client.waiter is not None:
            self.live.wake(client, Wake.REPLACED)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        client.waiter = waiter
        self._polls_in_flight += 1
        self._no_polls.clear()
        # A timer that resolves the waiter itself: cheaper on this hot path than wrapping
        # the wait in asyncio.timeout and a shield (measured: ~10% of a poll's CPU).
        heartbeat_timer = asyncio.get_running_loop().call_later(
            random.uniform(*self.heartbeat_secs), _resolve_wait, waiter, Wake.HEARTBEAT
        )
        try:
            await waiter
        finally:
            heartbeat_timer.cancel()
            if client.waiter is waiter:
                client.waiter = None
            client.touch(self.clock())
            self._polls_in_flight -= 1
            if self._polls_in_flight == 0:
                self._no_polls.set()
        if live.state is QueueState.DROPPED:
            raise self.activator.refusal(live.drop_cause, queue_id)
        if live.state is QueueState.MOVED:
            # Another shard holds the queue now: hand out nothing from this stale copy.
            # A heartbeat with the newest id the client acknowledged makes it poll again,
            # which reaches the holder (`docs/architecture.md` §10).
            beat_id = queue.newest_event_id - len(queue)
        elif queue.has_pending(now := self.clock()):
            return self._answer(queue_id, queue, now)
        else:
            # A heartbeat is not stored: it carries the newest id already handed out, so
            # acknowledging it never skips a real event (docs/architecture.md §5).
            beat_id = queue.newest_event_id
        return PollAnswer(queue_id, [b'{"type":"heartbeat","id":%d}' % beat_id], heartbeat=True)

    def cancel_wait(self, queue_id: str, waiter_owner: object) -> None:
        """The HTTP connection of a waiting poll closed: free its slot."""
        client = self.live.registry.get(queue_id)
        if client is not None and client.waiter is waiter_owner:
            self.live.wake(client, Wake.CLOSED)

    async def delete_queue(self, user: AuthenticatedUser, queue_id: str) -> None:
        """Delete the caller's queue (`DELETE /events`); durable before it answers."""
        live = await self.activator.live_queue_for(user, queue_id)
        self.live.drop(live, DropCause.DELETED)
        await self.maintenance.delete_dropped()

    # -- admin views ----------------------------------------------------------------------

    def summaries(self, realm_id: int | None = None) -> list[dict[str, Any]]:
        """Every warm queue (of one realm), for `eventq queues`."""
        now = self.clock()
        registry = self.live.registry
        clients = registry.for_realm(realm_id) if realm_id is not None else list(registry)
        return [client.to_summary(now) for client in clients]

    def delivery_status(self, realm_id: int) -> dict[str, Any]:
        """How the consumer is doing for one realm, for the admin views."""
        return self.consumer.status(realm_id)
