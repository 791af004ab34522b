"""Authorization boundaries: foreign queues (same realm or another), deactivated keys
everywhere, administrator endpoints."""

from __future__ import annotations

from typing import Any

from actions.realms import do_create_realm
from actions.users import do_create_user, do_deactivate_user
from models.database import Database
from models.tables import Role
from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer


def test_a_queue_of_another_realm_is_unknown(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    with db.write() as session:
        other_realm = do_create_realm(session, "elsewhere").id
    with db.write() as session:
        stranger = do_create_user(
            session, other_realm, "owner@elsewhere.example.com", role=Role.OWNER
        )
    owner = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
    outsider = ApiClient(server.url, stranger.email, stranger.api_key)
    queue_id = owner.register()["queue_id"]
    unknown_id = "f" * 32
    for method, params in (("GET", {"last_event_id": -1, "dont_block": True}), ("DELETE", {})):
        foreign = outsider.call(method, "/events", {"queue_id": queue_id, **params})
        unknown = outsider.call(method, "/events", {"queue_id": unknown_id, **params})
        assert foreign.status == unknown.status == 400
        assert foreign.body["code"] == unknown.body["code"] == "BAD_EVENT_QUEUE_ID"
        assert foreign.body["msg"].replace(queue_id, "Q") == unknown.body["msg"].replace(
            unknown_id, "Q"
        )
    assert owner.poll(queue_id, -1, dont_block=True).ok, "the queue survived both attempts"
    # The outsider sees nothing of the first realm.
    members = outsider.ok("GET", "/users")["members"]
    assert [m["email"] for m in members] == [stranger.email]
    assert outsider.call("GET", f"/users/{realm.users['owner']}").status == 400
    hidden = outsider.call("GET", f"/streams/{realm.streams['public']}/members")
    assert hidden.status == 400
    assert outsider.call("DELETE", f"/users/{realm.users['member']}").status == 400


ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/register", {}),
    ("GET", "/events", {"queue_id": "x", "dont_block": True}),
    ("GET", "/users", {}),
    ("GET", "/streams", {}),
    ("GET", "/get_stream_id", {"stream": "public"}),
    ("GET", "/users/me/subscriptions", {}),
    ("POST", "/users/me/subscriptions", {"subscriptions": [{"name": "x"}]}),
    ("DELETE", "/users/me/subscriptions", {"subscriptions": ["public"]}),
    ("GET", "/eventq/queues", {}),
]


def test_a_deactivated_key_is_refused_everywhere(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, realm.users["admin"])
    admin = ApiClient(server.url, realm.emails["admin"], realm.api_keys["admin"])
    for method, path, params in ENDPOINTS:
        answer = admin.call(method, path, params)
        assert (answer.status, answer.body["code"]) == (401, "USER_DEACTIVATED"), path


def test_members_cannot_use_administrator_endpoints(server: LiveServer, realm: SampleRealm) -> None:
    member = ApiClient(server.url, realm.emails["member"], realm.api_keys["member"])
    created = member.call(
        "POST", "/users", {"email": "x@zulip.example.com", "password": "p", "full_name": "X"}
    )
    assert created.status == 400 and created.body["code"] == "UNAUTHORIZED_PRINCIPAL"
    removed = member.call(
        "DELETE",
        "/users/me/subscriptions",
        {"subscriptions": ["public"], "principals": [realm.emails["guest"]]},
    )
    assert removed.status == 400 and removed.body["result"] == "error"
