"""The poll ledger: per queue, the newest event id its polls acknowledged and the newest
an answer handed out, which tells a long-poll that did work for its client from a
wasted one (`server.api.ratelimit` counts only the wasted against the polls budget).

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Queues whose polls the ledger remembers; a forgotten queue's next poll is judged as a
# new queue's first poll (counted only if wasted), so this only bounds memory.
MAX_TRACKED_QUEUES = 50_000


@dataclass(slots=True)
class _QueueRecord:
    acknowledged: int
    delivered: int


class PollLedger:
    """Per queue, the newest event id its polls acknowledged and the newest delivered:
    what tells a poll that did work for its client from a wasted one."""

    def __init__(self, capacity: int = MAX_TRACKED_QUEUES) -> None:
        self.capacity = capacity
        self._queues: OrderedDict[str, _QueueRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queues)

    def acknowledges_new(self, queue_id: str, last_event_id: int | None) -> bool:
        """Whether this poll acknowledges events that an earlier answer handed out and
        no earlier poll of the queue acknowledged.

        Only ids up to the newest one handed out count: the service refuses any other
        acknowledgement, so a client can make such polls only as fast as its queue
        receives events (an id beyond what it was given is not progress, whatever the
        service answers). `RateLimiter.end_poll` still counts the poll as wasted if the
        service refused it.
        """
        record = self._queues.get(queue_id)
        return (
            record is not None
            and last_event_id is not None
            and record.acknowledged < last_event_id <= record.delivered
        )

    def answered(self, queue_id: str, last_event_id: int | None, newest_event: int | None) -> bool:
        """Record a successful answer; True if it handed out an event not handed out by
        an earlier answer (`newest_event`: the newest event id it carried, if any)."""
        record = self._queues.get(queue_id)
        acknowledged = -1 if last_event_id is None else last_event_id
        if record is None:
            delivered = -1 if newest_event is None else newest_event
            self._queues[queue_id] = _QueueRecord(acknowledged, delivered)
            if len(self._queues) > self.capacity:
                self._queues.popitem(last=False)
            return newest_event is not None
        self._queues.move_to_end(queue_id)
        record.acknowledged = max(record.acknowledged, acknowledged)
        if newest_event is not None and newest_event > record.delivered:
            record.delivered = newest_event
            return True
        return False

    def forget(self, queue_id: str) -> None:
        """The queue was deleted."""
        self._queues.pop(queue_id, None)


@dataclass(slots=True)
class PollTicket:
    """What `RateLimiter.begin_poll` learned, for `end_poll`."""

    user_id: int
    queue_id: str | None
    last_event_id: int | None
    acknowledges_new: bool
