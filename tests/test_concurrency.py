"""Concurrent writers in one realm: no deadlock, and every queue receives the events in
commit order (the outbox sequence), on both backends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.database import Database
from models.outbox import read_events
from models.tables import Realm
from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server
from tests.test_server import poll_until

ROUNDS = 8


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
