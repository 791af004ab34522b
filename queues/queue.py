"""The event data of one client queue (Zulip's ``EventQueue``): a deque of
(event id, shared event) entries, id assignment, pruning on acknowledgement,
and the checkpoint that makes a queue rebuildable from the outbox.

This is only the data; the client's filter, capabilities, waiting poll and
expiry live in `queues.descriptor.ClientDescriptor`.

Ids and outbox positions
------------------------
Event ids are per queue, assigned in push order, and strictly increasing
without gaps: ``next_event_id`` is the id the next pushed event gets.
``last_seq`` is the newest outbox sequence number this queue has
*considered*, whether it accepted the event (`push`) or filtered it out
(`skip`). Outbox events reach a queue in strictly increasing seq order.

Checkpoint invariant: a checkpoint ``(seq, event_id)`` means "every outbox
event with seq <= ``seq`` that this queue accepts got an id <= ``event_id``,
and the event at ``seq`` got exactly ``event_id``". Because the queue's filter
is fixed at register, rebuilding with
``EventQueue(next_event_id=event_id + 1, last_seq=seq, newest_pruned_id=event_id)``
and replaying the outbox after ``seq`` through the same filter reproduces the
same ids for the same events. `checkpoint_after_ack` yields such a pair for
an acknowledged event, so a durable checkpoint only ever points at events the
client already has.

Ephemeral events
----------------
Some events are never stored (typing notifications: docs/architecture.md §5,
"Ephemeral events"). They must not disturb the ids above, which every shard and
every rebuild derive from the outbox alone, so an ephemeral event takes no id.
Like a heartbeat, it carries the queue's newest durable id at the moment it
arrived (`newest_event_id`), which a client's ``max(last_event_id, id)``
bookkeeping and acknowledgement accept without skipping anything. It waits in a
small side buffer (`offer_ephemeral`): at most `MAX_EPHEMERAL_EVENTS`, the
oldest dropped first, each for `EPHEMERAL_TTL_SECS`. `take_answer` hands it
out once, placed among the durable events of the same answer in arrival order
(after the durable event whose id it carries, before any later one), and
forgets it. Neither the ids, nor ``last_seq``, nor the checkpoint ever see it,
and the buffer, like the deque, is None until used.

Not thread-safe; call from the IOLoop.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from queues.types import JsonDict, SharedEvent, splice_id

# Bounds memory per client: a client that never acknowledges gets its queue
# dropped (it re-registers on BAD_EVENT_QUEUE_ID) instead of growing without
# limit. A deactivation writes only a handful of grouped events, so a live
# client that polls normally never comes near this.
MAX_QUEUE_LENGTH = 10_000

# Ephemeral events one queue keeps for a client that is not polling right now; the
# oldest go first. A client that polls gets them within a round trip, so this only
# bounds the memory a queue without a poll can be made to hold (a typing start every
# 10 s from each conversation partner fills a handful).
MAX_EPHEMERAL_EVENTS = 100
# How long an ephemeral event waits for a poll: Zulip's typing "started" expiry period
# (`server_typing_started_expiry_period_milliseconds`, 15000, `models.typing`). A
# client that receives a typing start later than that would show an indicator the
# sender has long stopped renewing.
EPHEMERAL_TTL_SECS = 15.0


class QueueOverflow(Exception):
    """Raised by `EventQueue.push` when the queue already holds
    `MAX_QUEUE_LENGTH` events. The caller drops the whole queue."""


class OutOfOrder(RuntimeError):
    """An invariant of the queue was broken by its caller (a bug, never client input):
    events out of sequence order, or ids that are not contiguous."""


class BadLastEventId(ValueError):
    """Raised by `EventQueue.check_last_event_id` when a client's
    ``last_event_id`` cannot be honoured; the message is Zulip's."""


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """One entry of a queue: the id this queue gave the shared event."""

    event_id: int
    event: SharedEvent


