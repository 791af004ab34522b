"""The live queues of this process: the routing registry and each queue's lifecycle.

A queue in memory is one `LiveQueue`, which holds everything the server knows about
it beyond the pure queue data (`queues.descriptor.ClientDescriptor`): its lifecycle
state, its acknowledged checkpoint, whether that checkpoint still has to be written,
and the future that concurrent polls await while it is being built.

    cold (only its durable descriptor) ──begin_activation──▶ ACTIVATING
    ACTIVATING ──finish_activation──▶ WARM            (routable: in the registry)
    ACTIVATING, WARM ──make_cold──▶ cold              (the descriptor stays)
    ACTIVATING, WARM ──drop(cause)──▶ DROPPED         (for good: the one removal path)
    ACTIVATING, WARM ──fence──▶ MOVED                 (another shard claimed it)

Ephemeral events (typing notifications, `server.engine.ephemeral`) live only in the
`EventQueue` of a queue in memory: making a queue cold, dropping it or fencing it
forgets them, which is what "never replayed" means (docs/architecture.md §5).

`drop` is the only way a queue is removed for good, whatever the cause (`DropCause`):
it takes the queue out of every index, answers its waiting poll, and leaves a
tombstone until the durable descriptor is deleted, so that no poll can rebuild the
queue from a descriptor still on disk. `Maintenance.delete_dropped` deletes them and
calls `deletions_done`, so tombstones exist only while their deletion is in flight.

A user's deactivation (`cut_off_user`) drops their warm *and* activating queues, and
an activation checks the user's state in the same snapshot that starts its replay
(`server.engine.activation`), so no queue of a deactivated user comes back after the cut-off.

Shards (docs/architecture.md §10). Each queue in memory carries the fencing epoch under
which this process holds it. When another shard claims it (the consumer reads the claim
feed) or a write finds the epoch gone, `fence` forgets the copy without deleting
anything: the descriptor belongs to the new holder now.

No I/O here; not thread-safe: call from the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from models.descriptors import CheckpointUpdate
from queues.descriptor import ClientDescriptor
from queues.registry import QueueRegistry
from queues.routing import RouteResult

log = logging.getLogger("eventq.queues")


class QueueState(enum.Enum):
    """Where a queue in memory is in its lifecycle."""

    ACTIVATING = "activating"  # being built from its descriptor and the outbox
    WARM = "warm"  # in the registry: receives routed events, answers polls
    DROPPED = "dropped"  # removed for good; its polls get BAD_EVENT_QUEUE_ID
    MOVED = "moved"  # another shard holds it now; this copy is stale


class DropCause(enum.Enum):
    """Why a queue was removed for good."""

    EXPIRED = "expired"  # idle past its lifespan
    OVERFLOWED = "overflowed"  # too many unacknowledged events
    BEHIND_OUTBOX = "behind_outbox"  # its history was pruned from the outbox
    DELETED = "deleted"  # DELETE /events by its owner
    DEACTIVATED = "deactivated"  # its owner was deactivated
    ACTIVATION_FAILED = "activation_failed"  # register could not finish building it
    QUEUE_CAP = "queue_cap"  # its owner registered past the per-user cap; least recent


class Wake(enum.Enum):
    """Why a waiting poll was answered, other than its queue being dropped."""

    EVENTS = "events"
    REPLACED = "replaced"  # a newer poll of the same queue took the slot
    CLOSED = "closed"  # the client's connection closed
    SHUTDOWN = "shutdown"  # the server is stopping
    HEARTBEAT = "heartbeat"  # nothing came within the heartbeat time
    MOVED = "moved"  # another shard claimed the queue: the client must poll again


# What a waiting poll's future resolves to.
WakeReason = Wake | DropCause


class QueueDropped(Exception):
    """An activation ended because its queue was dropped meanwhile."""

    def __init__(self, cause: DropCause) -> None:
        super().__init__(cause.value)
        self.cause = cause


class QueueMoved(Exception):
    """An activation ended because another shard claimed the queue meanwhile."""


class LiveQueue:
    """One queue in memory and its lifecycle state."""

    __slots__ = (
        "queue_id",
        "realm_id",
        "user_id",
        "state",
        "client",
        "checkpoint",
        "dirty",
        "activation",
        "drop_cause",
        "epoch",
    )

    def __init__(self, queue_id: str, realm_id: int, user_id: int) -> None:
        self.queue_id = queue_id
        self.realm_id = realm_id
        self.user_id = user_id
        self.state = QueueState.ACTIVATING
        # The queue data; None until the activation has read the descriptor.
        self.client: ClientDescriptor | None = None
        # (outbox seq, event id) of the newest acknowledged event: see queues.queue.
        self.checkpoint: tuple[int, int] = (0, -1)
        # The checkpoint or activity time changed since it was last written.
        self.dirty = False
        # Resolved when the activation ends, so concurrent polls wait for one build;
        # released then (None), since an idle queue should cost as little as possible.
        self.activation: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()
        self.drop_cause: DropCause | None = None
        # The fencing epoch this process holds the queue under (its descriptor's
        # `owner_epoch` when claimed); every write of it is conditioned on this.
        self.epoch = 0

    def __repr__(self) -> str:
        return f"LiveQueue({self.queue_id!r}, user={self.user_id}, state={self.state.value})"


@dataclass(frozen=True, slots=True)
class PendingDeletions:
    """Durable deletions the dropped queues still need."""

    # Dropped queue id -> the epoch it was held under (the deletion is fenced by it).
    queue_ids: dict[str, int]
    # Deactivated users and the outbox position of their deactivation.
    cut_offs: dict[int, int]


class LiveQueues:
    """Every queue in memory, by id, with the registry that routing reads."""

    def __init__(self) -> None:
        # WARM queues only: the index `queues.routing.route` walks.
        self.registry = QueueRegistry()
        self._queues: dict[str, LiveQueue] = {}
        # Dropped queue id -> its epoch, until the descriptor's deletion commits.
        self._tombstones: dict[str, int] = {}
        self._cut_offs: dict[int, int] = {}
        self.drops: Counter[DropCause] = Counter()
        # Queues claimed by other shards from this one, and claimed by this one from others.
        self.moves_out = 0
        self.moves_in = 0

    def __len__(self) -> int:
        return len(self._queues)

    def __iter__(self) -> Iterator[LiveQueue]:
        # A snapshot, so callers may drop or evict while iterating.
        return iter(list(self._queues.values()))

    def get(self, queue_id: str) -> LiveQueue | None:
        """The queue if it is in memory (activating or warm)."""
        return self._queues.get(queue_id)

    def is_tombstoned(self, queue_id: str) -> bool:
        """Dropped, with its descriptor not yet deleted: it must not be rebuilt."""
        return queue_id in self._tombstones

    # -- lifecycle ------------------------------------------------------------------

    def begin_activation(self, queue_id: str, realm_id: int, user_id: int) -> LiveQueue:
        """Claim `queue_id` for a build; concurrent polls await `live.activation`."""
        if queue_id in self._queues or queue_id in self._tombstones:
            raise ValueError(f"queue {queue_id!r} is already in memory or dropped")
        live = LiveQueue(queue_id, realm_id, user_id)
        self._queues[queue_id] = live
        return live

    def finish_activation(self, live: LiveQueue) -> None:
        """The build caught up with the consumer: make the queue routable.

        Raises `QueueDropped` if it was dropped while it was being built. The caller
        must not await between its last catch-up check and this call.
        """
        if live.state is QueueState.DROPPED:
            raise QueueDropped(live.drop_cause or DropCause.ACTIVATION_FAILED)
        if live.state is QueueState.MOVED:
            raise QueueMoved(live.queue_id)
        if live.client is None:
            raise ValueError(f"queue {live.queue_id!r} activated without its data")
        live.state = QueueState.WARM
        self.registry.add(live.client)
        _resolve(live)

    def make_cold(self, live: LiveQueue) -> None:
        """Forget the queue in memory but keep its descriptor: the next poll rebuilds
        it (an idle queue evicted, or a build that failed on a transient error)."""
        if live.state in (QueueState.DROPPED, QueueState.MOVED):
            return
        self._queues.pop(live.queue_id, None)
        if live.state is QueueState.WARM:
            self.registry.remove(live.queue_id)
        _resolve(live)

    def drop(self, live: LiveQueue, cause: DropCause) -> None:
        """Remove a queue for good: the one removal path, whatever the cause."""
        if live.state in (QueueState.DROPPED, QueueState.MOVED):
            return  # gone already, or another shard's to remove
        was_warm = live.state is QueueState.WARM
        live.state = QueueState.DROPPED
        live.drop_cause = cause
        live.dirty = False
        self._queues.pop(live.queue_id, None)
        if was_warm:
            self.registry.remove(live.queue_id)
        self._tombstones[live.queue_id] = live.epoch
        self.drops[cause] += 1
        if live.client is not None:
            self.wake(live.client, cause)
        _resolve(live)  # waiters re-check the state and find it dropped
        log.info("queue %s of user %d dropped: %s", live.queue_id, live.user_id, cause.value)

    def fence(self, queue_id: str, epoch: int | None = None) -> LiveQueue | None:
        """Another shard holds `queue_id` now (at `epoch`; None: at an unknown newer one):
        forget this process's copy if it is older, leaving the descriptor alone. A waiting
        poll is answered so its client polls again and reaches the holder."""
        live = self._queues.get(queue_id)
        if live is None or (epoch is not None and live.epoch >= epoch):
            return None
        was_warm = live.state is QueueState.WARM
        live.state = QueueState.MOVED
        live.dirty = False
        del self._queues[queue_id]
        if was_warm:
            self.registry.remove(queue_id)
        self.moves_out += 1
        if live.client is not None:
            self.wake(live.client, Wake.MOVED)
        _resolve(live)
        log.info("queue %s moved to another shard; copy at epoch %d fenced", queue_id, live.epoch)
        return live

    def cut_off_user(self, user_id: int, seq: int) -> list[LiveQueue]:
        """The user was deactivated at outbox position `seq`: drop every queue of theirs
        in memory, activating ones included, and remember the cut-off until the
        deletion of their descriptors is durable."""
        mine = [live for live in self._queues.values() if live.user_id == user_id]
        for live in mine:
            self.drop(live, DropCause.DEACTIVATED)
        self._cut_offs[user_id] = max(seq, self._cut_offs.get(user_id, 0))
        log.info("user %d deactivated: %d live queues dropped", user_id, len(mine))
        return mine

    def drop_overflowed(self, result: RouteResult) -> None:
        """Drop the queues an event overflowed (their waiting polls are refused)."""
        for client in result.overflowed:
            live = self._queues.get(client.queue_id)
            if live is not None:
                self.drop(live, DropCause.OVERFLOWED)

    def answer_woken(self, clients: Iterable[ClientDescriptor]) -> None:
        """Answer the waiting polls of these clients, which routed events (or ephemeral
        ones, `server.engine.ephemeral`) reached; a client listed twice, or whose poll
        has gone, is skipped."""
        wake = self.wake
        for client in clients:
            queue = client.queue
            if client.waiter is not None and (not queue.empty() or queue.has_ephemeral):
                wake(client, Wake.EVENTS)

    # -- waiting polls ----------------------------------------------------------------

    @staticmethod
    def wake(client: ClientDescriptor, reason: WakeReason) -> None:
        """Answer the queue's waiting poll, if any, with `reason`."""
        waiter = client.waiter
        if isinstance(waiter, asyncio.Future) and not waiter.done():
            waiter.set_result(reason)
        client.waiter = None

    # -- durable bookkeeping ------------------------------------------------------------

    def acknowledge(self, live: LiveQueue, checkpoint: tuple[int, int] | None) -> None:
        """A poll acknowledged events (or was just active): write it behind."""
        if checkpoint is not None:
            live.checkpoint = checkpoint
        live.dirty = True

    def take_checkpoints(self, queues: list[LiveQueue] | None = None) -> list[CheckpointUpdate]:
        """The dirty checkpoints (of `queues`, or of every warm queue), marked clean."""
        updates = []
        for live in self._queues.values() if queues is None else queues:
            if live.dirty and live.state is QueueState.WARM and live.client is not None:
                seq, event_id = live.checkpoint
                updates.append(
                    CheckpointUpdate(
                        live.queue_id, seq, event_id, live.client.last_active, live.epoch
                    )
                )
                live.dirty = False
        return updates

    def pending_deletions(self) -> PendingDeletions:
        """What `drop` and `cut_off_user` left to delete durably."""
        return PendingDeletions(dict(self._tombstones), dict(self._cut_offs))

    def deletions_done(self, done: PendingDeletions) -> None:
        """These deletions committed: their tombstones and cut-offs are no longer needed."""
        for queue_id, epoch in done.queue_ids.items():
            if self._tombstones.get(queue_id) == epoch:
                del self._tombstones[queue_id]
        for user_id, seq in done.cut_offs.items():
            if self._cut_offs.get(user_id) == seq:
                del self._cut_offs[user_id]

    @property
    def tombstone_count(self) -> int:
        return len(self._tombstones) + len(self._cut_offs)


def _resolve(live: LiveQueue) -> None:
    """End the activation wait of `live`, whatever its outcome, and release it."""
    future, live.activation = live.activation, None
    if future is not None and not future.done():
        future.set_result(None)
