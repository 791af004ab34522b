"""In-memory event queues for eventq: pure data structures, no I/O.

This package owns the per-client event queue (`queue`), the client's
subscription (`descriptor`), the indexes over live queues (`registry`),
delivery of one committed outbox event to the right queues (`routing`) and the
idle-queue sweep (`gc`). Shared vocabulary lives in `types`.

Nothing here touches the network, the database, Tornado or asyncio, and time
is always passed in as a float ``now``. None of it is thread-safe: call it
from the IOLoop thread only.
"""

from queues.descriptor import (
    DEFAULT_QUEUE_LIFESPAN_SECS,
    MAX_QUEUE_LIFESPAN_SECS,
    MIN_QUEUE_LIFESPAN_SECS,
    ClientDescriptor,
    LegacyClientRule,
    clamp_lifespan,
    parse_legacy_rules,
    parse_user_agent,
    uses_legacy_deactivation,
    version_tuple,
)
from queues.gc import GC_INTERVAL_SECS, find_expired
from queues.queue import (
    MAX_QUEUE_LENGTH,
    BadLastEventId,
    EventQueue,
    QueuedEvent,
    QueueOverflow,
)
from queues.registry import QueueRegistry
from queues.routing import RouteResult, route
from queues.types import Capabilities, JsonDict, SharedEvent

__all__ = [
    "DEFAULT_QUEUE_LIFESPAN_SECS",
    "GC_INTERVAL_SECS",
    "MAX_QUEUE_LENGTH",
    "MAX_QUEUE_LIFESPAN_SECS",
    "MIN_QUEUE_LIFESPAN_SECS",
    "BadLastEventId",
    "Capabilities",
    "ClientDescriptor",
    "EventQueue",
    "JsonDict",
    "LegacyClientRule",
    "QueueOverflow",
    "QueueRegistry",
    "QueuedEvent",
    "RouteResult",
    "SharedEvent",
    "clamp_lifespan",
    "find_expired",
    "parse_legacy_rules",
    "parse_user_agent",
    "route",
    "uses_legacy_deactivation",
    "version_tuple",
]
