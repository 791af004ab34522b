"""Shards on one database, in-process: queues that move, and fencing of the old holder.

Two `EventService`s with different shard names share the test database, as two
`eventq serve --shard` processes would; the tests drive their consumers and maintenance
by hand, so every interleaving is deterministic. Through a real nginx:
tests/test_cluster.py and tests/test_cluster_chaos.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text

from actions.users import do_deactivate_user
from models.database import Database
from models.descriptors import load_descriptor
from models.ownership import check_shard_name, list_shards, shard_of
from models.tables import QueueClaim
from server.engine.errors import BadEventQueueId, QueueMoving, UserDeactivated
from server.engine.live_queues import QueueState
from server.engine.maintenance import OTHER_SHARD_EXPIRY_GRACE_SECS
from server.engine.service import EventService, PollAnswer
from tests.helpers.realms import SampleRealm
from tests.test_queue_lifecycle import member
from tests.test_service import FakeClock, create_stream, owner, request

WAIT_SECS = 20.0


@pytest.fixture
async def shards(db: Database) -> AsyncIterator[tuple[EventService, EventService, FakeClock]]:
    clock = FakeClock()
    first = EventService(db, clock=clock, heartbeat_secs=(300.0, 300.0), shard="alpha")
    second = EventService(db, clock=clock, heartbeat_secs=(300.0, 300.0), shard="beta")
    await first.start()
    await second.start()
    try:
        yield first, second, clock
    finally:
        await first.stop(drain_timeout=1.0)
        await second.stop(drain_timeout=1.0)


def ids(answer: PollAnswer) -> list[int]:
    return [json.loads(event)["id"] for event in answer.events]


def holder(db: Database, queue_id: str) -> tuple[str | None, int, int] | None:
    """(owner shard, epoch, checkpoint event id) of the descriptor, or None."""
    with db.snapshot() as session:
        record = load_descriptor(session, queue_id)
    if record is None:
        return None
    return record.owner_shard, record.owner_epoch, record.checkpoint_event_id


async def add_streams(db: Database, realm: SampleRealm, *names: str) -> None:
    for name in names:
        await create_stream(db, realm, name)


def test_shard_names_and_queue_id_prefixes() -> None:
    assert check_shard_name("shard_2") == "shard_2"
    for bad in ("", "Shard", "2nd", "a.b", "a-b", "x" * 25):
        with pytest.raises(ValueError, match="bad shard name"):
            check_shard_name(bad)
    assert shard_of("beta.0f3c") == "beta"
    assert shard_of("0f3c9a") is None
    assert shard_of("Bad.0f3c") is None


async def test_a_queue_moves_to_the_shard_that_is_polled_with_the_same_ids(
    db: Database, realm: SampleRealm, shards: tuple[EventService, EventService, FakeClock]
) -> None:
    alpha, beta, _ = shards
    user = owner(realm)
    queue_id = (await alpha.register(user, request({"stream"})))["queue_id"]
    assert queue_id.startswith("alpha.")
    assert holder(db, queue_id) == ("alpha", 1, -1)

    await add_streams(db, realm, "one", "two")
    await alpha.drain_outbox()
    first = await alpha.get_events(user, queue_id, -1, dont_block=True)
    assert ids(first) == [0, 1]

    # The client's next poll reaches the other shard (nginx now routes it there). The
    # consumer of `beta` has not even seen the events yet: the claim reads far enough.
    await add_streams(db, realm, "three")
    moved = await beta.get_events(user, queue_id, 1, dont_block=True)
    assert ids(moved) == [2]
    assert [json.loads(e)["streams"][0]["name"] for e in moved.events] == ["three"]
    assert holder(db, queue_id)[:2] == ("beta", 2)  # type: ignore[index]
    assert beta.live.moves_in == 1

    # `alpha` learns of the claim from the feed and forgets its copy.
    await alpha.drain_outbox()
    assert alpha.live.get(queue_id) is None
    assert alpha.live.moves_out == 1
    with db.snapshot() as session:
        claims = session.execute(select(QueueClaim.queue_id, QueueClaim.shard)).all()
    assert [tuple(c) for c in claims] == [(queue_id, "beta")]

    # A poll that reaches `alpha` again moves it back, with the ids still in sequence.
    await add_streams(db, realm, "four")
    back = await alpha.get_events(user, queue_id, 2, dont_block=True)
    assert ids(back) == [3]
    assert holder(db, queue_id)[:2] == ("alpha", 3)  # type: ignore[index]
    await beta.drain_outbox()
    assert beta.live.get(queue_id) is None


def lose_every_claim(db: Database) -> None:
    """Make every claim of a queue from another shard lose its race, as if other shards
    kept winning: a trigger skips each update that changes a descriptor's holder, so the
    conditional update claims nothing, round after round."""
    with db.write() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(
                text(
                    "CREATE FUNCTION lose_claims() RETURNS trigger AS $$ BEGIN"
                    " IF NEW.owner_shard IS DISTINCT FROM OLD.owner_shard THEN RETURN NULL;"
                    " END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            session.execute(
                text(
                    "CREATE TRIGGER lose_claims BEFORE UPDATE ON queue_descriptor"
                    " FOR EACH ROW EXECUTE FUNCTION lose_claims()"
                )
            )
        else:
            session.execute(
                text(
                    "CREATE TRIGGER lose_claims BEFORE UPDATE OF owner_shard ON queue_descriptor"
                    " WHEN NEW.owner_shard IS NOT OLD.owner_shard"
                    " BEGIN SELECT RAISE(IGNORE); END"
                )
            )


async def test_a_queue_whose_claims_keep_losing_answers_503_with_retry_after(
    db: Database, realm: SampleRealm, shards: tuple[EventService, EventService, FakeClock]
) -> None:
    alpha, beta, _ = shards
    user = owner(realm)
    queue_id = (await alpha.register(user, request({"stream"})))["queue_id"]
    lose_every_claim(db)
    with pytest.raises(QueueMoving) as moving:
        await beta.get_events(user, queue_id, -1, dont_block=True)
    assert moving.value.status == 503 and moving.value.headers == {"Retry-After": "1"}
    assert holder(db, queue_id)[:2] == ("alpha", 1)  # type: ignore[index]
    # The shard that holds it still serves it.
    assert (await alpha.get_events(user, queue_id, -1, dont_block=True)).events == []


async def test_a_parked_poll_on_the_old_shard_gets_a_heartbeat_of_what_was_acknowledged(
    db: Database, realm: SampleRealm, shards: tuple[EventService, EventService, FakeClock]
) -> None:
    alpha, beta, _ = shards
    user = owner(realm)
    queue_id = (await alpha.register(user, request({"stream"})))["queue_id"]
    await add_streams(db, realm, "one")
    await alpha.drain_outbox()
    assert ids(await alpha.get_events(user, queue_id, -1, dont_block=True)) == [0]
    # The poll's first step is scheduled before `beta` first waits for its database
    # thread, and it parks in that step (a warm queue needs no await), so it is parked
    # before `beta` claims the queue. (Had it come after, it would claim the queue back
    # and wait for an event that never comes: the timeout below would fail the test.)
    parked = asyncio.create_task(alpha.get_events(user, queue_id, 0, dont_block=False))
    await beta.get_events(user, queue_id, 0, dont_block=True)
    await alpha.drain_outbox()
    async with asyncio.timeout(WAIT_SECS):
        answer = await parked
    assert answer.heartbeat
    assert json.loads(answer.events[0]) == {"type": "heartbeat", "id": 0}


async def test_a_fenced_shard_cannot_write_the_checkpoint_or_delete_the_queue(
    db: Database, realm: SampleRealm, shards: tuple[EventService, EventService, FakeClock]
) -> None:
    alpha, beta, clock = shards
    user = owner(realm)
    queue_id = (await alpha.register(user, request({"stream"}, lifespan=600)))["queue_id"]
    await add_streams(db, realm, "one", "two")
    await alpha.drain_outbox()
    await alpha.get_events(user, queue_id, -1, dont_block=True)

    # `alpha` misses the claims from now on: what remains is the fencing of its writes.
    alpha.consumer._fence_claimed = lambda claims: None  # type: ignore[method-assign]
    # `beta` takes the queue and acknowledges event 0 there.
    await beta.get_events(user, queue_id, 0, dont_block=True)
    await beta.flush_checkpoints()
    assert holder(db, queue_id) == ("beta", 2, 0)

    # `alpha`'s stale copy acknowledges event 1: the write is refused by the epoch, and
    # the copy is fenced by the refusal itself.
    await alpha.get_events(user, queue_id, 1, dont_block=True)
    await alpha.flush_checkpoints()
    assert holder(db, queue_id) == ("beta", 2, 0)
    assert alpha.live.get(queue_id) is None

    # Neither can a stale copy that expires delete the descriptor `beta` holds.
    await alpha.get_events(user, queue_id, 1, dont_block=True)  # moves back to alpha...
    await beta.drain_outbox()  # (beta reads the claim: its copy is fenced)
    await beta.get_events(user, queue_id, 1, dont_block=True)  # ...and on to beta
    assert holder(db, queue_id)[:2] == ("beta", 4)  # type: ignore[index]
    stale = alpha.live.get(queue_id)
    assert stale is not None and stale.epoch == 3
    clock.now += 601
    await alpha.maintenance.expire_queues()
    await alpha.maintenance.delete_dropped()
    assert holder(db, queue_id) is not None


async def test_a_queue_deleted_on_another_shard_is_gone_everywhere(
    db: Database, realm: SampleRealm, shards: tuple[EventService, EventService, FakeClock]
) -> None:
    alpha, beta, _ = shards
    user = owner(realm)
    queue_id = (await alpha.register(user, request({"stream"})))["queue_id"]
    await alpha.get_events(user, queue_id, -1, dont_block=True)
    await beta.delete_queue(user, queue_id)
    assert holder(db, queue_id) is None
    await alpha.drain_outbox()
    assert alpha.live.get(queue_id) is None
    with pytest.raises(BadEventQueueId):
        await alpha.get_events(user, queue_id, -1, dont_block=True)


async def test_deactivation_cuts_off_the_users_queues_on_every_shard(
    db: Database, realm: SampleRealm, shards: tuple[EventService, EventService, FakeClock]
) -> None:
    alpha, beta, _ = shards
    user = member(realm)
    on_alpha = (await alpha.register(user, request()))["queue_id"]
    on_beta = (await beta.register(user, request()))["queue_id"]

    def deactivate() -> None:
        with db.write() as session:
            do_deactivate_user(session, realm.realm_id, user.id)

    await asyncio.to_thread(deactivate)
    await alpha.drain_outbox()
    await beta.drain_outbox()
    await alpha.maintenance.delete_dropped()
    await beta.maintenance.delete_dropped()
    for service, queue_id in ((alpha, on_alpha), (beta, on_beta)):
        live = service.live.get(queue_id)
        assert live is None or live.state is QueueState.DROPPED
        assert holder(db, queue_id) is None
    with pytest.raises((UserDeactivated, BadEventQueueId)):
        await beta.get_events(user, on_alpha, -1, dont_block=True)


async def test_expiry_of_another_shards_queues_waits_for_a_grace_period(
    db: Database, realm: SampleRealm, shards: tuple[EventService, EventService, FakeClock]
) -> None:
    alpha, beta, clock = shards
    user = owner(realm)
    queue_id = (await beta.register(user, request(lifespan=600)))["queue_id"]
    await beta.flush_checkpoints()
    beta.live.make_cold(beta.live.get(queue_id))  # type: ignore[arg-type]
    clock.now += 601
    await alpha.maintenance.expire_queues()
    assert holder(db, queue_id) is not None  # beta's: its activity may not be written yet
    clock.now += OTHER_SHARD_EXPIRY_GRACE_SECS
    await alpha.maintenance.expire_queues()
    assert holder(db, queue_id) is None  # beta is gone for good, or the queue is idle


async def test_each_shard_announces_itself(
    db: Database, shards: tuple[EventService, EventService, FakeClock]
) -> None:
    alpha, beta, _ = shards
    await alpha.announce("http://127.0.0.1:1")
    await beta.announce("http://127.0.0.1:2")
    with db.snapshot() as session:
        listed = {shard.name: shard.url for shard in list_shards(session)}
    assert listed == {"alpha": "http://127.0.0.1:1", "beta": "http://127.0.0.1:2"}


async def test_a_second_process_under_a_running_shards_name_is_warned_about(
    db: Database,
    shards: tuple[EventService, EventService, FakeClock],
    caplog: pytest.LogCaptureFixture,
) -> None:
    alpha, _, _ = shards
    await alpha.announce("http://127.0.0.1:1")
    await alpha.announce("http://127.0.0.1:1")  # a restart at the same address: quiet
    assert "share one shard name" not in caplog.text
    await alpha.announce("http://127.0.0.1:2")  # another address within the minute
    assert "two processes share one shard name" in caplog.text
