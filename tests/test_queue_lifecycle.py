"""A queue's lifecycle and the consumer's resilience, in-process with time injected.

The holes a review of the old service found, each pinned by a test: a cold queue
rebuilt while its owner is deactivated, dropped queue ids kept forever, a failed
register leaving its descriptor behind, the cut-off found by sniffing JSON, and one bad
outbox row stopping delivery for every realm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy.event
from sqlalchemy import update

import queues.queue
import server.engine.consumer
import server.engine.registration
from actions.realms import do_create_realm
from actions.users import do_deactivate_user, do_reactivate_user
from models.database import Database
from models.descriptors import load_descriptor
from models.outbox import PendingEvent, append_events, lock_realm, read_events, state_position
from models.tables import OutboxEvent
from server.engine.authentication import AuthenticatedUser
from server.engine.database_threads import ShuttingDown
from server.engine.errors import BadEventQueueId, InvalidApiKey, RateLimited, UserDeactivated
from server.engine.live_queues import DropCause, QueueState
from server.engine.maintenance import COLD_QUEUE_IDLE_SECS
from server.engine.service import EventService
from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server
from tests.helpers.statements import count_statements
from tests.test_server import await_condition
from tests.test_service import FakeClock, create_stream, owner, request

# Bounds every wait on a condition; generous, because a busy machine is slow.
WAIT_SECS = 20.0


def member(realm: SampleRealm) -> AuthenticatedUser:
    return AuthenticatedUser(realm.users["member"], realm.realm_id, realm.emails["member"], 400)


async def in_thread(db: Database, work: Callable[[Any], object]) -> None:
    def run() -> None:
        with db.write() as session:
            work(session)

    await asyncio.to_thread(run)


async def deactivate(db: Database, realm: SampleRealm, name: str) -> None:
    await in_thread(db, lambda s: do_deactivate_user(s, realm.realm_id, realm.users[name]))


def descriptor_exists(db: Database, queue_id: str) -> bool:
    with db.snapshot() as session:
        return load_descriptor(session, queue_id) is not None


class Gate:
    """Holds a database-thread call until the test opens it, and says when it is held."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._open = threading.Event()
        self._loop = asyncio.get_running_loop()

    def hold(self) -> None:
        """Called on a database thread: report arrival, then wait for `open`."""
        self._loop.call_soon_threadsafe(self.reached.set)
        if not self._open.wait(WAIT_SECS):
            raise TimeoutError("the test never opened the gate")

    def open(self) -> None:
        self._open.set()


@pytest.mark.parametrize("held", ["descriptor_read", "catch_up_read"])
async def test_a_cold_queue_rebuilt_across_its_owners_deactivation_is_refused(
    db: Database, realm: SampleRealm, held: str
) -> None:
    # Heartbeats far beyond the test's wait: a queue that came back would park, and the
    # poll would not end in time.
    clock = FakeClock()
    service = EventService(db, clock=clock, heartbeat_secs=(300.0, 300.0))
    await service.start()
    try:
        user = member(realm)
        queue_id = (await service.register(user, request(lifespan=3600)))["queue_id"]
        clock.now += COLD_QUEUE_IDLE_SECS + 1
        assert await service.evict_cold_queues() == 1

        gate = Gate()
        if held == "descriptor_read":
            # The descriptor is read before the deactivation commits, then held.
            read_descriptor = service.activator._claim

            def slow_descriptor(queue_id: str, user_id: int, now: float) -> Any:
                record = read_descriptor(queue_id, user_id, now)
                gate.hold()
                return record

            service.activator._claim = slow_descriptor  # type: ignore[method-assign]
        else:
            # The queue is claimed in memory; its catch-up read waits for the gate.
            read_outbox = service.activator._read_user_outbox

            def slow_outbox(*args: Any) -> Any:
                gate.hold()
                return read_outbox(*args)

            service.activator._read_user_outbox = slow_outbox  # type: ignore[method-assign, assignment]

        poll = asyncio.create_task(service.get_events(user, queue_id, -1, dont_block=False))
        async with asyncio.timeout(WAIT_SECS):
            await gate.reached.wait()
        await deactivate(db, realm, "member")
        await service.drain_outbox()  # the cut-off happens here
        gate.open()
        with pytest.raises(UserDeactivated):
            async with asyncio.timeout(WAIT_SECS):
                await poll
        assert service.registry.get(queue_id) is None
        await service.maintenance.delete_dropped()
        assert not descriptor_exists(db, queue_id)
    finally:
        await service.stop()


