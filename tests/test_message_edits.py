"""Reading, editing, moving and deleting one message, on both backends.

Every edit, move and deletion goes through `verify_action`, which checks each event's
shape against eventq's document and Zulip's, applies each user's events to their
register state and to their message history from before, and compares both with fresh
reads (`tests.helpers.message_histories`), and checks that no event names a message its
recipient could not read. On top of that: Zulip's access rule for `GET /messages/{id}`,
Zulip's permissions and wording for each refusal (nothing written), and the privacy of
moves: after a move to a channel a reader may not see, they neither receive events
naming the message nor fetch it, and it is gone from where it was.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from actions.errors import ActionError
from actions.message_edits import (
    MessageUpdate,
    MoveTimeLimitExceeded,
    check_delete_message,
    check_update_message,
)
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.reactions import ReactionRequest, check_add_reaction
from actions.subscriptions import bulk_add_subscriptions
from migrations import upgrade
from models.database import Database
from models.messages.access import get_message, message_history
from models.messages.history import fetch_messages
from models.messages.narrows import parse_narrow
from models.outbox import outbox_count, read_events
from models.tables import Message, MessageEdit, Realm, UserMessage, utcnow
from tests.helpers.databases import database_url_for
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.statements import count_statements, is_realm_lock
from tests.helpers.verify import VerifiedAction, verify_action
from tests.helpers.zulip_schema import check_answer

CLIENT = "eventq-tests"
# How long a thread may take to reach a lock or finish (each takes milliseconds).
TIMEOUT_SECS = 30.0


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


def send(
    db: Database,
    realm: SampleRealm,
    sender: str,
    target: ChannelTarget | DirectTarget,
    content: str = "hello",
    topic: str = "topic",
) -> int:
    with db.write() as session:
        return check_send_message(
            session, realm.realm_id, realm.users[sender], target, topic, content, CLIENT
        )


def to_channel(realm: SampleRealm, kind: str) -> ChannelTarget:
    return ChannelTarget(realm.streams[kind])


def editing(
    realm: SampleRealm, user: str, message_id: int, **changes: Any
) -> Callable[[Session], dict[str, Any]]:
    def action(session: Session) -> dict[str, Any]:
        return check_update_message(
            session, realm.realm_id, realm.users[user], message_id, MessageUpdate(**changes)
        )

    return action


def deleting(realm: SampleRealm, user: str, message_id: int) -> Callable[[Session], None]:
    def action(session: Session) -> None:
        check_delete_message(session, realm.realm_id, realm.users[user], message_id)

    return action


def read(db: Database, realm: SampleRealm, user: str, message_id: int) -> dict[str, Any]:
    with db.snapshot() as session:
        answer = get_message(session, realm.users[user], message_id)
    check_answer("GET", "/messages/{message_id}", 200, {"result": "success", "msg": "", **answer})
    return answer


def history_ids(db: Database, realm: SampleRealm, user: str, narrow: Any = ()) -> list[int]:
    with db.snapshot() as session:
        answer = fetch_messages(
            session,
            realm.users[user],
            anchor="newest",
            num_before=100,
            num_after=0,
            narrow=parse_narrow(list(narrow)),
        )
    return [message["id"] for message in answer["messages"]]


def refused(db: Database, action: Callable[[Session], Any], message: str) -> ActionError:
    """The action is refused with Zulip's wording and writes nothing."""
    realm_id = 1  # the sample realm, the only one
    with db.snapshot() as session:
        before = outbox_count(session, realm_id)
    with pytest.raises(ActionError) as caught, db.write() as session:
        action(session)
    assert str(caught.value) == message
    with db.snapshot() as session:
        assert outbox_count(session, realm_id) == before
    return caught.value


def received_by(verified: VerifiedAction[Any], realm: SampleRealm, user: str) -> list[Any]:
    return verified.received_by(realm.users[user])


# -- reading one message -----------------------------------------------------------------------


