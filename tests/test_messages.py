"""Sending and reading messages at the action and query level, on both backends.

Sending goes through `verify_action` from every viewpoint of the sample realm, to every
kind of channel and as direct messages: each message reaches exactly its recipients once,
in both renderings, and every recipient's history ends with it. Refusals change nothing.
History is paged by anchor with Zulip's `found_*` flags and filtered by narrows; a
private channel's messages never reach a non-subscriber, by events or by history; a
deactivated user's messages stay and their conversations refuse new messages until they
are reactivated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from actions.errors import ActionError, ActorDeactivated, InvalidInput
from actions.messages import (
    ChannelTarget,
    DirectTarget,
    NotAuthorizedToSend,
    StreamDoesNotExist,
    check_send_message,
)
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.database import Database
from models.messages.history import LARGER_THAN_MAX_MESSAGE_ID, fetch_messages
from models.messages.narrows import BadNarrow, parse_narrow
from models.outbox import outbox_count
from models.tables import MAX_MESSAGE_LENGTH, MAX_TOPIC_NAME_LENGTH, Message, UserMessage
from server.ops.cli.main import main
from tests.helpers.realms import VIEWPOINTS, SampleRealm
from tests.helpers.statements import count_statements, is_realm_lock
from tests.helpers.verify import verify_action

CLIENT = "eventq-tests"
Target = ChannelTarget | DirectTarget

# Who may post where in the sample realm (member and guest are subscribed to every
# channel, loner and outsider_guest to none), and how the others are refused.
CHANNEL_OUTCOMES: dict[str, dict[str, type[ActionError] | None]] = {
    "public": {
        "owner": None,
        "admin": None,
        "member": None,
        "loner": None,
        "guest": None,
        # A guest does not see a public channel it is not in: as if it did not exist.
        "outsider_guest": StreamDoesNotExist,
    },
    "private": {
        "owner": NotAuthorizedToSend,
        "admin": NotAuthorizedToSend,
        "member": None,
        "loner": StreamDoesNotExist,
        "guest": None,
        "outsider_guest": StreamDoesNotExist,
    },
    "web_public": {
        "owner": None,
        "admin": None,
        "member": None,
        "loner": None,
        "guest": None,
        "outsider_guest": NotAuthorizedToSend,
    },
}
CHANNEL_NAMES = {"public": "public", "private": "private", "web_public": "web-public"}


def send(
    db: Database,
    realm: SampleRealm,
    sender: str,
    target: Target,
    content: str = "hello",
    topic: str | None = "greetings",
) -> int:
    with db.write() as session:
        return check_send_message(
            session, realm.realm_id, realm.users[sender], target, topic, content, CLIENT
        )


def sending(
    realm: SampleRealm, sender: str, target: Target, topic: str | None, content: str
) -> Callable[[Session], int]:
    """The send as an action for `verify_action`."""

    def action(session: Session) -> int:
        return check_send_message(
            session, realm.realm_id, realm.users[sender], target, topic, content, CLIENT
        )

    return action


def history(db: Database, realm: SampleRealm, viewer: str, **options: Any) -> dict[str, Any]:
    narrow = parse_narrow(options.pop("narrow", []))
    options.setdefault("anchor", "newest")
    options.setdefault("num_before", 100)
    options.setdefault("num_after", 0)
    with db.snapshot() as session:
        return fetch_messages(session, realm.users[viewer], narrow=narrow, **options)


def ids(answer: dict[str, Any]) -> list[int]:
    return [message["id"] for message in answer["messages"]]


def counts(db: Database, realm: SampleRealm) -> tuple[int, int, int]:
    with db.snapshot() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Message)) or 0),
            int(session.scalar(select(func.count()).select_from(UserMessage)) or 0),
            outbox_count(session, realm.realm_id),
        )


def test_sending_from_every_viewpoint_converges(db: Database, realm: SampleRealm) -> None:
    """Every viewpoint sends to every channel and three kinds of direct message; the
    allowed ones converge for every user (verify_action), the others change nothing."""
    sent = 0
    for kind, outcomes in CHANNEL_OUTCOMES.items():
        for viewpoint in VIEWPOINTS:
            refusal = outcomes[viewpoint]
            target: Target = ChannelTarget(CHANNEL_NAMES[kind])
            if refusal is not None:
                before = counts(db, realm)
                with pytest.raises(refusal):
                    send(db, realm, viewpoint, target)
                assert counts(db, realm) == before, (kind, viewpoint)
                continue
            verified = verify_action(
                db,
                realm.realm_id,
                sending(realm, viewpoint, target, "greetings", f"from {viewpoint}"),
                num_events=2,
            )
            sent += 1
            to_sender, *_ = [e for e in verified.events if e.event["flags"] == ["read"]]
            assert list(to_sender.user_ids) == [realm.users[viewpoint]]
            subscribers = {realm.users["member"], realm.users["guest"]}
            everyone = {u for e in verified.events for u in e.user_ids}
            assert everyone == subscribers | {realm.users[viewpoint]}, (kind, viewpoint)
    for viewpoint in VIEWPOINTS:
        directs: list[tuple[Target, set[str]]] = [
            (DirectTarget(emails=(realm.emails["member"].upper(),)), {"member"}),
            (DirectTarget(user_ids=(realm.users[viewpoint],)), set()),  # to oneself
            (
                DirectTarget(user_ids=(realm.users["loner"], realm.users["admin"])),
                {"loner", "admin"},
            ),
        ]
        for target, others in directs:
            # One event to the other participants (if any), one to the sender.
            events = 1 if others <= {viewpoint} else 2
            verified = verify_action(
                db,
                realm.realm_id,
                sending(realm, viewpoint, target, None, "psst"),
                num_events=events,
            )
            sent += 1
            message = verified.events[0].event["message"]
            assert message["type"] == "private" and message["subject"] == ""
            participants = [p["id"] for p in message["display_recipient"]]
            assert participants == sorted(participants)
            assert realm.users[viewpoint] in participants
    assert counts(db, realm)[0] == sent


# (target, topic, content, refusal, its message), each sent by the member.
REFUSALS: list[tuple[Target, str | None, str, type[ActionError], str]] = [
    (ChannelTarget("public"), "t", "  \n\t", InvalidInput, "Message must not be empty"),
    (ChannelTarget("public"), "  ", "x", InvalidInput, "Topic can't be empty!"),
    (ChannelTarget("public"), None, "x", InvalidInput, "Missing topic"),
    (ChannelTarget("public"), "a\x07b", "x", InvalidInput, "at position 1!"),
    (ChannelTarget("nowhere"), "t", "x", StreamDoesNotExist, "'nowhere' does not"),
    (ChannelTarget(99999), "t", "x", StreamDoesNotExist, "with ID '99999'"),
    (DirectTarget(user_ids=(99999,)), None, "x", InvalidInput, "Invalid user ID"),
    (DirectTarget(emails=("x@y.example",)), None, "x", InvalidInput, "Invalid email"),
    (DirectTarget(), None, "x", InvalidInput, "must have recipients"),
]


def test_refusals_use_zulips_wording_and_change_nothing(db: Database, realm: SampleRealm) -> None:
    before = counts(db, realm)
    for target, topic, content, error, message in REFUSALS:
        with pytest.raises(error) as raised:
            send(db, realm, "member", target, content, topic)
        assert message in str(raised.value), (target, str(raised.value))
    assert counts(db, realm) == before


def test_limits_truncate_as_zulip_does_and_statements_stay_bounded(
    db: Database, realm: SampleRealm
) -> None:
    long_id = send(db, realm, "member", ChannelTarget("public"), "x" * 10_001, "t" * 61)
    (stored,) = history(db, realm, "member", anchor=long_id, num_before=0)["messages"]
    assert stored["subject"] == "t" * 57 + "..." and len(stored["subject"]) == 60
    raw = history(db, realm, "member", anchor=long_id, num_before=0, apply_markdown=False)
    content = raw["messages"][0]["content"]
    assert len(content) == MAX_MESSAGE_LENGTH and content.endswith("\n[message truncated]")
    assert MAX_TOPIC_NAME_LENGTH == 60

    def statements_for(channel: str, extra_subscribers: int) -> list[str]:
        with db.write() as session:
            stream_id = do_create_stream(session, realm.realm_id, channel).id
            users = [
                do_create_user(session, realm.realm_id, f"{channel}{i}@s.example.com").id
                for i in range(extra_subscribers)
            ]
            bulk_add_subscriptions(
                session, realm.realm_id, [*users, realm.users["member"]], [stream_id]
            )
        send(db, realm, "member", ChannelTarget(stream_id))  # creates the channel's recipient
        with count_statements(db.engine) as log, db.write() as session:
            check_send_message(
                session,
                realm.realm_id,
                realm.users["member"],
                ChannelTarget(channel),
                "t",
                "x",
                CLIENT,
            )
        return log.statements

    small, large = statements_for("small", 1), statements_for("large", 30)
    assert len(small) == len(large) <= 12, (small, large)
    assert is_realm_lock(small[0], db.is_sqlite, shared=True), "the shared realm lock comes first"


def test_history_pages_by_anchor_with_zulips_flags(db: Database, realm: SampleRealm) -> None:
    sent = [
        send(db, realm, "member", ChannelTarget("public"), f"m{i}", "odd" if i % 2 else "even")
        for i in range(5)
    ]
    newest = history(db, realm, "member", num_before=3)
    assert ids(newest) == sent[2:]
    assert newest["anchor"] == LARGER_THAN_MAX_MESSAGE_ID
    assert (newest["found_anchor"], newest["found_oldest"], newest["found_newest"]) == (
        False,
        False,
        True,
    )
    assert newest["history_limited"] is False
    assert all(m["flags"] == ["read"] for m in newest["messages"]), "the sender's own"
    around = history(db, realm, "guest", anchor=sent[2], num_before=1, num_after=1)
    assert ids(around) == sent[1:4]
    assert (around["found_anchor"], around["found_oldest"], around["found_newest"]) == (
        True,
        False,
        False,
    )
    assert all(m["flags"] == [] for m in around["messages"]), "received, unread"
    oldest = history(db, realm, "guest", anchor="oldest", num_before=0, num_after=10)
    assert ids(oldest) == sent and oldest["found_oldest"] and oldest["found_newest"]
    exact = history(db, realm, "guest", anchor=sent[0], num_before=0, num_after=4)
    assert ids(exact) == sent and exact["found_oldest"] and exact["found_newest"]
    without = history(
        db, realm, "guest", anchor=sent[2], num_before=0, num_after=1, include_anchor=False
    )
    assert ids(without) == [sent[3]] and not without["found_anchor"]
    unread = history(db, realm, "guest", anchor="first_unread", num_before=0, num_after=1)
    assert unread["anchor"] == sent[0] and ids(unread) == sent[:2]
    read_all = history(db, realm, "member", anchor="first_unread", num_before=1)
    assert read_all["anchor"] == LARGER_THAN_MAX_MESSAGE_ID and ids(read_all) == sent[-1:]

    # The loner received nothing, but the public channel's history is public to it.
    assert ids(history(db, realm, "loner")) == []
    public = history(db, realm, "loner", narrow=[["channel", "PUBLIC"]])
    assert ids(public) == sent
    assert all(m["flags"] == ["read", "historical"] for m in public["messages"])
    topic = history(db, realm, "loner", narrow=[["stream", "public"], ["subject", "ODD"]])
    assert ids(topic) == [sent[1], sent[3]]
    negated = [{"operator": "topic", "operand": "odd", "negated": True}]
    assert ids(history(db, realm, "guest", narrow=negated)) == [sent[0], sent[2], sent[4]]
    by_id = [["channel", realm.streams["public"]], ["sender", realm.emails["member"]]]
    assert ids(history(db, realm, "loner", narrow=by_id)) == sent
    assert ids(history(db, realm, "loner", narrow=[["sender", realm.users["owner"]]])) == []
    with pytest.raises(InvalidInput, match="maximum 5000"):
        history(db, realm, "guest", num_before=4000, num_after=1001)
    # A guest who left a public channel no longer sees it: it keeps what it received,
    # and the channel's history is not public to it.
    with db.write() as session:
        bulk_remove_subscriptions(
            session, realm.realm_id, [realm.users["guest"]], [realm.streams["public"]]
        )
    later = send(db, realm, "member", ChannelTarget("public"), "after the guest left")
    assert ids(history(db, realm, "guest", narrow=[["channel", "public"]])) == sent
    assert later in ids(history(db, realm, "loner", narrow=[["channel", "public"]]))


def test_direct_message_narrows(db: Database, realm: SampleRealm) -> None:
    pair = send(db, realm, "member", DirectTarget(user_ids=(realm.users["loner"],)), "a")
    group = send(
        db,
        realm,
        "member",
        DirectTarget(user_ids=(realm.users["loner"], realm.users["admin"])),
        "b",
    )
    alone = send(db, realm, "loner", DirectTarget(user_ids=(realm.users["loner"],)), "c")
    channel = send(db, realm, "loner", ChannelTarget("public"), "d")
    assert ids(history(db, realm, "loner")) == [pair, group, alone, channel]
    assert ids(history(db, realm, "loner", narrow=[["dm", [realm.users["member"]]]])) == [pair]
    emails = f"{realm.emails['admin']},{realm.emails['member']}"
    assert ids(history(db, realm, "loner", narrow=[["pm-with", emails]])) == [group]
    assert ids(history(db, realm, "loner", narrow=[["dm", [realm.users["loner"]]]])) == [alone]
    assert ids(history(db, realm, "loner", narrow=[["is", "dm"]])) == [pair, group, alone]
    assert ids(
        history(
            db, realm, "loner", narrow=[["is", "private"], ["sender", "loner@zulip.example.com"]]
        )
    ) == [alone]
    assert ids(history(db, realm, "owner", narrow=[["dm", [realm.users["member"]]]])) == []
    for bad, message in [
        ([["bogus", 1]], "unknown operator bogus"),
        ([["channel", "private"]], "unknown channel private"),
        ([["channel", "nowhere"]], "unknown channel"),
        ([["dm", [99999]]], "unknown user"),
        ([["sender", "x@y.example"]], "unknown user"),
        ([["is", "bogus"]], "unknown 'is' operand"),
        ([["channel", 2**40]], "invalid channel operand"),
    ]:
        with pytest.raises(BadNarrow, match=message):
            history(db, realm, "loner", narrow=bad)


def test_private_channel_messages_never_reach_a_non_subscriber(
    db: Database, realm: SampleRealm
) -> None:
    private = realm.streams["private"]
    first = send(db, realm, "member", ChannelTarget("private"), "secret")
    # Administrators see the channel but received nothing; its history is not public.
    for viewer in ("owner", "admin"):
        assert first not in ids(history(db, realm, viewer))
        assert ids(history(db, realm, viewer, narrow=[["channel", private]])) == []
    with pytest.raises(BadNarrow):
        history(db, realm, "loner", narrow=[["channel", "private"]])
    # A new subscriber gets what is sent from now on, not what came before.
    with db.write() as session:
        bulk_add_subscriptions(session, realm.realm_id, [realm.users["loner"]], [private])
    second = send(db, realm, "guest", ChannelTarget("private"), "later")
    assert ids(history(db, realm, "loner", narrow=[["channel", "private"]])) == [second]
    # Someone who leaves keeps what they received, and gets nothing more.
    with db.write() as session:
        bulk_remove_subscriptions(session, realm.realm_id, [realm.users["member"]], [private])
    third = verify_action(
        db,
        realm.realm_id,
        lambda s: check_send_message(
            s, realm.realm_id, realm.users["guest"], ChannelTarget(private), "t", "x", CLIENT
        ),
    )
    assert realm.users["member"] not in {u for e in third.events for u in e.user_ids}
    member_view = ids(history(db, realm, "member", narrow=[["channel", private]]))
    assert member_view == [first, second]


def test_deactivation_keeps_messages_and_closes_conversations(
    db: Database, realm: SampleRealm
) -> None:
    loner, member = realm.users["loner"], realm.users["member"]
    said = send(db, realm, "loner", DirectTarget(user_ids=(member,)), "before")
    public = send(db, realm, "loner", ChannelTarget("public"), "on the record")
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, loner)
    # Their messages stay, for every reader.
    assert ids(history(db, realm, "member")) == [said, public]
    assert public in ids(history(db, realm, "owner", narrow=[["channel", "public"]]))
    # Nobody can write to them, alone or in a group; they cannot write.
    for target in (
        DirectTarget(user_ids=(loner,)),
        DirectTarget(emails=(realm.emails["loner"], realm.emails["owner"])),
    ):
        with pytest.raises(
            InvalidInput, match=r"'loner@zulip.example.com' is no longer using Zulip\."
        ):
            send(db, realm, "member", target)
    with pytest.raises(ActorDeactivated):
        send(db, realm, "loner", DirectTarget(user_ids=(member,)))
    # A channel message while the guest is deactivated does not reach it.
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, realm.users["guest"])
    missed = send(db, realm, "member", ChannelTarget("private"), "while away")
    with db.write() as session:
        do_reactivate_user(session, realm.realm_id, loner)
        do_reactivate_user(session, realm.realm_id, realm.users["guest"])
    assert missed not in ids(history(db, realm, "guest", narrow=[["channel", "private"]]))
    back = send(db, realm, "member", DirectTarget(user_ids=(loner,)), "welcome back")
    reply = send(db, realm, "loner", DirectTarget(emails=(realm.emails["member"],)), "thanks")
    assert ids(history(db, realm, "loner", narrow=[["dm", [member]]])) == [said, back, reply]


def test_a_message_is_stored_as_sent_and_rendered_without_markup(
    db: Database, realm: SampleRealm
) -> None:
    hostile = '**bold** <img src=x onerror="alert(1)"> [x](javascript:alert(1)) /me'
    message_id = send(db, realm, "member", ChannelTarget("public"), hostile)
    (html,) = history(db, realm, "guest", anchor=message_id, num_before=0)["messages"]
    assert "<strong>bold</strong>" in html["content"]
    assert "<img" not in html["content"] and "&lt;img" in html["content"]
    assert 'href="javascript' not in html["content"]
    (raw,) = history(db, realm, "guest", anchor=message_id, num_before=0, apply_markdown=False)[
        "messages"
    ]
    assert raw["content"] == hostile and raw["content_type"] == "text/x-markdown"
    me = send(db, realm, "member", ChannelTarget("public"), "/me waves")
    (status,) = history(db, realm, "guest", anchor=me, num_before=0)["messages"]
    assert status["is_me_message"] is True and html["is_me_message"] is False


def test_the_send_command(
    db: Database, realm: SampleRealm, capsys: pytest.CaptureFixture[str]
) -> None:
    def eventq(*args: str) -> tuple[int, str, str]:
        status = main(["--database-url", db.url, *args])
        out, err = capsys.readouterr()
        return status, out, err

    status, out, _ = eventq(
        "send", "zulip", realm.emails["member"], "--channel", "public", "--topic", "cli", "hi"
    )
    assert status == 0 and out.startswith("Sent message ")
    both = (realm.emails["loner"], realm.emails["admin"])
    to = ["--to", both[0], "--to", f" {both[1]}, {both[0]}"]
    status, out, _ = eventq("send", "zulip", realm.emails["member"], *to, "psst", "--json")
    assert status == 0
    direct = json.loads(out)["id"]
    (message,) = history(db, realm, "loner", anchor=direct, num_before=0)["messages"]
    assert message["client"] == "eventq" and message["content"] == "<p>psst</p>\n"
    assert {p["email"] for p in message["display_recipient"]} == {*both, realm.emails["member"]}
    assert ids(history(db, realm, "loner", narrow=[["channel", "public"], ["topic", "cli"]]))
    for args, error in [
        (["--channel", "nowhere", "--topic", "t", "x"], "Channel 'nowhere' does not exist"),
        (["--channel", "public", "x"], "--channel needs --topic."),
        (["--to", "nobody@zulip.example.com", "x"], "Invalid email 'nobody@zulip.example.com'"),
    ]:
        status, _, err = eventq("send", "zulip", realm.emails["member"], *args)
        assert status == 1 and err.strip() == f"eventq: error: {error}", err