async def test_dropped_queues_leave_no_trace_once_their_descriptors_are_deleted(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queues.queue, "MAX_QUEUE_LENGTH", 1)
    service = EventService(db)
    await service.start()
    try:
        deleted = (await service.register(owner(realm), request()))["queue_id"]
        overflowing = (await service.register(owner(realm), request({"stream"})))["queue_id"]
        cut_off = [
            (await service.register(member(realm), request({"realm_user"})))["queue_id"]
            for _ in "ab"
        ]

        # A deletion that fails keeps the queue refused, and is retried.
        maintenance = type(service.maintenance)
        original_delete = maintenance._delete
        failures = iter([RuntimeError("database down")])

        def flaky_delete(self: Any, pending: Any) -> None:
            error = next(failures, None)
            if error is not None:
                raise error
            original_delete(self, pending)

        monkeypatch.setattr(maintenance, "_delete", flaky_delete)
        with pytest.raises(RuntimeError):
            await service.delete_queue(owner(realm), deleted)
        assert service.live.is_tombstoned(deleted)
        with pytest.raises(BadEventQueueId):
            await service.get_events(owner(realm), deleted, -1, dont_block=True)

        await create_stream(db, realm, "one")
        await create_stream(db, realm, "two")  # overflows the one-event queue
        await deactivate(db, realm, "member")
        await service.drain_outbox()
        # Dropped: each is either still tombstoned, awaiting its deletion, or already
        # durably deleted by the background deletion the drops requested (it may have
        # run while the test drained the outbox).
        for queue_id in (overflowing, *cut_off):
            assert service.live.is_tombstoned(queue_id) or not descriptor_exists(db, queue_id)
        await service.maintenance.delete_dropped()

        assert service.live.tombstone_count == 0, "nothing is kept once it is durable"
        for queue_id in (deleted, overflowing, *cut_off):
            assert not descriptor_exists(db, queue_id)
            assert service.live.get(queue_id) is None
        assert service.live.drops[DropCause.DELETED] == 1
        assert service.live.drops[DropCause.OVERFLOWED] == 1
        assert service.live.drops[DropCause.DEACTIVATED] == 2
    finally:
        await service.stop()


