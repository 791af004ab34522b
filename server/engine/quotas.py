"""The queue cap: how many live queues one user may hold, whatever their request rate.

Owns the cap (enforced by `server.engine.registration.Registrar`, which drops the user's
least recently used queue to make room) and `KeyedLock`, which serializes one user's
queue-cap bookkeeping. The caps on one request's size are the API's
(`server.api.quotas`).

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

# Live queues one user may hold (durable descriptors in the database). Zulip's web app
# registers one per open tab, and every phone, terminal client and bot using the
# account adds one: a person with a browser full of tabs and a few devices stays far
# below 100. Each descriptor pins outbox history for its lifespan, so a register loop
# is held to 100 such pins per user.
DEFAULT_MAX_QUEUES_PER_USER = 100
# The setting's range: at least one queue, and no more than an operator could mean.
MAX_QUEUES_PER_USER_CEILING = 100_000


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