class EphemeralEvent:
    """An event that is never stored: delivered to the queues in memory at most once,
    never replayed (see the module). Shared, like a `SharedEvent`, by every queue it is
    offered to; ``data`` is the body without ``"id"`` and must not be changed.

    ``required_capability`` names a field of `queues.types.Capabilities` that a queue's
    client must have declared to receive the event (Zulip sends channel typing
    notifications only to clients declaring ``stream_typing_notifications``); None:
    every queue whose event types accept it.
    """

    __slots__ = ("realm_id", "user_ids", "data", "required_capability", "_encoded")

    def __init__(
        self,
        realm_id: int,
        data: JsonDict,
        user_ids: Iterable[int],
        required_capability: str | None = None,
        encoded: bytes | None = None,
    ) -> None:
        if "id" in data:
            raise ValueError("EphemeralEvent data must not contain 'id'; it is added per queue")
        self.realm_id = realm_id
        self.data = data
        self.user_ids = frozenset(user_ids)
        self.required_capability = required_capability
        # The compact JSON of `data`, when the sender already has it.
        self._encoded = encoded

    @property
    def type(self) -> str:
        """The event's ``type`` field, which a queue's ``event_types`` filter reads."""
        event_type: str = self.data["type"]
        return event_type

    def encode_with_id(self, event_id: int) -> bytes:
        """The JSON object of ``data`` with ``"id": event_id`` as its last key, spliced
        onto one encoding shared by every queue (as `SharedEvent.encode_with_id`)."""
        if self._encoded is None:
            self._encoded = json.dumps(self.data, separators=(",", ":"), allow_nan=False).encode()
        return splice_id(self._encoded, event_id)

    def __repr__(self) -> str:
        return (
            f"EphemeralEvent(realm_id={self.realm_id}, type={self.data.get('type')!r}, "
            f"targets={len(self.user_ids)})"
        )


@dataclass(frozen=True, slots=True)
class PendingEphemeral:
    """An ephemeral event waiting in one queue: the newest durable id the queue had
    handed out when it arrived (the id it is delivered with), and when it expires."""

    carried_id: int
    event: EphemeralEvent
    expires_at: float