def test_a_message_is_read_only_by_who_may_read_it(db: Database, realm: SampleRealm) -> None:
    public = send(db, realm, "member", to_channel(realm, "public"), "**hi**")
    private = send(db, realm, "member", to_channel(realm, "private"))
    direct = send(db, realm, "member", DirectTarget(user_ids=(realm.users["guest"],)))

    answer = read(db, realm, "member", public)
    assert answer["raw_content"] == "**hi**"
    assert answer["message"]["content"] == "<p><strong>hi</strong></p>\n"
    assert answer["message"]["flags"] == ["read"] and answer["message"]["reactions"] == []
    assert "last_edit_timestamp" not in answer["message"]
    with db.snapshot() as session:
        raw = get_message(session, realm.users["member"], public, apply_markdown=False)
    assert raw["message"]["content"] == "**hi**"
    assert raw["message"]["content_type"] == "text/x-markdown"
    # The public channel's history is public to the loner, who received nothing.
    assert read(db, realm, "loner", public)["message"]["flags"] == ["read", "historical"]
    # A guest reads a public channel only while subscribed; nobody reads a private
    # channel's or a conversation's messages without having received them.
    for user, message_id in [
        ("outsider_guest", public),
        ("loner", private),
        ("admin", private),
        ("owner", direct),
        ("loner", 10**9),
    ]:
        with pytest.raises(ActionError, match=r"^Invalid message\(s\)$"), db.snapshot() as s:
            get_message(s, realm.users[user], message_id)


# -- content edits --------------------------------------------------------------------------


def test_a_content_edit_reaches_every_holder_and_converges(
    db: Database, realm: SampleRealm
) -> None:
    message_id = send(db, realm, "member", to_channel(realm, "public"), "first")
    verified = verify_action(
        db, realm.realm_id, editing(realm, "member", message_id, content="*second*")
    )
    assert verified.result == {"detached_uploads": []}
    holders = {realm.users["member"], realm.users["guest"]}
    assert {u for e in verified.events for u in e.user_ids} == holders
    event = verified.events[0].event
    assert event["type"] == "update_message" and event["message_ids"] == [message_id]
    assert (event["orig_content"], event["content"]) == ("first", "*second*")
    assert event["rendered_content"] == "<p><em>second</em></p>\n"
    assert event["stream_id"] == realm.streams["public"] and "propagate_mode" not in event
    assert "subject" not in event and "new_stream_id" not in event
    message = read(db, realm, "guest", message_id)["message"]
    assert message["content"] == "<p><em>second</em></p>\n"
    assert message["last_edit_timestamp"] == event["edit_timestamp"]
    assert "last_moved_timestamp" not in message
    assert message["edit_history"] == [
        {
            "user_id": realm.users["member"],
            "timestamp": event["edit_timestamp"],
            "prev_content": "first",
            "prev_rendered_content": "<p>first</p>\n",
        }
    ]
    with db.snapshot() as session:
        snapshots = message_history(session, realm.users["loner"], message_id)
    check_answer(
        "GET",
        "/messages/{message_id}/history",
        200,
        {"result": "success", "msg": "", "message_history": snapshots},
    )
    assert [s["content"] for s in snapshots] == ["first", "*second*"]
    assert snapshots[1]["prev_content"] == "first" and "prev_topic" not in snapshots[1]


def test_a_content_edit_sets_and_clears_mention_flags(db: Database, realm: SampleRealm) -> None:
    message_id = send(db, realm, "member", to_channel(realm, "public"), "no one")
    verified = verify_action(
        db, realm.realm_id, editing(realm, "member", message_id, content="hi @**Guest**")
    )
    flags = {u: e.event["flags"] for e in verified.events for u in e.user_ids}
    assert "mentioned" in flags[realm.users["guest"]]
    assert "mentioned" not in flags[realm.users["member"]]
    verified = verify_action(
        db, realm.realm_id, editing(realm, "member", message_id, content="nobody now")
    )
    flags = {u: e.event["flags"] for e in verified.events for u in e.user_ids}
    assert "mentioned" not in flags[realm.users["guest"]]


