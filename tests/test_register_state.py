"""`register` answers what it is asked (issue 25, part 1): every `fetch_event_types`
value Zulip documents gives its keys in Zulip's shapes, real data where eventq holds it
(`max_message_id`, the system groups' members, `recent_private_conversations`), unknown
event types are refused, JSON `null` reads as absent, and `apply_markdown` defaults to
false.

Over real HTTP against a real `eventq serve` (`tests.helpers.server`), each answer is
checked against eventq's OpenAPI document by the client (`tests.helpers.api`) and here
against Zulip's shape for exactly the types fetched (`tests.helpers.zulip_schema`). The
actions that change what these keys show go through `verify_action`.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from actions.messages import DirectTarget, check_send_message
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models import realm_settings
from models.database import Database
from models.register_keys import (
    GROUP_ADMINISTRATORS,
    GROUP_EVERYONE,
    GROUP_FULL_MEMBERS,
    GROUP_MEMBERS,
    GROUP_OWNERS,
    KNOWN_EVENT_TYPES,
)
from models.state import fetch_initial_state
from models.tables import Role, UserProfile
from tests.helpers import zulip_schema
from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer
from tests.helpers.verify import verify_action

# zulip-terminal 0.7.0's register, and the keys it reads from the answer (issue 25).
ZULIP_TERMINAL_FETCH = [
    "realm",
    "presence",
    "subscription",
    "message",
    "starred_messages",
    "update_message_flags",
    "muted_topics",
    "realm_user",
    "realm_user_groups",
    "update_global_notifications",
    "update_display_settings",
    "user_settings",
    "realm_emoji",
    "zulip_version",
]
ZULIP_TERMINAL_NEEDS = [
    "max_message_id",
    "realm_name",
    "presences",
    "realm_message_retention_days",
    "muted_topics",
    "realm_user_groups",
    "unread_msgs",
    "realm_emoji",
    "twenty_four_hour_time",
    "pm_content_in_desktop_notifications",
    "starred_messages",
    "realm_allow_message_editing",
    "realm_message_content_edit_limit_seconds",
    "realm_allow_edit_history",
]
# The keys every answer has, whatever was fetched.
ENVELOPE = {
    "result",
    "msg",
    "queue_id",
    "last_event_id",
    "zulip_version",
    "zulip_feature_level",
    "zulip_merge_base",
}


def client(server: LiveServer, realm: SampleRealm, name: str) -> ApiClient:
    return ApiClient(server.url, realm.emails[name], realm.api_keys[name])


def raw_register(server: LiveServer, realm: SampleRealm, data: dict[str, str]) -> Any:
    """A register with exactly these form values (no JSON encoding by the test)."""
    return requests.post(
        f"{server.url}/api/v1/register",
        data=data,
        auth=(realm.emails["member"], realm.api_keys["member"]),
        timeout=30,
    )


def send_direct(db: Database, realm: SampleRealm, sender: str, *to: str) -> int:
    with db.write() as session:
        return check_send_message(
            session,
            realm.realm_id,
            realm.users[sender],
            DirectTarget(user_ids=tuple(realm.users[name] for name in to)),
            None,
            "hello",
            "test",
        )


def groups_by_name(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {group["name"]: group for group in state["realm_user_groups"]}


# -- zulip-terminal's register ------------------------------------------------------------------


def test_zulip_terminal_register_gets_every_key_it_reads(
    db: Database, realm: SampleRealm, server: LiveServer
) -> None:
    message_id = send_direct(db, realm, "owner", "member")
    api = client(server, realm, "member")
    answer = api.register(
        event_types=ZULIP_TERMINAL_FETCH,
        fetch_event_types=ZULIP_TERMINAL_FETCH,
        client_capabilities={"notification_settings_null": True},
    )
    missing = [key for key in ZULIP_TERMINAL_NEEDS if key not in answer]
    assert not missing, missing
    zulip_schema.check(
        zulip_schema.register(
            frozenset(ZULIP_TERMINAL_FETCH), include_subscribers=False, complete=True
        ),
        answer,
        "zulip-terminal's register",
    )
    assert answer["max_message_id"] == message_id
    assert answer["realm_name"] == "Sample realm"
    assert answer["realm_message_retention_days"] == -1
    assert answer["muted_topics"] == [] and answer["realm_emoji"] == {}
    assert answer["unread_msgs"]["pms"][0]["unread_message_ids"] == [message_id]
    assert answer["realm_allow_message_editing"] is True
    assert answer["realm_message_content_edit_limit_seconds"] == (
        realm_settings.MESSAGE_CONTENT_EDIT_LIMIT_SECONDS
    )
    assert answer["realm_allow_edit_history"] is True
    # The message permissions the edit and delete code enforces, as system group ids.
    delete_any = answer["realm_can_delete_any_message_group"]
    assert groups_by_name(answer)[realm_settings.CAN_DELETE_ANY_MESSAGE_GROUP]["id"] == delete_any
    assert answer["realm_message_content_delete_limit_seconds"] == (
        realm_settings.MESSAGE_CONTENT_DELETE_LIMIT_SECONDS
    )
    # Without `user_settings_object`, the legacy per-setting keys come too.
    assert answer["twenty_four_hour_time"] is answer["user_settings"]["twenty_four_hour_time"]
    assert answer["pm_content_in_desktop_notifications"] is True
    assert answer["enter_sends"] is False
    assert answer["realm_url"] == server.url


def test_user_settings_object_drops_the_legacy_keys(realm: SampleRealm, server: LiveServer) -> None:
    answer = client(server, realm, "member").register(
        fetch_event_types=[
            "update_display_settings",
            "update_global_notifications",
            "user_settings",
        ],
        client_capabilities={"user_settings_object": True},
    )
    assert set(answer) - ENVELOPE == {"user_settings"}


def test_each_documented_type_alone_gives_exactly_its_keys(
    realm: SampleRealm, server: LiveServer
) -> None:
    api = client(server, realm, "member")
    for kind in sorted(KNOWN_EVENT_TYPES):
        answer = api.register(fetch_event_types=[kind], event_types=["heartbeat"])
        schema = zulip_schema.register(frozenset({kind}), include_subscribers=False, complete=True)
        # Exactly this type's keys: required, and nothing else is allowed.
        zulip_schema.check(schema, answer, f"register fetching {kind}")


def test_a_register_without_types_gets_everything(realm: SampleRealm, server: LiveServer) -> None:
    answer = client(server, realm, "member").register()
    for key in ("realm_users", "realm_name", "realm_user_groups", "user_settings", "presences"):
        assert key in answer, key
    assert "max_message_id" in answer and "recent_private_conversations" in answer
    # `user_topic` is fetched too, which replaces `muted_topics`.
    assert "user_topics" in answer and "muted_topics" not in answer
    zulip_schema.check(zulip_schema.register(), answer, "register of everything")


# -- refusals and nulls ---------------------------------------------------------------------------


def test_an_unknown_event_type_is_refused(realm: SampleRealm, server: LiveServer) -> None:
    api = client(server, realm, "member")
    for name in ("event_types", "fetch_event_types"):
        answer = api.call("POST", "/register", {name: ["realm_user", "no_such_type"]})
        assert answer.status == 400, answer.body
        assert answer.body["code"] == "BAD_REQUEST"
        assert answer.body["msg"] == f"Invalid event type 'no_such_type' in {name}"
    # Every documented type is accepted, those newer than feature level 377 included.
    api.register(event_types=sorted(KNOWN_EVENT_TYPES), fetch_event_types=["channel_folders"])


def test_a_queue_narrow_takes_only_what_an_event_carries(
    realm: SampleRealm, server: LiveServer
) -> None:
    """History narrows (`search`, `has:`) need the database: a queue's narrow refuses
    them as Zulip's register does, and takes the flag operands an event carries."""
    api = client(server, realm, "member")
    for operator, operand in (("search", "lunch"), ("has", "link")):
        answer = api.call("POST", "/register", {"narrow": [[operator, operand]]})
        assert answer.status == 400, answer.body
        assert answer.body["msg"] == f"Operator {operator} not supported."
    api.register(event_types=["message"], narrow=[["is", "starred"], ["channel", "public"]])


