"""Delivery of one committed outbox event to the queues that must see it.

This is the hot path (docs/architecture.md §9): one `realm_user` event in a realm
of 10,000 users becomes 10,000 pushes. So `route` looks queues up only
through the registry's user index for the event's target users (it never
scans every queue), pushes the same `SharedEvent` object onto each accepting
queue (no copy), and encodes nothing: JSON is produced later, once per event,
when a poll is answered.

`route_ephemeral` offers an ephemeral event (docs/architecture.md §5, "Ephemeral
events") the same way, through the same index, to the warm queues of its target
users; it takes no id and changes no outbox position, so it never overflows a queue.

Not thread-safe; call from the IOLoop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from queues.descriptor import ClientDescriptor
from queues.queue import EphemeralEvent, QueueOverflow
from queues.registry import QueueRegistry
from queues.types import SharedEvent


@dataclass(slots=True)
class RouteResult:
    """What the server must do after routing one event."""

    # Clients that accepted the event and have a waiting poll: answer them.
    woken: list[ClientDescriptor] = field(default_factory=list)
    # Clients whose queue overflowed (the event was not pushed). They are still
    # registered: the caller drops them through its one removal path, which also
    # answers a waiting poll with BAD_EVENT_QUEUE_ID.
    overflowed: list[ClientDescriptor] = field(default_factory=list)


def route(registry: QueueRegistry, event: SharedEvent) -> RouteResult:
    """Offer ``event`` to every queue of its target users. Changes no index: what to
    do with woken and overflowed clients is the caller's business."""
    result = RouteResult()
    for user_id in event.user_ids:
        for client in registry.iter_user(user_id):
            # User ids are global, so this never skips in practice; it keeps a
            # misrouted event from leaking into another realm's queue.
            if client.realm_id != event.realm_id:
                continue
            try:
                accepted = client.deliver(event)
            except QueueOverflow:
                result.overflowed.append(client)
                continue
            if accepted and client.waiter is not None:
                result.woken.append(client)
    return result


def route_ephemeral(
    registry: QueueRegistry, event: EphemeralEvent, now: float
) -> list[ClientDescriptor]:
    """Offer the ephemeral ``event`` to every queue of its target users whose filter
    accepts it; returns those with a waiting poll, to be answered now."""
    woken: list[ClientDescriptor] = []
    for user_id in event.user_ids:
        for client in registry.iter_user(user_id):
            if client.realm_id != event.realm_id:
                continue
            if client.offer_ephemeral(event, now) and client.waiter is not None:
                woken.append(client)
    return woken
