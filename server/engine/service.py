"""The event service: what the handlers call (register, long-poll, delete) and the
composition of the parts that keep queues fed.

The parts, each in its own module:

* `server.engine.live_queues` — the queues in memory and each queue's lifecycle;
* `server.engine.consumer` — routes committed outbox rows to them, realm by realm, in order;
* `server.engine.wakeup` — tells the consumer that rows were committed (LISTEN or a watcher);
* `server.engine.maintenance` — checkpoints, deletions, expiry, eviction, outbox pruning;
* `server.engine.database_threads` — runs blocking database work off the event loop.

Queues are a cache. A queue's durable descriptor records its filter and a checkpoint
(outbox seq, event id); replaying the outbox after the checkpoint through the same
filter reproduces the same event IDs (`queues.queue`). So `register` writes the
descriptor and then *activates* the queue, and a queue missing from memory (evicted,
or after a restart) is activated the same way on its first poll: `_catch_up` replays
the owner's outbox rows up to what the consumer has routed and the queue joins the
registry with no await in between, so the consumer's next row is the queue's next row.

Deactivation. A queue is claimed in memory (`LiveQueues.begin_activation`) *before*
the snapshot that checks its owner is active; a deactivation committed after that
snapshot is routed later and finds the queue (activating or warm) to cut off, and one
committed before it is seen by the check. Either way no queue of a deactivated user
outlives the cut-off.

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import select

from models.database import Database
from models.descriptors import DescriptorRecord, HeldQueue, load_descriptor
from models.messages import EventNarrow, NarrowTerm
from models.outbox import StoredEvent, outbox_pruned_seq, read_user_events, state_position
from models.ownership import (
    DEFAULT_SHARD_NAME,
    MAX_CLAIM_TRIES,
    Claim,
    ClaimContended,
    ShardView,
    announce_shard,
    check_shard_name,
    claim_descriptor,
)
from models.state import STATE_EVENT_TYPES, RealmState
from models.tables import Realm, UserProfile
from queues.descriptor import (
    ClientDescriptor,
    LegacyClientRule,
    clamp_lifespan,
    parse_user_agent,
    uses_legacy_deactivation,
)
from queues.queue import BadLastEventId, EventQueue, QueueOverflow
from queues.registry import QueueRegistry
from queues.types import Capabilities
from server.engine.abuse import QUEUE_CAP_DROP, REGISTER_SHED, AbuseMonitor
from server.engine.consumer import OUTBOX_BATCH_SIZE, OutboxConsumer, shared_event
from server.engine.credentials import Credentials, CredentialsCache, match_key, normalize_email
from server.engine.database_threads import DatabaseThreads
from server.engine.descriptor_writer import DescriptorWriter
from server.engine.errors import (
    BadEventQueueId,
    BadRequest,
    InvalidApiKey,
    QueueMoving,
    RateLimited,
    UserDeactivated,
)
from server.engine.live_queues import (
    DropCause,
    LiveQueue,
    LiveQueues,
    QueueDropped,
    QueueMoved,
    QueueState,
    Wake,
    WakeReason,
)
from server.engine.maintenance import DEFAULT_OUTBOX_MIN_AGE_SECS, SHARD_HEARTBEAT_SECS, Maintenance
from server.engine.metrics import DROPPED_QUEUE, EXPIRED_QUEUE, UNKNOWN_QUEUE, ServiceMetrics
from server.engine.quotas import KeyedLock
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
# Registers being served at once. Each costs about a millisecond of CPU and a place in
# a descriptor group (more when the realm's state must be read again); past this many
# more are shed with 429 and a Retry-After instead of waiting in line, so a reconnect
# storm degrades into retries spread over a few seconds rather than into timeouts.
MAX_REGISTERS_IN_FLIGHT = 256
# A shed register is told to come back after a random 1-3 s, so the retries spread out.
SHED_RETRY_AFTER_SECS = (1.0, 3.0)
# A poll that finds its queue half-built by another poll whose build then failed on a
# transient error, or claimed by another shard meanwhile, builds (claims) it itself; past
# this many tries it gives up.
MAX_ACTIVATION_TRIES = 3


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """The caller, as authentication found it."""

    id: int
    realm_id: int
    email: str
    role: int


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """The parsed parameters of `POST /register`."""

    event_types: frozenset[str] | None
    fetch_event_types: frozenset[str] | None
    capabilities: Capabilities
    include_subscribers: bool
    queue_lifespan_secs: int | None
    user_agent: str | None
    # The `narrow` (for `message` events only) and `apply_markdown` parameters.
    narrow: tuple[NarrowTerm, ...] = ()
    apply_markdown: bool = True


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """What a long-poll answers: encoded events (or one heartbeat) for a queue."""

    queue_id: str
    events: list[bytes]
    heartbeat: bool = False


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


def _authenticated(candidates: tuple[Credentials, ...], api_key: str) -> AuthenticatedUser:
    """The candidate whose key this is (compared in constant time), if active."""
    matched = match_key(candidates, api_key)
    if matched is None:
        raise InvalidApiKey()
    if not matched.is_active:
        raise UserDeactivated()
    return AuthenticatedUser(matched.user_id, matched.realm_id, matched.email, matched.role)


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
        # None: no cap (benchmarks and tests that register thousands of queues for one
        # user in-process); `eventq serve` passes EVENTQ_MAX_QUEUES_PER_USER.
        self.max_queues_per_user = max_queues_per_user
        # Refusals and quota drops of this process (server.engine.abuse), shared with the HTTP
        # layer's rate limits.
        self.abuse = abuse if abuse is not None else AbuseMonitor()
        self._register_locks = KeyedLock()
        self.heartbeat_secs = heartbeat_secs
        self.legacy_rules = tuple(legacy_rules)
        self.clock = clock
        self.threads = DatabaseThreads()
        # What the metrics count beyond the parts' own counters (`server.engine.metrics`).
        self.metrics = ServiceMetrics()
        self.live = LiveQueues()
        self.credentials = CredentialsCache()
        # Normalized email -> the database read of its credentials in flight.
        self._credential_reads: dict[str, asyncio.Future[tuple[Credentials, ...]]] = {}
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
        self._wakeup: WakeupSource = wakeup_source_for(db)
        self._consumer_task: asyncio.Task[None] | None = None
        self._polls_in_flight = 0
        self._registers_in_flight = 0
        # realm id -> (the seq it was read at, its register state): `_read_realm_state`.
        self._realm_states: dict[int, tuple[int, RealmState]] = {}
        # The next state read of a realm, not started yet, that registers join; one read
        # per realm runs at a time (`_read_realm_state`).
        self._upcoming_state_reads: dict[int, asyncio.Future[tuple[int, RealmState]]] = {}
        self._state_read_locks = KeyedLock()
        self._state_read_tasks: set[asyncio.Task[None]] = set()
        self.registers_shed = 0
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
        self._wakeup.start(loop, self.consumer.wake)
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

    # -- authentication -------------------------------------------------------------------

    def authenticate_cached(self, email: str, api_key: str) -> AuthenticatedUser | None:
        """`authenticate` from the cache alone; None if the email is not cached.

        Synchronous, so that the hot path (a poll of a warm queue) awaits no coroutine.
        """
        candidates = self.credentials.get(normalize_email(email))
        if candidates is None:
            return None
        return _authenticated(candidates, api_key)

    async def authenticate(self, email: str, api_key: str) -> AuthenticatedUser:
        """The user whose email and API key these are; a warm cache needs no database."""
        normalized = normalize_email(email)
        candidates = self.credentials.get(normalized)
        if candidates is None:
            # One read per email at a time: when a busy user's entry expires, their
            # many polls arriving together share one read instead of one each.
            reading = self._credential_reads.get(normalized)
            if reading is None:
                reading = asyncio.ensure_future(self._load_credentials(normalized))
                self._credential_reads[normalized] = reading
                reading.add_done_callback(
                    lambda done: (
                        self._credential_reads.pop(normalized, None)
                        if self._credential_reads.get(normalized) is done
                        else None
                    )
                )
            candidates = await asyncio.shield(reading)
        return _authenticated(candidates, api_key)

    async def _load_credentials(self, email: str) -> tuple[Credentials, ...]:
        generation = self.credentials.generation
        candidates = await self.threads.run(self._read_credentials, email)
        self.credentials.put(email, candidates, generation)
        return candidates

    def _read_credentials(self, email: str) -> tuple[Credentials, ...]:
        with self.db.snapshot() as session:
            rows = session.execute(
                select(
                    UserProfile.id,
                    UserProfile.realm_id,
                    UserProfile.email,
                    UserProfile.role,
                    UserProfile.api_key,
                    UserProfile.is_active,
                ).where(UserProfile.email == email)
            ).all()
        return tuple(
            Credentials(int(uid), int(realm), mail, int(role), key.encode(), bool(active))
            for uid, realm, mail, role, key, active in rows
        )

    # -- register -------------------------------------------------------------------------

    async def register(self, user: AuthenticatedUser, request: RegisterRequest) -> dict[str, Any]:
        """Create a queue and return it with the state snapshot it starts from.

        With a cap on queues per user, one user's registers run one at a time, each
        counting the user's descriptors in its snapshot and, once its own queue is live,
        dropping the least recently used ones past the cap (`server.engine.quotas`).
        """
        if self._registers_in_flight >= MAX_REGISTERS_IN_FLIGHT:
            # A reconnect storm: answering later ones at once with a time to come back
            # (the `zulip` client honours it) beats making them all wait, and never 5xx.
            retry_after = random.uniform(*SHED_RETRY_AFTER_SECS)
            self.registers_shed += 1
            self.abuse.record(
                REGISTER_SHED, "server", f"{self._registers_in_flight} registers in flight"
            )
            raise RateLimited(retry_after, {"Retry-After": str(math.ceil(retry_after))})
        self._registers_in_flight += 1
        try:
            if self.max_queues_per_user is None:
                return await self._register(user, request)
            async with self._register_locks.hold(user.id):
                return await self._register(user, request)
        finally:
            self._registers_in_flight -= 1

    async def _register(self, user: AuthenticatedUser, request: RegisterRequest) -> dict[str, Any]:
        client_name, client_version = parse_user_agent(request.user_agent)
        lifespan = clamp_lifespan(request.queue_lifespan_secs)
        legacy = uses_legacy_deactivation(
            request.capabilities, client_name, client_version, self.legacy_rules
        )
        fetch = request.fetch_event_types
        if fetch is None:
            fetch = request.event_types if request.event_types is not None else STATE_EVENT_TYPES
        now = self.clock()
        # The shard's name first, so a proxy can send the queue's polls here.
        queue_id = f"{self.shard}.{secrets.token_hex(16)}"

        def descriptor_at(seq: int) -> DescriptorRecord:
            return DescriptorRecord(
                queue_id=queue_id,
                realm_id=user.realm_id,
                user_id=user.id,
                event_types=tuple(sorted(request.event_types))
                if request.event_types is not None
                else None,
                capabilities=request.capabilities.to_dict(),
                client_name=client_name,
                client_version=client_version,
                legacy_deactivation=legacy,
                lifespan_secs=lifespan,
                last_active=now,
                checkpoint_seq=seq,
                checkpoint_event_id=-1,
                narrow=request.narrow,
                apply_markdown=request.apply_markdown,
                owner_shard=self.shard,
                owner_epoch=1,
            )

        # What the kept state of the realm says, decided in the descriptor's transaction.
        found: list[tuple[int, RealmState]] = []

        def at_position(seq: int, state_seq: int) -> DescriptorRecord | None:
            # On a database thread, in the descriptor group's transaction: if no event
            # that may change the state followed the kept read, the kept state holds at
            # the later of the two positions, and the queue starts there. Else, or for a
            # user the state shows inactive, nothing is written here (see below).
            kept = self._realm_states.get(user.realm_id)
            if kept is None or state_seq > kept[0]:
                return None
            start = max(seq, kept[0])
            found.append((start, kept[1]))
            return descriptor_at(start) if kept[1].is_active(user.id) else None

        with_held = self.max_queues_per_user is not None
        # Claimed before the state is read: a deactivation committed after the read
        # finds this queue.
        live = self.live.begin_activation(queue_id, user.realm_id, user.id)
        try:
            # Durable before the answer: the client may next poll another process.
            record, held = await self.descriptors.create_at_position(
                user.realm_id, user.id, at_position, with_held
            )
            if found:
                seq, realm_state = found[0]
            else:
                # The realm's state changed since it was read (or never was): read it.
                seq, realm_state = await self._read_realm_state(user.realm_id)
            if not realm_state.is_active(user.id):
                raise UserDeactivated()
            if record is None:
                record = descriptor_at(seq)
                held = await self.descriptors.create(record, with_held)
            state = realm_state.initial_state(
                user.id, fetch & STATE_EVENT_TYPES, request.include_subscribers
            )
            self._load_record(live, record)
            await self._catch_up(live, check_owner_active=False)
            self.live.finish_activation(live)
        except BaseException as error:
            # The client never learns this queue id: nothing may be left behind.
            self.live.drop(live, DropCause.ACTIVATION_FAILED)
            self._request_deletions()
            if isinstance(error, QueueDropped):
                raise self._refusal(error.cause, queue_id) from None
            raise
        log.info(
            "registered queue %s for user %d (%s %s, %s sequence, lifespan %ds)",
            queue_id,
            user.id,
            client_name,
            client_version or "",
            "legacy" if legacy else "full",
            lifespan,
        )
        if self.max_queues_per_user is not None:
            await self._drop_past_queue_cap(user, held, self.max_queues_per_user)
        return {"queue_id": queue_id, "last_event_id": -1, **state}

    async def _drop_past_queue_cap(
        self, user: AuthenticatedUser, held: list[HeldQueue], cap: int
    ) -> None:
        """Drop the user's least recently used queues (of `held`, those it had before
        this register) so that with the new one it holds at most `cap`.

        Through the one removal path (`LiveQueues.drop`, then the durable deletion, as
        `delete_queue`), so a dropped queue's poll is answered BAD_EVENT_QUEUE_ID and
        no poll can rebuild it; a cold queue is claimed in memory to be dropped.
        """
        now = self.clock()
        candidates: list[tuple[float, str]] = []
        epochs = {queue_id: epoch for queue_id, _, epoch in held}
        for queue_id, stored_last_active, _ in held:
            if self.live.is_tombstoned(queue_id):
                continue  # already on its way out
            last_active = stored_last_active
            live = self.live.get(queue_id)
            if live is not None and live.client is not None:
                # Memory is newer than the descriptor (activity is written behind), and
                # a queue with a parked poll is in use right now.
                waiting = live.client.waiter is not None
                last_active = now if waiting else max(last_active, live.client.last_active)
            candidates.append((last_active, queue_id))
        excess = len(candidates) - (cap - 1)
        if excess <= 0:
            return
        candidates.sort()
        for last_active, queue_id in candidates[:excess]:
            live = self.live.get(queue_id)
            if live is None:
                if self.live.is_tombstoned(queue_id):
                    continue
                live = self.live.begin_activation(queue_id, user.realm_id, user.id)
                live.epoch = epochs[queue_id]  # its deletion is fenced by the epoch read
            # The longest idle of the user's queues makes room for the new one.
            self.live.drop(live, DropCause.QUEUE_CAP)
            self.abuse.record(
                QUEUE_CAP_DROP,
                f"user {user.id}",
                f"at its cap of {cap} queues; dropped {queue_id}, idle {now - last_active:.0f}s",
            )
        try:
            await self.maintenance.delete_dropped()
        except Exception as error:
            # The queues are gone already (tombstoned); the next sweep deletes the rows.
            log.warning("could not delete queues dropped for the cap yet: %s", error)
            self._request_deletions()

    async def _read_realm_state(self, realm_id: int) -> tuple[int, RealmState]:
        """The realm's register state and the outbox position it holds at, read in one
        snapshot (three statements), and kept for the registers that follow.

        A register reuses the kept state while no event that may change it
        (`realm.state_seq`) followed its read, which the descriptor group's transaction
        checks (`_register`), so a register usually costs no read of its own. The kept
        state is read-only (`RealmState`).

        Registers that need a read at once share one: each joins the realm's next read
        that has not started yet (one that started before the caller claimed its queue
        could miss a deactivation committed in between), and a realm has at most one
        read running, so a reconnect storm into a large realm reads it once or twice,
        not once per register.
        """
        upcoming = self._upcoming_state_reads.get(realm_id)
        if upcoming is None:
            upcoming = asyncio.get_running_loop().create_future()
            self._upcoming_state_reads[realm_id] = upcoming
            task = asyncio.get_running_loop().create_task(self._state_read(realm_id, upcoming))
            self._state_read_tasks.add(task)
            task.add_done_callback(self._state_read_tasks.discard)
        return await asyncio.shield(upcoming)

    async def _state_read(
        self, realm_id: int, upcoming: asyncio.Future[tuple[int, RealmState]]
    ) -> None:
        """Run the realm's next state read once the one running (if any) is done."""
        try:
            async with self._state_read_locks.hold(realm_id):
                # Started now: later callers need a read that starts after their claims.
                if self._upcoming_state_reads.get(realm_id) is upcoming:
                    del self._upcoming_state_reads[realm_id]
                read_at, state = await self.threads.run(self._read_state_snapshot, realm_id)
        except Exception as error:
            upcoming.set_exception(error)
            return
        except BaseException:
            upcoming.cancel()  # the process is stopping
            raise
        finally:
            # Never leave a finished read for later callers to join.
            if self._upcoming_state_reads.get(realm_id) is upcoming:
                del self._upcoming_state_reads[realm_id]
        kept = self._realm_states.get(realm_id)
        if kept is None or kept[0] < read_at:
            self._realm_states[realm_id] = (read_at, state)
        upcoming.set_result((read_at, state))

    def _read_state_snapshot(self, realm_id: int) -> tuple[int, RealmState]:
        with self.db.snapshot() as session:
            position = state_position(session, realm_id)
            if position is None:
                raise UserDeactivated()  # the realm is gone
            # Built here, on the database thread: a large realm's user lists would
            # otherwise be built on the event loop by the first register that uses them.
            return position[0], RealmState.read(session, realm_id).build_shared()

    # -- activation (register, and cold queues on first poll) ---------------------------

    def _load_record(self, live: LiveQueue, record: DescriptorRecord) -> None:
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

    async def _catch_up(
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

    async def _live_queue_for(self, user: AuthenticatedUser, queue_id: str) -> LiveQueue:
        """The caller's warm queue, rebuilt from its descriptor if it is not in memory.

        Another user's queue, an unknown one and an expired one all raise the same error.
        """
        moved = False
        for _ in range(MAX_ACTIVATION_TRIES):
            live = self.live.get(queue_id)
            if live is None:
                if self.live.is_tombstoned(queue_id):
                    raise self._bad_queue_id(queue_id, DROPPED_QUEUE)
                live = await self._rebuild(user, queue_id)
            if live.state is QueueState.ACTIVATING and live.activation is not None:
                # Another poll is building it: share that build.
                await asyncio.shield(live.activation)
            if live.user_id != user.id:
                raise self._bad_queue_id(queue_id, UNKNOWN_QUEUE)
            if live.state is QueueState.WARM:
                return live
            if live.state is QueueState.DROPPED:
                raise self._refusal(live.drop_cause, queue_id)
            # The other poll's build failed and left the queue cold, or another shard
            # claimed it meanwhile: build (claim) it ourselves.
            moved = live.state is QueueState.MOVED
        if moved:
            raise QueueMoving(queue_id)
        raise self._bad_queue_id(queue_id, DropCause.ACTIVATION_FAILED.value)

    def _refusal(self, cause: DropCause | None, queue_id: str) -> Exception:
        """What a poll of a queue dropped for `cause` is answered with."""
        if cause is DropCause.DEACTIVATED:
            return UserDeactivated()
        return self._bad_queue_id(queue_id, (cause or DropCause.ACTIVATION_FAILED).value)

    def _bad_queue_id(self, queue_id: str, cause: str) -> BadEventQueueId:
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
            raise self._bad_queue_id(queue_id, UNKNOWN_QUEUE)
        if now >= record.last_active + record.lifespan_secs:
            raise self._bad_queue_id(queue_id, EXPIRED_QUEUE)
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
            raise self._bad_queue_id(queue_id, DROPPED_QUEUE)
        live = self.live.begin_activation(queue_id, record.realm_id, record.user_id)
        self._load_record(live, record)
        try:
            await self._catch_up(
                live, check_owner_active=True, at_least=claim.realm_seq if claim else 0
            )
            self.live.finish_activation(live)
        except QueueDropped:
            self._request_deletions()
        except QueueMoved:
            pass  # claimed by another shard meanwhile: the caller decides what to do
        except QueueOverflow:
            self.live.drop(live, DropCause.OVERFLOWED)
            self._request_deletions()
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

    # -- long-poll ------------------------------------------------------------------------

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
        """
        live = self.live.get(queue_id)
        if live is None or live.state is not QueueState.WARM or live.user_id != user.id:
            # Not the hot path (a warm queue of the caller's): build it, or refuse.
            live = await self._live_queue_for(user, queue_id)
        client = live.client
        if client is None:  # cannot happen: a warm queue has its data
            raise BadEventQueueId(queue_id)
        client.touch(self.clock())
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
        if not queue.empty() or dont_block:
            self.metrics.handed_out(queue.contents())
            return PollAnswer(queue_id, queue.encoded_events())

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
            raise self._refusal(live.drop_cause, queue_id)
        if live.state is QueueState.MOVED:
            # Another shard holds the queue now: hand out nothing from this stale copy.
            # A heartbeat with the newest id the client acknowledged makes it poll again,
            # which reaches the holder (`docs/architecture.md` §10).
            beat_id = queue.newest_event_id - len(queue)
        elif not queue.empty():
            self.metrics.handed_out(queue.contents())
            return PollAnswer(queue_id, queue.encoded_events())
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
        live = await self._live_queue_for(user, queue_id)
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