def test_content_edits_follow_zulips_permissions(db: Database, realm: SampleRealm) -> None:
    message_id = send(db, realm, "member", to_channel(realm, "public"))
    direct = send(db, realm, "member", DirectTarget(user_ids=(realm.users["guest"],)))
    refused(
        db,
        editing(realm, "guest", message_id, content="mine now"),
        "You don't have permission to edit this message",
    )
    refused(
        db,
        editing(realm, "admin", message_id, content="admins neither"),
        "You don't have permission to edit this message",
    )
    refused(db, editing(realm, "member", message_id), "Nothing to change")
    refused(
        db,
        editing(realm, "member", message_id, content="x", stream_id=realm.streams["private"]),
        "Cannot change message content while changing channel",
    )
    refused(
        db,
        editing(realm, "member", message_id, content="x", propagate_mode="change_all"),
        "Invalid propagate_mode without topic edit",
    )
    refused(db, editing(realm, "member", direct, topic="t"), "Direct messages cannot have topics.")
    refused(
        db,
        editing(realm, "member", direct, stream_id=realm.streams["public"]),
        "Direct messages cannot be moved to channels.",
    )
    refused(db, editing(realm, "loner", direct, content="x"), "Invalid message(s)")
    with db.write() as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(date_sent=utcnow() - timedelta(minutes=11))
        )
    refused(
        db,
        editing(realm, "member", message_id, content="too late"),
        "The time limit for editing this message has past",
    )


# -- moves within a channel -------------------------------------------------------------------


def test_a_topic_move_applies_to_the_chosen_messages(db: Database, realm: SampleRealm) -> None:
    public = to_channel(realm, "public")
    first, second, third = (send(db, realm, "member", public, str(n), "a") for n in range(3))
    other = send(db, realm, "member", public, "elsewhere", "b")
    verified = verify_action(
        db,
        realm.realm_id,
        editing(realm, "guest", second, topic="later", propagate_mode="change_later"),
    )
    event = verified.events[0].event
    assert event["message_ids"] == [second, third]
    assert (event["orig_subject"], event["subject"], event["propagate_mode"]) == (
        "a",
        "later",
        "change_later",
    )
    assert "orig_content" not in event
    verified = verify_action(
        db,
        realm.realm_id,
        editing(realm, "member", third, topic="A", propagate_mode="change_all"),
    )
    assert verified.events[0].event["message_ids"] == [second, third]
    moved = read(db, realm, "member", second)["message"]
    assert moved["subject"] == "A" and "last_moved_timestamp" in moved
    assert "last_edit_timestamp" not in moved
    assert [e["prev_topic"] for e in moved["edit_history"]] == ["later", "a"]
    assert read(db, realm, "member", first)["message"]["subject"] == "a"
    assert read(db, realm, "member", other)["message"]["subject"] == "b"
    # Resolving is not a move.
    verify_action(
        db,
        realm.realm_id,
        editing(realm, "member", first, topic="✔ a", propagate_mode="change_all"),
    )
    resolved = read(db, realm, "member", first)["message"]
    assert resolved["subject"] == "✔ a" and "last_moved_timestamp" not in resolved


def test_a_move_takes_the_shared_lock_first_and_a_channel_move_the_exclusive_one(
    db: Database, realm: SampleRealm
) -> None:
    message_id = send(db, realm, "member", to_channel(realm, "public"))
    moves: list[tuple[dict[str, Any], bool]] = [
        ({"topic": "t2"}, True),
        ({"stream_id": realm.streams["web_public"]}, False),
    ]
    for changes, shared in moves:
        with count_statements(db.engine) as statements, db.write() as session:
            editing(realm, "member", message_id, **changes)(session)
        is_sqlite = db.engine.dialect.name == "sqlite"
        first = statements.statements[0]
        assert is_realm_lock(first, is_sqlite, shared=shared), first


