"""Message flags (`POST /messages/flags`), on both backends.

Each operation on each editable flag goes through `verify_action`: one
`update_message_flags` event to the user alone, and every user's state (`unread_msgs`,
`starred_messages` included) with its events applied equals a fresh `register`.
Zulip's refusals change nothing; messages the user did not receive are skipped, given a
`historical` row, or refused, as Zulip does. Marking 1 message and 1,000 takes the same
statements, the shared realm lock first. On PostgreSQL, two changes of the same rows at
once give events that, applied in order, give the rows' final flags. `register` reads
the user's own message state for each register, never from the realm state it shares.
Over HTTP, the unmodified `zulip` client changes flags against a live server and its
queue receives the event.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from actions.errors import InvalidInput
from actions.message_flags import (
    FlagNotEditable,
    FlagsChange,
    InvalidFlag,
    InvalidFlagOperation,
    InvalidMessages,
    check_update_message_flags,
)
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from clients.state import StateCache
from migrations import upgrade
from models.database import Database
from models.messages import unreads
from models.messages.flags import HISTORICAL_FLAG, READ_FLAG, STARRED_FLAG
from models.messages.history import fetch_messages
from models.messages.narrows import parse_narrow
from models.outbox import outbox_count, read_events
from models.state import fetch_initial_state
from models.tables import Message, Realm, UserMessage, UserProfile
from queues.types import Capabilities
from server.engine.authentication import AuthenticatedUser
from server.engine.registration import RegisterRequest
from server.engine.service import EventService
from tests.helpers.api import zulip_client
from tests.helpers.databases import database_url_for
from tests.helpers.openapi import validate_event, validate_response
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer
from tests.helpers.statements import count_statements, is_realm_lock
from tests.helpers.verify import FETCHED_TYPES, verify_action

CLIENT = "eventq-tests"
# How long a thread may take to reach a lock or finish, and a committed event to reach
# a waiting poll (each takes milliseconds).
TIMEOUT_SECS = 30.0
MESSAGE_TYPES = ["message", "update_message_flags", "starred_messages"]


def send(
    db: Database, realm: SampleRealm, sender: str, target: ChannelTarget | DirectTarget
) -> int:
    with db.write() as session:
        return check_send_message(
            session, realm.realm_id, realm.users[sender], target, "topic", "hello", CLIENT
        )


def to_channel(realm: SampleRealm, kind: str) -> ChannelTarget:
    return ChannelTarget(realm.streams[kind])


def to_users(realm: SampleRealm, *names: str) -> DirectTarget:
    return DirectTarget(user_ids=tuple(realm.users[name] for name in names))


def flagging(
    realm: SampleRealm, user: str, op: str, flag: str, ids: list[int]
) -> Callable[[Session], FlagsChange]:
    """The flag change as an action for `verify_action`."""

    def action(session: Session) -> FlagsChange:
        return check_update_message_flags(session, realm.realm_id, realm.users[user], op, flag, ids)

    return action


def flags_in_history(
    db: Database, realm: SampleRealm, user: str, narrow: list[Any] | None = None
) -> dict[int, list[str]]:
    with db.snapshot() as session:
        answer = fetch_messages(
            session,
            realm.users[user],
            anchor="newest",
            num_before=100,
            num_after=0,
            narrow=parse_narrow(narrow or []),
        )
    return {message["id"]: message["flags"] for message in answer["messages"]}


def user_state(
    db: Database, realm: SampleRealm, user: str, include_subscribers: bool = True
) -> dict[str, Any]:
    with db.snapshot() as session:
        profile = session.get(UserProfile, realm.users[user])
        assert profile is not None
        return fetch_initial_state(session, profile, FETCHED_TYPES, include_subscribers)


# -- each operation, through verify_action --------------------------------------------------


def test_each_flag_and_operation_converges(db: Database, realm: SampleRealm) -> None:
    """The guest receives a channel message, a one-on-one and a group direct message;
    each flag is added and removed through `verify_action`, which applies the single
    event to every user's state and compares it with a fresh register."""
    channel = send(db, realm, "member", to_channel(realm, "public"))
    direct = send(db, realm, "member", to_users(realm, "guest"))
    group = send(db, realm, "member", to_users(realm, "guest", "owner"))
    own = send(db, realm, "guest", to_users(realm, "guest"))  # read: the guest sent it
    ids = [channel, direct, group, own]
    guest = realm.users["guest"]

    unread = user_state(db, realm, "guest")["unread_msgs"]
    assert unread["count"] == 3 and unread["old_unreads_missing"] is False
    assert unread["streams"] == [
        {"stream_id": realm.streams["public"], "topic": "topic", "unread_message_ids": [channel]}
    ]
    member = realm.users["member"]
    assert unread["pms"] == [
        {"other_user_id": member, "sender_id": member, "unread_message_ids": [direct]}
    ]
    trio = sorted([member, guest, realm.users["owner"]])
    assert unread["huddles"] == [
        {"user_ids_string": ",".join(map(str, trio)), "unread_message_ids": [group]}
    ]

    # (op, flag, the ids asked, the ids whose flag changes)
    steps = [
        ("add", "read", ids, [channel, direct, group]),
        ("remove", "read", ids, ids),
        ("add", "starred", ids, ids),
        ("remove", "starred", [own, channel], [channel, own]),
        ("add", "collapsed", [direct, direct], [direct]),
        ("remove", "collapsed", ids, [direct]),
    ]
    for op, flag, asked, changed in steps:
        verified = verify_action(db, realm.realm_id, flagging(realm, "guest", op, flag, asked))
        assert verified.result.messages == changed, (op, flag)
        [stored] = verified.events
        assert stored.user_ids == (guest,)
        event = stored.event
        assert (event["type"], event["op"], event["operation"], event["flag"]) == (
            "update_message_flags",
            op,
            op,
            flag,
        )
        assert event["messages"] == changed and event["all"] is False
        if (op, flag) == ("remove", "read"):
            assert verified.result.ignored_channels == []
            assert event["message_details"] == {
                str(channel): {
                    "type": "stream",
                    "stream_id": realm.streams["public"],
                    "topic": "topic",
                },
                str(direct): {"type": "private", "user_ids": [member]},
                str(group): {"type": "private", "user_ids": [u for u in trio if u != guest]},
                str(own): {"type": "private", "user_ids": []},
            }
            # A conversation with oneself is a one-on-one with oneself.
            pms = user_state(db, realm, "guest")["unread_msgs"]["pms"]
            assert {"other_user_id": guest, "sender_id": guest, "unread_message_ids": [own]} in pms
        else:
            assert "message_details" not in event
        if flag == "starred":
            assert user_state(db, realm, "guest")["starred_messages"] == sorted(
                set(ids) - {channel, own} if op == "remove" else ids
            )
    # History shows each message's flags, in Zulip's order.
    assert flags_in_history(db, realm, "guest") == {
        channel: [],
        direct: ["starred"],
        group: ["starred"],
        own: [],
    }
    # Nobody else's flags moved: the member's copies are unread or read as sent.
    assert flags_in_history(db, realm, "member")[channel] == ["read"]


