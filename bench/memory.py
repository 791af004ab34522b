"""Memory per registered queue, live and evicted, and the time to rebuild a cold queue.

In-process (`tracemalloc` counts what the service holds; RSS would mix in the allocator's
free lists), time injected to evict queues without waiting a minute.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from typing import Any

from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.users import do_create_user
from bench.support import fresh_database
from models.database import Database
from models.tables import Role
from queues.types import Capabilities
from server.engine.authentication import AuthenticatedUser
from server.engine.maintenance import COLD_QUEUE_IDLE_SECS
from server.engine.registration import RegisterRequest
from server.engine.service import EventService

QUEUES = 2000
PENDING_EVENTS = 200
REBUILDS = 20
DAY = 24 * 3600


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _request() -> RegisterRequest:
    return RegisterRequest(
        event_types=frozenset({"stream"}),
        fetch_event_types=frozenset(),
        capabilities=Capabilities(deactivation_peer_events=True),
        include_subscribers=False,
        queue_lifespan_secs=DAY,
        user_agent="eventq-bench/1.0",
    )


async def _measure(db: Database, user: AuthenticatedUser, realm_id: int) -> dict[str, Any]:
    clock = Clock()
    service = EventService(db, clock=clock)
    await service.start()
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        queue_ids = [(await service.register(user, _request()))["queue_id"] for _ in range(QUEUES)]
        gc.collect()
        live = tracemalloc.take_snapshot()
        clock.now += COLD_QUEUE_IDLE_SECS + 1
        await service.evict_cold_queues()
        gc.collect()
        cold = tracemalloc.take_snapshot()
        tracemalloc.stop()

        def held(snapshot: tracemalloc.Snapshot) -> int:
            return sum(stat.size_diff for stat in snapshot.compare_to(before, "filename"))

        # Rebuild: queues with PENDING_EVENTS unacknowledged events, evicted, then polled.
        for index in range(PENDING_EVENTS):
            with db.write() as session:
                do_create_stream(session, realm_id, f"pending {index}")
        await service.drain_outbox()
        rebuild = []
        for queue_id in queue_ids[:REBUILDS]:
            started = time.perf_counter()
            answer = await service.get_events(user, queue_id, -1, dont_block=True)
            rebuild.append(time.perf_counter() - started)
            assert len(answer.events) == PENDING_EVENTS
        warm = []
        for queue_id in queue_ids[:REBUILDS]:
            started = time.perf_counter()
            await service.get_events(user, queue_id, -1, dont_block=True)
            warm.append(time.perf_counter() - started)
        return {
            "live_bytes_per_queue": held(live) / QUEUES,
            "cold_bytes_per_queue": held(cold) / QUEUES,
            "rebuild_ms": 1000 * statistics.median(rebuild),
            "warm_poll_ms": 1000 * statistics.median(warm),
        }
    finally:
        await service.stop()


def run(backend: str) -> dict[str, Any]:
    with fresh_database(backend) as url:
        db = Database(url)
        with db.write() as session:
            realm_id = do_create_realm(session, "memory").id
        with db.write() as session:
            owner = do_create_user(session, realm_id, "owner@memory.example.com", role=Role.OWNER)
        user = AuthenticatedUser(owner.id, realm_id, owner.email, owner.role)
        try:
            return asyncio.run(_measure(db, user, realm_id))
        finally:
            db.dispose()