def test_old_messages_move_only_for_moderators(db: Database, realm: SampleRealm) -> None:
    public = to_channel(realm, "public")
    old = send(db, realm, "member", public, "old", "t")
    new = send(db, realm, "member", public, "new", "t")
    with db.write() as session:
        session.execute(
            update(Message).where(Message.id == old).values(date_sent=utcnow() - timedelta(days=8))
        )
    refused(
        db,
        editing(realm, "member", old, topic="u"),
        "The time limit for editing this message's topic has passed",
    )
    error = refused(
        db,
        editing(realm, "member", new, topic="u", propagate_mode="change_all"),
        "You only have permission to move the 1/2 most recent messages in this topic.",
    )
    assert isinstance(error, MoveTimeLimitExceeded)
    assert error.code == "MOVE_MESSAGES_TIME_LIMIT_EXCEEDED"
    verified = verify_action(
        db, realm.realm_id, editing(realm, "admin", new, topic="u", propagate_mode="change_all")
    )
    assert verified.events[0].event["message_ids"] == [old, new]


# -- moves between channels ---------------------------------------------------------------------


def test_a_move_to_a_private_channel_takes_the_message_from_who_may_not_read_it(
    db: Database, realm: SampleRealm
) -> None:
    with db.write() as session:
        bulk_add_subscriptions(
            session, realm.realm_id, [realm.users["loner"]], [realm.streams["public"]]
        )
    message_id = send(db, realm, "member", to_channel(realm, "public"), "secret soon")
    loner = realm.users["loner"]
    assert message_id in history_ids(db, realm, "loner")

    verified = verify_action(
        db,
        realm.realm_id,
        editing(realm, "member", message_id, stream_id=realm.streams["private"]),
    )
    # The loner (not subscribed to the private channel) is told the message is gone, and
    # nothing else about it.
    [lost] = received_by(verified, realm, "loner")
    assert lost == {
        "type": "delete_message",
        "message_ids": [message_id],
        "message_type": "stream",
        "stream_id": realm.streams["public"],
        "topic": "topic",
    }
    update_events = [e for e in verified.events if e.event["type"] == "update_message"]
    assert update_events and all(loner not in e.user_ids for e in update_events)
    assert {u for e in update_events for u in e.user_ids} == {
        realm.users["member"],
        realm.users["guest"],
    }
    assert update_events[0].event["new_stream_id"] == realm.streams["private"]
    # It is gone from the loner's history, from the public channel, and from reach.
    assert message_id not in history_ids(db, realm, "loner")
    assert message_id not in history_ids(db, realm, "loner", [["channel", "public"]])
    for user in ("loner", "owner", "outsider_guest"):
        with pytest.raises(ActionError, match=r"^Invalid message\(s\)$"), db.snapshot() as s:
            get_message(s, realm.users[user], message_id)
    with db.snapshot() as session:
        rows = session.scalar(
            select(func.count())
            .select_from(UserMessage)
            .where(UserMessage.user_profile_id == loner)
        )
    assert rows == 0
    moved = read(db, realm, "guest", message_id)["message"]
    assert (
        moved["stream_id"] == realm.streams["private"] and moved["display_recipient"] == "private"
    )


def test_a_move_gives_a_private_channels_subscribers_the_message_read(
    db: Database, realm: SampleRealm
) -> None:
    """Into a private channel: its subscribers get rows flagged `read` (its history is not
    public), and, the messages coming from a public channel, the `update_message`."""
    with db.write() as session:
        bulk_add_subscriptions(
            session, realm.realm_id, [realm.users["loner"]], [realm.streams["private"]]
        )
    message_id = send(db, realm, "member", to_channel(realm, "public"), "now private")
    verified = verify_action(
        db,
        realm.realm_id,
        editing(
            realm,
            "member",
            message_id,
            stream_id=realm.streams["private"],
            propagate_mode="change_all",
            send_notification_to_old_thread=True,
        ),
    )
    [moved] = received_by(verified, realm, "loner")
    assert moved["type"] == "update_message" and moved["flags"] == ["read"]
    assert read(db, realm, "loner", message_id)["message"]["flags"] == ["read"]
    assert message_id in history_ids(db, realm, "loner")