async def test_a_register_whose_activation_fails_leaves_no_descriptor(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = EventService(db)
    await service.start()
    try:
        created: list[str] = []
        original_catch_up = service.activator.catch_up

        async def failing_catch_up(live: Any, **kwargs: Any) -> None:
            created.append(live.queue_id)
            assert descriptor_exists(db, live.queue_id), "the descriptor was written first"
            raise RuntimeError("injected activation failure")

        monkeypatch.setattr(service.activator, "catch_up", failing_catch_up)
        with pytest.raises(RuntimeError, match="injected"):
            await service.register(owner(realm), request())
        monkeypatch.setattr(service.activator, "catch_up", original_catch_up)
        await service.maintenance.delete_dropped()
        assert created and not descriptor_exists(db, created[0])
        assert service.live.tombstone_count == 0
        assert service.live.drops[DropCause.ACTIVATION_FAILED] == 1
        # The service is unharmed: the next register works.
        assert (await service.register(owner(realm), request()))["queue_id"]
    finally:
        await service.stop()


async def test_the_cut_off_is_a_typed_column_of_the_deactivation_event(
    db: Database, realm: SampleRealm
) -> None:
    with db.snapshot() as session:
        before = read_events(session, realm.realm_id, 0)
    await deactivate(db, realm, "member")
    await in_thread(db, lambda s: do_reactivate_user(s, realm.realm_id, realm.users["member"]))
    with db.snapshot() as session:
        rows = read_events(session, realm.realm_id, before[-1].seq if before else 0)
    cut_offs = [(row.cut_off_user_id, json.loads(row.event_json)) for row in rows]
    marked = [(user, event) for user, event in cut_offs if user is not None]
    assert len(marked) == 1, "only the deactivation's realm_user update is a cut-off"
    user_id, event = marked[0]
    assert user_id == realm.users["member"]
    assert event == {
        "type": "realm_user",
        "op": "update",
        "person": {"user_id": user_id, "is_active": False},
    }


async def test_an_event_that_only_looks_like_a_deactivation_cuts_nobody_off(
    db: Database, realm: SampleRealm
) -> None:
    service = EventService(db)
    await service.start()
    try:
        queue_id = (await service.register(member(realm), request()))["queue_id"]
        # A realm_user update that reads like a deactivation but carries no cut-off.
        lookalike = {
            "type": "realm_user",
            "op": "update",
            "person": {"user_id": realm.users["member"], "is_active": False},
        }

        def write(session: Any) -> None:
            lock_realm(session, realm.realm_id)
            append_events(
                session, realm.realm_id, [PendingEvent(lookalike, [realm.users["owner"]])]
            )

        await in_thread(db, write)
        await service.drain_outbox()
        assert service.registry.get(queue_id) is not None
    finally:
        await service.stop()


async def test_a_bad_row_stops_only_its_realm_and_is_retried_with_capped_backoff(
    db: Database, realm: SampleRealm, caplog: pytest.LogCaptureFixture
) -> None:
    other = make_sample_realm(db, "other")
    service = EventService(db)
    now = [1000.0]
    # The consumer without its background task: this test drives every drain.
    await service.consumer.start()
    service.consumer.monotonic = lambda: now[0]
    try:
        broken_queue = (await service.register(owner(realm), request({"stream"})))["queue_id"]
        healthy_user = owner(other)
        healthy_queue = (await service.register(healthy_user, request({"stream"})))["queue_id"]

        def write_bad_row(session: Any) -> None:
            lock_realm(session, realm.realm_id)
            event = {"type": "stream", "op": "create", "streams": [{"name": "mended"}]}
            [seq] = append_events(session, realm.realm_id, [PendingEvent(event, [owner(realm).id])])
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.realm_id == realm.realm_id, OutboxEvent.seq == seq)
                .values(event="{not json")
            )

        await in_thread(db, write_bad_row)
        await create_stream(db, other, "fine")
        with caplog.at_level(logging.ERROR, logger="eventq.consumer"):
            await service.drain_outbox()

        answer = await service.get_events(healthy_user, healthy_queue, -1, dont_block=True)
        assert [json.loads(e)["streams"][0]["name"] for e in answer.events] == ["fine"]
        status = service.delivery_status(realm.realm_id)
        assert status["failing"] and status["failures_total"] == 1
        assert "JSONDecodeError" in status["last_error"]
        assert not service.delivery_status(other.realm_id)["failing"]
        failures = [r for r in caplog.records if r.name == "eventq.consumer"]
        assert failures and failures[0].exc_info is not None, "logged with its traceback"

        # Retried only when due, each time twice as late, never more than the cap.
        delays = []
        for _ in range(9):
            delays.append(service.delivery_status(realm.realm_id)["retry_in_secs"])
            await service.drain_outbox()  # not due yet: skipped
            assert service.delivery_status(realm.realm_id)["consecutive_failures"] == len(delays)
            now[0] += delays[-1]
            await service.drain_outbox()  # due: fails again
        assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
        assert max(delays) == server.engine.consumer.MAX_RETRY_DELAY_SECS

        # Repaired, the realm resumes in order with nothing lost.
        def repair(session: Any) -> None:
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.event == "{not json")
                .values(event='{"type":"stream","op":"create","streams":[{"name":"mended"}]}')
            )

        await in_thread(db, repair)
        await create_stream(db, realm, "after")
        now[0] += server.engine.consumer.MAX_RETRY_DELAY_SECS
        await service.drain_outbox()
        assert not service.delivery_status(realm.realm_id)["failing"]
        answer = await service.get_events(owner(realm), broken_queue, -1, dont_block=True)
        names = [json.loads(e)["streams"][0]["name"] for e in answer.events]
        assert names == ["mended", "after"]
    finally:
        await service.stop()


