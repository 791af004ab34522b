"""Registration: `POST /register` — a new queue, durable, activated, and the state
snapshot it starts from.

Owns the register path (`Registrar.register`): shedding registers past
`MAX_REGISTERS_IN_FLIGHT`, the descriptor's creation (grouped,
`server.engine.descriptor_writer`), the realm's register state (read once and shared by
the registers that follow, `_read_realm_state`), and the cap on queues per user
(`_drop_past_queue_cap`, `server.engine.quotas`). Activating the new queue is
`server.engine.activation`'s.

Race-freedom with the snapshot. The answer's state and the queue's start must be one
position of the outbox: every event after the snapshot in the queue, none before it.

* The queue is claimed in memory (`LiveQueues.begin_activation`) before the state is
  read or the kept one checked, so a deactivation committed after that read is routed
  to the queue and cuts it off, and one committed before it shows in the state, which
  refuses the register (the deactivation invariant of `server.engine.activation`).
* A kept state is reused only while no event that may change it (`realm.state_seq`)
  followed its read, which the descriptor group's transaction checks; the queue then
  starts at the later of the realm's position and the read's, where the kept state
  still holds. Otherwise the queue starts where a fresh read of the state was taken.
* A register needing a fresh read joins only one that has not started yet: a read that
  started before its claim could miss a deactivation committed in between.
* A register that fetches the user's own message state (`unread_msgs`,
  `starred_messages`: `models.messages.unreads`) reads it for its user, never from the
  kept state, since `message` events change it without moving `realm.state_seq`; the
  queue starts where that read was taken, once the kept realm state is shown to hold
  there too (`_read_with_user_state`). Registers asking for the same types at the same
  moment share that read (`SharedReads`): each joins the next one that has not started,
  which reads every joiner's rows in one snapshot with the same statements as for one
  user, so a reconnect storm costs a few statements per batch, not per register.
* The other keys (`models.register_keys`) are the realm's constants, its name (read
  once per process: eventq never renames a realm), the system groups (built from the
  kept state's users, once per kept state) and the user's own `max_message_id` and
  `recent_private_conversations`, read with `unread_msgs` in the user's snapshot.
* Presence (`presences`) is not versioned by the outbox at all: pings change it without
  any event (always in realms over 100 active users, and on every ping's refreshed
  times in the others), so no kept read can be checked against `realm.state_seq`. It
  is read again for the registers of each moment (`SharedReads`): a register
  joins the realm's next presence read that has not started yet, which starts after
  the register's queue start was fixed. So every presence change committed before
  that start is in the answer, and one committed after it may be both in the answer
  and, in a small realm, in the queue as a `presence` event, which repeats the same
  times: applying it again changes nothing a client shows.

The descriptor is durable before the answer (the client may next poll another
process), and a register that fails leaves nothing behind: its client never learns the
queue id, so the queue is dropped and its descriptor deleted.

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from models.database import Database
from models.descriptors import DescriptorRecord, HeldQueue
from models.messages.narrows import NarrowTerm
from models.messages.unreads import users_state, wants_user_state
from models.outbox import state_position
from models.presence import PRESENCE_EVENT_TYPE, RealmPresence
from models.register_keys import (
    KNOWN_EVENT_TYPES,
    USER_GROUPS_TYPE,
    RealmFacts,
    own_message_keys,
    own_message_keys_of,
    read_realm_facts,
    realm_wide_state,
    wants_own_message_keys,
)
from models.state import STATE_EVENT_TYPES, RealmState
from queues.descriptor import (
    LegacyClientRule,
    clamp_lifespan,
    parse_user_agent,
    uses_legacy_deactivation,
)
from queues.types import Capabilities
from server.engine.abuse import QUEUE_CAP_DROP, REGISTER_SHED, AbuseMonitor
from server.engine.activation import Activator
from server.engine.authentication import AuthenticatedUser
from server.engine.database_threads import DatabaseThreads
from server.engine.descriptor_writer import DescriptorWriter
from server.engine.errors import RateLimited, UserDeactivated
from server.engine.live_queues import DropCause, LiveQueues, QueueDropped
from server.engine.maintenance import Maintenance
from server.engine.quotas import KeyedLock

# The service's logger still: registration was part of it, and log filters name it.
log = logging.getLogger("eventq.service")

# Registers being served at once. Each costs about a millisecond of CPU and a place in
# a descriptor group (more when the realm's state must be read again); past this many
# more are shed with 429 and a Retry-After instead of waiting in line, so a reconnect
# storm degrades into retries spread over a few seconds rather than into timeouts.
MAX_REGISTERS_IN_FLIGHT = 256
# The most registers one read of users' own message state serves: each adds one limited
# select per user to its `UNION ALL`s (`models.messages.unreads.newest_rows_per_user`),
# and SQLite allows at most 500 terms in a compound select.
USER_STATE_BATCH = 64
# A shed register is told to come back after a random 1-3 s, so the retries spread out.
SHED_RETRY_AFTER_SECS = (1.0, 3.0)


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """The parsed parameters of `POST /register`."""

    event_types: frozenset[str] | None
    fetch_event_types: frozenset[str] | None
    capabilities: Capabilities
    include_subscribers: bool
    queue_lifespan_secs: int | None
    user_agent: str | None
    # The `narrow` (for `message` events only) and `apply_markdown` parameters (the
    # handler applies Zulip's default, false; this default serves in-process callers).
    narrow: tuple[NarrowTerm, ...] = ()
    apply_markdown: bool = True
    # The presence state's shape (modern entries when true) and how far back it looks.
    slim_presence: bool = False
    presence_history_limit_days: int | None = None
    # The server's address as the client reached it (`realm_url`), and whether the client
    # declared `user_settings_object` (then no legacy per-setting keys).
    server_url: str = ""
    user_settings_object: bool = False


def wants_users(fetch: frozenset[str]) -> bool:
    """Whether a register fetching these types needs every user of the realm: their
    list, or the system groups' members."""
    return "realm_user" in fetch or USER_GROUPS_TYPE in fetch