def test_a_move_out_of_a_private_channel_names_it_to_no_new_reader(
    db: Database, realm: SampleRealm
) -> None:
    """Out of a private channel into a web-public one: the web-public channel's other
    subscribers hear nothing (the event would name the private channel) and read the
    message in its public history."""
    with db.write() as session:
        bulk_add_subscriptions(
            session, realm.realm_id, [realm.users["loner"]], [realm.streams["web_public"]]
        )
    message_id = send(db, realm, "member", to_channel(realm, "private"), "now public")
    verified = verify_action(
        db,
        realm.realm_id,
        editing(realm, "member", message_id, stream_id=realm.streams["web_public"]),
    )
    assert received_by(verified, realm, "loner") == []
    assert read(db, realm, "loner", message_id)["message"]["flags"] == ["read", "historical"]
    assert message_id in history_ids(db, realm, "loner", [["channel", "web-public"]])
    assert message_id not in history_ids(db, realm, "member", [["channel", "private"]])


def test_channel_moves_follow_zulips_permissions(db: Database, realm: SampleRealm) -> None:
    message_id = send(db, realm, "member", to_channel(realm, "public"))
    refused(
        db,
        editing(realm, "guest", message_id, stream_id=realm.streams["web_public"]),
        "You don't have permission to move this message",
    )
    refused(
        db,
        editing(realm, "loner", message_id, stream_id=realm.streams["private"]),
        "Invalid channel ID",
    )
    refused(db, editing(realm, "member", message_id, stream_id=10**9), "Invalid channel ID")


# -- deletion -------------------------------------------------------------------------------------


def test_deleting_a_message_removes_it_for_everyone(db: Database, realm: SampleRealm) -> None:
    message_id = send(db, realm, "member", to_channel(realm, "public"), "bye")
    verified = verify_action(db, realm.realm_id, deleting(realm, "member", message_id))
    [stored] = verified.events
    assert stored.event == {
        "type": "delete_message",
        "message_id": message_id,
        "message_ids": [message_id],
        "message_type": "stream",
        "stream_id": realm.streams["public"],
        "topic": "topic",
    }
    assert set(stored.user_ids) == {realm.users["member"], realm.users["guest"]}
    with db.snapshot() as session:
        assert session.get(Message, message_id) is None
        assert not session.scalar(
            select(func.count())
            .select_from(MessageEdit)
            .where(MessageEdit.message_id == message_id)
        )
    direct = send(db, realm, "member", DirectTarget(user_ids=(realm.users["guest"],)))
    verified = verify_action(db, realm.realm_id, deleting(realm, "member", direct))
    assert verified.events[0].event["message_type"] == "private"
    assert "stream_id" not in verified.events[0].event


def test_deletion_follows_zulips_permissions(db: Database, realm: SampleRealm) -> None:
    message_id = send(db, realm, "member", to_channel(realm, "public"))
    refused(
        db, deleting(realm, "guest", message_id), "You don't have permission to delete this message"
    )
    refused(db, deleting(realm, "outsider_guest", message_id), "Invalid message(s)")
    with db.write() as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(date_sent=utcnow() - timedelta(minutes=11))
        )
    refused(
        db,
        deleting(realm, "member", message_id),
        "The time limit for deleting this message has passed",
    )
    # An administrator deletes any message they may read, received or not.
    verified = verify_action(db, realm.realm_id, deleting(realm, "admin", message_id))
    assert realm.users["admin"] in verified.events[0].user_ids


# -- concurrency (PostgreSQL) --------------------------------------------------------------------


