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

Not thread-safe; call from the IOLoop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from queues.types import SharedEvent

# Bounds memory per client: a client that never acknowledges gets its queue
# dropped (it re-registers on BAD_EVENT_QUEUE_ID) instead of growing without
# limit. A deactivation writes only a handful of grouped events, so a live
# client that polls normally never comes near this.
MAX_QUEUE_LENGTH = 10_000


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


class EventQueue:
    """The pending events of one client, oldest first."""

    __slots__ = ("_entries", "next_event_id", "last_seq", "newest_pruned_id")

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
        return not self._entries

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
