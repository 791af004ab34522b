"""A user's own subscription settings (`POST /users/me/subscriptions/properties`) and the
colour a new subscription gets, on both backends.

Each property goes through `verify_action`: its `subscription` `update` events (two for
`is_muted` and `in_home_view`, `in_home_view` first) reach the user alone, and every
user's state with its events applied equals a fresh `register`. Zulip's refusals change
nothing, not even the valid changes before them. New subscriptions get Zulip's palette
colours, each user's first unused one, and a renewed subscription keeps its settings;
the rows revision 0012 finds get Zulip's defaults.
The change takes the realm lock in its shared mode and costs as many statements for
twenty channels as for one. Over HTTP, the unmodified `zulip` client changes settings
against a live server, its queue receives the events, and `GET /users/me/subscriptions`
shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from actions.errors import InvalidInput
from actions.streams import do_create_streams
from actions.subscription_properties import (
    STREAM_ASSIGNMENT_COLORS,
    PropertyChange,
    check_property_change,
    check_update_subscription_properties,
    pick_colors,
)
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user
from migrations import alembic_config, upgrade
from models.database import Database
from models.outbox import outbox_count
from models.state import fetch_initial_state
from models.tables import Subscription, UserProfile
from tests.helpers.api import zulip_client
from tests.helpers.openapi import validate_event, validate_response
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer
from tests.helpers.statements import count_statements, is_realm_lock
from tests.helpers.verify import FETCHED_TYPES, verify_action


def changing(
    realm: SampleRealm, user: str, *changes: tuple[str, str, Any]
) -> Callable[[Session], None]:
    """The change as an action for `verify_action`: (channel kind, property, value)."""
    checked = [
        check_property_change(realm.streams[kind], prop, value) for kind, prop, value in changes
    ]

    def action(session: Session) -> None:
        check_update_subscription_properties(session, realm.realm_id, realm.users[user], checked)

    return action


def subscriptions_of(db: Database, realm: SampleRealm, user: str) -> dict[int, dict[str, Any]]:
    """The user's `subscriptions` of a fresh register, by channel id."""
    with db.snapshot() as session:
        profile = session.get(UserProfile, realm.users[user])
        assert profile is not None
        state = fetch_initial_state(session, profile, FETCHED_TYPES, True)
    return {entry["stream_id"]: entry for entry in state["subscriptions"]}


# -- each property, through verify_action ----------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "value", "expected"),
    [
        ("color", "#f00f00", {"color": "#f00f00"}),
        ("color", "#ABC", {"color": "#ABC"}),
        ("pin_to_top", True, {"pin_to_top": True}),
        ("desktop_notifications", False, {"desktop_notifications": False}),
        ("audible_notifications", True, {"audible_notifications": True}),
        ("push_notifications", False, {"push_notifications": False}),
        ("email_notifications", True, {"email_notifications": True}),
        ("wildcard_mentions_notify", False, {"wildcard_mentions_notify": False}),
        ("is_muted", True, {"is_muted": True, "in_home_view": False}),
        ("in_home_view", False, {"is_muted": True, "in_home_view": False}),
    ],
)
def test_each_property_converges(
    db: Database, realm: SampleRealm, prop: str, value: Any, expected: dict[str, Any]
) -> None:
    member = realm.users["member"]
    stream_id = realm.streams["private"]
    before = subscriptions_of(db, realm, "member")[stream_id]
    verified = verify_action(
        db, realm.realm_id, changing(realm, "member", ("private", prop, value))
    )
    events = [stored.event for stored in verified.events]
    if prop in ("is_muted", "in_home_view"):
        # Zulip's two events since feature level 139: the legacy name first.
        assert events == [
            {
                "type": "subscription",
                "op": "update",
                "stream_id": stream_id,
                "property": "in_home_view",
                "value": False,
            },
            {
                "type": "subscription",
                "op": "update",
                "stream_id": stream_id,
                "property": "is_muted",
                "value": True,
            },
        ]
    else:
        assert events == [
            {
                "type": "subscription",
                "op": "update",
                "stream_id": stream_id,
                "property": prop,
                "value": value,
            }
        ]
    assert all(stored.user_ids == (member,) for stored in verified.events)
    for stored in verified.events:
        validate_event({**stored.event, "id": 0})
    after = subscriptions_of(db, realm, "member")
    assert after[stream_id] == {**before, **expected}
    # The guest, subscribed to the same channel, keeps its own settings.
    assert subscriptions_of(db, realm, "guest")[stream_id]["color"] == STREAM_ASSIGNMENT_COLORS[1]


