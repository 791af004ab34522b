"""The event server as a real process on loopback: register, long-poll, delete, auth,
delivery of actions committed by other processes, restarts, and register races."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from clients.state import StateCache
from models.database import Database
from models.outbox import read_events
from models.state import STATE_EVENT_TYPES, fetch_initial_state
from models.tables import UserProfile
from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer, live_server

ALL_TYPES = sorted(STATE_EVENT_TYPES)


def client(
    server: LiveServer, realm: SampleRealm, name: str, agent: str = "eventq-tests/1.0"
) -> ApiClient:
    return ApiClient(server.url, realm.emails[name], realm.api_keys[name], agent)


def poll_until(
    api: ApiClient,
    queue_id: str,
    last_event_id: int,
    predicate: Callable[[list[dict[str, Any]]], bool],
    polls: int = 20,
) -> tuple[list[dict[str, Any]], int]:
    """Poll (each poll blocks until events arrive) until `predicate(events)` holds."""
    received: list[dict[str, Any]] = []
    for _ in range(polls):
        answer = api.poll(queue_id, last_event_id)
        assert answer.ok, answer.body
        for event in answer.body["events"]:
            assert event["id"] > last_event_id or event["type"] == "heartbeat"
            last_event_id = max(last_event_id, int(event["id"]))
            if event["type"] != "heartbeat":
                received.append(event)
        if predicate(received):
            return received, last_event_id
    raise AssertionError(f"condition not met after {polls} polls: {received}")


def test_register_returns_the_state_of_a_fresh_snapshot(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    api = client(server, realm, "member")
    answer = api.register(include_subscribers=True)
    assert answer["last_event_id"] == -1 and answer["zulip_feature_level"] >= 377
    with db.snapshot() as session:
        user = session.get(UserProfile, realm.users["member"])
        assert user is not None
        expected = fetch_initial_state(session, user, STATE_EVENT_TYPES, True)
    for key, value in expected.items():
        assert answer[key] == requests.models.complexjson.loads(
            requests.models.complexjson.dumps(value)
        ), key
    only_users = api.register(event_types=["realm_user"])
    assert "realm_users" in only_users and "subscriptions" not in only_users
    fetched = api.register(event_types=["realm_user"], fetch_event_types=["stream"])
    assert "streams" in fetched and "realm_users" not in fetched


def test_action_in_another_process_reaches_a_waiting_poll(
    server: LiveServer, realm: SampleRealm, database_url: str
) -> None:
    api = client(server, realm, "loner")
    queue_id = api.register(event_types=["realm_user"])["queue_id"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.poll, queue_id, -1)
        created = run_eventq(database_url, "create-user", "zulip", "late@zulip.example.com")
        assert created.returncode == 0, created.stderr
        answer = waiting.result(timeout=30)
    assert answer.ok
    (event,) = answer.body["events"]
    assert event["id"] == 0 and event["type"] == "realm_user" and event["op"] == "add"
    assert event["person"]["email"] == "late@zulip.example.com"
    # Acknowledged events are pruned; the next dont_block poll is empty.
    empty = api.poll(queue_id, 0, dont_block=True)
    assert empty.ok and empty.body["events"] == []


def test_event_types_filter_what_a_queue_receives(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    api = client(server, realm, "owner")
    streams_only = api.register(event_types=["stream"])["queue_id"]
    everything = api.register()["queue_id"]
    with db.write() as session:
        do_create_user(session, realm.realm_id, "x@zulip.example.com")
    with db.write() as session:
        do_create_stream(session, realm.realm_id, "news")
    events, _ = poll_until(api, streams_only, -1, lambda ev: len(ev) >= 1)
    assert [(e["type"], e["id"]) for e in events] == [("stream", 0)]
    events, _ = poll_until(api, everything, -1, lambda ev: len(ev) >= 2)
    assert [(e["type"], e["id"]) for e in events] == [("realm_user", 0), ("stream", 1)]


def queue_is_waiting(admin: ApiClient, queue_id: str) -> bool:
    """Whether the server has parked a poll on this queue (the admin listing says)."""
    queues = admin.ok("GET", "/eventq/queues")["queues"]
    return any(q["queue_id"] == queue_id and q["waiting"] for q in queues)


def await_condition(check: object, timeout: float = 10.0) -> None:
    """Re-check a condition that has no event to wait on until it holds or time runs out."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"


