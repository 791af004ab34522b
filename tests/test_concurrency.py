"""Concurrent writers in one realm: no deadlock, and every queue receives the events in
commit order (the outbox sequence), on both backends; messages hold the realm lock
together, and a change of who sees what waits for them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from actions.messages import ChannelTarget, check_send_message
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.database import Database
from models.outbox import lock_realm, read_events
from models.tables import Realm
from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server
from tests.test_server import poll_until

ROUNDS = 8
# A bound on every wait for another thread (a deadlock fails instead of hanging).
THREAD_TIMEOUT_SECS = 30.0


@pytest.fixture
def realm(db: Database) -> SampleRealm:
    sample = make_sample_realm(db)
    with db.write() as session:
        do_deactivate_user(session, sample.realm_id, sample.users["outsider_guest"])
    return sample


@pytest.fixture
def server(database_url: str, realm: SampleRealm) -> Iterator[LiveServer]:
    with live_server(database_url) as running:
        yield running


def test_concurrent_actions_arrive_in_commit_order(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    api = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
    with db.snapshot() as session:
        start_seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == realm.realm_id)
        ).scalar_one()
    queue_id = api.register()["queue_id"]
    rid, users, streams = realm.realm_id, realm.users, realm.streams

    def action(func: Callable[..., object], *args: object) -> Callable[[], None]:
        def run() -> None:
            with db.write() as session:
                func(session, rid, *args)

        return run

    scripts: list[list[Callable[[], None]]] = [
        [action(do_deactivate_user, users["loner"]), action(do_reactivate_user, users["loner"])],
        [action(do_deactivate_user, users["guest"]), action(do_reactivate_user, users["guest"])],
        [action(do_reactivate_user, users["outsider_guest"])],
        [
            step
            for _ in range(ROUNDS)
            for step in (
                action(bulk_add_subscriptions, [users["admin"]], [streams["private"]]),
                action(bulk_remove_subscriptions, [users["admin"]], [streams["private"]]),
            )
        ],
        [
            step
            for _ in range(ROUNDS)
            for step in (
                action(bulk_remove_subscriptions, [users["member"]], list(streams.values())),
                action(bulk_add_subscriptions, [users["member"]], list(streams.values())),
            )
        ],
    ]
    start = threading.Barrier(len(scripts))
    errors: list[BaseException] = []

    def run(script: list[Callable[[], None]]) -> None:
        try:
            start.wait(timeout=30)
            for step in script:
                step()
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(script,)) for script in scripts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer is stuck: deadlock"
    assert not errors, errors

    with db.write() as session:
        marker = do_create_user(session, rid, "marker@zulip.example.com").id
    received, _ = poll_until(
        api,
        queue_id,
        -1,
        lambda ev: any(
            e["type"] == "realm_user" and e["op"] == "add" and e["person"]["user_id"] == marker
            for e in ev
        ),
        polls=500,
    )
    with db.snapshot() as session:
        stored = read_events(session, rid, start_seq)
    expected = [e.event for e in stored if users["owner"] in e.user_ids]
    assert [{k: v for k, v in e.items() if k != "id"} for e in received] == expected
    assert [e["id"] for e in received] == list(range(len(expected)))


# SQLite has one writer at a time: no two of its transactions ever hold a lock together.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_messages_hold_the_realm_lock_together_and_a_change_waits_for_them(
    db: Database, realm: SampleRealm
) -> None:
    """Messages share the realm lock: each of SENDERS transactions takes it and then waits
    for all the others to have taken it too, which never happens if the lock admits one
    at a time. An unsubscribe started meanwhile takes it exclusively: it waits until
    every message has committed, so its events come after all of theirs."""
    senders = ("owner", "admin", "member")
    all_holding = threading.Barrier(len(senders))
    changed = threading.Event()
    errors: list[BaseException] = []
    rid, users, streams = realm.realm_id, realm.users, realm.streams
    with db.snapshot() as session:
        start_seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == rid)
        ).scalar_one()

    def send(viewpoint: str) -> None:
        try:
            with db.write() as session:
                lock_realm(session, rid, shared=True)
                all_holding.wait(THREAD_TIMEOUT_SECS)
                # Every sender holds the lock now; the change asks for it while they do.
                if viewpoint == senders[0]:
                    unsubscribe.start()
                    assert not changed.wait(0.5), "the change ran while messages held the lock"
                check_send_message(
                    session, rid, users[viewpoint], ChannelTarget(streams["public"]), "t", "x", "c"
                )
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    def change() -> None:
        with db.write() as session:
            bulk_remove_subscriptions(session, rid, [users["member"]], [streams["public"]])
        changed.set()

    unsubscribe = threading.Thread(target=change)
    threads = [threading.Thread(target=send, args=(viewpoint,)) for viewpoint in senders]
    for thread in threads:
        thread.start()
    for thread in [*threads]:
        thread.join(THREAD_TIMEOUT_SECS)
    unsubscribe.join(THREAD_TIMEOUT_SECS)
    assert not errors, errors
    assert changed.is_set()
    with db.snapshot() as session:
        types = [e.event["type"] for e in read_events(session, rid, start_seq)]
    assert types[: 2 * len(senders)] == ["message"] * (2 * len(senders)), types
    assert set(types[2 * len(senders) :]) == {"subscription"}, types
