"""Cold queues, outbox retention and bounded memory, in-process with time injected."""

from __future__ import annotations

import json

import pytest

import queues.queue
from models.database import Database
from models.descriptors import load_descriptor
from models.outbox import outbox_count, outbox_pruned_seq
from server.engine.errors import BadEventQueueId
from server.engine.maintenance import COLD_QUEUE_IDLE_SECS, DEFAULT_OUTBOX_MIN_AGE_SECS
from server.engine.service import EventService, PollAnswer
from tests.helpers.realms import SampleRealm
from tests.helpers.statements import count_statements
from tests.test_service import FakeClock, create_stream, owner, request

DAY = 24 * 3600


def ids(answer: PollAnswer) -> list[int]:
    return [json.loads(event)["id"] for event in answer.events]


async def test_cold_queue_is_evicted_and_resumes_after_a_day(
    db: Database, realm: SampleRealm
) -> None:
    clock = FakeClock()
    service = EventService(db, clock=clock)
    await service.start()
    try:
        user = owner(realm)
        queue_id = (await service.register(user, request({"stream"}, lifespan=DAY)))["queue_id"]
        await create_stream(db, realm, "one")
        await service.drain_outbox()
        assert ids(await service.get_events(user, queue_id, -1, dont_block=True)) == [0]
        clock.now += COLD_QUEUE_IDLE_SECS + 1
        assert await service.evict_cold_queues() == 1
        assert service.registry.get(queue_id) is None, "an idle queue leaves memory"
        # A day of silence (within the lifespan), with events committed meanwhile.
        await create_stream(db, realm, "two")
        await create_stream(db, realm, "three")
        await service.drain_outbox()
        clock.now += DAY - COLD_QUEUE_IDLE_SECS - 100
        await service.collect_garbage()
        with count_statements(db.engine) as statements:
            answer = await service.get_events(user, queue_id, -1, dont_block=True)
        assert ids(answer) == [0, 1, 2], "same ids, nothing acknowledged was lost"
        rebuild = " ".join(statements.statements)
        assert "outbox_recipient" in rebuild, "the rebuild walks the recipient index"
        answer = await service.get_events(user, queue_id, 2, dont_block=True)
        assert answer.events == []
    finally:
        await service.stop()


async def test_a_cold_queue_past_its_lifespan_is_gone(db: Database, realm: SampleRealm) -> None:
    clock = FakeClock()
    service = EventService(db, clock=clock)
    await service.start()
    try:
        user = owner(realm)
        queue_id = (await service.register(user, request(lifespan=600)))["queue_id"]
        clock.now += COLD_QUEUE_IDLE_SECS + 1
        await service.evict_cold_queues()
        clock.now += 600
        await service.collect_garbage()
        with db.snapshot() as session:
            assert load_descriptor(session, queue_id) is None
        with pytest.raises(BadEventQueueId):
            await service.get_events(user, queue_id, -1, dont_block=True)
    finally:
        await service.stop()


async def test_outbox_is_pruned_once_no_queue_needs_it(db: Database, realm: SampleRealm) -> None:
    clock = FakeClock()
    service = EventService(db, clock=clock)
    await service.start()
    try:
        user = owner(realm)
        queue_id = (await service.register(user, request({"stream"}, lifespan=DAY)))["queue_id"]
        for name in ("a", "b", "c"):
            await create_stream(db, realm, name)
        await service.drain_outbox()
        # Rows are young: nothing is pruned, whatever the queues need.
        assert await service.prune_outbox_history() == 0
        clock.now += DEFAULT_OUTBOX_MIN_AGE_SECS + 10
        await service.get_events(user, queue_id, 0, dont_block=True)  # acknowledge "a" only
        await service.flush_checkpoints()
        pruned = await service.prune_outbox_history()
        assert pruned > 0
        answer = await service.get_events(user, queue_id, 0, dont_block=True)
        assert ids(answer) == [1, 2], "rows the queue still needs are kept"
        with db.snapshot() as session:
            assert outbox_pruned_seq(session, realm.realm_id) > 0
            kept = outbox_count(session, realm.realm_id)
        assert kept >= 2
    finally:
        await service.stop()


async def test_a_queue_too_far_behind_is_dropped_cleanly(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = EventService(db, outbox_min_age_secs=-DAY)
    service.maintenance.max_retained_events = 2
    await service.start()
    try:
        user = owner(realm)
        laggard = (await service.register(user, request({"stream"}, lifespan=DAY)))["queue_id"]
        for index in range(6):
            await create_stream(db, realm, f"s{index}")
        await service.drain_outbox()
        await service.prune_outbox_history()
        with pytest.raises(BadEventQueueId):
            await service.get_events(user, laggard, -1, dont_block=True)
        # A fresh register works and starts after the pruned history.
        fresh = (await service.register(user, request({"stream"})))["queue_id"]
        assert (await service.get_events(user, fresh, -1, dont_block=True)).events == []
    finally:
        await service.stop()


async def test_many_clients_that_never_poll_stay_bounded(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queues.queue, "MAX_QUEUE_LENGTH", 5)
    clock = FakeClock()
    service = EventService(db, clock=clock)
    await service.start()
    try:
        user = owner(realm)
        never_poll = [
            (await service.register(user, request({"stream"}, lifespan=DAY)))["queue_id"]
            for _ in range(50)
        ]
        for index in range(8):
            await create_stream(db, realm, f"flood {index}")
        await service.drain_outbox()
        assert len(service.registry) == 0, "every overflowing queue was dropped"
        for queue_id in never_poll[:3]:
            with pytest.raises(BadEventQueueId):
                await service.get_events(user, queue_id, -1, dont_block=True)
        # Clients that poll without acknowledging hit the same bound.
        lazy = (await service.register(user, request({"stream"}, lifespan=DAY)))["queue_id"]
        for index in range(6):
            await create_stream(db, realm, f"more {index}")
            await service.drain_outbox()
            try:
                await service.get_events(user, lazy, None, dont_block=True)
            except BadEventQueueId:
                break
        else:
            raise AssertionError("a queue that is never acknowledged must overflow")
    finally:
        await service.stop()