def test_a_second_poll_answers_the_first_at_once(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    api, admin = client(server, realm, "member"), client(server, realm, "owner")
    queue_id = api.register()["queue_id"]
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(api.poll, queue_id, -1)
        await_condition(lambda: queue_is_waiting(admin, queue_id))
        second = pool.submit(client(server, realm, "member").poll, queue_id, -1)
        answer = first.result(timeout=30)
        # Answered at once with what it had: nothing, so a heartbeat with no new id.
        assert answer.ok and answer.body["events"] == [{"type": "heartbeat", "id": -1}]
        await_condition(lambda: queue_is_waiting(admin, queue_id))
        with db.write() as session:
            do_create_stream(session, realm.realm_id, "release")
        released = second.result(timeout=30)
    assert [e["type"] for e in released.body["events"]] == ["stream"]


def test_deleted_and_foreign_queues_are_indistinguishable(
    server: LiveServer, realm: SampleRealm
) -> None:
    owner, member = client(server, realm, "owner"), client(server, realm, "member")
    queue_id = owner.register()["queue_id"]
    foreign = member.poll(queue_id, -1, dont_block=True)
    unknown = member.poll("0" * 32, -1, dont_block=True)
    assert foreign.status == unknown.status == 400
    assert foreign.body["code"] == unknown.body["code"] == "BAD_EVENT_QUEUE_ID"
    assert foreign.body["msg"].replace(queue_id, "Q") == unknown.body["msg"].replace("0" * 32, "Q")
    assert member.call("DELETE", "/events", {"queue_id": queue_id}).body["code"] == (
        "BAD_EVENT_QUEUE_ID"
    )
    assert owner.poll(queue_id, -1, dont_block=True).ok, "the foreign delete changed nothing"
    owner.ok("DELETE", "/events", {"queue_id": queue_id})
    gone = owner.poll(queue_id, -1, dont_block=True)
    assert gone.status == 400 and gone.body["code"] == "BAD_EVENT_QUEUE_ID"
    assert gone.body["queue_id"] == queue_id


def test_last_event_id_checks(server: LiveServer, realm: SampleRealm, db: Database) -> None:
    api = client(server, realm, "owner")
    queue_id = api.register(event_types=["stream"])["queue_id"]
    for name in ("a", "b"):
        with db.write() as session:
            do_create_stream(session, realm.realm_id, name)
    poll_until(api, queue_id, -1, lambda ev: len(ev) >= 2)
    ahead = api.poll(queue_id, 7, dont_block=True)
    assert ahead.status == 400 and ahead.body["msg"] == "Event 7 was not in this queue"
    api.poll(queue_id, 1, dont_block=True)
    behind = api.poll(queue_id, 0, dont_block=True)
    assert behind.status == 400
    assert behind.body["msg"] == "An event newer than 0 has already been pruned!"


@pytest.mark.parametrize(
    ("auth", "status", "code"),
    [
        (None, 401, "UNAUTHORIZED"),
        (("owner@zulip.example.com", "wrong-key"), 401, "INVALID_API_KEY"),
        (("nobody@zulip.example.com", "x" * 32), 401, "INVALID_API_KEY"),
    ],
)
def test_authentication_is_refused_as_zulip_does(
    server: LiveServer, realm: SampleRealm, auth: tuple[str, str] | None, status: int, code: str
) -> None:
    answer = requests.post(f"{server.url}/api/v1/register", auth=auth, timeout=10)
    assert answer.status_code == status and answer.json()["code"] == code


def test_deactivated_user_is_cut_off_at_once(
    server: LiveServer, realm: SampleRealm, database_url: str
) -> None:
    api = client(server, realm, "loner")
    queue_id = api.register()["queue_id"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.poll, queue_id, -1)
        result = run_eventq(database_url, "deactivate-user", "zulip", realm.emails["loner"])
        assert result.returncode == 0, result.stderr
        answer = waiting.result(timeout=30)
    assert answer.status == 401 and answer.body["code"] == "USER_DEACTIVATED"
    again = api.call("POST", "/register")
    assert again.status == 401 and again.body["code"] == "USER_DEACTIVATED"


def test_admin_endpoints_refuse_members(server: LiveServer, realm: SampleRealm) -> None:
    member = client(server, realm, "member")
    for method, path in (
        ("DELETE", f"/users/{realm.users['loner']}"),
        ("POST", f"/users/{realm.users['loner']}/reactivate"),
        ("GET", "/eventq/queues"),
        ("GET", "/eventq/clients"),
    ):
        answer = member.call(method, path)
        assert answer.status == 400 and answer.body["code"] == "UNAUTHORIZED_PRINCIPAL", path
    owner = client(server, realm, "owner")
    owner.ok("DELETE", f"/users/{realm.users['loner']}")
    owner.ok("POST", f"/users/{realm.users['loner']}/reactivate")


def test_graceful_restart_keeps_every_queue(
    database_url: str, realm: SampleRealm, db: Database
) -> None:
    with live_server(database_url) as first:
        api = client(first, realm, "owner")
        queue_id = api.register(event_types=["stream"])["queue_id"]
        with db.write() as session:
            do_create_stream(session, realm.realm_id, "before")
        events, last = poll_until(api, queue_id, -1, lambda ev: len(ev) >= 1)
        with db.write() as session:
            do_create_stream(session, realm.realm_id, "unacknowledged")
        poll_until(api, queue_id, last, lambda ev: len(ev) >= 1)  # seen, not acknowledged
    # Committed while no server runs.
    with db.write() as session:
        do_create_stream(session, realm.realm_id, "while down")
    with live_server(database_url) as second:
        api = client(second, realm, "owner")
        events, _ = poll_until(api, queue_id, last, lambda ev: len(ev) >= 2)
    assert [(e["id"], e["streams"][0]["name"]) for e in events] == [
        (1, "unacknowledged"),
        (2, "while down"),
    ]


def test_racing_registers_converge_with_a_stream_of_actions(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    """Clients registering while actions commit end with exactly a fresh register's state."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                with db.write() as session:
                    stream = do_create_stream(session, realm.realm_id, f"race {i}")
                with db.write() as session:
                    bulk_add_subscriptions(
                        session, realm.realm_id, [realm.users["loner"]], [stream.id]
                    )
                with db.write() as session:
                    bulk_remove_subscriptions(
                        session, realm.realm_id, [realm.users["member"]], [realm.streams["public"]]
                    )
                with db.write() as session:
                    bulk_add_subscriptions(
                        session, realm.realm_id, [realm.users["member"]], [realm.streams["public"]]
                    )
                with db.write() as session:
                    do_deactivate_user(session, realm.realm_id, realm.users["guest"])
                with db.write() as session:
                    do_reactivate_user(session, realm.realm_id, realm.users["guest"])
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    observers = ("owner", "member", "outsider_guest", "admin")
    registered: dict[str, tuple[ApiClient, dict[str, object]]] = {}
    worker = threading.Thread(target=churn)
    worker.start()
    try:
        with ThreadPoolExecutor(len(observers)) as pool:
            futures = {
                name: pool.submit(lambda n: (client(server, realm, n),), name) for name in observers
            }
            for name, future in futures.items():
                (api,) = future.result(timeout=30)
                registered[name] = (api, api.register(include_subscribers=True))
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not errors
    with db.write() as session:
        marker = do_create_user(session, realm.realm_id, "marker@zulip.example.com").id
    for name, (api, state) in registered.items():
        events, _ = poll_until(
            api,
            str(state["queue_id"]),
            -1,
            lambda ev: any(
                e["type"] == "realm_user" and e["op"] == "add" and e["person"]["user_id"] == marker
                for e in ev
            ),
            polls=200,
        )
        cache = StateCache.from_register(state, realm.users[name], include_subscribers=True)
        cache.apply_all(events)
        fresh = api.register(include_subscribers=True)
        expected = {k: fresh[k] for k in cache.to_register_shape()}
        assert cache.to_register_shape() == expected, name
    with db.snapshot() as session:
        assert read_events(session, realm.realm_id, 0), "the churn wrote events"