class EventQueue:
    """The pending events of one client, oldest first."""

    __slots__ = ("_entries", "_ephemeral", "next_event_id", "last_seq", "newest_pruned_id")

    def __init__(
        self,
        next_event_id: int = 0,
        last_seq: int = 0,
        newest_pruned_id: int | None = None,
    ) -> None:
        # deque: events are appended at the right and pruned from the left. None while
        # empty: an empty deque costs ~600 bytes, and most queues are empty most of the
        # time, so idle queues stay small.
        self._entries: deque[QueuedEvent] | None = None
        # Ephemeral events waiting for a poll, in arrival order; None while there are
        # none, for the same reason as `_entries`.
        self._ephemeral: deque[PendingEphemeral] | None = None
        self.next_event_id = next_event_id
        self.last_seq = last_seq
        # None: nothing has been pruned yet (Zulip uses -1 for the same).
        self.newest_pruned_id = newest_pruned_id

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)

    def __repr__(self) -> str:
        return (
            f"EventQueue(len={len(self)}, next_event_id={self.next_event_id}, "
            f"last_seq={self.last_seq}, newest_pruned_id={self.newest_pruned_id})"
        )

    def empty(self) -> bool:
        """No durable event is pending (ephemeral ones aside: see `has_pending`)."""
        return not self._entries

    @property
    def has_ephemeral(self) -> bool:
        """Ephemeral events are waiting (some may have expired since)."""
        return bool(self._ephemeral)

    def has_pending(self, now: float) -> bool:
        """Whether a poll answered now would carry events, durable or ephemeral."""
        if self._entries:
            return True
        self._expire_ephemeral(now)
        return bool(self._ephemeral)

    @property
    def newest_event_id(self) -> int:
        """The newest id ever assigned, -1 if none; what a heartbeat carries."""
        return self.next_event_id - 1

    def push(self, event: SharedEvent) -> int:
        """Store ``event`` under the next id and return that id.

        Raises `QueueOverflow`, leaving the queue unchanged, when it is full.
        """
        if event.seq <= self.last_seq:
            raise OutOfOrder(
                f"outbox seq {event.seq} <= last_seq {self.last_seq}: events must reach a "
                "queue in strictly increasing seq order, or replay would assign different ids"
            )
        if self._entries is None:
            self._entries = deque()
        elif len(self._entries) >= MAX_QUEUE_LENGTH:
            raise QueueOverflow(f"event queue is full ({MAX_QUEUE_LENGTH} unacknowledged events)")
        event_id = self.next_event_id
        self._entries.append(QueuedEvent(event_id, event))
        self.next_event_id = event_id + 1
        self.last_seq = event.seq
        return event_id

    def skip(self, seq: int) -> None:
        """Record that the outbox event ``seq`` was considered and filtered
        out, so a checkpoint or a duplicate delivery sees it as handled."""
        if seq <= self.last_seq:
            raise OutOfOrder(
                f"outbox seq {seq} <= last_seq {self.last_seq}: events must reach a "
                "queue in strictly increasing seq order"
            )
        self.last_seq = seq

    def prune(self, last_event_id: int) -> None:
        """Drop every entry with id <= ``last_event_id`` (the client has it)."""
        entries = self._entries
        if entries is None:
            return
        while entries and entries[0].event_id <= last_event_id:
            self.newest_pruned_id = entries.popleft().event_id
        if not entries:
            self._entries = None

    def check_last_event_id(self, last_event_id: int) -> None:
        """Raise `BadLastEventId` unless ``last_event_id`` is a position this
        queue can resume from: not older than what was pruned, not newer than
        anything it handed out."""
        # -1 ("nothing received yet") is valid on a fresh queue, as in Zulip.
        newest_pruned = -1 if self.newest_pruned_id is None else self.newest_pruned_id
        if last_event_id < newest_pruned:
            raise BadLastEventId(f"An event newer than {last_event_id} has already been pruned!")
        if last_event_id > self.next_event_id - 1:
            raise BadLastEventId(f"Event {last_event_id} was not in this queue")

    # -- ephemeral events ---------------------------------------------------------------

    def offer_ephemeral(self, event: EphemeralEvent, now: float) -> None:
        """Keep ``event`` for the next answer, carrying the newest durable id; past
        `MAX_EPHEMERAL_EVENTS` the oldest waiting one is dropped. Changes no id, no
        ``last_seq`` and no checkpoint."""
        self._expire_ephemeral(now)
        buffer = self._ephemeral
        if buffer is None:
            buffer = self._ephemeral = deque()
        elif len(buffer) >= MAX_EPHEMERAL_EVENTS:
            buffer.popleft()
        buffer.append(PendingEphemeral(self.newest_event_id, event, now + EPHEMERAL_TTL_SECS))

    def ephemeral_contents(self) -> list[PendingEphemeral]:
        """A snapshot of the waiting ephemeral events, oldest first (expired ones too)."""
        return list(self._ephemeral or ())

    def _expire_ephemeral(self, now: float) -> None:
        buffer = self._ephemeral
        if buffer is None:
            return
        # Arrival order is expiry order (one lifetime for all), so the expired are first.
        while buffer and buffer[0].expires_at <= now:
            buffer.popleft()
        if not buffer:
            self._ephemeral = None

    def take_answer(self, now: float) -> list[bytes]:
        """What a poll answered now hands out: every pending durable event (they stay
        until acknowledged) and every unexpired ephemeral one, which is handed out this
        once and forgotten. An ephemeral event comes after the durable event whose id it
        carries and before any later one, as it arrived; ephemeral events among
        themselves keep their arrival order."""
        self._expire_ephemeral(now)
        buffer, self._ephemeral = self._ephemeral, None
        if buffer is None:
            return self.encoded_events()
        answer: list[bytes] = []
        for entry in self._entries or ():
            while buffer and buffer[0].carried_id < entry.event_id:
                waiting = buffer.popleft()
                answer.append(waiting.event.encode_with_id(waiting.carried_id))
            answer.append(entry.event.encode_with_id(entry.event_id))
        answer.extend(waiting.event.encode_with_id(waiting.carried_id) for waiting in buffer)
        return answer

    def contents(self) -> list[QueuedEvent]:
        """A snapshot of the pending entries, oldest first."""
        return list(self._entries or ())

    def encoded_events(self) -> list[bytes]:
        """Each pending event as JSON bytes with its id; the shared body is
        encoded once per event, not once per queue."""
        return [entry.event.encode_with_id(entry.event_id) for entry in self._entries or ()]

    def checkpoint_after_ack(self, last_event_id: int) -> tuple[int, int] | None:
        """The (seq, event_id) of the stored entry with id ``last_event_id``,
        or None if it is not stored (already pruned, or never assigned).

        Call it before `prune`, which drops that entry.
        """
        entries = self._entries
        if not entries:
            return None
        # Ids in the deque are contiguous (push assigns consecutive ids, prune
        # drops from the left), so the entry's index is arithmetic.
        index = last_event_id - entries[0].event_id
        if index < 0 or index >= len(entries):
            return None
        entry = entries[index]
        if entry.event_id != last_event_id:
            raise OutOfOrder(f"queue ids are not contiguous at {last_event_id}")
        return (entry.event.seq, entry.event_id)
