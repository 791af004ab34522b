"""The unmodified `zulip` client from PyPI against a live eventq server, on both backends.

Every test drives `zulip.Client` over loopback: register and long-poll, the
`call_on_each_event` loop (including re-registering after its queue is deleted from
outside), the REST calls it makes for users and subscriptions, deactivation of its
user, and a private channel whose events never reach a user who may not see it.
Waits are on futures, threads and queues with timeouts, never on sleeps.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import zulip

from actions.subscriptions import bulk_add_subscriptions
from actions.users import do_create_user, do_deactivate_user
from models.database import Database
from tests.helpers import zulip_schema
from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.realms import VIEWPOINTS, SampleRealm
from tests.helpers.server import LiveServer

REALM = "zulip"
# How long an event committed now may take to reach a waiting poll (it takes milliseconds).
EVENT_TIMEOUT = 30.0
# How long a poll with nothing to deliver must keep waiting to count as blocked.
BLOCKED_FOR = 0.5
MAX_POLLS = 20


class StopListening(Exception):
    """Raised by a callback to end `call_on_each_event` once it has what it needs."""


class ObservedClient(zulip.Client):
    """`zulip.Client` unchanged, plus a record of every queue it registers.

    `call_on_each_event` registers on its own thread; the test awaits `registered`
    before committing actions, since a queue receives only events committed after it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.registered: queue.Queue[str] = queue.Queue()
        super().__init__(*args, **kwargs)

    def register(
        self,
        event_types: Iterable[str] | None = None,
        narrow: list[list[str]] | None = None,
        **kwargs: object,
    ) -> dict[str, Any]:
        answer = super().register(event_types, narrow, **kwargs)
        if answer.get("result") == "success":
            self.registered.put(answer["queue_id"])
        return answer


@pytest.fixture
def pool(server: LiveServer) -> Iterator[ThreadPoolExecutor]:
    """Threads for blocking polls; a poll left waiting by a failure ends with the server."""
    executor = ThreadPoolExecutor(4, thread_name_prefix="zulip-poll")
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


def zulip_client(server: LiveServer, realm: SampleRealm, name: str) -> zulip.Client:
    # An empty config file, so nothing from the developer's ~/.zuliprc is read.
    return zulip.Client(
        email=realm.emails[name],
        api_key=realm.api_keys[name],
        site=server.url,
        config_file=os.devnull,
    )


def observed_client(server: LiveServer, realm: SampleRealm, name: str) -> ObservedClient:
    return ObservedClient(
        email=realm.emails[name],
        api_key=realm.api_keys[name],
        site=server.url,
        config_file=os.devnull,
    )


def api_client(server: LiveServer, realm: SampleRealm, name: str) -> ApiClient:
    """A plain `requests` client whose answers are checked against the OpenAPI document."""
    return ApiClient(server.url, realm.emails[name], realm.api_keys[name])


def cli(database_url: str, *args: str) -> dict[str, Any]:
    """Run an `eventq` command in another process, with `--json`, asserting success."""
    result = run_eventq(database_url, *args, "--json")
    assert result.returncode == 0, result.stderr
    answer = result.json()
    assert isinstance(answer, dict), answer
    return answer


def submit_poll(
    pool: ThreadPoolExecutor, client: zulip.Client, queue_id: str, last_event_id: int
) -> Future[dict[str, Any]]:
    return pool.submit(client.get_events, queue_id=queue_id, last_event_id=last_event_id)


def assert_blocks(poll: Future[dict[str, Any]]) -> None:
    """The poll has nothing to deliver, so the server must keep it waiting."""
    with pytest.raises(TimeoutError):
        poll.result(timeout=BLOCKED_FOR)


def poll_until(
    pool: ThreadPoolExecutor,
    client: zulip.Client,
    queue_id: str,
    last_event_id: int,
    done: Callable[[dict[str, Any]], bool],
) -> tuple[list[dict[str, Any]], int]:
    """Long-poll until an event satisfies `done`; every event, in order, and the last id."""
    received: list[dict[str, Any]] = []
    for _ in range(MAX_POLLS):
        answer = submit_poll(pool, client, queue_id, last_event_id).result(EVENT_TIMEOUT)
        assert answer["result"] == "success", answer
        for event in answer["events"]:
            if event["type"] == "heartbeat":
                continue
            assert event["id"] > last_event_id, (event, last_event_id)
            last_event_id = event["id"]
            received.append(event)
        if any(done(event) for event in received):
            return received, last_event_id
    raise AssertionError(f"no awaited event after {MAX_POLLS} polls: {received}")