def test_a_change_that_changes_nothing_writes_no_event(db: Database, realm: SampleRealm) -> None:
    sent = send(db, realm, "member", to_channel(realm, "public"))
    verified = verify_action(
        db, realm.realm_id, flagging(realm, "member", "add", "read", [sent]), num_events=0
    )
    assert verified.result.messages == []
    assert verified.result.to_api() == {"messages": []}
    verified = verify_action(
        db, realm.realm_id, flagging(realm, "member", "remove", "starred", []), num_events=0
    )
    assert verified.result.to_api() == {"messages": []}


def test_zulips_refusals_change_nothing(db: Database, realm: SampleRealm) -> None:
    sent = send(db, realm, "member", to_channel(realm, "public"))
    refusals: list[tuple[str, str, type[InvalidInput], str]] = [
        ("add", "bogus", InvalidFlag, "Invalid flag: 'bogus'"),
        # The flag is judged before the operation, as Zulip does.
        ("toggle", "bogus", InvalidFlag, "Invalid flag: 'bogus'"),
        ("add", "is_private", InvalidFlag, "Invalid flag: 'is_private'"),
        ("add", "mentioned", FlagNotEditable, "Flag not editable: 'mentioned'"),
        ("remove", "historical", FlagNotEditable, "Flag not editable: 'historical'"),
        ("add", "has_alert_word", FlagNotEditable, "Flag not editable: 'has_alert_word'"),
        ("toggle", "read", InvalidFlagOperation, "Invalid message flag operation: 'toggle'"),
    ]
    with db.snapshot() as session:
        before = outbox_count(session, realm.realm_id)
    for op, flag, refusal, wording in refusals:
        with pytest.raises(refusal) as refused, db.write() as session:
            check_update_message_flags(
                session, realm.realm_id, realm.users["guest"], op, flag, [sent]
            )
        assert str(refused.value) == wording
        assert refused.value.code == "BAD_REQUEST"
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == before
    assert flags_in_history(db, realm, "guest")[sent] == []