class Registrar:
    """Creates queues: descriptor, activation and state snapshot, within the caps."""

    def __init__(
        self,
        db: Database,
        threads: DatabaseThreads,
        live: LiveQueues,
        descriptors: DescriptorWriter,
        activator: Activator,
        maintenance: Maintenance,
        abuse: AbuseMonitor,
        *,
        clock: Callable[[], float],
        shard: str,
        legacy_rules: Iterable[LegacyClientRule] = (),
        max_queues_per_user: int | None = None,
    ) -> None:
        self.db = db
        self.threads = threads
        self.live = live
        self.descriptors = descriptors
        self.activator = activator
        self.maintenance = maintenance
        self.abuse = abuse
        self.clock = clock
        self.shard = shard
        self.legacy_rules = tuple(legacy_rules)
        # None: no cap (benchmarks and tests that register thousands of queues for one
        # user in-process); `eventq serve` passes EVENTQ_MAX_QUEUES_PER_USER.
        self.max_queues_per_user = max_queues_per_user
        self._register_locks = KeyedLock()
        self._registers_in_flight = 0
        self.registers_shed = 0
        # realm id -> (the seq it was read at, its register state): `_read_realm_state`.
        self._realm_states: dict[int, tuple[int, RealmState]] = {}
        # The next state read of a realm, not started yet, that registers join; one read
        # per realm runs at a time (`_read_realm_state`).
        self._upcoming_state_reads: dict[int, asyncio.Future[tuple[int, RealmState]]] = {}
        self._state_read_locks = KeyedLock()
        self._state_read_tasks: set[asyncio.Task[None]] = set()
        # A realm's presence, and the users' own message state of registers asking for
        # the same types, each read once for the registers of a moment (`SharedReads`).
        self._presence_reads: SharedReads[int, None, RealmPresence] = SharedReads(
            threads, self._read_presence
        )
        self._user_state_reads: SharedReads[
            tuple[int, frozenset[str]], int, tuple[int, int, dict[int, dict[str, Any]]]
        ] = SharedReads(threads, self._read_users_snapshot, max_members=USER_STATE_BATCH)
        # realm id -> its name and creation time, which eventq never changes: read once.
        self._realm_facts: dict[int, RealmFacts] = {}

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
            # Neither list: everything Zulip documents, as Zulip answers.
            fetch = request.event_types if request.event_types is not None else KNOWN_EVENT_TYPES
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
            record: DescriptorRecord | None = None
            held: list[HeldQueue] = []
            own: dict[str, Any] = {}
            if wants_user_state(fetch) or wants_own_message_keys(fetch):
                # The user's own message state and the realm state, at one position.
                seq, realm_state, own = await self._read_with_user_state(
                    user.realm_id, user.id, fetch, request.include_subscribers
                )
            else:
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
            state.update(own)
            state.update(await self._realm_wide_state(user.realm_id, fetch, realm_state, request))
            if PRESENCE_EVENT_TYPE in fetch:
                # Read now that the queue's start is fixed (see the module).
                presence = await self._presence_reads.read(user.realm_id, None)
                state.update(
                    presence.answer(
                        slim=request.slim_presence,
                        history_limit_days=request.presence_history_limit_days,
                    )
                )
            self.activator.load_record(live, record)
            await self.activator.catch_up(live, check_owner_active=False)
            self.live.finish_activation(live)
        except BaseException as error:
            # The client never learns this queue id: nothing may be left behind.
            self.live.drop(live, DropCause.ACTIVATION_FAILED)
            self.maintenance.request_deletions()
            if isinstance(error, QueueDropped):
                raise self.activator.refusal(error.cause, queue_id) from None
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

    async def _realm_wide_state(
        self,
        realm_id: int,
        fetch: frozenset[str],
        realm_state: RealmState,
        request: RegisterRequest,
    ) -> dict[str, Any]:
        """The keys of `models.register_keys` that every user of the realm shares: built
        from constants, the realm's name (read once per process) and the shared realm
        state's users (the system groups, built once per shared state)."""
        facts = self._realm_facts.get(realm_id)
        if facts is None:
            found = await self.threads.run(self._read_facts, realm_id)
            if found is None:
                raise UserDeactivated()  # the realm is gone
            facts = self._realm_facts[realm_id] = found
        known = facts
        return realm_wide_state(
            fetch,
            facts,
            request.server_url,
            user_settings_object=request.user_settings_object,
            user_groups=lambda: realm_state.user_groups(known.date_created),
        )

    def _read_facts(self, realm_id: int) -> RealmFacts | None:
        with self.db.snapshot() as session:
            return read_realm_facts(session, realm_id)

    async def _drop_past_queue_cap(
        self, user: AuthenticatedUser, held: list[HeldQueue], cap: int
    ) -> None:
        """Drop the user's least recently used queues (of `held`, those it had before
        this register) so that with the new one it holds at most `cap`.

        Through the one removal path (`LiveQueues.drop`, then the durable deletion, as
        `EventService.delete_queue`), so a dropped queue's poll is answered
        BAD_EVENT_QUEUE_ID and no poll can rebuild it; a cold queue is claimed in memory
        to be dropped.
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
            self.maintenance.request_deletions()

    async def _read_with_user_state(
        self, realm_id: int, user_id: int, fetch: frozenset[str], include_subscribers: bool
    ) -> tuple[int, RealmState, dict[str, Any]]:
        """The realm's state, the user's own message state (`unread_msgs`,
        `starred_messages`) and the one outbox position both hold at.

        The user's state is read for this register alone, never kept: it changes with
        every `message` event, which does not move `realm.state_seq`, so a state kept
        per realm (`_read_realm_state`) cannot hold it. It is read in a snapshot with
        the realm's (`last_event_seq` P, `state_seq` Q); the kept realm state, read at
        R, holds at P when Q <= R <= P (no event that may change it in between), and the
        queue then starts at P. Otherwise the kept state is read again and the user's
        state after it; should a state event fall between those two reads, both are
        read for this user in one snapshot. Every read follows the queue's claim, so a
        deactivation is either in the state or routed to the queue.
        """
        for attempt in range(2):
            seq, state_seq, owns = await self._user_state_reads.read((realm_id, fetch), user_id)
            own = owns[user_id]
            kept = self._realm_states.get(realm_id)
            if kept is not None and state_seq <= kept[0] <= seq:
                return seq, kept[1], own
            if attempt == 0:
                await self._read_realm_state(realm_id)
        return await self.threads.run(
            self._read_both_snapshot, realm_id, user_id, fetch, include_subscribers
        )

    def _read_users_snapshot(
        self, key: tuple[int, frozenset[str]], user_ids: frozenset[int]
    ) -> tuple[int, int, dict[int, dict[str, Any]]]:
        realm_id, fetch = key
        with self.db.snapshot() as session:
            position = state_position(session, realm_id)
            if position is None:
                raise UserDeactivated()  # the realm is gone
            owns = users_state(session, user_ids, fetch)
            for user_id, keys in own_message_keys_of(session, user_ids, fetch).items():
                owns[user_id].update(keys)
            return position[0], position[1], owns

    def _read_presence(self, realm_id: int, _: frozenset[None]) -> RealmPresence:
        with self.db.snapshot() as session:
            # Wall time: `server_timestamp` and the history limit are Unix times.
            return RealmPresence.read(session, realm_id, now=time.time())

    def _read_both_snapshot(
        self, realm_id: int, user_id: int, fetch: frozenset[str], include_subscribers: bool
    ) -> tuple[int, RealmState, dict[str, Any]]:
        with self.db.snapshot() as session:
            position = state_position(session, realm_id)
            if position is None:
                raise UserDeactivated()  # the realm is gone
            realm_state = RealmState.read(
                session,
                realm_id,
                user_id,
                users=wants_users(fetch),
                subscribers=include_subscribers and "subscription" in fetch,
            )
            return position[0], realm_state, _own_state(session, user_id, fetch)

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


def _own_state(session: Session, user_id: int, fetch: frozenset[str]) -> dict[str, Any]:
    """The user's own message keys (`unread_msgs`, `starred_messages`, `max_message_id`,
    `recent_private_conversations`), read in the caller's snapshot."""
    return {
        **users_state(session, [user_id], fetch)[user_id],
        **own_message_keys(session, user_id, fetch),
    }