@pytest.fixture
def postgres_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A migrated PostgreSQL database (the race needs real row locks) whose realm gets an
    id no other test's realm has: the realm lock is an advisory lock keyed by realm id,
    shared by every schema of the database."""
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


def test_two_edits_of_one_message_apply_in_order(postgres_db: Database) -> None:
    """A first content edit holds the message's row lock, uncommitted, while a second
    edit of the same message runs: the second waits for the first, reads its content as
    `orig_content`, and appends its event after the first's."""
    db = postgres_db
    realm = make_sample_realm(db)
    message_id = send(db, realm, "member", to_channel(realm, "public"), "one")
    with db.snapshot() as session:
        start_seq = int(
            session.scalar(select(Realm.last_event_seq).where(Realm.id == realm.realm_id)) or 0
        )
    outcome: list[object] = []
    pid: list[int] = []
    started = threading.Event()

    def second_edit() -> None:
        try:
            with db.write() as session:
                pid.append(int(session.scalar(text("SELECT pg_backend_pid()")) or 0))
                started.set()
                outcome.append(editing(realm, "member", message_id, content="three")(session))
        except Exception as error:  # handed to the test thread, which asserts on it
            started.set()
            outcome.append(error)

    worker = threading.Thread(target=second_edit, name="second-edit")
    with db.write() as session:
        editing(realm, "member", message_id, content="two")(session)
        worker.start()
        assert started.wait(TIMEOUT_SECS)
        wait_until_blocked(db, pid[0])
    worker.join(TIMEOUT_SECS)
    assert not worker.is_alive(), "the second edit is still waiting"
    assert outcome == [{"detached_uploads": []}]
    with db.snapshot() as session:
        events = read_events(session, realm.realm_id, start_seq)
    # One event per set of flags (the sender's `read`, the guest's none), each edit's
    # events together, the first edit's before the second's.
    edits = [(e.event["orig_content"], e.event["content"]) for e in events]
    assert edits == [("one", "two")] * 2 + [("two", "three")] * 2
    assert read(db, realm, "member", message_id)["raw_content"] == "three"


def test_nothing_about_a_private_channels_message_reaches_its_non_readers(
    db: Database, realm: SampleRealm
) -> None:
    """An edit, a move within the channel, a reaction and a deletion of a private
    channel's message reach its two subscribers alone; everyone else is refused it."""
    message_id = send(db, realm, "member", to_channel(realm, "private"), "inside")
    readers = {realm.users["member"], realm.users["guest"]}

    def react(session: Session) -> None:
        check_add_reaction(
            session, realm.realm_id, realm.users["guest"], message_id, ReactionRequest("tada")
        )

    for action in (
        editing(realm, "member", message_id, content="edited inside"),
        editing(realm, "guest", message_id, topic="moved inside"),
        react,
        deleting(realm, "member", message_id),
    ):
        verified = verify_action(db, realm.realm_id, action)
        assert verified.events and {u for e in verified.events for u in e.user_ids} == readers
    for user in ("owner", "admin", "loner", "outsider_guest"):
        assert message_id not in history_ids(db, realm, user)


def test_a_move_takes_the_same_statements_for_one_message_and_many(
    db: Database, realm: SampleRealm
) -> None:
    """Moving a topic of 2 messages and one of 30 to another channel runs the same
    statements: every row, edit and event is written in bulk."""
    # The channel's recipient row exists (a first move creates it, one statement more).
    send(db, realm, "member", to_channel(realm, "private"))
    counts = []
    for topic, size in (("small", 2), ("large", 30)):
        ids = [
            send(db, realm, "member", to_channel(realm, "public"), "x", topic) for _ in range(size)
        ]
        with count_statements(db.engine) as statements, db.write() as session:
            editing(
                realm,
                "member",
                ids[0],
                stream_id=realm.streams["private"],
                propagate_mode="change_all",
            )(session)
        counts.append(statements.count)
        assert read(db, realm, "guest", ids[-1])["message"]["stream_id"] == realm.streams["private"]
    assert counts[0] == counts[1], counts


def test_content_edited_to_nothing_reads_deleted(db: Database, realm: SampleRealm) -> None:
    message_id = send(db, realm, "member", to_channel(realm, "public"), "oops")
    verify_action(db, realm.realm_id, editing(realm, "member", message_id, content="  "))
    assert read(db, realm, "member", message_id)["raw_content"] == "(deleted)"
