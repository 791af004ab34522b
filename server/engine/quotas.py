"""Quotas: how much one user may hold or ask for at once, whatever their request rate.

Owns the cap on live queues per user (enforced by `EventService.register`, which drops
the user's least recently used queue to make room), the caps on the size of one
subscription request (checked by the subscription handler before anything runs), and
`KeyedLock`, which serializes one user's queue-cap bookkeeping.

Why the queue cap drops instead of refusing: a queue outlives its client when the
client crashes, loses its network or is closed without deleting it, and stays until
its lifespan (up to a week) runs out. A user whose devices and tabs left such queues
behind would, with refusals, be locked out until they expired, and Zulip's clients
retry a refused register forever. Dropping the least recently used queue reclaims an
abandoned one first; if it was still in use after all, its client's next poll gets
BAD_EVENT_QUEUE_ID and it registers again, the recovery every Zulip client already
implements. A queue with a poll waiting on it counts as used now, so it goes last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

from server.abuse import REFUSED_SUBSCRIPTION_SIZE, AbuseMonitor
from server.errors import BadRequest

# Live queues one user may hold (durable descriptors in the database). Zulip's web app
# registers one per open tab, and every phone, terminal client and bot using the
# account adds one: a person with a browser full of tabs and a few devices stays far
# below 100. Each descriptor pins outbox history for its lifespan, so a register loop
# is held to 100 such pins per user.
DEFAULT_MAX_QUEUES_PER_USER = 100
# The setting's range: at least one queue, and no more than an operator could mean.
MAX_QUEUES_PER_USER_CEILING = 100_000

# Channels named in one subscription request. Zulip's clients subscribe a user to a
# handful at a time; an organization's whole channel list rarely exceeds a thousand.
MAX_SUBSCRIPTION_CHANNELS = 1_000
# Users named (`principals`) in one subscription request: enough to add a large team
# to a channel in one call.
MAX_SUBSCRIPTION_PRINCIPALS = 1_000
# Channels x users in one request: each pair is a subscription row and events to every
# subscriber's queues, all in one transaction. 100,000 (all of a 10,000-user realm to
# ten channels) takes seconds; the product of the two caps above would take an hour.
MAX_SUBSCRIPTION_PAIRS = 100_000


def check_subscription_request(
    user_id: int, channels: int, principals: int | None, monitor: AbuseMonitor | None
) -> None:
    """Refuse (400 BAD_REQUEST, before anything changes) a subscription request naming
    too many channels or users. `principals` None: the caller alone."""
    problem = None
    if channels > MAX_SUBSCRIPTION_CHANNELS:
        problem = f"{channels} channels (at most {MAX_SUBSCRIPTION_CHANNELS})"
    elif principals is not None and principals > MAX_SUBSCRIPTION_PRINCIPALS:
        problem = f"{principals} principals (at most {MAX_SUBSCRIPTION_PRINCIPALS})"
    elif channels * (principals or 1) > MAX_SUBSCRIPTION_PAIRS:
        problem = (
            f"{channels} channels for {principals} users "
            f"(at most {MAX_SUBSCRIPTION_PAIRS} subscriptions)"
        )
    if problem is None:
        return
    if monitor is not None:
        monitor.record(REFUSED_SUBSCRIPTION_SIZE, f"user {user_id}", problem)
    raise BadRequest(f"Too many subscriptions in one request: {problem}.")


class KeyedLock:
    """An asyncio lock per key, forgotten when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock_now, users_now = self._locks[key]
            if users_now <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock_now, users_now - 1)
