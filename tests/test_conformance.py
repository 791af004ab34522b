"""Wire conformance: what eventq sends matches Zulip's documented shapes, at level 377.

A live server on the sample realm is driven over HTTP from every viewpoint (owner,
administrator, member, loner, guest, outsider guest; public, private and web-public
channels): every endpoint eventq serves, and every action (create users, create
channels of each kind by subscribing, subscribe others, unsubscribe, send channel and
direct messages, deactivate, reactivate) with each viewpoint's queue receiving the
events. Each answer and each event is checked against Zulip's documented shapes
(`tests.helpers.zulip_schema`, through the OpenAPI-validating `ApiClient`), `register`
answers exactly for what they fetched, and every event type eventq serves must turn up.
A second test shows, on real eventq output, that the check catches a missing field, an
extra one and a wrong type. Runs on SQLite and PostgreSQL; waits are long-polls, never
sleeps.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from actions.message_edits import MessageUpdate, check_update_message
from actions.messages import ChannelTarget, check_send_message
from actions.reactions import ReactionRequest, check_add_reaction
from actions.streams import do_create_stream
from actions.subscription_properties import (
    check_property_change,
    check_update_subscription_properties,
)
from actions.subscriptions import bulk_remove_subscriptions
from models.database import Database
from models.outbox import read_events
from models.state import STATE_EVENT_TYPES, fetch_initial_state
from models.tables import UserProfile
from queues.types import SharedEvent
from server.api.handlers.events import VERSION_FIELDS
from tests.helpers import zulip_messages, zulip_schema
from tests.helpers.api import ApiClient
from tests.helpers.openapi import validate_response
from tests.helpers.realms import VIEWPOINTS, SampleRealm
from tests.helpers.server import LiveServer, live_server

# Every event type eventq serves; each must be seen below.
SERVED_EVENT_KINDS = {
    ("heartbeat", None),
    ("message", None),
    ("realm_user", "add"),
    ("realm_user", "update"),
    ("stream", "create"),
    ("stream", "delete"),
    ("subscription", "add"),
    ("subscription", "remove"),
    ("subscription", "peer_add"),
    ("subscription", "peer_remove"),
}
# Polls until an awaited event arrives; each returns at once with events, or after the
# short heartbeat below, so this bounds a failure, not a wait.
MAX_POLLS = 40
ALL_STATE = sorted(STATE_EVENT_TYPES)


@pytest.fixture
def quick_server(database_url: str, realm: SampleRealm) -> Iterator[LiveServer]:
    """The sample realm's server, answering a quiet poll with a heartbeat after 0.3 s:
    the heartbeat is an event type to check too, and a poll never idles for long."""
    with live_server(database_url, env={"EVENTQ_HEARTBEAT_SECS": "0.3"}) as running:
        yield running


def clients_of(server: LiveServer, realm: SampleRealm) -> dict[str, ApiClient]:
    return {
        name: ApiClient(server.url, realm.emails[name], realm.api_keys[name]) for name in VIEWPOINTS
    }


def poll_until_user_added(
    client: ApiClient, queue_id: str, email: str
) -> tuple[list[dict[str, Any]], int]:
    """Every event of the queue up to the `realm_user` `add` of `email`, and its id."""
    received: list[dict[str, Any]] = []
    last = -1
    for _ in range(MAX_POLLS):
        answer = client.poll(queue_id, last)  # validated: eventq's document and Zulip's
        assert answer.ok, answer.body
        for event in answer.body["events"]:
            assert event["id"] > last or event["type"] == "heartbeat", (event, last)
            last = max(last, event["id"])
            received.append(event)
            if event["type"] == "realm_user" and event.get("op") == "add":
                if event["person"]["email"] == email:
                    return received, last
    raise AssertionError(f"no realm_user add of {email} after {MAX_POLLS} polls: {received}")


def check_own_keys(answer: dict[str, Any], realm: SampleRealm, name: str) -> None:
    """The current user's keys name this user, and its role-based rights as eventq has
    them (guests create nothing and subscribe nobody else)."""
    assert (answer["user_id"], answer["email"]) == (realm.users[name], realm.emails[name])
    assert answer["delivery_email"] == answer["email"]
    assert answer["full_name"] == name.title()
    roles = {
        "is_owner": name == "owner",
        "is_admin": name in ("owner", "admin"),
        "is_moderator": False,
        "is_guest": name in ("guest", "outsider_guest"),
    }
    assert {key: answer[key] for key in roles} == roles
    non_guest = not roles["is_guest"]
    assert answer["can_create_public_streams"] is non_guest
    assert answer["can_create_private_streams"] is non_guest
    assert answer["can_create_streams"] is non_guest
    assert answer["can_subscribe_other_users"] is non_guest
    assert answer["can_create_web_public_streams"] is roles["is_admin"]
    assert answer["can_invite_others_to_realm"] is False
    assert answer["cross_realm_bots"] == []
    assert answer["avatar_source"] == "G" and answer["avatar_url"].startswith("https://")
    me = [u for u in answer["realm_users"] if u["user_id"] == answer["user_id"]]
    assert [u["email"] for u in me] == [answer["email"]]


def read_every_endpoint(client: ApiClient, realm: SampleRealm, name: str) -> dict[str, Any]:
    """Every read endpoint as `name` sees it (each answer validated by `ApiClient`), and
    `register` in three forms, each checked exactly for what it fetched. Returns the
    full register answer; its queue is left registered for the actions' events."""
    full = client.register(
        event_types=[*ALL_STATE, "message"],
        fetch_event_types=ALL_STATE,
        include_subscribers=True,
        client_capabilities={"deactivation_peer_events": True},
    )
    zulip_schema.check(zulip_schema.register(ALL_STATE, True), full, f"{name}'s register")
    check_own_keys(full, realm, name)
    assert {key: full[key] for key in VERSION_FIELDS} == VERSION_FIELDS

    # Without realm_user state there are no own keys; without subscribers, no lists.
    for fetched, include in ((["stream"], False), (["subscription"], False)):
        partial = client.register(event_types=fetched, include_subscribers=include)
        what = f"{name}'s register of {fetched}"
        zulip_schema.check(zulip_schema.register(fetched, include), partial, what)
        client.ok("DELETE", "/events", {"queue_id": partial["queue_id"]})

    me = client.ok("GET", "/users/me")
    own = {key: full[key] for key in ("user_id", "email", "full_name", "avatar_url")}
    assert {key: me[key] for key in own} == own
    assert me["is_admin"] == full["is_admin"] and me["is_guest"] == full["is_guest"]

    members = client.ok("GET", "/users")["members"]
    assert {u["user_id"] for u in members} >= set(realm.users.values())
    for user_id in realm.users.values():
        client.ok("GET", f"/users/{user_id}")
    streams = client.ok("GET", "/streams")["streams"]
    assert streams == full["streams"], "GET /streams and register show the same channels"
    for stream in streams:
        assert (
            client.ok("GET", "/get_stream_id", {"stream": stream["name"]})["stream_id"]
            == (stream["stream_id"])
        )
        client.ok("GET", f"/streams/{stream['stream_id']}/members")
    for include in (True, False):
        subscriptions = client.ok(
            "GET", "/users/me/subscriptions", {"include_subscribers": include}
        )["subscriptions"]
        zulip_schema.check(
            zulip_schema.success(
                {"subscriptions": zulip_schema.array(zulip_schema.subscription(include))}
            ),
            {"result": "success", "msg": "", "subscriptions": subscriptions},
            f"{name}'s subscriptions (include_subscribers={include})",
        )
    return full


