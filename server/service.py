"""The event service: live queues, register, long-polls, and the outbox consumer.

Runs on the Tornado (asyncio) event loop; not thread-safe. Every database call goes
through `EventService.run_db`, a thread pool, so the loop never blocks on SQL.

Delivery. The consumer reads each realm's outbox strictly in sequence order and routes
every row through `queues.routing.route` to the queues of its recipients. PostgreSQL
wakes it with NOTIFY (a listener thread); on SQLite it polls the realm counters every
`SQLITE_POLL_INTERVAL_SECS`. `_delivered[realm]` is the newest sequence number routed.

Queues are a cache. A queue's durable descriptor records its filter and a checkpoint
(outbox seq, event id); replaying the outbox after the checkpoint through the same
filter reproduces the same event IDs (`queues.queue`). So `register` only writes the
descriptor and then *activates* the queue, and a queue missing from memory (after a
restart) is activated the same way on its first poll: `_activate` replays the outbox
from the queue's position up to `_delivered[realm]` and adds the queue to the registry
with no await in between, so the consumer's next row is the queue's next row.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import psycopg
from sqlalchemy import select
from sqlalchemy.engine import make_url

from models.database import SQLITE_BUSY_TIMEOUT_SECS, Database
from models.descriptors import (
    CheckpointUpdate,
    DescriptorRecord,
    create_descriptor,
    delete_descriptors,
    delete_descriptors_behind,
    delete_expired_descriptors,
    delete_user_descriptors,
    load_descriptor,
    prunable_seq,
    save_checkpoints,
)
from models.outbox import (
    NOTIFY_CHANNEL,
    StoredEvent,
    outbox_pruned_seq,
    prune_outbox,
    read_events,
    read_user_events,
    realm_positions,
)
from models.state import STATE_EVENT_TYPES, fetch_initial_state
from models.tables import Realm, UserProfile
from queues.descriptor import (
    ClientDescriptor,
    LegacyClientRule,
    clamp_lifespan,
    parse_user_agent,
    uses_legacy_deactivation,
)
from queues.gc import GC_INTERVAL_SECS, collect_garbage
from queues.queue import BadLastEventId, EventQueue, QueueOverflow
from queues.registry import QueueRegistry
from queues.routing import route
from queues.types import Capabilities, SharedEvent
from server.errors import BadEventQueueId, BadRequest, UserDeactivated

log = logging.getLogger("eventq.service")

P = ParamSpec("P")
R = TypeVar("R")

# Zulip's clients time a long-poll out after 90 s; answering with a heartbeat 45-55 s
# in (random per connection, so parked polls do not all wake together) stays well
# inside that and keeps proxies from closing idle connections.
HEARTBEAT_MIN_SECS = 45.0
HEARTBEAT_MAX_SECS = 55.0
# SQLite has no NOTIFY: a watcher thread reads `PRAGMA data_version` (a counter SQLite
# bumps when another connection commits) every 5 ms and wakes the consumer when it
# changes. The pragma touches no table, so idling costs little CPU (see README), and
# the median delivery delay stays under the interval plus one request.
SQLITE_POLL_INTERVAL_SECS = 0.005
# NOTIFY (PostgreSQL) and the watcher (SQLite) wake the consumer; this slow poll only
# covers a wake-up lost while the listener reconnected.
SAFETY_POLL_SECS = 1.0
# Acknowledged positions are written behind, batched: a stale checkpoint only means a
# longer replay after a crash, never a lost or renumbered event.
CHECKPOINT_FLUSH_INTERVAL_SECS = 1.0
# Rows read per outbox query: bounds the memory of one catch-up step.
OUTBOX_BATCH_SIZE = 1000
# Database threads: enough for concurrent registers and polls of cold queues while
# the consumer reads; SQLite serializes writers anyway.
DATABASE_THREADS = 8
# After an error (database down), the consumer and the listener retry this often.
RECONNECT_DELAY_SECS = 1.0
# A queue with no poll for this long leaves memory (its descriptor stays); its next poll
# rebuilds it from the outbox. A minute keeps active clients, which poll at least every
# 55 s, in memory, while idle ones cost nothing.
COLD_QUEUE_IDLE_SECS = 60.0
# Outbox rows stay at least this long even when no queue needs them: a short audit trail
# of what every action wrote.
OUTBOX_MIN_RETENTION_SECS = 3600.0
# At most this many rows per realm are kept for queues that fall behind: about a week of
# a busy realm. A queue further behind is dropped and its client re-registers.
OUTBOX_MAX_EVENTS_PER_REALM = 1_000_000
# Zulip's feature level whose deactivation sequence eventq implements (DESIGN.md §4).
ZULIP_FEATURE_LEVEL = 377
ZULIP_VERSION = "11.0-eventq"


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


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """What a long-poll answers: encoded events (or one heartbeat) for a queue."""

    queue_id: str
    events: list[bytes]
    heartbeat: bool = False


# What ends a waiting poll (the waiter future's result).
WAKE_EVENTS = "events"
WAKE_REPLACED = "replaced"
WAKE_DROPPED = "dropped"
WAKE_DEACTIVATED = "deactivated"
WAKE_SHUTDOWN = "shutdown"
WAKE_CLOSED = "closed"


def _is_deactivation(event: dict[str, Any]) -> int | None:
    """The user id if `event` is a `realm_user` deactivation, else None."""
    if event.get("type") == "realm_user" and event.get("op") == "update":
        person = event.get("person", {})
        if person.get("is_active") is False:
            return int(person["user_id"])
    return None


class EventService:
    """Live queues of every realm this process serves, and their delivery."""

    def __init__(
        self,
        db: Database,
        *,
        legacy_rules: Iterable[LegacyClientRule] = (),
        clock: Callable[[], float] = time.time,
        heartbeat_secs: tuple[float, float] = (HEARTBEAT_MIN_SECS, HEARTBEAT_MAX_SECS),
    ) -> None:
        self.db = db
        self.heartbeat_secs = heartbeat_secs
        self.legacy_rules = tuple(legacy_rules)
        self.clock = clock
        self.registry = QueueRegistry()
        self._executor = ThreadPoolExecutor(DATABASE_THREADS, thread_name_prefix="eventq-db")
        self._delivered: dict[int, int] = {}
        self._checkpoints: dict[str, tuple[int, int]] = {}
        self._dirty: set[str] = set()
        self._dropped: set[str] = set()
        self._activating: dict[str, asyncio.Future[ClientDescriptor]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[Any]] = set()
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None
        self._polls_in_flight = 0
        self._no_polls = asyncio.Event()
        self._no_polls.set()
        self.started = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering from the realms' current positions (queues load lazily)."""
        self._delivered = await self.run_db(self._read_positions)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._consume_forever(), name="outbox-consumer"),
            loop.create_task(self._periodic(GC_INTERVAL_SECS, self.collect_garbage), name="gc"),
            loop.create_task(
                self._periodic(CHECKPOINT_FLUSH_INTERVAL_SECS, self.flush_checkpoints),
                name="checkpoints",
            ),
        ]
        watcher = self._listen_forever if self.db.is_postgresql else self._watch_sqlite_forever
        self._listener = threading.Thread(
            target=watcher, args=(loop,), name="eventq-outbox-watch", daemon=True
        )
        self._listener.start()
        self.started = True
        log.info("event service started; realms at %s", self._delivered)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Answer every waiting poll, save every checkpoint, stop the background work.

        Queues stay durable: after a restart clients poll the same `queue_id` with the
        same `last_event_id` and miss nothing.
        """
        self._stopping.set()
        for client in list(self.registry):
            self._wake_client(client, WAKE_SHUTDOWN)
        try:
            async with asyncio.timeout(drain_timeout):
                await self._no_polls.wait()
        except TimeoutError:
            log.warning("%d polls still open at shutdown", self._polls_in_flight)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._pending, return_exceptions=True)
        await self.flush_checkpoints()
        self._executor.shutdown(wait=True)
        log.info("event service stopped; %d queues kept for the next start", len(self.registry))

    async def run_db(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking database work on the thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(*args, **kwargs))

    def _read_positions(self) -> dict[int, int]:
        with self.db.snapshot() as session:
            return realm_positions(session)

    async def _periodic(self, interval: float, work: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)  # a timer, not a wait for a condition
            try:
                await work()
            except Exception:
                log.exception("periodic %s failed; retrying next interval", work.__name__)

    # -- register -------------------------------------------------------------------------

    async def register(self, user: AuthenticatedUser, request: RegisterRequest) -> dict[str, Any]:
        """Create a queue and return it with the state snapshot it starts from."""
        client_name, client_version = parse_user_agent(request.user_agent)
        lifespan = clamp_lifespan(request.queue_lifespan_secs)
        legacy = uses_legacy_deactivation(
            request.capabilities, client_name, client_version, self.legacy_rules
        )
        fetch = request.fetch_event_types
        if fetch is None:
            fetch = request.event_types if request.event_types is not None else STATE_EVENT_TYPES
        now = self.clock()
        queue_id = secrets.token_hex(16)

        def snapshot_and_descriptor() -> tuple[dict[str, Any], int]:
            # One snapshot transaction: the state and the outbox position agree.
            with self.db.snapshot() as session:
                profile = session.get(UserProfile, user.id)
                if profile is None or not profile.is_active:
                    raise UserDeactivated()
                state = fetch_initial_state(
                    session, profile, fetch & STATE_EVENT_TYPES, request.include_subscribers
                )
                seq = session.execute(
                    select(Realm.last_event_seq).where(Realm.id == user.realm_id)
                ).scalar_one()
            record = DescriptorRecord(
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
                checkpoint_seq=int(seq),
                checkpoint_event_id=-1,
            )
            with self.db.write() as session:
                create_descriptor(session, record)
            return state, int(seq)

        state, seq = await self.run_db(snapshot_and_descriptor)
        client = ClientDescriptor(
            queue_id=queue_id,
            realm_id=user.realm_id,
            user_id=user.id,
            event_types=request.event_types,
            capabilities=request.capabilities,
            client_name=client_name,
            client_version=client_version,
            lifespan_secs=lifespan,
            now=now,
            queue=EventQueue(next_event_id=0, last_seq=seq),
            legacy_deactivation=legacy,
        )
        self._checkpoints[queue_id] = (seq, -1)
        await self._activate(client)
        log.info(
            "registered queue %s for user %d (%s %s, %s sequence, lifespan %ds)",
            queue_id,
            user.id,
            client_name,
            client_version or "",
            "legacy" if legacy else "full",
            lifespan,
        )
        return {"queue_id": queue_id, "last_event_id": -1, **state}

    # -- activation (register, and cold queues on first poll) ---------------------------

    async def _activate(self, client: ClientDescriptor) -> ClientDescriptor:
        """Replay the outbox into `client` up to what the consumer routed, then add it."""
        pending = self._activating.get(client.queue_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ClientDescriptor] = asyncio.get_running_loop().create_future()
        self._activating[client.queue_id] = future
        try:
            while True:
                target = self._delivered.get(client.realm_id)
                if target is None or client.queue.last_seq >= target:
                    break
                rows = await self.run_db(
                    self._read_user_outbox,
                    client.realm_id,
                    client.user_id,
                    client.queue.last_seq,
                    target,
                )
                for row in rows:
                    if row.seq > client.queue.last_seq:
                        client.deliver(self._shared(row))
                # A short page means nothing else up to `target` is addressed to this user.
                if len(rows) < OUTBOX_BATCH_SIZE and target > client.queue.last_seq:
                    client.queue.skip(target)
            # No await between the check above and this line: nothing can be missed.
            self.registry.add(client)
            future.set_result(client)
            return client
        except QueueOverflow:
            self._drop(client, "overflowed while catching up")
            future.set_exception(BadEventQueueId(client.queue_id))
            raise BadEventQueueId(client.queue_id) from None
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            del self._activating[client.queue_id]
            if future.done() and future.exception() is not None:
                future.exception()  # retrieved: no "never retrieved" warning

    def _read_user_outbox(
        self, realm_id: int, user_id: int, after: int, up_to: int
    ) -> list[StoredEvent]:
        with self.db.snapshot() as session:
            return read_user_events(session, realm_id, user_id, after, up_to, OUTBOX_BATCH_SIZE)

    def _read_outbox(
        self, realm_id: int, after: int, up_to: int | None, limit: int
    ) -> list[StoredEvent]:
        with self.db.snapshot() as session:
            return read_events(session, realm_id, after, up_to, limit)

    async def _client_for(self, user: AuthenticatedUser, queue_id: str) -> ClientDescriptor:
        """The caller's live queue, loading it from its descriptor if it is not in memory.

        Another user's queue, an unknown one and an expired one all raise the same error.
        """
        client = self.registry.get(queue_id)
        if client is None and queue_id not in self._dropped:
            pending = self._activating.get(queue_id)
            if pending is not None:
                client = await asyncio.shield(pending)
            else:
                record = await self.run_db(self._load_descriptor, queue_id)
                now = self.clock()
                if (
                    record is not None
                    and record.user_id == user.id
                    and now < record.last_active + record.lifespan_secs
                    and self.registry.get(queue_id) is None
                ):
                    client = await self._activate(self._client_from_record(record))
                else:
                    client = self.registry.get(queue_id)
        if client is None or client.user_id != user.id:
            raise BadEventQueueId(queue_id)
        return client

    def _load_descriptor(self, queue_id: str) -> DescriptorRecord | None:
        """The descriptor, or None when there is none or its history was pruned."""
        with self.db.snapshot() as session:
            record = load_descriptor(session, queue_id)
            if record is None:
                return None
            if record.checkpoint_seq < outbox_pruned_seq(session, record.realm_id):
                log.info(
                    "queue %s is behind the retained outbox; its client must re-register", queue_id
                )
                return None
            return record

    def _client_from_record(self, record: DescriptorRecord) -> ClientDescriptor:
        checkpoint_id = record.checkpoint_event_id
        self._checkpoints[record.queue_id] = (record.checkpoint_seq, checkpoint_id)
        return ClientDescriptor(
            queue_id=record.queue_id,
            realm_id=record.realm_id,
            user_id=record.user_id,
            event_types=frozenset(record.event_types) if record.event_types is not None else None,
            capabilities=Capabilities.from_client_capabilities(record.capabilities),
            client_name=record.client_name,
            client_version=record.client_version,
            lifespan_secs=record.lifespan_secs,
            now=record.last_active,
            queue=EventQueue(
                next_event_id=checkpoint_id + 1,
                last_seq=record.checkpoint_seq,
                newest_pruned_id=checkpoint_id if checkpoint_id >= 0 else None,
            ),
            legacy_deactivation=record.legacy_deactivation,
        )

    # -- long-poll ------------------------------------------------------------------------

    async def get_events(
        self,
        user: AuthenticatedUser,
        queue_id: str,
        last_event_id: int | None,
        dont_block: bool,
        waiter: asyncio.Future[str] | None = None,
    ) -> PollAnswer:
        """Acknowledge up to `last_event_id`, then answer with events or wait for them.

        `waiter`, if given, is the future this poll waits on; the caller keeps it to
        end the wait itself (`cancel_wait`) when its connection closes.
        """
        client = await self._client_for(user, queue_id)
        client.touch(self.clock())
        queue = client.queue
        if last_event_id is not None:
            try:
                queue.check_last_event_id(last_event_id)
            except BadLastEventId as error:
                raise BadRequest(str(error)) from None
            checkpoint = queue.checkpoint_after_ack(last_event_id)
            if checkpoint is not None:
                self._checkpoints[queue_id] = checkpoint
            queue.prune(last_event_id)
        self._dirty.add(queue_id)
        if not queue.empty() or dont_block:
            return PollAnswer(queue_id, queue.encoded_events())

        if client.waiter is not None:
            self._wake_client(client, WAKE_REPLACED)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
        client.waiter = waiter
        self._polls_in_flight += 1
        self._no_polls.clear()
        try:
            timeout = random.uniform(*self.heartbeat_secs)
            try:
                async with asyncio.timeout(timeout):
                    outcome = await asyncio.shield(waiter)
            except TimeoutError:
                outcome = WAKE_SHUTDOWN  # answered like a heartbeat
        finally:
            if client.waiter is waiter:
                client.waiter = None
            client.touch(self.clock())
            self._polls_in_flight -= 1
            if self._polls_in_flight == 0:
                self._no_polls.set()
        if outcome == WAKE_DEACTIVATED:
            raise UserDeactivated()
        if outcome == WAKE_DROPPED:
            raise BadEventQueueId(queue_id)
        if not queue.empty():
            return PollAnswer(queue_id, queue.encoded_events())
        # A heartbeat is not stored: it carries the newest id already handed out, so
        # acknowledging it never skips a real event (DESIGN.md §5).
        heartbeat = b'{"type":"heartbeat","id":%d}' % queue.newest_event_id
        return PollAnswer(queue_id, [heartbeat], heartbeat=True)

    def cancel_wait(self, queue_id: str, waiter_owner: object) -> None:
        """The HTTP connection of a waiting poll closed: free its slot."""
        client = self.registry.get(queue_id)
        if client is not None and client.waiter is waiter_owner:
            self._wake_client(client, WAKE_CLOSED)

    async def delete_queue(self, user: AuthenticatedUser, queue_id: str) -> None:
        """Delete the caller's queue (`DELETE /events`); durable before it answers."""
        client = await self._client_for(user, queue_id)
        self._drop(client, "deleted by its owner")
        await self._delete_descriptors([queue_id])

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` as a task the service holds until it ends (the loop keeps only weak
        references, and stop() waits for these)."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _wake_client(self, client: ClientDescriptor, outcome: str) -> None:
        waiter = client.waiter
        if isinstance(waiter, asyncio.Future) and not waiter.done():
            waiter.set_result(outcome)
        client.waiter = None

    def _drop(self, client: ClientDescriptor, why: str) -> None:
        """Remove a queue for good: from memory, and (in the background) its descriptor."""
        self.registry.remove(client.queue_id)
        self._wake_client(client, WAKE_DROPPED)
        self._forget([client.queue_id])
        log.info("queue %s of user %d dropped: %s", client.queue_id, client.user_id, why)

    def _forget(self, queue_ids: list[str]) -> None:
        for queue_id in queue_ids:
            self._dropped.add(queue_id)
            self._checkpoints.pop(queue_id, None)
            self._dirty.discard(queue_id)
        self._background(self._delete_descriptors(queue_ids))

    async def _delete_descriptors(self, queue_ids: list[str]) -> None:
        def work() -> None:
            with self.db.write() as session:
                delete_descriptors(session, queue_ids)

        try:
            await self.run_db(work)
            self._dropped.difference_update(queue_ids)
        except Exception:
            # Kept in _dropped, so the queue stays gone; the GC sweep deletes the row.
            log.exception("could not delete descriptors %s; the GC will", queue_ids)

    # -- the outbox consumer --------------------------------------------------------------

    def wake_consumer(self) -> None:
        """Ask the consumer to look for new outbox rows now."""
        self._wake.set()

    async def _consume_forever(self) -> None:
        while True:
            try:
                await self.drain_outbox()
            except Exception as error:
                log.warning("outbox consumer: %s; retrying in %ss", error, RECONNECT_DELAY_SECS)
                await asyncio.sleep(RECONNECT_DELAY_SECS)  # a back-off timer
                continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stop() sends when the wake-up lands in the same loop turn,
            # and the consumer would never exit.
            try:
                async with asyncio.timeout(SAFETY_POLL_SECS):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def drain_outbox(self) -> None:
        """Route every committed row not yet routed, realm by realm, in sequence order."""
        positions = await self.run_db(self._read_positions)
        for realm_id, newest in positions.items():
            delivered = self._delivered.setdefault(realm_id, 0)
            while delivered < newest:
                rows = await self.run_db(
                    self._read_outbox, realm_id, delivered, newest, OUTBOX_BATCH_SIZE
                )
                if not rows:
                    break
                for row in rows:
                    self._route(row)
                delivered = self._delivered[realm_id] = rows[-1].seq

    def _shared(self, row: StoredEvent) -> SharedEvent:
        return SharedEvent(
            row.realm_id,
            row.seq,
            row.event,
            row.user_ids,
            row.legacy_skip,
            encoded=row.event_json.encode("utf-8"),
        )

    def _route(self, row: StoredEvent) -> None:
        event = self._shared(row)
        result = route(self.registry, event)
        for client in result.woken:
            self._wake_client(client, WAKE_EVENTS)
        for client in result.overflowed:
            self._wake_client(client, WAKE_DROPPED)
            self._forget([client.queue_id])
            log.warning(
                "queue %s of user %d overflowed and was dropped", client.queue_id, client.user_id
            )
        deactivated = _is_deactivation(event.data)
        if deactivated is not None:
            self._cut_off_user(deactivated)

    def _cut_off_user(self, user_id: int) -> None:
        """A deactivated user loses every queue at once; waiting polls get USER_DEACTIVATED."""
        removed = self.registry.remove_user(user_id)
        for client in removed:
            self._wake_client(client, WAKE_DEACTIVATED)
            self._dropped.add(client.queue_id)
            self._checkpoints.pop(client.queue_id, None)
            self._dirty.discard(client.queue_id)

        def work() -> None:
            with self.db.write() as session:
                delete_user_descriptors(session, user_id)

        self._background(self.run_db(work))
        log.info("user %d deactivated: %d live queues deleted", user_id, len(removed))

    def _listen_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        """PostgreSQL LISTEN in a thread; each NOTIFY wakes the consumer on the loop."""
        url = make_url(self.db.url).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    # Rows committed while we were not listening: look now.
                    loop.call_soon_threadsafe(self._wake.set)
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            loop.call_soon_threadsafe(self._wake.set)
            except psycopg.Error as error:
                log.warning("LISTEN connection lost (%s); reconnecting", str(error).strip())
                self._stopping.wait(RECONNECT_DELAY_SECS)
            except RuntimeError:
                return  # the loop closed under us: the process is exiting

    def _watch_sqlite_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        """SQLite: wake the consumer whenever another connection has committed."""
        path = make_url(self.db.url).database
        if not path or path == ":memory:":
            return  # one process owns an in-memory database; nothing to watch
        try:
            connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECS)
            try:
                seen = None
                while not self._stopping.wait(SQLITE_POLL_INTERVAL_SECS):
                    version = connection.execute("PRAGMA data_version").fetchone()[0]
                    if version != seen:
                        seen = version
                        loop.call_soon_threadsafe(self._wake.set)
            finally:
                connection.close()
        except RuntimeError:
            return  # the loop closed under us: the process is exiting
        except sqlite3.Error:
            log.exception("SQLite watcher failed; delivery falls back to the slow poll")

    # -- maintenance ----------------------------------------------------------------------

    async def flush_checkpoints(self) -> None:
        """Write the acknowledged positions and activity times of polled queues."""
        if not self._dirty:
            return
        updates = []
        for queue_id in self._dirty:
            client = self.registry.get(queue_id)
            checkpoint = self._checkpoints.get(queue_id)
            if client is None or checkpoint is None:
                continue
            updates.append(
                CheckpointUpdate(queue_id, checkpoint[0], checkpoint[1], client.last_active)
            )
        self._dirty.clear()

        def work() -> None:
            with self.db.write() as session:
                save_checkpoints(session, updates)

        if updates:
            await self.run_db(work)

    async def evict_cold_queues(self) -> int:
        """Forget idle queues in memory; their descriptors and the outbox rebuild them.

        A queue without a waiting poll for COLD_QUEUE_IDLE_SECS leaves memory after its
        checkpoint is saved, so an idle registered queue costs no server memory.
        """
        now = self.clock()
        cold = [
            c
            for c in self.registry
            if c.waiter is None and now - c.last_active >= COLD_QUEUE_IDLE_SECS
        ]
        if not cold:
            return 0
        self._dirty.update(c.queue_id for c in cold)
        await self.flush_checkpoints()
        evicted = 0
        for client in cold:
            # A poll may have arrived while the checkpoints were written: keep that one.
            if client.waiter is None and self.registry.get(client.queue_id) is client:
                self.registry.remove(client.queue_id)
                self._checkpoints.pop(client.queue_id, None)
                evicted += 1
        log.info("evicted %d cold queues from memory", evicted)
        return evicted

    async def prune_outbox_history(self) -> int:
        """Delete outbox rows no queue can need any more (README: retention).

        A row is kept while it is newer than OUTBOX_MIN_RETENTION_SECS, or not yet
        routed, or after the checkpoint of some queue's descriptor. A realm keeps at most
        OUTBOX_MAX_EVENTS_PER_REALM rows: descriptors further behind are dropped, so
        their clients get BAD_EVENT_QUEUE_ID and re-register instead of missing events.
        """
        now = self.clock()
        delivered = dict(self._delivered)

        def work() -> tuple[int, list[str]]:
            pruned, dropped = 0, []
            with self.db.write() as session:
                for realm_id, routed in delivered.items():
                    limit = prunable_seq(
                        session,
                        realm_id,
                        routed,
                        now - OUTBOX_MIN_RETENTION_SECS,
                        OUTBOX_MAX_EVENTS_PER_REALM,
                    )
                    if limit is None:
                        continue
                    dropped += delete_descriptors_behind(session, realm_id, limit)
                    pruned += prune_outbox(session, realm_id, limit)
            return pruned, dropped

        pruned, dropped = await self.run_db(work)
        for queue_id in dropped:
            client = self.registry.remove(queue_id)
            if client is not None:
                self._wake_client(client, WAKE_DROPPED)
            self._checkpoints.pop(queue_id, None)
            self._dirty.discard(queue_id)
        if pruned or dropped:
            log.info(
                "outbox: pruned %d events; dropped %d queues too far behind", pruned, len(dropped)
            )
        return pruned

    async def collect_garbage(self) -> None:
        """Drop queues idle past their lifespan, evict cold ones, prune the outbox."""
        await self._expire_queues()
        await self.evict_cold_queues()
        await self.prune_outbox_history()

    async def _expire_queues(self) -> None:
        """Drop queues idle past their lifespan, in memory and on disk."""
        now = self.clock()
        expired = collect_garbage(self.registry, now)
        live = {client.queue_id for client in self.registry}

        def work() -> list[str]:
            with self.db.write() as session:
                delete_descriptors(session, [c.queue_id for c in expired])
                return delete_expired_descriptors(session, now, live)

        cold = await self.run_db(work)
        for client in expired:
            self._checkpoints.pop(client.queue_id, None)
            self._dirty.discard(client.queue_id)
        if expired or cold:
            log.info("GC: %d live and %d cold queues expired", len(expired), len(cold))

    def summaries(self, realm_id: int | None = None) -> list[dict[str, Any]]:
        """Every live queue (of one realm), for `eventq queues`."""
        now = self.clock()
        clients = self.registry.for_realm(realm_id) if realm_id is not None else list(self.registry)
        return [client.to_summary(now) for client in clients]