async def test_a_large_batch_yields_to_the_event_loop(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every row takes longer than a slice of zero: routing yields after each one.
    monkeypatch.setattr(server.engine.consumer, "ROUTING_SLICE_SECS", 0.0)
    service = EventService(db)
    # The consumer without its background task, which could route the batch first.
    await service.consumer.start()
    try:
        await service.register(owner(realm), request({"stream"}))
        batch = 30

        def many(session: Any) -> None:
            from actions.streams import do_create_stream

            for index in range(batch):
                do_create_stream(session, realm.realm_id, f"bulk {index}")

        start = service.consumer.routed[realm.realm_id]
        await in_thread(db, many)
        seen: set[int] = set()
        loop = asyncio.get_running_loop()

        def observe() -> None:
            # A callback that runs once per turn of the loop: it only runs mid-batch if
            # the consumer hands the loop back while routing.
            seen.add(service.consumer.routed[realm.realm_id])
            observer[0] = loop.call_soon(observe)

        observer = [loop.call_soon(observe)]
        await service.drain_outbox()
        observer[0].cancel()
        middle = {seq for seq in seen if start < seq < start + batch}
        assert middle, "other tasks ran while the batch was being routed"
    finally:
        await service.stop()


@pytest.mark.parametrize("deferral", [60.0, 0.0], ids=["answered-once-routed", "no-deferral"])
async def test_the_rows_of_one_action_reach_a_parked_poll_in_one_answer(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch, deferral: float
) -> None:
    # The consumer yields to the loop after every row, as it does in a large realm where
    # routing one action's rows outlasts a slice; the polls it reached are answered once
    # the batch is routed. Without that deferral (the control case), the first row's
    # answer would go out alone.
    monkeypatch.setattr(server.engine.consumer, "ROUTING_SLICE_SECS", 0.0)
    monkeypatch.setattr(server.engine.consumer, "MAX_ANSWER_DEFERRAL_SECS", deferral)
    from actions.streams import do_create_stream
    from actions.subscriptions import bulk_add_subscriptions

    def channels(session: Any) -> None:
        ids = [do_create_stream(session, realm.realm_id, f"shared {i}").id for i in range(3)]
        bulk_add_subscriptions(
            session, realm.realm_id, [realm.users["owner"], realm.users["member"]], ids
        )

    await in_thread(db, channels)
    service = EventService(db)
    await service.start()
    try:
        queue_id = (await service.register(owner(realm), request({"subscription", "realm_user"})))[
            "queue_id"
        ]
        parked = asyncio.create_task(service.get_events(owner(realm), queue_id, -1, False))
        await deactivate(db, realm, "member")
        async with asyncio.timeout(WAIT_SECS):
            answer = await parked
        kinds = [(e["type"], e["op"]) for e in map(json.loads, answer.events)]
        if deferral:
            # Every peer_remove, then the deactivation: one answer, not one per row.
            assert kinds[-1] == ("realm_user", "update") and len(kinds) >= 2
            assert set(kinds[:-1]) == {("subscription", "peer_remove")}
        else:
            assert kinds == [("subscription", "peer_remove")]
    finally:
        await service.stop()


async def test_a_reactivated_user_keeps_the_queue_registered_after_reactivation(
    db: Database, realm: SampleRealm
) -> None:
    service = EventService(db)
    await service.start()
    try:
        old = (await service.register(member(realm), request()))["queue_id"]
        await deactivate(db, realm, "member")
        await service.drain_outbox()
        await in_thread(db, lambda s: do_reactivate_user(s, realm.realm_id, realm.users["member"]))
        new = (await service.register(member(realm), request()))["queue_id"]
        await service.drain_outbox()
        await service.maintenance.delete_dropped()
        assert not descriptor_exists(db, old)
        assert descriptor_exists(db, new), "the cut-off deletes only queues from before it"
        live = service.live.get(new)
        assert live is not None and live.state is QueueState.WARM
    finally:
        await service.stop()


async def test_a_second_realm_created_after_start_is_delivered(db: Database) -> None:
    service = EventService(db)
    await service.start()
    try:
        late = make_sample_realm(db, "late")
        queue_id = (await service.register(owner(late), request({"stream"})))["queue_id"]
        await create_stream(db, late, "news")
        await service.drain_outbox()
        answer = await service.get_events(owner(late), queue_id, -1, dont_block=True)
        assert [json.loads(e)["streams"][0]["name"] for e in answer.events] == ["news"]
        await in_thread(db, lambda s: do_create_realm(s, "empty"))
        await service.drain_outbox()
    finally:
        await service.stop()


def test_a_paused_realm_is_reported_by_the_admin_view_and_the_cli(
    realm: SampleRealm, db: Database, database_url: str
) -> None:
    # The admin view is re-read until the condition holds: more than the default per-user
    # budget of requests, which tests/test_abuse.py covers.
    with live_server(database_url, env={"EVENTQ_RATE_LIMIT_USER": "off"}) as server:
        check_paused_realm_reporting(server, realm, db, database_url)


def check_paused_realm_reporting(
    server: LiveServer, realm: SampleRealm, db: Database, database_url: str
) -> None:
    admin = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
    assert admin.ok("GET", "/eventq/queues")["delivery"]["failing"] is False

    with db.write() as session:
        lock_realm(session, realm.realm_id)
        event = {"type": "stream", "op": "create", "streams": []}
        [seq] = append_events(
            session, realm.realm_id, [PendingEvent(event, [realm.users["owner"]])]
        )
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.realm_id == realm.realm_id, OutboxEvent.seq == seq)
            .values(event="{not json")
        )
    await_condition(lambda: admin.ok("GET", "/eventq/queues")["delivery"]["failing"], WAIT_SECS)
    delivery = admin.ok("GET", "/eventq/queues")["delivery"]
    assert delivery["routed_seq"] == seq - 1 and delivery["failures_total"] >= 1
    listing = run_eventq(database_url, "queues", "zulip", "--server", server.url)
    assert listing.returncode == 0
    assert f"delivery for realm zulip on shard main is paused after seq {seq - 1}" in listing.stderr

    with db.write() as session:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.realm_id == realm.realm_id, OutboxEvent.seq == seq)
            .values(event='{"type":"stream","op":"create","streams":[]}')
        )
    await_condition(lambda: not admin.ok("GET", "/eventq/queues")["delivery"]["failing"], WAIT_SECS)
    assert (
        "paused" not in run_eventq(database_url, "queues", "zulip", "--server", server.url).stderr
    )