def test_every_answer_and_event_has_zulips_shape(
    quick_server: LiveServer, realm: SampleRealm
) -> None:
    server = quick_server
    settings = requests.get(server.url + "/api/v1/server_settings", timeout=30)
    validate_response("GET", "/server_settings", settings.status_code, settings.json())
    # Features advertised = features served: no login method, no push notifications.
    claims = settings.json()
    assert claims["zulip_feature_level"] == VERSION_FIELDS["zulip_feature_level"] == 377
    assert claims["email_auth_enabled"] is False and claims["push_notifications_enabled"] is False
    assert not any(claims["authentication_methods"].values())
    assert claims["external_authentication_methods"] == []

    clients = clients_of(server, realm)
    queues = {
        name: read_every_endpoint(client, realm, name)["queue_id"]
        for name, client in clients.items()
    }

    # Errors a client must handle have Zulip's error shape (checked by ApiClient).
    owner, admin, member, guest = (clients[n] for n in ("owner", "admin", "member", "guest"))
    assert owner.call("GET", "/events", {"queue_id": "nope"}).body["code"] == "BAD_EVENT_QUEUE_ID"
    assert owner.call("GET", "/events").body["code"] == "REQUEST_VARIABLE_MISSING"
    missing = owner.call("GET", "/get_stream_id", {"stream": "nope"})
    assert missing.body["code"] == "STREAM_DOES_NOT_EXIST"
    stranger = ApiClient(server.url, realm.emails["owner"], "not-the-key")
    assert stranger.call("GET", "/users/me").status == 401

    # The actions, through the API, from several viewpoints; every queue gets events.
    newbie_email = "newbie@zulip.example.com"
    newbie = owner.ok(
        "POST", "/users", {"email": newbie_email, "password": "unused", "full_name": "Newbie"}
    )["user_id"]
    member.ok("POST", "/users/me/subscriptions", {"subscriptions": [{"name": "conf public"}]})
    admin.ok(
        "POST",
        "/users/me/subscriptions",
        {
            "subscriptions": [{"name": "conf web"}],
            "is_web_public": True,
            "principals": [realm.emails["outsider_guest"]],
        },
    )
    owner.ok(
        "POST",
        "/users/me/subscriptions",
        {
            "subscriptions": [{"name": "conf private"}],
            "invite_only": True,
            "principals": [newbie_email, realm.emails["guest"]],
        },
    )
    conf_private = owner.ok("GET", "/get_stream_id", {"stream": "conf private"})["stream_id"]
    # What a guest's `can_create_*` keys say false is refused indeed.
    refused = guest.call("POST", "/users/me/subscriptions", {"subscriptions": [{"name": "g"}]})
    assert refused.status == 400, refused.body
    owner.ok(
        "DELETE",
        "/users/me/subscriptions",
        {"subscriptions": ["conf private"], "principals": [realm.emails["guest"]]},
    )
    # A channel message and a direct message (`message` events; GET /messages).
    member.ok(
        "POST",
        "/messages",
        {"type": "stream", "to": "conf public", "topic": "shapes", "content": "**hi**"},
    )
    guest.ok("POST", "/messages", {"type": "direct", "to": [newbie], "content": "hello"})
    for client in (member, guest):
        history = client.ok("GET", "/messages", {"anchor": "newest", "num_before": 5})
        assert history["messages"], "the message just sent is in its sender's history"
    owner.ok("DELETE", f"/users/{newbie}")
    owner.ok("POST", f"/users/{newbie}/reactivate")
    marker = "marker@zulip.example.com"
    owner.ok("POST", "/users", {"email": marker, "password": "unused", "full_name": "Marker"})

    seen: set[tuple[str, str | None]] = set()
    last_ids = {}
    for name, client in clients.items():
        events, last_ids[name] = poll_until_user_added(client, queues[name], marker)
        seen |= {(e["type"], e.get("op")) for e in events}
        if name == "guest":
            # Unsubscribed from a private channel: its stream delete names it by id.
            (deleted,) = [e for e in events if (e["type"], e.get("op")) == ("stream", "delete")]
            assert deleted["stream_ids"] == [conf_private]
            assert deleted["streams"] == [{"stream_id": s} for s in deleted["stream_ids"]]
    # Nothing else happens: the owner's next poll is answered with a heartbeat.
    quiet = owner.poll(queues["owner"], last_ids["owner"])
    assert [e["type"] for e in quiet.body["events"]] == ["heartbeat"], quiet.body
    seen |= {("heartbeat", None)}
    assert seen == SERVED_EVENT_KINDS, f"missing {SERVED_EVENT_KINDS - seen}"