def test_several_changes_apply_in_order(db: Database, realm: SampleRealm) -> None:
    """Changes apply one after another: the last of a property wins, and each sends its
    events even when it sets the value the setting already had (as Zulip does)."""
    verified = verify_action(
        db,
        realm.realm_id,
        changing(
            realm,
            "guest",
            ("public", "color", "#111111"),
            ("web_public", "is_muted", True),
            ("public", "color", "#222222"),
            ("web_public", "in_home_view", True),
            ("public", "pin_to_top", False),
        ),
    )
    assert [(e.event["property"], e.event["value"]) for e in verified.events] == [
        ("color", "#111111"),
        ("in_home_view", False),
        ("is_muted", True),
        ("color", "#222222"),
        ("in_home_view", True),
        ("is_muted", False),
        ("pin_to_top", False),
    ]
    after = subscriptions_of(db, realm, "guest")
    assert after[realm.streams["public"]]["color"] == "#222222"
    assert after[realm.streams["web_public"]]["is_muted"] is False


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "value", "message"),
    [
        ("colour", "#fff", "Unknown subscription property: colour"),
        ("name", "x", "Unknown subscription property: name"),
        ("is_muted", "true", "is_muted is not a boolean"),
        ("pin_to_top", 1, "pin_to_top is not a boolean"),
        ("desktop_notifications", None, "desktop_notifications is not a boolean"),
        ("color", "red", "color is not a valid hex color code"),
        ("color", "#12", "color is not a valid hex color code"),
        ("color", "#1234567", "color is not a valid hex color code"),
        ("color", "#12345g", "color is not a valid hex color code"),
        ("color", True, "color is not a string"),
    ],
)
def test_zulips_value_checks(prop: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_property_change(1, prop, value)
    assert str(refused.value) == message


def test_refusals_change_nothing(db: Database, realm: SampleRealm) -> None:
    """A channel the user cannot see or that does not exist is "Invalid channel ID"; one
    they see but are not subscribed to (never, or no longer) is "Not subscribed"; the
    valid changes before a refused one are not made."""
    with db.write() as session:
        bulk_remove_subscriptions(
            session, realm.realm_id, [realm.users["member"]], [realm.streams["public"]]
        )
    cases: list[tuple[str, int, str]] = [
        ("loner", realm.streams["private"], "Invalid channel ID"),
        ("outsider_guest", realm.streams["public"], "Invalid channel ID"),
        ("member", 999_999, "Invalid channel ID"),
        (
            "loner",
            realm.streams["public"],
            f"Not subscribed to channel ID {realm.streams['public']}",
        ),
        # Visible to an administrator, who is not subscribed.
        (
            "admin",
            realm.streams["private"],
            f"Not subscribed to channel ID {realm.streams['private']}",
        ),
        # Unsubscribed above: the row is there, inactive.
        (
            "member",
            realm.streams["public"],
            f"Not subscribed to channel ID {realm.streams['public']}",
        ),
    ]
    with db.snapshot() as session:
        outbox_before = outbox_count(session, realm.realm_id)
    before = subscriptions_of(db, realm, "member")
    for user, stream_id, message in cases:
        changes = [PropertyChange(stream_id, "pin_to_top", True)]
        if user == "member":  # after a valid change, which is not made either
            changes.insert(0, PropertyChange(realm.streams["web_public"], "color", "#000000"))
        with pytest.raises(InvalidInput) as refused, db.write() as session:
            check_update_subscription_properties(
                session, realm.realm_id, realm.users[user], changes
            )
        assert str(refused.value) == message, user
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == outbox_before
    # The member's valid first change (web-public's colour) was not made either.
    assert subscriptions_of(db, realm, "member") == before


# -- colours at subscribe time ----------------------------------------------------------------


def test_pick_colors_follows_zulips_palette() -> None:
    assert pick_colors([], [9, 3, 5]) == {
        3: STREAM_ASSIGNMENT_COLORS[0],
        5: STREAM_ASSIGNMENT_COLORS[1],
        9: STREAM_ASSIGNMENT_COLORS[2],
    }
    used = [STREAM_ASSIGNMENT_COLORS[0], STREAM_ASSIGNMENT_COLORS[2], "#123456"]
    assert pick_colors(used, [4, 7]) == {
        4: STREAM_ASSIGNMENT_COLORS[1],
        7: STREAM_ASSIGNMENT_COLORS[3],
    }
    # Every colour taken: the palette's entry at the channel id.
    assert pick_colors(STREAM_ASSIGNMENT_COLORS, [30]) == {30: STREAM_ASSIGNMENT_COLORS[30 % 24]}


def test_new_subscriptions_get_the_first_unused_colours(db: Database, realm: SampleRealm) -> None:
    """Colours are per user, in channel id order, skipping the colours the user's
    subscriptions already have (their own choices too); a renewed subscription keeps
    its colour and settings, and its `subscription` `add` event says so."""
    with db.write() as session:
        newcomer = do_create_user(session, realm.realm_id, "newcomer@zulip.example.com").id
        extra = [
            s.id
            for s in do_create_streams(session, realm.realm_id, [f"extra {i}" for i in range(25)])
        ]
    # The sample realm's member has the first three colours; the newcomer none.
    assert [
        subscriptions_of(db, realm, "member")[realm.streams[k]]["color"]
        for k in ("public", "private", "web_public")
    ] == list(STREAM_ASSIGNMENT_COLORS[:3])

    def subscribe(user_ids: list[int], stream_ids: Sequence[int]) -> list[dict[str, Any]]:
        verified = verify_action(
            db,
            realm.realm_id,
            lambda s: bulk_add_subscriptions(s, realm.realm_id, user_ids, stream_ids),
        )
        return [e.event for e in verified.events if e.event["op"] == "add"]

    # The member (three colours used) and the newcomer (none) in one call.
    adds = subscribe([realm.users["member"], newcomer], [extra[1], extra[0]])
    colors = {
        (
            tuple(e["subscriptions"][i]["stream_id"] for i in range(2)),
            tuple(s["color"] for s in e["subscriptions"]),
        )
        for e in adds
    }
    assert colors == {
        ((extra[0], extra[1]), STREAM_ASSIGNMENT_COLORS[3:5]),
        ((extra[0], extra[1]), STREAM_ASSIGNMENT_COLORS[0:2]),
    }
    # The member's own colour choice counts as used; the one it replaced is free again.
    verify_action(
        db,
        realm.realm_id,
        changing(realm, "member", ("public", "color", STREAM_ASSIGNMENT_COLORS[5])),
    )
    subscribe([realm.users["member"]], [extra[2], extra[3]])
    member_subs = subscriptions_of(db, realm, "member")
    assert member_subs[extra[2]]["color"] == STREAM_ASSIGNMENT_COLORS[0]
    assert member_subs[extra[3]]["color"] == STREAM_ASSIGNMENT_COLORS[6]

    # Renewal keeps the settings: mute and recolour, leave, come back.
    with db.write() as session:
        check_update_subscription_properties(
            session,
            realm.realm_id,
            realm.users["member"],
            [
                PropertyChange(extra[2], "is_muted", True),
                PropertyChange(extra[2], "color", "#010203"),
            ],
        )
        bulk_remove_subscriptions(session, realm.realm_id, [realm.users["member"]], [extra[2]])
    [renewed] = subscribe([realm.users["member"]], [extra[2]])
    [entry] = renewed["subscriptions"]
    assert (entry["color"], entry["is_muted"], entry["in_home_view"]) == ("#010203", True, False)

    # All 24 colours taken: the palette's entry at the channel id.
    subscribe([newcomer], extra[2:24])
    with db.snapshot() as session:
        used = set(
            session.scalars(
                select(Subscription.color).where(Subscription.user_profile_id == newcomer)
            )
        )
    assert used == set(STREAM_ASSIGNMENT_COLORS)
    subscribe([newcomer], [extra[24]])
    assert (
        subscriptions_of_user(db, newcomer)[extra[24]]["color"]
        == STREAM_ASSIGNMENT_COLORS[extra[24] % 24]
    )


def subscriptions_of_user(db: Database, user_id: int) -> dict[int, dict[str, Any]]:
    with db.snapshot() as session:
        profile = session.get(UserProfile, user_id)
        assert profile is not None
        state = fetch_initial_state(session, profile, FETCHED_TYPES, False)
    return {entry["stream_id"]: entry for entry in state["subscriptions"]}


# -- the lock and the statements ----------------------------------------------------------------


def test_shared_lock_first_and_a_fixed_number_of_statements(
    db: Database, realm: SampleRealm
) -> None:
    with db.write() as session:
        streams = [
            s.id for s in do_create_streams(session, realm.realm_id, [f"c{i}" for i in range(20)])
        ]
        bulk_add_subscriptions(session, realm.realm_id, [realm.users["loner"]], streams)
    sqlite = db.engine.dialect.name == "sqlite"

    def statements(stream_ids: list[int]) -> list[str]:
        changes = [PropertyChange(s, "pin_to_top", True) for s in stream_ids] + [
            PropertyChange(s, "is_muted", True) for s in stream_ids
        ]
        with count_statements(db.engine) as log, db.write() as session:
            check_update_subscription_properties(
                session, realm.realm_id, realm.users["loner"], changes
            )
        return log.statements

    one = statements(streams[:1])
    twenty = statements(streams)
    assert len(one) == len(twenty), (one, twenty)
    # The realm lock first, in its shared mode.
    assert is_realm_lock(one[0], is_sqlite=True), one[0]
    assert sqlite or is_realm_lock(one[0], is_sqlite=False, shared=True), one[0]
    assert sum(s.lstrip().upper().startswith("UPDATE SUBSCRIPTION") for s in twenty) == 1
    assert all(
        e["pin_to_top"] and e["is_muted"]
        for s, e in subscriptions_of(db, realm, "loner").items()
        if s in streams
    )


# -- HTTP ---------------------------------------------------------------------------------------


def test_the_zulip_client_updates_subscription_settings(
    server: LiveServer, realm: SampleRealm
) -> None:
    member = zulip_client(server, realm, "member")
    queue = member.register(event_types=["subscription"], fetch_event_types=["subscription"])
    validate_response("POST", "/api/v1/register", 200, queue)
    public, private = realm.streams["public"], realm.streams["private"]
    assert {s["stream_id"]: s["color"] for s in queue["subscriptions"]}[
        public
    ] == STREAM_ASSIGNMENT_COLORS[0]

    answer = member.update_subscription_settings(
        [
            {"stream_id": public, "property": "pin_to_top", "value": True},
            {"stream_id": private, "property": "color", "value": "#f00f00"},
            {"stream_id": private, "property": "is_muted", "value": True},
        ]
    )
    validate_response("POST", "/api/v1/users/me/subscriptions/properties", 200, answer)
    assert answer == {"result": "success", "msg": ""}

    refused = member.update_subscription_settings(
        [{"stream_id": public, "property": "is_muted", "value": "yes"}]
    )
    validate_response("POST", "/api/v1/users/me/subscriptions/properties", 400, refused)
    assert (refused["code"], refused["msg"]) == ("BAD_REQUEST", "is_muted is not a boolean")
    loner = zulip_client(server, realm, "loner")
    refused = loner.update_subscription_settings(
        [{"stream_id": private, "property": "pin_to_top", "value": True}]
    )
    assert (refused["code"], refused["msg"]) == ("BAD_REQUEST", "Invalid channel ID")
    refused = loner.update_subscription_settings(
        [{"stream_id": public, "property": "pin_to_top", "value": True}]
    )
    assert refused["msg"] == f"Not subscribed to channel ID {public}"

    events: list[dict[str, Any]] = []
    while len(events) < 4:
        # A long-poll returns as soon as the queue holds events.
        polled = member.get_events(
            queue_id=queue["queue_id"], last_event_id=events[-1]["id"] if events else -1
        )
        assert polled["result"] == "success", polled
        events += [e for e in polled["events"] if e["type"] != "heartbeat"]
    for event in events:
        validate_event(event)
    assert [(e["stream_id"], e["property"], e["value"]) for e in events] == [
        (public, "pin_to_top", True),
        (private, "color", "#f00f00"),
        (private, "in_home_view", False),
        (private, "is_muted", True),
    ]
    listed = member.get_subscriptions()
    validate_response("GET", "/api/v1/users/me/subscriptions", 200, listed)
    by_id = {s["stream_id"]: s for s in listed["subscriptions"]}
    assert by_id[public]["pin_to_top"] is True
    assert (
        by_id[private]["color"],
        by_id[private]["is_muted"],
        by_id[private]["in_home_view"],
    ) == (
        "#f00f00",
        True,
        False,
    )


# -- the migration -------------------------------------------------------------------------------


def test_existing_subscriptions_get_zulips_defaults(
    database_url: str, db: Database, realm: SampleRealm
) -> None:
    """Revision 0012 gives the rows it finds Zulip's default colour and no setting of
    their own; its downgrade drops the columns and leaves the subscriptions."""
    verify_action(db, realm.realm_id, changing(realm, "member", ("public", "is_muted", True)))
    db.dispose()
    command.downgrade(alembic_config(database_url), "0011")
    with db.engine.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("subscription")}
    assert "color" not in columns and "is_muted" not in columns
    upgrade(database_url)
    db.dispose()
    entries = subscriptions_of(db, realm, "member")
    assert set(entries) == set(realm.streams.values())
    defaults = {
        "color": "#c2c2c2",
        "is_muted": False,
        "in_home_view": True,
        "pin_to_top": False,
        "desktop_notifications": None,
        "audible_notifications": None,
        "push_notifications": None,
        "email_notifications": None,
        "wildcard_mentions_notify": None,
    }
    for entry in entries.values():
        assert {key: entry[key] for key in defaults} == defaults