async def test_a_poll_of_a_warm_queue_does_not_touch_the_database(
    db: Database, realm: SampleRealm
) -> None:
    service = EventService(db)
    await service.start()
    try:
        email, key = realm.emails["member"], realm.api_keys["member"]
        user = await service.authenticate(email, key)
        queue_id = (await service.register(user, request()))["queue_id"]
        checkouts = []

        def on_checkout(*args: Any) -> None:
            checkouts.append(args)

        sqlalchemy.event.listen(db.engine, "checkout", on_checkout)
        try:
            for _ in range(3):
                polled_by = await service.authenticate(email.upper(), key)
                await service.get_events(polled_by, queue_id, -1, dont_block=True)
        finally:
            sqlalchemy.event.remove(db.engine, "checkout", on_checkout)
        assert checkouts == [], "authentication and the poll were served from memory"

        with pytest.raises(InvalidApiKey):
            await service.authenticate(email, key[:-1] + ("x" if key[-1] != "x" else "y"))
        # The deactivation, once routed, reaches the cache: the key stops working.
        await deactivate(db, realm, "member")
        await service.drain_outbox()
        with pytest.raises(UserDeactivated):
            await service.authenticate(email, key)
        await in_thread(db, lambda s: do_reactivate_user(s, realm.realm_id, realm.users["member"]))
        await service.drain_outbox()
        assert (await service.authenticate(email, key)).id == realm.users["member"]
    finally:
        await service.stop()