# -- messages the user did not receive -----------------------------------------------------


def test_messages_the_user_did_not_receive(db: Database, realm: SampleRealm) -> None:
    """The loner received none of these. Marking read, unstarring or uncollapsing one
    changes nothing (it reads as `read` and `historical` already); starring a message of
    a public channel's history creates a `historical` row; one they may not read refuses
    the whole request."""
    public = send(db, realm, "member", to_channel(realm, "public"))
    web_public = send(db, realm, "member", to_channel(realm, "web_public"))
    private = send(db, realm, "member", to_channel(realm, "private"))
    direct = send(db, realm, "member", to_users(realm, "guest"))
    missing = 2**31 - 1

    for op, flag in (("add", "read"), ("remove", "starred"), ("remove", "collapsed")):
        every = [public, web_public, private, direct, missing]
        verified = verify_action(
            db, realm.realm_id, flagging(realm, "loner", op, flag, every), num_events=0
        )
        assert verified.result.messages == []

    for unreadable in (private, direct, missing):
        with pytest.raises(InvalidMessages) as refused, db.write() as session:
            check_update_message_flags(
                session,
                realm.realm_id,
                realm.users["loner"],
                "add",
                "starred",
                [public, unreadable],
            )
        assert str(refused.value) == "Invalid message(s)"
    # An administrator sees the private channel, but its history is not public.
    with pytest.raises(InvalidMessages), db.write() as session:
        check_update_message_flags(
            session, realm.realm_id, realm.users["owner"], "add", "collapsed", [private]
        )
    # Nothing was created by the refusals.
    assert flags_in_history(db, realm, "loner") == {}

    verified = verify_action(
        db, realm.realm_id, flagging(realm, "loner", "add", "starred", [public, web_public])
    )
    assert verified.result.messages == [public, web_public]
    assert verified.events[0].event["messages"] == [public, web_public]
    with db.snapshot() as session:
        rows = dict(
            session.execute(
                select(UserMessage.message_id, UserMessage.flags).where(
                    UserMessage.user_profile_id == realm.users["loner"]
                )
            ).all()
        )
    historical_star = READ_FLAG | STARRED_FLAG | HISTORICAL_FLAG
    assert rows == {public: historical_star, web_public: historical_star}
    assert flags_in_history(db, realm, "loner", [["channel", "public"]]) == {
        public: ["read", "starred", "historical"]
    }
    assert user_state(db, realm, "loner")["starred_messages"] == [public, web_public]
    # Now the loner has a row: unstarring changes it like any other.
    verified = verify_action(
        db, realm.realm_id, flagging(realm, "loner", "remove", "starred", [public])
    )
    assert verified.result.messages == [public]