def test_the_check_catches_a_missing_extra_or_mistyped_field(
    db: Database, realm: SampleRealm
) -> None:
    """Real eventq output (a register state, a stream delete event, the events of a
    message, a reaction, an edit and a subscription setting, and a complete register)
    passes; each mutation a conformance bug would make fails, naming the field."""
    with db.write() as session:
        bulk_remove_subscriptions(
            session, realm.realm_id, [realm.users["guest"]], [realm.streams["private"]]
        )
    with db.snapshot() as session:
        member = session.get(UserProfile, realm.users["member"])  # subscribed everywhere
        assert member is not None
        state = fetch_initial_state(session, member, STATE_EVENT_TYPES, True)
        (deleted,) = [
            e.event for e in read_events(session, realm.realm_id, 0) if e.event["op"] == "delete"
        ]
    envelope = {"result": "success", "msg": "", "queue_id": "q", "last_event_id": -1}
    answer: dict[str, Any] = json.loads(json.dumps({**envelope, **VERSION_FIELDS, **state}))
    schema = zulip_schema.register(STATE_EVENT_TYPES, True)
    zulip_schema.check(schema, answer, "the register answer")
    event = {**deleted, "id": 3}
    zulip_schema.check_event(event)

    def fails(mutate: Any, field: str) -> None:
        mutated = copy.deepcopy(answer)
        mutate(mutated)
        with pytest.raises(AssertionError, match=field):
            zulip_schema.check(schema, mutated, "the mutated answer")

    # A required field removed, an undocumented one added, a type changed.
    fails(lambda a: a["streams"][0].pop("creator_id"), "'creator_id' is a required property")
    fails(lambda a: a["subscriptions"][0].pop("can_subscribe_group"), "can_subscribe_group")
    fails(lambda a: a.pop("avatar_url_medium"), "avatar_url_medium")
    fails(lambda a: a["realm_users"][0].update(is_billing_admin=False), "is_billing_admin")
    fails(lambda a: a["streams"][0].update(stream_id="1"), "'1' is not of type 'integer'")
    fails(lambda a: a["subscriptions"][0].update(is_recently_active=None), "is_recently_active")
    fails(lambda a: a.update(user_id=None), "user_id")
    # The old form of a stream delete: whole channel objects, no stream_ids.
    old_form = {**event, "streams": state["streams"][:1]}
    del old_form["stream_ids"]
    with pytest.raises(AssertionError, match="stream_ids"):
        zulip_schema.check_event(old_form)

    # The message shapes, the subscription settings and the complete register: real
    # output of each action (read back from the outbox), valid, then missing one field.
    zulip_messages.install()
    owner_id, member_id = realm.users["owner"], realm.users["member"]
    public = realm.streams["public"]
    with db.snapshot() as session:
        after = max(e.seq for e in read_events(session, realm.realm_id, 0))
    with db.write() as session:
        message_id = check_send_message(
            session, realm.realm_id, owner_id, ChannelTarget(public), "shapes", "hello", "tests"
        )
    with db.write() as session:
        check_add_reaction(session, realm.realm_id, member_id, message_id, ReactionRequest("tada"))
    with db.write() as session:
        check_update_message(
            session, realm.realm_id, owner_id, message_id, MessageUpdate(content="edited")
        )
    with db.write() as session:
        change = check_property_change(public, "pin_to_top", True)
        check_update_subscription_properties(session, realm.realm_id, member_id, [change])
    with db.snapshot() as session:
        # As a queue delivers each: without eventq's stored extras, with an id.
        delivered_forms = [
            SharedEvent(e.realm_id, e.seq, e.event, e.user_ids).data
            for e in read_events(session, realm.realm_id, after)
        ]
        written = {(d["type"], d.get("op")): {**d, "id": 7} for d in delivered_forms}
        member_profile = session.get(UserProfile, member_id)
        assert member_profile is not None
        complete_state = fetch_initial_state(
            session, member_profile, {"message"}, False, register_keys=True
        )
    kinds = [
        ("message", None, lambda e: e["message"].pop("reactions"), "reactions"),
        ("update_message", None, lambda e: e.pop("message_ids"), "message_ids"),
        ("reaction", "add", lambda e: e.pop("emoji_code"), "emoji_code"),
        ("subscription", "update", lambda e: e.pop("property"), "property"),
    ]
    for kind, op, remove_field, field in kinds:
        delivered = json.loads(json.dumps(written[(kind, op)]))
        zulip_schema.check_event(delivered)
        remove_field(delivered)
        with pytest.raises(AssertionError, match=f"'{field}' is a required property"):
            zulip_schema.check_event(delivered)
    complete: dict[str, Any] = json.loads(
        json.dumps({**envelope, **VERSION_FIELDS, **complete_state})
    )
    assert complete["max_message_id"] == message_id
    complete_schema = zulip_schema.register(frozenset({"message"}), False, complete=True)
    zulip_schema.check(complete_schema, complete, "the complete register answer")
    del complete["max_message_id"]
    with pytest.raises(AssertionError, match="'max_message_id' is a required property"):
        zulip_schema.check(complete_schema, complete, "the register without max_message_id")


def test_channel_descriptions_are_escaped_html(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    """A description with markup reaches every client as text: `rendered_description`
    is the escaped description, in GET /streams, register, and the create event."""
    hostile = "<img src=x onerror=alert(1)> & <script>alert(2)</script>"
    escaped = (
        "<p>&lt;img src=x onerror=alert(1)&gt; &amp; &lt;script&gt;alert(2)&lt;/script&gt;</p>"
    )
    owner = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
    queue_id = owner.register(event_types=["stream"])["queue_id"]
    with db.write() as session:
        do_create_stream(session, realm.realm_id, "hostile", description=hostile)
    created = owner.poll(queue_id, -1).body["events"]
    assert [s["rendered_description"] for s in created[0]["streams"]] == [escaped]

    def hostile_channel(channels: list[dict[str, Any]]) -> dict[str, Any]:
        (channel,) = [c for c in channels if c["name"] == "hostile"]
        return channel

    listed = hostile_channel(owner.ok("GET", "/streams")["streams"])
    assert (listed["description"], listed["rendered_description"]) == (hostile, escaped)
    state = owner.register(event_types=["stream", "subscription"])
    for key in ("streams", "never_subscribed"):
        assert hostile_channel(state[key])["rendered_description"] == escaped