async def test_polls_that_miss_the_credentials_cache_together_share_one_read(
    db: Database, realm: SampleRealm
) -> None:
    service = EventService(db)
    await service.start()
    try:
        email, key = realm.emails["member"], realm.api_keys["member"]
        reads = 0
        read = service.authenticator._read_credentials

        def counted(normalized: str) -> Any:
            nonlocal reads
            reads += 1
            return read(normalized)

        service.authenticator._read_credentials = counted  # type: ignore[method-assign, assignment]
        users = await asyncio.gather(*(service.authenticate(email, key) for _ in range(50)))
        assert {u.id for u in users} == {realm.users["member"]}
        assert reads == 1
        # A wrong key among them is still refused, from the same read.
        service.credentials.forget_user(realm.users["member"])
        results = await asyncio.gather(
            service.authenticate(email, key),
            service.authenticate(email, "x" * len(key)),
            return_exceptions=True,
        )
        assert isinstance(results[1], InvalidApiKey) and reads == 2
    finally:
        await service.stop()


async def test_registers_past_the_in_flight_bound_are_shed_with_a_time_to_retry(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server.engine.registration, "MAX_REGISTERS_IN_FLIGHT", 2)
    service = EventService(db)
    await service.start()
    try:
        gate = Gate()
        original_run = service.threads.run
        held = 0

        async def slow_run(func: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal held
            if getattr(func, "__name__", "") == "_insert":
                held += 1
                await asyncio.to_thread(gate.hold)
            return await original_run(func, *args, **kwargs)

        monkeypatch.setattr(service.threads, "run", slow_run)
        first = asyncio.create_task(service.register(owner(realm), request()))
        second = asyncio.create_task(service.register(member(realm), request()))
        async with asyncio.timeout(WAIT_SECS):
            # Both registers' descriptors wait in the held group write (or the next).
            while held < 1:
                await gate.reached.wait()
                gate.reached.clear()
        assert service.registrar._registers_in_flight == 2
        with pytest.raises(RateLimited) as shed:
            await service.register(owner(realm), request())
        assert 1.0 <= shed.value.to_json()["retry-after"] <= 3.0
        assert shed.value.headers["Retry-After"] in {"1", "2", "3"}
        assert service.registrar.registers_shed == 1
        gate.open()
        async with asyncio.timeout(WAIT_SECS):
            answers = await asyncio.gather(first, second)
        assert all(answer["queue_id"] for answer in answers)
        # Once the storm passes, registers are served again.
        assert (await service.register(owner(realm), request()))["queue_id"]
    finally:
        await service.stop()


def _append(db: Database, realm_id: int, event: dict[str, Any], user_ids: list[int]) -> None:
    with db.write() as session:
        lock_realm(session, realm_id)
        append_events(session, realm_id, [PendingEvent(event, user_ids)])


async def test_registers_share_one_state_read_until_an_event_may_change_it(
    db: Database, realm: SampleRealm
) -> None:
    from actions.users import do_create_user

    service = EventService(db)
    await service.start()
    try:
        first = await service.register(owner(realm), request())
        with count_statements(db.engine) as statements:
            second = await service.register(member(realm), request())
        reads = [s for s in statements.statements if s.lstrip().upper().startswith("SELECT")]
        assert any("realm.state_seq" in s for s in reads)
        state_reads = [
            s for s in reads if any(f"FROM {t}" in s for t in ("user_profile", "stream", "subs"))
        ]
        assert not state_reads, "a register at an unchanged state reads only its position"
        assert second["realm_users"] is first["realm_users"]

        # A message changes nothing a register shows: the read is still shared, and
        # the new queue starts after the message.
        everyone = list(realm.users.values())
        _append(db, realm.realm_id, {"type": "message", "id": 1}, everyone)
        third = await service.register(member(realm), request())
        assert third["realm_users"] is first["realm_users"]
        with db.snapshot() as session:
            record = load_descriptor(session, third["queue_id"])
        assert record is not None and record.checkpoint_seq == realm_seq(db, realm.realm_id)

        # A new user may: the state is read again, and shows them.
        await in_thread(db, lambda s: do_create_user(s, realm.realm_id, "new@zulip.example.com"))
        fourth = await service.register(member(realm), request())
        assert "new@zulip.example.com" in {u["email"] for u in fourth["realm_users"]}
        assert "new@zulip.example.com" not in {u["email"] for u in first["realm_users"]}
        # So may any event that is not a message (an unknown type included).
        _append(db, realm.realm_id, {"type": "something_new"}, everyone)
        fifth = await service.register(member(realm), request())
        assert fifth["realm_users"] is not fourth["realm_users"]
    finally:
        await service.stop()


async def test_registers_that_find_no_state_share_one_or_two_reads(
    db: Database, realm: SampleRealm
) -> None:
    service = EventService(db)
    await service.start()
    try:
        with count_statements(db.engine) as statements:
            answers = await asyncio.gather(
                *(service.register(owner(realm), request()) for _ in range(20))
            )
        assert len({answer["queue_id"] for answer in answers}) == 20
        state_reads = [
            s for s in statements.statements if "FROM user_profile" in s and "ORDER BY" in s
        ]
        # The first read runs; every register that arrived meanwhile joins the next one.
        assert 1 <= len(state_reads) <= 2, f"{len(state_reads)} reads of the realm's state"
    finally:
        await service.stop()


def realm_seq(db: Database, realm_id: int) -> int:
    with db.snapshot() as session:
        position = state_position(session, realm_id)
    assert position is not None
    return position[0]


async def test_a_request_that_arrives_while_the_server_stops_gets_a_503(
    db: Database, realm: SampleRealm
) -> None:
    service = EventService(db)
    await service.start()
    await service.stop()
    with pytest.raises(ShuttingDown) as refused:
        await service.register(owner(realm), request())
    assert refused.value.status == 503


async def test_registers_of_a_moment_share_their_users_message_state_reads(
    db: Database, realm: SampleRealm
) -> None:
    """Registers asking for their users' own message state at the same moment share one
    snapshot and its statements, and each still gets exactly its own user's state."""
    from actions.message_flags import check_update_message_flags
    from actions.messages import ChannelTarget, DirectTarget, check_send_message
    from models.messages.unreads import user_state
    from models.register_keys import own_message_keys
    from queues.types import Capabilities
    from server.engine.registration import RegisterRequest

    names = ("owner", "admin", "member", "loner", "guest")
    with db.write() as session:
        channel = check_send_message(
            session, realm.realm_id, realm.users["owner"], ChannelTarget("public"), "t", "hi", "x"
        )
    with db.write() as session:
        check_send_message(
            session,
            realm.realm_id,
            realm.users["member"],
            DirectTarget(user_ids=(realm.users["loner"],)),
            None,
            "psst",
            "x",
        )
    with db.write() as session:
        check_update_message_flags(
            session, realm.realm_id, realm.users["member"], "add", "starred", [channel]
        )
    fetch = frozenset(
        {"message", "update_message_flags", "starred_messages", "recent_private_conversations"}
    )
    with db.snapshot() as session:
        expected = {
            name: {
                **user_state(session, realm.users[name], fetch),
                **own_message_keys(session, realm.users[name], fetch),
            }
            for name in names
        }
    # Each user's state differs from the others' (else the check below proves little).
    assert len({json.dumps(state, sort_keys=True) for state in expected.values()}) >= 3

    def registering(name: str) -> RegisterRequest:
        return RegisterRequest(
            event_types=None,
            fetch_event_types=fetch,
            capabilities=Capabilities(deactivation_peer_events=True),
            include_subscribers=False,
            queue_lifespan_secs=None,
            user_agent=None,
        )

    roles = {"owner": 100, "admin": 200, "member": 400, "loner": 400, "guest": 600}
    service = EventService(db)
    await service.start()
    try:
        with count_statements(db.engine) as statements:
            answers = await asyncio.gather(
                *(
                    service.register(
                        AuthenticatedUser(
                            realm.users[name], realm.realm_id, realm.emails[name], roles[name]
                        ),
                        registering(name),
                    )
                    for name in names
                    for _ in range(4)
                )
            )
        for index, answer in enumerate(answers):
            name = names[index // 4]
            assert {key: answer[key] for key in expected[name]} == expected[name], name
        newest_reads = [s for s in statements.statements if "max(user_message.message_id)" in s]
        # 20 registers: the first read runs; every register that arrived meanwhile joins
        # the next one.
        assert 1 <= len(newest_reads) <= 2, newest_reads
    finally:
        await service.stop()