def test_marking_unread_keeps_to_subscribed_channels(db: Database, realm: SampleRealm) -> None:
    """Zulip's invariant: unread channel messages are in channels the user is subscribed
    to. Marking unread skips the others and names the channels the user knows; a message
    of a public channel's history the user joined later gets a `historical` unread row."""
    public = send(db, realm, "member", to_channel(realm, "public"))
    private = send(db, realm, "member", to_channel(realm, "private"))
    web_public = send(db, realm, "member", to_channel(realm, "web_public"))

    # The loner is subscribed to nothing: nothing changes, and the private channel,
    # which the loner cannot see, is not named.
    verified = verify_action(
        db,
        realm.realm_id,
        flagging(realm, "loner", "remove", "read", [public, private, web_public]),
        num_events=0,
    )
    assert verified.result.to_api() == {
        "messages": [],
        "ignored_because_not_subscribed_channels": sorted(
            [realm.streams["public"], realm.streams["web_public"]]
        ),
    }

    # The member leaves the private channel, and still knows it: it is named.
    with db.write() as session:
        bulk_remove_subscriptions(
            session, realm.realm_id, [realm.users["member"]], [realm.streams["private"]]
        )
    verified = verify_action(
        db,
        realm.realm_id,
        flagging(realm, "member", "remove", "read", [public, private]),
    )
    assert verified.result.messages == [public]
    assert verified.result.ignored_channels == [realm.streams["private"]]

    # The loner joins the public channel after the message: marking it unread creates a
    # historical row without `read`, and it counts as unread.
    with db.write() as session:
        bulk_add_subscriptions(
            session, realm.realm_id, [realm.users["loner"]], [realm.streams["public"]]
        )
    verified = verify_action(
        db, realm.realm_id, flagging(realm, "loner", "remove", "read", [public])
    )
    assert verified.result.to_api() == {
        "messages": [public],
        "ignored_because_not_subscribed_channels": [],
    }
    assert user_state(db, realm, "loner")["unread_msgs"]["streams"] == [
        {"stream_id": realm.streams["public"], "topic": "topic", "unread_message_ids": [public]}
    ]
    assert flags_in_history(db, realm, "loner") == {public: ["historical"]}


# -- statements ------------------------------------------------------------------------------


def bulk_channel_messages(db: Database, realm: SampleRealm, count: int) -> list[int]:
    """`count` messages from the member to the public channel, unread by the guest: one
    sent by the action, the rest copied from it with bulk inserts (this measures the
    flag change, not sending)."""
    first = send(db, realm, "member", to_channel(realm, "public"))
    with db.write() as session:
        template = session.get(Message, first)
        assert template is not None
        rows = [
            {
                "realm_id": template.realm_id,
                "sender_id": template.sender_id,
                "recipient_id": template.recipient_id,
                "subject": template.subject,
                "content": template.content,
                "rendered_content": template.rendered_content,
                "date_sent": template.date_sent,
                "sending_client": template.sending_client,
            }
            for _ in range(count - 1)
        ]
        ids = [first]
        if rows:
            inserted = session.execute(
                insert(Message).returning(Message.id, sort_by_parameter_order=True), rows
            )
            ids += [int(message_id) for message_id in inserted.scalars()]
        copies = [
            {"user_profile_id": user, "message_id": message_id, "flags": flags}
            for message_id in ids[1:]
            for user, flags in ((realm.users["member"], READ_FLAG), (realm.users["guest"], 0))
        ]
        if copies:
            session.execute(insert(UserMessage), copies)
    return ids


def test_one_message_and_a_thousand_take_the_same_statements(
    db: Database, realm: SampleRealm
) -> None:
    ids = bulk_channel_messages(db, realm, 1001)
    sqlite = db.engine.dialect.name == "sqlite"

    def statements(op: str, flag: str, message_ids: list[int]) -> list[str]:
        with count_statements(db.engine) as log, db.write() as session:
            change = check_update_message_flags(
                session, realm.realm_id, realm.users["guest"], op, flag, message_ids
            )
        assert change.messages == message_ids, (op, flag)
        return log.statements

    for op, flag in (
        ("add", "read"),
        ("remove", "read"),
        ("add", "starred"),
        ("remove", "starred"),
    ):
        one = statements(op, flag, ids[:1])
        thousand = statements(op, flag, ids[1:])
        assert len(one) == len(thousand), (op, flag, one, thousand)
        # The realm lock first (`models.outbox.lock_realm`), never in its exclusive
        # mode; and at most: the actor, the classifying read, the UPDATE and
        # append_events' three or four.
        assert is_realm_lock(one[0], is_sqlite=True), one[0]
        assert sqlite or not is_realm_lock(one[0], is_sqlite=False, shared=False), one[0]
        assert len(one) <= 8, one
        assert sum(s.lstrip().upper().startswith("UPDATE USER_MESSAGE") for s in one) == 1