K = TypeVar("K", bound=Hashable)
M = TypeVar("M", bound=Hashable)
R = TypeVar("R")


@dataclass
class _Batch(Generic[M, R]):
    """The callers of one shared read that has not started: their members, and the
    future of the read's result."""

    members: set[M]
    result: asyncio.Future[R]


class SharedReads(Generic[K, M, R]):
    """One read on a database thread for the registers that need it at the same moment.

    A reconnect storm into a realm must not read its 10,000 presence rows once per
    register, nor run one snapshot per register for its user's unread messages. Each
    caller joins, with its member (a user id, or None when the read is the realm's), the
    next read of its key that has not started yet (one that started earlier could miss a
    change committed before the caller's queue start), and a key has one read running
    at a time, as with the realm's state (`Registrar._read_realm_state`). The read
    (`read(key, members)`) runs on a database thread and its result goes to every
    joiner, shared and read-only; nothing is kept once they have it. A batch of
    `max_members` members starts a new one, so one read's statements stay bounded.
    """

    def __init__(
        self,
        threads: DatabaseThreads,
        read: Callable[[K, frozenset[M]], R],
        *,
        max_members: int | None = None,
    ) -> None:
        self.threads = threads
        self._read = read
        self._max_members = max_members
        self._upcoming: dict[K, _Batch[M, R]] = {}
        self._locks = KeyedLock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, key: K, member: M) -> R:
        """The result of a read of `key` that starts after this call and covers `member`."""
        batch = self._upcoming.get(key)
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._upcoming[key] = _Batch(set(), loop.create_future())
            task = loop.create_task(self._run(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        batch.members.add(member)
        if self._max_members is not None and len(batch.members) >= self._max_members:
            del self._upcoming[key]  # full: later callers start the next batch
        return await asyncio.shield(batch.result)

    async def _run(self, key: K, batch: _Batch[M, R]) -> None:
        try:
            async with self._locks.hold(key):
                # Started now: later callers need a read that starts after them.
                if self._upcoming.get(key) is batch:
                    del self._upcoming[key]
                result = await self.threads.run(self._read, key, frozenset(batch.members))
        except Exception as error:
            batch.result.set_exception(error)
            return
        except BaseException:
            batch.result.cancel()  # the process is stopping
            raise
        finally:
            if self._upcoming.get(key) is batch:
                del self._upcoming[key]
        batch.result.set_result(result)