def is_user_added(email: str) -> Callable[[dict[str, Any]], bool]:
    def check(event: dict[str, Any]) -> bool:
        return (
            event["type"] == "realm_user"
            and event["op"] == "add"
            and event["person"]["email"] == email
        )

    return check


def stream_ids_named(value: Any) -> set[int]:
    """Every channel id an event names anywhere (`stream_id` fields, `stream_ids` lists)."""
    found: set[int] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "stream_id" and isinstance(item, int):
                found.add(item)
            elif key == "stream_ids" and isinstance(item, list):
                found.update(i for i in item if isinstance(i, int))
            else:
                found |= stream_ids_named(item)
    elif isinstance(value, list):
        for item in value:
            found |= stream_ids_named(item)
    return found


def test_register_poll_and_deregister(
    server: LiveServer, realm: SampleRealm, database_url: str, pool: ThreadPoolExecutor
) -> None:
    client = zulip_client(server, realm, "member")
    registered = client.register(
        event_types=["realm_user", "subscription"], include_subscribers=True
    )
    assert registered["result"] == "success", registered
    assert registered["last_event_id"] == -1
    assert registered["zulip_feature_level"] >= 377
    queue_id = registered["queue_id"]
    assert {u["user_id"] for u in registered["realm_users"]} == set(realm.users.values())
    subscribers = {s["name"]: s["subscribers"] for s in registered["subscriptions"]}
    member, guest = realm.users["member"], realm.users["guest"]
    assert subscribers == {
        "public": sorted([member, guest]),
        "private": sorted([member, guest]),
        "web-public": sorted([member, guest]),
    }

    empty = client.get_events(queue_id=queue_id, last_event_id=-1, dont_block=True)
    assert empty["result"] == "success", empty
    assert empty["events"] == []

    waiting = submit_poll(pool, client, queue_id, -1)
    assert_blocks(waiting)
    created = cli(database_url, "create-user", REALM, "late@zulip.example.com")
    answer = waiting.result(timeout=EVENT_TIMEOUT)
    assert answer["result"] == "success", answer
    (added,) = answer["events"]
    assert (added["type"], added["op"]) == ("realm_user", "add")
    assert added["person"]["user_id"] == created["user_id"]
    assert added["person"]["email"] == "late@zulip.example.com"
    assert added["person"]["is_active"] is True

    cli(database_url, "subscribe", REALM, "late@zulip.example.com", "public")
    answer = submit_poll(pool, client, queue_id, added["id"]).result(timeout=EVENT_TIMEOUT)
    assert answer["result"] == "success", answer
    (peer_add,) = answer["events"]
    assert (peer_add["type"], peer_add["op"]) == ("subscription", "peer_add")
    assert peer_add["stream_ids"] == [realm.streams["public"]]
    assert peer_add["user_ids"] == [created["user_id"]]
    assert peer_add["id"] > added["id"]

    # Acknowledged events are pruned: nothing is delivered twice.
    rest = client.get_events(queue_id=queue_id, last_event_id=peer_add["id"], dont_block=True)
    assert rest["result"] == "success" and rest["events"] == [], rest

    deregistered = client.deregister(queue_id)
    assert deregistered["result"] == "success", deregistered
    gone = client.get_events(queue_id=queue_id, last_event_id=peer_add["id"])
    assert gone["result"] == "error", gone
    assert gone["code"] == "BAD_EVENT_QUEUE_ID"