# -- concurrency -----------------------------------------------------------------------------


@pytest.fixture
def postgres_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A migrated PostgreSQL database (the race below needs real row locks) whose realms
    get ids no other test's realm has.

    The realm lock is an advisory lock keyed by the realm id, and advisory locks belong
    to the whole database, not to a test's schema: a test elsewhere asking for its
    realm 1 exclusively would queue between this test's two transactions and make the
    second one wait for the first for a reason the test is not about.
    """
    with database_url_for("postgresql", str(tmp_path_factory.mktemp("db"))) as url:
        upgrade(url)
        database = Database(url)
        with database.write() as session:
            session.execute(
                text("SELECT setval(pg_get_serial_sequence('realm', 'id'), :start)"),
                {"start": secrets.randbelow(2**30) + 1_000_000},
            )
        yield database
        database.dispose()


def wait_until_blocked(db: Database, backend_pid: int) -> None:
    """Until the backend `backend_pid` waits for a lock (polled, with a timeout)."""
    waited = threading.Event()
    for _ in range(int(TIMEOUT_SECS / 0.01)):
        with db.snapshot() as session:
            waiting = session.scalar(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": backend_pid},
            )
        if waiting == "Lock":
            return
        waited.wait(0.01)  # polling a condition no event signals
    raise AssertionError(f"backend {backend_pid} never waited for a lock")


@pytest.mark.parametrize(
    ("second", "waits", "second_changes"),
    [
        # Its WHERE matches the rows as they were: it waits for the first's row locks,
        # then decides on the committed rows, which are read already: nothing to do.
        (("add", "read"), True, False),
        # Another bit of the same rows: it waits, then sets its bit on the committed
        # flags, so the first's `read` is kept (no lost update).
        (("add", "starred"), True, True),
        # Its WHERE matches none of the rows as they were (unread): it changes nothing
        # and waits for nothing, as if it had run first; the rows end read.
        (("remove", "read"), False, False),
    ],
    ids=["read-twice", "read-and-star", "read-against-unread"],
)
def test_concurrent_changes_of_the_same_rows_apply_in_order(
    postgres_db: Database, second: tuple[str, str], waits: bool, second_changes: bool
) -> None:
    """A first change marks 20 unread messages read and holds its row locks,
    uncommitted, while a second change of the same rows runs. Whatever the second does,
    the two changes' events, applied in sequence order to the state from before, give
    the state after both commit."""
    db = postgres_db
    realm = make_sample_realm(db)
    ids = bulk_channel_messages(db, realm, 20)
    guest = realm.users["guest"]
    with db.snapshot() as session:
        start_seq = session.scalar(select(Realm.last_event_seq).where(Realm.id == realm.realm_id))
    before = user_state(db, realm, "guest")
    outcome: list[object] = []
    pid: list[int] = []
    started = threading.Event()

    def second_change() -> None:
        try:
            with db.write() as session:
                pid.append(int(session.scalar(text("SELECT pg_backend_pid()")) or 0))
                started.set()
                outcome.append(
                    check_update_message_flags(session, realm.realm_id, guest, *second, ids)
                )
        except Exception as error:  # handed to the test thread, which asserts on it
            started.set()
            outcome.append(error)

    worker = threading.Thread(target=second_change, name="second-flag-change")
    with db.write() as session:
        held = check_update_message_flags(session, realm.realm_id, guest, "add", "read", ids)
        assert held.messages == ids
        worker.start()
        assert started.wait(TIMEOUT_SECS)
        if waits:
            wait_until_blocked(db, pid[0])
        else:
            worker.join(TIMEOUT_SECS)
            assert not worker.is_alive(), "the second change waited for the first"
    worker.join(TIMEOUT_SECS)
    assert not worker.is_alive(), "the second change is still waiting"
    [result] = outcome
    assert isinstance(result, FlagsChange), result
    assert result.messages == (ids if second_changes else [])

    with db.snapshot() as session:
        events = read_events(session, realm.realm_id, int(start_seq or 0))
        flags = set(
            session.scalars(
                select(UserMessage.flags).where(
                    UserMessage.user_profile_id == guest, UserMessage.message_id.in_(ids)
                )
            )
        )
    expected_flags = READ_FLAG | (STARRED_FLAG if second_changes else 0)
    assert flags == {expected_flags}
    assert [(e.event["op"], e.event["flag"]) for e in events] == [("add", "read")] + (
        [second] if second_changes else []
    )
    cache = StateCache.from_register(before, guest, include_subscribers=True)
    cache.apply_all(e.event for e in events)
    assert cache.to_register_shape() == user_state(db, realm, "guest")


# -- register ---------------------------------------------------------------------------------


def message_state_request() -> RegisterRequest:
    return RegisterRequest(
        event_types=frozenset(MESSAGE_TYPES),
        fetch_event_types=frozenset({*MESSAGE_TYPES, "realm_user", "subscription"}),
        capabilities=Capabilities(deactivation_peer_events=True),
        include_subscribers=False,
        queue_lifespan_secs=None,
        user_agent="ZulipPython/0.9.1",
    )


async def test_register_reads_each_users_message_state_itself(
    db: Database, realm: SampleRealm
) -> None:
    """The realm state a register reads is kept for the next ones while no event that
    may change it follows; a message is not such an event. Each register's own unread
    messages are read for it, so the second one sees the message sent in between, and
    the first's queue receives it: state and queue meet at one position."""
    service = EventService(db)
    await service.start()
    try:
        guest = AuthenticatedUser(realm.users["guest"], realm.realm_id, realm.emails["guest"], 600)
        member = AuthenticatedUser(
            realm.users["member"], realm.realm_id, realm.emails["member"], 400
        )
        first = await service.register(guest, message_state_request())
        assert first["unread_msgs"]["count"] == 0 and first["starred_messages"] == []
        sent = await service.run_db(send, db, realm, "member", to_channel(realm, "public"))
        second = await service.register(guest, message_state_request())
        assert second["unread_msgs"]["streams"][0]["unread_message_ids"] == [sent]
        # The member sent it: read, not unread, in the member's own state.
        theirs = await service.register(member, message_state_request())
        assert theirs["unread_msgs"]["count"] == 0
        # The first queue got the message; applied to its state, it equals the second.
        await service.drain_outbox()
        polled = await service.get_events(guest, first["queue_id"], -1, dont_block=True)
        events = [json.loads(raw) for raw in polled.events]
        assert [e["type"] for e in events] == ["message"]
        cache = StateCache.from_register(first, guest.id)
        cache.apply_all(events)
        shape = cache.to_register_shape()
        assert shape["unread_msgs"] == second["unread_msgs"]
        # And the second queue starts after the message: nothing in it yet.
        empty = await service.get_events(guest, second["queue_id"], -1, dont_block=True)
        assert list(empty.events) == []
    finally:
        await service.stop()


