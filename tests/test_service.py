"""The event service in-process, with time injected: heartbeats, GC, overflow, restart."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import queues.queue
from actions.streams import do_create_stream
from models.database import Database
from models.descriptors import load_descriptor
from queues.types import Capabilities
from server.engine.authentication import AuthenticatedUser
from server.engine.errors import BadEventQueueId
from server.engine.registration import RegisterRequest
from server.engine.service import EventService
from tests.helpers.realms import SampleRealm


class FakeClock:
    """Wall-clock time the test moves by hand (from the real time: rows carry real dates)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def request(event_types: set[str] | None = None, lifespan: int | None = None) -> RegisterRequest:
    return RegisterRequest(
        event_types=frozenset(event_types) if event_types else None,
        fetch_event_types=None,
        capabilities=Capabilities(deactivation_peer_events=True),
        include_subscribers=False,
        queue_lifespan_secs=lifespan,
        user_agent="ZulipPython/0.9.1",
    )


def owner(realm: SampleRealm) -> AuthenticatedUser:
    return AuthenticatedUser(realm.users["owner"], realm.realm_id, realm.emails["owner"], 100)


async def create_stream(db: Database, realm: SampleRealm, name: str) -> None:
    def work() -> None:
        with db.write() as session:
            do_create_stream(session, realm.realm_id, name)

    await asyncio.to_thread(work)


async def test_heartbeat_carries_the_newest_handed_out_id(db: Database, realm: SampleRealm) -> None:
    # A 50 ms heartbeat: the timeout under test.
    service = EventService(db, heartbeat_secs=(0.05, 0.05))
    await service.start()
    try:
        user = owner(realm)
        queue_id = (await service.register(user, request({"stream"})))["queue_id"]
        first = await service.get_events(user, queue_id, -1, dont_block=False)
        assert first.heartbeat and json.loads(first.events[0]) == {"type": "heartbeat", "id": -1}
        await create_stream(db, realm, "news")
        # Routed before the poll: the 50 ms heartbeat must not race the delivery.
        await service.drain_outbox()
        answer = await service.get_events(user, queue_id, -1, dont_block=False)
        assert [json.loads(e)["id"] for e in answer.events] == [0]
        beat = await service.get_events(user, queue_id, 0, dont_block=False)
        assert json.loads(beat.events[0]) == {"type": "heartbeat", "id": 0}
        # Acknowledging the heartbeat's id loses nothing: the next event is id 1.
        await create_stream(db, realm, "more")
        await service.drain_outbox()
        after = await service.get_events(user, queue_id, 0, dont_block=False)
        assert [json.loads(e)["id"] for e in after.events] == [1]
    finally:
        await service.stop()


async def test_gc_expires_idle_queues_but_not_waiting_ones(
    db: Database, realm: SampleRealm
) -> None:
    clock = FakeClock()
    service = EventService(db, clock=clock)
    await service.start()
    try:
        user = owner(realm)
        idle = (await service.register(user, request(lifespan=60)))["queue_id"]
        waiting = (await service.register(user, request(lifespan=60)))["queue_id"]
        # A parked poll is a future in the queue's waiter slot.
        parked = service.registry.get(waiting)
        assert parked is not None
        parked.waiter = asyncio.get_running_loop().create_future()
        clock.now += 61
        await service.collect_garbage()
        assert service.registry.get(idle) is None
        assert service.registry.get(waiting) is not None
        with pytest.raises(BadEventQueueId):
            await service.get_events(user, idle, -1, dont_block=True)
        with db.snapshot() as session:
            assert load_descriptor(session, idle) is None
            assert load_descriptor(session, waiting) is not None
    finally:
        await service.stop()


async def test_overflowing_queue_is_dropped(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queues.queue, "MAX_QUEUE_LENGTH", 3)
    service = EventService(db)
    await service.start()
    try:
        user = owner(realm)
        queue_id = (await service.register(user, request({"stream"})))["queue_id"]
        for i in range(4):
            await create_stream(db, realm, f"flood {i}")
        await service.drain_outbox()
        assert service.registry.get(queue_id) is None
        with pytest.raises(BadEventQueueId):
            await service.get_events(user, queue_id, -1, dont_block=True)
    finally:
        await service.stop()


async def test_restart_rebuilds_queues_lazily_with_the_same_ids(
    db: Database, realm: SampleRealm
) -> None:
    user = owner(realm)
    service = EventService(db)
    await service.start()
    queue_id = (await service.register(user, request({"stream"})))["queue_id"]
    for name in ("a", "b", "c"):
        await create_stream(db, realm, name)
    await service.drain_outbox()
    answer = await service.get_events(user, queue_id, -1, dont_block=True)
    assert [json.loads(e)["id"] for e in answer.events] == [0, 1, 2]
    await service.get_events(user, queue_id, 1, dont_block=True)  # acknowledge 0 and 1
    await service.stop()

    await create_stream(db, realm, "d")
    restarted = EventService(db)
    await restarted.start()
    try:
        assert len(restarted.registry) == 0, "queues come back on their first poll"
        answer = await restarted.get_events(user, queue_id, 1, dont_block=True)
        events = [json.loads(e) for e in answer.events]
        assert [(e["id"], e["streams"][0]["name"]) for e in events] == [(2, "c"), (3, "d")]
    finally:
        await restarted.stop()