def test_null_reads_as_absent(realm: SampleRealm, server: LiveServer) -> None:
    # zulip-js's `callOnEachEvent` sends `event_types=null`.
    response = raw_register(
        server,
        realm,
        {
            "event_types": "null",
            "fetch_event_types": "null",
            "narrow": "null",
            "all_public_streams": "null",
            "client_gravatar": "null",
            "presence_history_limit_days": "null",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "realm_users" in body and "realm_name" in body  # everything, as when absent
    api = client(server, realm, "member")
    polled = api.call(
        "GET",
        "/events",
        {"queue_id": body["queue_id"], "last_event_id": None, "dont_block": True},
    )
    assert polled.ok, polled.body
    # A null where a list is required is still refused.
    refused = raw_register(server, realm, {"event_types": json.dumps([None])})
    assert refused.status_code == 400


def test_apply_markdown_defaults_to_false(
    db: Database, realm: SampleRealm, server: LiveServer
) -> None:
    api = client(server, realm, "member")
    default = api.register(event_types=["message"])
    markdown = api.register(event_types=["message"], apply_markdown=True)
    with db.write() as session:
        check_send_message(
            session,
            realm.realm_id,
            realm.users["owner"],
            DirectTarget(user_ids=(realm.users["member"],)),
            None,
            "**bold**",
            "test",
        )
    raw = api.poll(default["queue_id"], -1).body["events"][0]["message"]
    html = api.poll(markdown["queue_id"], -1).body["events"][0]["message"]
    assert raw["content"] == "**bold**" and raw["content_type"] == "text/x-markdown"
    assert html["content_type"] == "text/html" and "<strong>" in html["content"]


# -- system groups ------------------------------------------------------------------------------


def test_system_groups_follow_roles(db: Database, realm: SampleRealm, server: LiveServer) -> None:
    answer = client(server, realm, "guest").register(fetch_event_types=["realm_user_groups"])
    groups = groups_by_name(answer)
    assert [g["id"] for g in answer["realm_user_groups"]] == list(range(1, 9))
    users = realm.users
    assert groups["role:owners"]["members"] == [users["owner"]]
    assert groups["role:administrators"]["members"] == [users["admin"]]
    assert groups["role:administrators"]["direct_subgroup_ids"] == [GROUP_OWNERS]
    assert groups["role:moderators"]["members"] == []
    assert groups["role:moderators"]["direct_subgroup_ids"] == [GROUP_ADMINISTRATORS]
    members = sorted([users["member"], users["loner"]])
    assert groups["role:fullmembers"]["members"] == members
    assert groups["role:members"]["members"] == members
    assert groups["role:members"]["direct_subgroup_ids"] == [GROUP_FULL_MEMBERS]
    assert groups["role:everyone"]["members"] == sorted([users["guest"], users["outsider_guest"]])
    assert groups["role:everyone"]["direct_subgroup_ids"] == [GROUP_MEMBERS]
    assert groups["role:internet"]["direct_subgroup_ids"] == [GROUP_EVERYONE]
    assert groups["role:nobody"]["members"] == [] == groups["role:nobody"]["direct_subgroup_ids"]
    assert all(g["is_system_group"] for g in answer["realm_user_groups"])


def _state(db: Database, user_id: int) -> dict[str, Any]:
    with db.snapshot() as session:
        user = session.get(UserProfile, user_id)
        assert user is not None
        fetched = {"realm_user_groups", "message", "recent_private_conversations", "realm"}
        state = fetch_initial_state(session, user, fetched, False, register_keys=True)
        return json.loads(json.dumps(state))


def test_group_members_as_of_register_through_user_actions(
    db: Database, realm: SampleRealm
) -> None:
    """eventq sends no `user_group` events: the groups are as of the register. A client
    that removes a deactivated user from every group, as Zulip asks, still agrees with
    a fresh register; a created or reactivated user appears at the next register."""
    before = groups_by_name(_state(db, realm.users["owner"]))
    created = verify_action(
        db,
        realm.realm_id,
        lambda s: do_create_user(s, realm.realm_id, "mod@zulip.example.com", "Mod", Role.MODERATOR),
    )
    new_id = created.result.id
    assert not [e for e in created.events if e.event["type"] == "user_group"]
    after = groups_by_name(_state(db, realm.users["owner"]))
    assert after["role:moderators"]["members"] == [new_id]
    assert before["role:moderators"]["members"] == []

    deactivated = verify_action(
        db, realm.realm_id, lambda s: do_deactivate_user(s, realm.realm_id, new_id)
    )
    (update,) = [e.event for e in deactivated.events if e.event["type"] == "realm_user"]
    # What a client does with the update (Zulip's rule since feature level 303).
    applied = {
        name: [m for m in group["members"] if m != update["person"]["user_id"]]
        for name, group in after.items()
    }
    fresh = groups_by_name(_state(db, realm.users["owner"]))
    assert applied == {name: group["members"] for name, group in fresh.items()}

    verify_action(db, realm.realm_id, lambda s: do_reactivate_user(s, realm.realm_id, new_id))
    assert groups_by_name(_state(db, realm.users["owner"]))["role:moderators"]["members"] == [
        new_id
    ]


def test_max_message_id_and_recent_conversations_are_as_of_register(
    db: Database, realm: SampleRealm
) -> None:
    member = realm.users["member"]
    assert _state(db, member)["max_message_id"] == -1
    assert _state(db, member)["recent_private_conversations"] == []
    sent = verify_action(
        db,
        realm.realm_id,
        lambda s: check_send_message(
            s,
            realm.realm_id,
            realm.users["owner"],
            DirectTarget(user_ids=(member, realm.users["admin"])),
            None,
            "hi",
            "test",
        ),
    )
    to_self = send_direct(db, realm, "member", "member")
    state = _state(db, member)
    assert state["max_message_id"] == to_self > sent.result
    assert state["recent_private_conversations"] == [
        {"max_message_id": to_self, "user_ids": []},
        {
            "max_message_id": sent.result,
            "user_ids": sorted([realm.users["owner"], realm.users["admin"]]),
        },
    ]
    # The owner's view: the other two participants.
    owner_view = _state(db, realm.users["owner"])["recent_private_conversations"]
    assert owner_view == [
        {"max_message_id": sent.result, "user_ids": sorted([member, realm.users["admin"]])}
    ]