def test_call_on_each_event_survives_its_queue_being_deleted(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    client = observed_client(server, realm, "member")
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    outcome: list[BaseException] = []
    last_email = "third@zulip.example.com"

    def callback(event: dict[str, Any]) -> None:
        received.put(event)
        if is_user_added(last_email)(event):
            raise StopListening

    def listen() -> None:
        try:
            client.call_on_each_event(callback, event_types=["realm_user", "subscription"])
        except BaseException as error:  # recorded, so the test (not pytest's hook) judges it
            outcome.append(error)

    listener = threading.Thread(target=listen, name="zulip-listener", daemon=True)
    listener.start()
    first_queue = client.registered.get(timeout=EVENT_TIMEOUT)

    with db.write() as session:
        first = do_create_user(session, realm.realm_id, "first@zulip.example.com")
        first_id = first.id
    with db.write() as session:
        bulk_add_subscriptions(session, realm.realm_id, [first_id], [realm.streams["public"]])
    added = received.get(timeout=EVENT_TIMEOUT)
    assert (added["type"], added["op"]) == ("realm_user", "add")
    assert added["person"]["user_id"] == first_id
    peer_add = received.get(timeout=EVENT_TIMEOUT)
    assert (peer_add["type"], peer_add["op"]) == ("subscription", "peer_add")
    assert peer_add["stream_ids"] == [realm.streams["public"]]
    assert peer_add["user_ids"] == [first_id]
    assert peer_add["id"] > added["id"]

    # Find the listener's queue as an administrator sees it, and delete it from outside.
    owner = api_client(server, realm, "owner")
    listed = owner.ok("GET", "/eventq/queues")["queues"]
    members_queues = [q["queue_id"] for q in listed if q["user_id"] == realm.users["member"]]
    assert members_queues == [first_queue]
    deleted = api_client(server, realm, "member").call(
        "DELETE", "/events", {"queue_id": first_queue}
    )
    assert deleted.ok, (deleted.status, deleted.body)

    # The waiting poll is answered BAD_EVENT_QUEUE_ID and the client registers again.
    second_queue = client.registered.get(timeout=EVENT_TIMEOUT)
    assert second_queue != first_queue
    listed = owner.ok("GET", "/eventq/queues")["queues"]
    members_queues = [q["queue_id"] for q in listed if q["user_id"] == realm.users["member"]]
    assert members_queues == [second_queue]
    assert received.empty(), received.get_nowait()

    with db.write() as session:
        third_id = do_create_user(session, realm.realm_id, last_email).id
    last = received.get(timeout=EVENT_TIMEOUT)
    assert (last["type"], last["op"]) == ("realm_user", "add")
    assert last["person"]["user_id"] == third_id

    listener.join(timeout=EVENT_TIMEOUT)
    assert not listener.is_alive(), "call_on_each_event did not return"
    assert len(outcome) == 1 and isinstance(outcome[0], StopListening), outcome
    assert received.empty(), received.get_nowait()
    assert client.registered.empty(), "the client registered more than once again"


def test_users_streams_and_subscriptions(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    with db.write() as session:
        gone_id = do_create_user(session, realm.realm_id, "gone@zulip.example.com").id
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, gone_id)
    owner = zulip_client(server, realm, "owner")
    member = zulip_client(server, realm, "member")
    loner_email = realm.emails["loner"]
    loner, guest = str(realm.users["loner"]), realm.users["guest"]

    members = owner.get_members()
    assert members["result"] == "success", members
    expected = {realm.users[name]: True for name in VIEWPOINTS} | {gone_id: False}
    assert {u["user_id"]: u["is_active"] for u in members["members"]} == expected

    def stream_names(name: str) -> set[str]:
        answer = zulip_client(server, realm, name).get_streams()
        assert answer["result"] == "success", answer
        return {s["name"] for s in answer["streams"]}

    assert stream_names("owner") == {"public", "private", "web-public"}
    assert stream_names("loner") == {"public", "web-public"}
    assert stream_names("outsider_guest") == {"web-public"}

    def subscribers(stream: str) -> list[int]:
        answer = owner.get_subscribers(stream=stream)
        assert answer["result"] == "success", answer
        return sorted(answer["subscribers"])

    assert subscribers("public") == sorted([realm.users["member"], guest])
    hidden = zulip_client(server, realm, "outsider_guest").get_subscribers(stream="private")
    assert hidden["result"] == "error", hidden

    added = owner.add_subscriptions(streams=[{"name": "public"}], principals=[loner_email])
    assert added["result"] == "success", added
    assert added["subscribed"] == {loner: ["public"]}
    assert added["already_subscribed"] == {}
    assert subscribers("public") == sorted([realm.users["member"], guest, int(loner)])
    again = owner.add_subscriptions(streams=[{"name": "public"}], principals=[loner_email])
    assert again["subscribed"] == {} and again["already_subscribed"] == {loner: ["public"]}

    created = owner.add_subscriptions(streams=[{"name": "fresh"}], principals=[loner_email])
    assert created["result"] == "success", created
    assert created["subscribed"] == {loner: ["fresh"]}
    assert stream_names("owner") == {"public", "private", "web-public", "fresh"}
    assert subscribers("fresh") == [int(loner)]

    removed = owner.remove_subscriptions(["public"], principals=[loner_email])
    assert removed["result"] == "success", removed
    assert removed["removed"] == ["public"] and removed["not_removed"] == []
    assert subscribers("public") == sorted([realm.users["member"], guest])

    refused = member.remove_subscriptions(["public"], principals=[realm.emails["guest"]])
    assert refused["result"] == "error", refused
    assert subscribers("public") == sorted([realm.users["member"], guest])


# The fields the conformance issue names, read here through the unmodified client.
CHANNEL_FIELDS = {
    "creator_id",
    "is_recently_active",
    "can_add_subscribers_group",
    "can_remove_subscribers_group",
    "can_administer_channel_group",
    "can_send_message_group",
    "can_subscribe_group",
}
SUBSCRIPTION_FIELDS = CHANNEL_FIELDS | {"topics_policy"}
OWN_USER_FIELDS = {
    "user_id",
    "email",
    "delivery_email",
    "full_name",
    "is_admin",
    "is_owner",
    "is_moderator",
    "is_guest",
    "avatar_source",
    "avatar_url",
    "avatar_url_medium",
    "can_create_streams",
    "can_create_public_streams",
    "can_create_private_streams",
    "can_create_web_public_streams",
    "can_subscribe_other_users",
    "can_invite_others_to_realm",
    "cross_realm_bots",
}


@pytest.mark.parametrize("name", ["member", "guest"])
def test_answers_carry_zulips_documented_fields(
    server: LiveServer, realm: SampleRealm, name: str
) -> None:
    """get_profile, get_members, get_streams, get_subscriptions and register, as the
    unmodified client gets them: Zulip's documented fields, and none Zulip's User lacks."""
    client = zulip_client(server, realm, name)
    user_id, email = realm.users[name], realm.emails[name]
    is_guest = name == "guest"

    profile = client.get_profile()
    zulip_schema.check(zulip_schema.OWN_PROFILE, profile, "get_profile()")
    assert (profile["user_id"], profile["email"], profile["full_name"]) == (
        user_id,
        email,
        name.title(),
    )
    assert profile["is_guest"] is is_guest and profile["avatar_url"].startswith("https://")

    members = client.get_members()
    zulip_schema.check(zulip_schema.ANSWERS[("GET", "/users")], members, "get_members()")
    for person in members["members"]:
        assert not {"is_moderator", "is_billing_admin"} & person.keys(), person
        assert person["delivery_email"] == person["email"]

    streams = client.get_streams()
    zulip_schema.check(zulip_schema.ANSWERS[("GET", "/streams")], streams, "get_streams()")
    assert streams["streams"] and all(CHANNEL_FIELDS <= s.keys() for s in streams["streams"])

    subscribed = client.get_subscriptions()
    what = "get_subscriptions()"
    zulip_schema.check(zulip_schema.ANSWERS[("GET", "/users/me/subscriptions")], subscribed, what)
    names = {s["name"] for s in subscribed["subscriptions"]}
    assert names == {"public", "private", "web-public"}
    assert all(SUBSCRIPTION_FIELDS <= s.keys() for s in subscribed["subscriptions"])

    registered = client.register(event_types=["realm_user", "subscription", "stream"])
    fetched = ["realm_user", "subscription", "stream"]
    zulip_schema.check(zulip_schema.register(fetched, False), registered, "register()")
    assert OWN_USER_FIELDS <= registered.keys()
    assert (registered["user_id"], registered["email"]) == (user_id, email)
    assert registered["is_guest"] is is_guest
    assert registered["can_create_public_streams"] is not is_guest
    assert registered["can_subscribe_other_users"] is not is_guest
    assert registered["can_create_web_public_streams"] is False  # not an administrator
    assert client.deregister(registered["queue_id"])["result"] == "success"

    # Without realm_user state, the answer has no current-user keys (Zulip: "present if
    # realm_user is present in fetch_event_types").
    streams_only = client.register(event_types=["stream"])
    zulip_schema.check(zulip_schema.register(["stream"], False), streams_only, "register()")
    assert not OWN_USER_FIELDS & streams_only.keys()
    assert client.deregister(streams_only["queue_id"])["result"] == "success"


def test_deactivation_ends_the_poll_and_refuses_the_client(
    server: LiveServer, realm: SampleRealm, database_url: str, pool: ThreadPoolExecutor
) -> None:
    client = zulip_client(server, realm, "loner")
    registered = client.register(event_types=["realm_user"])
    assert registered["result"] == "success", registered
    queue_id = registered["queue_id"]

    waiting = submit_poll(pool, client, queue_id, -1)
    assert_blocks(waiting)
    cli(database_url, "deactivate-user", REALM, realm.emails["loner"])
    answer = waiting.result(timeout=EVENT_TIMEOUT)
    assert answer["result"] == "error", answer
    assert answer["code"] == "USER_DEACTIVATED"

    again = client.get_events(queue_id=queue_id, last_event_id=-1)
    assert again["result"] == "error" and again["code"] == "USER_DEACTIVATED", again
    reregistered = client.register(event_types=["realm_user"])
    assert reregistered["result"] == "error", reregistered
    assert reregistered["code"] == "USER_DEACTIVATED"
    raw = api_client(server, realm, "loner").call("GET", "/users")
    assert (raw.status, raw.body["code"]) == (401, "USER_DEACTIVATED"), raw.body

    listed = api_client(server, realm, "owner").ok("GET", "/eventq/queues")["queues"]
    assert [q for q in listed if q["user_id"] == realm.users["loner"]] == []


def test_private_channel_never_leaks(
    server: LiveServer, realm: SampleRealm, database_url: str, pool: ThreadPoolExecutor
) -> None:
    private_id, public_id = realm.streams["private"], realm.streams["public"]
    outsider_id = realm.users["outsider_guest"]
    # The loner (a member subscribed to nothing) may not see "private"; the admin may.
    loner = zulip_client(server, realm, "loner")
    admin = zulip_client(server, realm, "admin")
    loner_queue = loner.register(include_subscribers=True)
    admin_queue = admin.register(include_subscribers=True)
    assert loner_queue["result"] == admin_queue["result"] == "success"
    assert private_id not in stream_ids_named(loner_queue)
    assert private_id in stream_ids_named(admin_queue)

    cli(database_url, "subscribe", REALM, realm.emails["outsider_guest"], "private", "public")
    marker = "marker@zulip.example.com"
    cli(database_url, "create-user", REALM, marker)

    seen, _ = poll_until(pool, loner, loner_queue["queue_id"], -1, is_user_added(marker))
    leaked = [e for e in seen if private_id in stream_ids_named(e)]
    assert leaked == [], f"the loner was told about the private channel: {leaked}"
    named = {s.get("name") for e in seen for s in e.get("streams", []) + e.get("subscriptions", [])}
    assert "private" not in named, seen
    # The same subscription reached the loner for the public channel, so the queue
    # does receive subscription events: the absence above is filtering, not silence.
    peer_adds = [e for e in seen if e["type"] == "subscription" and e["op"] == "peer_add"]
    assert [(e["stream_ids"], e["user_ids"]) for e in peer_adds] == [([public_id], [outsider_id])]

    # Control: the administrator, who sees the private channel, is told about it.
    seen, _ = poll_until(pool, admin, admin_queue["queue_id"], -1, is_user_added(marker))
    admin_peer_adds = [e for e in seen if e["type"] == "subscription" and e["op"] == "peer_add"]
    assert sorted(sid for e in admin_peer_adds for sid in e["stream_ids"]) == sorted(
        [public_id, private_id]
    )
    assert all(e["user_ids"] == [outsider_id] for e in admin_peer_adds)
