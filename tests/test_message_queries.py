"""`GET /users/me/{stream_id}/topics` and `POST /messages/flags/narrow`, on both backends.

Topics: Zulip's shape (`name`, `max_id`, newest first, one per case-insensitive topic)
and Zulip's rules of who lists what, a private channel's topics staying with the
messages each subscriber received. Flags over a narrow: through `verify_action` (one
`update_message_flags` event naming exactly the changed messages, every user's state
converging), one `UPDATE` however many messages, Zulip's clamp and refusals, and no
message the caller may not read. Over HTTP against a live server, with the unmodified
`zulip` client: `get_stream_topics`, `get_messages` with narrows including `search`,
and `/messages/flags/narrow` through the client's `call_endpoint` (zulip 0.9.1 has no
method of its own for it); every answer validated against Zulip's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from actions.errors import InvalidInput
from actions.message_flags import (
    MAX_MESSAGES_PER_UPDATE,
    NarrowFlagsChange,
    check_update_message_flags_for_narrow,
)
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from models.database import Database
from models.messages.history import InvalidChannelId, fetch_stream_topics
from models.messages.narrows import parse_narrow
from models.tables import UserMessage
from tests.helpers import zulip_messages
from tests.helpers.api import ApiClient, zulip_client
from tests.helpers.openapi import validate_response
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer
from tests.helpers.statements import count_statements
from tests.helpers.verify import verify_action

zulip_messages.install()
CLIENT = "eventq-tests"


def send(
    db: Database,
    realm: SampleRealm,
    sender: str,
    target: ChannelTarget | DirectTarget,
    topic: str = "topic",
    content: str = "hello",
) -> int:
    with db.write() as session:
        return check_send_message(
            session, realm.realm_id, realm.users[sender], target, topic, content, CLIENT
        )


def channel(realm: SampleRealm, kind: str) -> ChannelTarget:
    return ChannelTarget(realm.streams[kind])


def topics(db: Database, realm: SampleRealm, reader: str, kind: str) -> list[dict[str, Any]]:
    with db.snapshot() as session:
        return fetch_stream_topics(session, realm.users[reader], realm.streams[kind])


# -- topics ----------------------------------------------------------------------------


def test_topics_newest_first_one_per_name(db: Database, realm: SampleRealm) -> None:
    first = send(db, realm, "member", channel(realm, "public"), "Lunch")
    send(db, realm, "member", channel(realm, "public"), "plans")
    again = send(db, realm, "member", channel(realm, "public"), "LUNCH")
    other = send(db, realm, "member", channel(realm, "web_public"), "elsewhere")
    expected = [{"name": "LUNCH", "max_id": again}, {"name": "plans", "max_id": again - 1}]
    assert first < again
    # Public history: every reader who may see the channel, subscribed or not.
    for reader in ("member", "loner", "owner", "guest"):
        assert topics(db, realm, reader, "public") == expected, reader
    assert topics(db, realm, "outsider_guest", "web_public") == [
        {"name": "elsewhere", "max_id": other}
    ]
    assert topics(db, realm, "member", "private") == []


def test_topics_of_a_private_channel_stay_with_their_readers(
    db: Database, realm: SampleRealm
) -> None:
    """eventq never shares a private channel's history: a subscriber lists the topics of
    what they received; nobody else lists any, administrators included."""
    early = send(db, realm, "member", channel(realm, "private"), "before")
    with db.write() as session:
        bulk_add_subscriptions(
            session, realm.realm_id, [realm.users["loner"]], [realm.streams["private"]]
        )
    late = send(db, realm, "member", channel(realm, "private"), "after")
    assert topics(db, realm, "member", "private") == [
        {"name": "after", "max_id": late},
        {"name": "before", "max_id": early},
    ]
    assert topics(db, realm, "loner", "private") == [{"name": "after", "max_id": late}]
    with db.write() as session:
        bulk_remove_subscriptions(
            session, realm.realm_id, [realm.users["loner"]], [realm.streams["private"]]
        )
    for reader in ("loner", "owner", "admin", "outsider_guest"):
        with pytest.raises(InvalidChannelId) as refused:
            topics(db, realm, reader, "private")
        assert str(refused.value) == "Invalid channel ID", reader
    # A guest outside a public channel, and a channel that does not exist.
    with pytest.raises(InvalidChannelId):
        topics(db, realm, "outsider_guest", "public")
    with db.snapshot() as session, pytest.raises(InvalidChannelId):
        fetch_stream_topics(session, realm.users["member"], 999_999)


# -- flags over a narrow ---------------------------------------------------------------


def flagging(
    realm: SampleRealm, user: str, op: str, flag: str, narrow: list[Any], **range_: Any
) -> Callable[[Session], NarrowFlagsChange]:
    arguments: dict[str, Any] = {
        "anchor": "newest",
        "include_anchor": True,
        "num_before": 100,
        "num_after": 0,
    }
    arguments.update(range_)

    def action(session: Session) -> NarrowFlagsChange:
        return check_update_message_flags_for_narrow(
            session,
            realm.realm_id,
            realm.users[user],
            op,
            flag,
            narrow=parse_narrow(narrow),
            **arguments,
        )

    return action


def test_flags_over_a_narrow_converge(db: Database, realm: SampleRealm) -> None:
    lunch = [send(db, realm, "member", channel(realm, "public"), "lunch") for _ in range(3)]
    other = send(db, realm, "member", channel(realm, "public"), "other")
    direct = send(db, realm, "member", DirectTarget(user_ids=(realm.users["guest"],)))
    guest = realm.users["guest"]
    narrow = [["stream", "public"], ["topic", "lunch"]]

    verified = verify_action(db, realm.realm_id, flagging(realm, "guest", "add", "read", narrow))
    answer = verified.result.to_api()
    assert answer == {
        "processed_count": 3,
        "updated_count": 3,
        "first_processed_id": lunch[0],
        "last_processed_id": lunch[-1],
        "found_oldest": True,
        "found_newest": True,
        "ignored_because_not_subscribed_channels": [],
    }
    [stored] = verified.events
    assert stored.user_ids == (guest,)
    assert stored.event["messages"] == lunch and stored.event["flag"] == "read"

    # Again: nothing changes, no event.
    verified = verify_action(
        db, realm.realm_id, flagging(realm, "guest", "add", "read", narrow), num_events=0
    )
    assert verified.result.to_api()["updated_count"] == 0
    assert verified.result.to_api()["processed_count"] == 3

    # A range: the anchor and one before it, unread again.
    verified = verify_action(
        db,
        realm.realm_id,
        flagging(realm, "guest", "remove", "read", narrow, anchor=str(lunch[2]), num_before=1),
    )
    assert verified.result.processed == lunch[1:]
    assert verified.result.found_oldest is False and verified.result.found_newest is True
    assert "message_details" in verified.events[0].event

    # `is:unread` and starring: everything unread, then the star over a search-free range.
    verified = verify_action(
        db, realm.realm_id, flagging(realm, "guest", "add", "starred", [["is", "unread"]])
    )
    assert verified.result.processed == [lunch[1], lunch[2], other, direct]
    verified = verify_action(
        db,
        realm.realm_id,
        flagging(realm, "guest", "add", "read", [], anchor="oldest", num_before=0, num_after=2),
    )
    assert verified.result.processed == lunch[:2]
    assert verified.result.found_newest is False


def test_historical_messages_and_privacy(db: Database, realm: SampleRealm) -> None:
    """The loner stars a public channel's history (rows flagged `historical` appear);
    a narrow never reaches a private channel's or a conversation's messages."""
    public = send(db, realm, "member", channel(realm, "public"), "word")
    private = send(db, realm, "member", channel(realm, "private"), "word")
    direct = send(db, realm, "member", DirectTarget(user_ids=(realm.users["guest"],)))
    verified = verify_action(
        db,
        realm.realm_id,
        flagging(realm, "loner", "add", "starred", [["streams", "public"], ["search", "word"]]),
    )
    assert verified.result.processed == [public]
    with db.snapshot() as session:
        rows = session.query(UserMessage).filter_by(user_profile_id=realm.users["loner"]).all()
        assert [r.message_id for r in rows] == [public]
    # Marking everything the loner may see unread touches no one else's message.
    verified = verify_action(
        db, realm.realm_id, flagging(realm, "loner", "remove", "read", []), num_events=0
    )
    assert verified.result.to_api()["ignored_because_not_subscribed_channels"] == [
        realm.streams["public"]
    ]
    assert private not in verified.result.processed and direct not in verified.result.processed


def test_one_update_however_many_and_zulips_bounds(db: Database, realm: SampleRealm) -> None:
    ids = [send(db, realm, "member", channel(realm, "public")) for _ in range(40)]
    with count_statements(db.engine) as few, db.write() as session:
        flagging(realm, "guest", "add", "collapsed", [], num_before=5)(session)
    with count_statements(db.engine) as many, db.write() as session:
        change = flagging(realm, "guest", "add", "starred", [], num_before=100)(session)
    assert change.processed == ids
    assert len(many.statements) == len(few.statements)
    assert sum("UPDATE user_message" in s for s in many.statements) == 1

    refusals: list[tuple[dict[str, Any], str]] = [
        (
            {"anchor": 5, "num_before": 1, "num_after": 1, "include_anchor": False},
            "The anchor can only be excluded at an end of the range",
        ),
        ({"anchor": 5, "num_before": -1, "num_after": 1}, "must not be negative"),
    ]
    for arguments, wording in refusals:
        with pytest.raises(InvalidInput) as refused, db.write() as session:
            flagging(realm, "guest", "add", "read", [], **arguments)(session)
        assert wording in str(refused.value)
    with pytest.raises(InvalidInput) as refused, db.write() as session:
        flagging(realm, "guest", "add", "bogus", [])(session)
    assert str(refused.value) == "Invalid flag: 'bogus'"
    # Zulip's clamp: 5000 in all, half at least before the anchor.
    with db.write() as session:
        change = flagging(
            realm, "guest", "add", "read", [], anchor="oldest", num_before=0, num_after=10**6
        )(session)
        assert change.processed == ids
    assert MAX_MESSAGES_PER_UPDATE == 5000


# -- over HTTP, with the unmodified `zulip` client --------------------------------------


def test_the_zulip_client_reads_topics_searches_and_marks_a_narrow(
    server: LiveServer, realm: SampleRealm, database_url: str
) -> None:
    guest = zulip_client(server, realm, "guest")
    member = zulip_client(server, realm, "member")
    public = realm.streams["public"]
    sent = []
    for topic, content in (
        ("lunch", "pizza today"),
        ("lunch", "pasta tomorrow"),
        ("work", "deploy"),
    ):
        answer = member.send_message(
            {"type": "stream", "to": public, "topic": topic, "content": content}
        )
        assert answer["result"] == "success", answer
        sent.append(answer["id"])

    answer = guest.get_stream_topics(public)
    validate_response("GET", f"/api/v1/users/me/{public}/topics", 200, answer)
    assert answer["topics"] == [
        {"name": "work", "max_id": sent[2]},
        {"name": "lunch", "max_id": sent[1]},
    ]
    refused = zulip_client(server, realm, "outsider_guest").get_stream_topics(
        realm.streams["private"]
    )
    validate_response("GET", f"/api/v1/users/me/{public}/topics", 400, refused)
    assert refused["msg"] == "Invalid channel ID"

    found = guest.get_messages(
        {
            "anchor": "newest",
            "num_before": 10,
            "num_after": 0,
            "narrow": [{"operator": "search", "operand": "pizza"}],
        }
    )
    validate_response("GET", "/api/v1/messages", 200, found)
    assert [m["id"] for m in found["messages"]] == [sent[0]]
    assert found["messages"][0]["match_content"] == (
        '<p><span class="highlight">pizza</span> today</p>\n'
    )
    for narrow in (
        [["pm_with", realm.emails["member"]]],
        [["is", "mentioned"]],
        [["is", "starred"]],
        [["has", "link"]],
    ):
        answer = guest.get_messages(
            {"anchor": "newest", "num_before": 10, "num_after": 0, "narrow": narrow}
        )
        assert answer["result"] == "success", (narrow, answer)
        validate_response("GET", "/api/v1/messages", 200, answer)

    marked = guest.call_endpoint(
        url="messages/flags/narrow",
        method="POST",
        request={
            "anchor": "oldest",
            "num_before": 0,
            "num_after": 100,
            "narrow": [["stream", "public"], ["topic", "lunch"]],
            "op": "add",
            "flag": "read",
        },
    )
    validate_response("POST", "/api/v1/messages/flags/narrow", 200, marked)
    assert marked["processed_count"] == 2 and marked["updated_count"] == 2
    assert (marked["first_processed_id"], marked["last_processed_id"]) == (sent[0], sent[1])
    unread = guest.get_messages(
        {"anchor": "newest", "num_before": 10, "num_after": 0, "narrow": [["is", "unread"]]}
    )
    assert [m["id"] for m in unread["messages"]] == [sent[2]]

    # A raw client: a JSON null narrow is no narrow; a refusal has Zulip's shape.
    api = ApiClient(server.url, realm.emails["guest"], realm.api_keys["guest"])
    common = {"num_before": 5, "num_after": 0, "narrow": None, "op": "add", "flag": "read"}
    answer = api.call("POST", "/messages/flags/narrow", {**common, "anchor": "newest"})
    assert answer.ok and answer.body["last_processed_id"] == sent[2], answer.body
    assert answer.body["updated_count"] == 1
    answer = api.call(
        "POST",
        "/messages/flags/narrow",
        {**common, "anchor": "5", "num_after": 1, "include_anchor": False},
    )
    assert answer.status == 400
    assert answer.body["msg"] == "The anchor can only be excluded at an end of the range"
    answer = api.call("POST", "/messages/flags/narrow", {**common, "anchor": "x"})
    assert answer.status == 400 and answer.body["msg"] == "Invalid anchor"
    answer = api.call("GET", f"/users/me/{2**33}/topics")
    assert answer.status == 400 and answer.body["msg"] == "Invalid channel ID"