async def test_register_reads_both_states_in_one_snapshot_when_the_kept_one_lags(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the kept realm state never hold where the user's state was read (state
    events keep arriving in between), both are read for the user in one snapshot."""
    service = EventService(db)
    await service.start()
    try:
        registrar = service.registrar

        async def never_kept(realm_id: int) -> Any:
            registrar._realm_states.clear()

        monkeypatch.setattr(registrar, "_read_realm_state", never_kept)
        sent = await service.run_db(send, db, realm, "member", to_channel(realm, "public"))
        guest = AuthenticatedUser(realm.users["guest"], realm.realm_id, realm.emails["guest"], 600)
        answer = await service.register(guest, message_state_request())
        assert answer["unread_msgs"]["streams"][0]["unread_message_ids"] == [sent]
        assert answer["subscriptions"] and "realm_users" in answer
        expected = user_state(db, realm, "guest", include_subscribers=False)
        for key in ("unread_msgs", "starred_messages", "subscriptions", "realm_users"):
            assert answer[key] == json.loads(json.dumps(expected[key])), key
    finally:
        await service.stop()


def test_unread_msgs_is_bounded_as_zulips(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = bulk_channel_messages(db, realm, 5)
    monkeypatch.setattr(unreads, "MAX_UNREAD_MESSAGES", 3)
    unread = user_state(db, realm, "guest")["unread_msgs"]
    assert unread["streams"][0]["unread_message_ids"] == ids[-3:]
    assert unread["count"] == 3 and unread["old_unreads_missing"] is True


# -- HTTP ---------------------------------------------------------------------------------------


def test_the_zulip_client_changes_flags(server: LiveServer, realm: SampleRealm) -> None:
    member = zulip_client(server, realm, "member")
    guest = zulip_client(server, realm, "guest")
    sent = [
        member.send_message({"type": "stream", "to": "public", "topic": "t", "content": str(i)})[
            "id"
        ]
        for i in range(3)
    ]
    queue = guest.register(
        event_types=["message", "update_message_flags"],
        fetch_event_types=MESSAGE_TYPES,
    )
    validate_response("POST", "/api/v1/register", 200, queue)
    assert queue["unread_msgs"]["streams"][0]["unread_message_ids"] == sent
    assert queue["starred_messages"] == []

    answer = guest.update_message_flags({"messages": sent, "op": "add", "flag": "read"})
    validate_response("POST", "/api/v1/messages/flags", 200, answer)
    assert answer["messages"] == sent
    answer = guest.update_message_flags({"messages": sent[:1], "op": "remove", "flag": "read"})
    validate_response("POST", "/api/v1/messages/flags", 200, answer)
    assert answer == {
        "result": "success",
        "msg": "",
        "messages": sent[:1],
        "ignored_because_not_subscribed_channels": [],
    }
    answer = guest.update_message_flags({"messages": sent[1:], "op": "add", "flag": "starred"})
    assert answer["messages"] == sent[1:]
    refused = guest.update_message_flags({"messages": sent, "op": "add", "flag": "bogus"})
    validate_response("POST", "/api/v1/messages/flags", 400, refused)
    assert (refused["code"], refused["msg"]) == ("BAD_REQUEST", "Invalid flag: 'bogus'")
    refused = guest.update_message_flags({"messages": sent, "op": "add", "flag": "mentioned"})
    assert refused["msg"] == "Flag not editable: 'mentioned'"

    # The queue gets the three changes (the star is not fetched as an event type here,
    # but `update_message_flags` covers every flag).
    events: list[dict[str, Any]] = []
    while len(events) < 3:
        # A long-poll: it returns as soon as the queue holds events (a heartbeat after
        # 45-55 s of nothing would fail the comparison below, not hang the test).
        polled = guest.get_events(
            queue_id=queue["queue_id"], last_event_id=events[-1]["id"] if events else -1
        )
        assert polled["result"] == "success", polled
        assert polled["events"], polled
        events += [e for e in polled["events"] if e["type"] != "heartbeat"]
    for event in events:
        validate_event(event)
    assert [(e["op"], e["flag"], e["messages"]) for e in events] == [
        ("add", "read", sent),
        ("remove", "read", sent[:1]),
        ("add", "starred", sent[1:]),
    ]
    # Applied to the register's state, they give a fresh register's.
    cache = StateCache.from_register(queue, realm.users["guest"])
    cache.apply_all(events)
    fresh = guest.register(event_types=["message"], fetch_event_types=MESSAGE_TYPES)
    assert cache.to_register_shape() == {k: fresh[k] for k in ("unread_msgs", "starred_messages")}
    # History shows the flags.
    history = guest.get_messages({"anchor": "newest", "num_before": 10, "num_after": 0})
    assert {m["id"]: m["flags"] for m in history["messages"]} == {
        sent[0]: [],
        sent[1]: ["read", "starred"],
        sent[2]: ["read", "starred"],
    }


def test_a_thousand_messages_in_one_request(server: LiveServer, realm: SampleRealm) -> None:
    db = Database(server.database_url)
    try:
        ids = bulk_channel_messages(db, realm, 1000)
    finally:
        db.dispose()
    guest = zulip_client(server, realm, "guest")
    answer = guest.update_message_flags({"messages": ids, "op": "add", "flag": "read"})
    validate_response("POST", "/api/v1/messages/flags", 200, answer)
    assert answer["messages"] == ids
    fresh = guest.register(event_types=["message"], fetch_event_types=MESSAGE_TYPES)
    assert fresh["unread_msgs"]["count"] == 0
