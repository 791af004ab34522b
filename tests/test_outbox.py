"""The outbox: gap-free per-realm sequence numbers in commit order, even under
concurrent writers; rolled-back actions write nothing."""

from __future__ import annotations

import threading

import pytest

from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.users import do_create_user
from models.database import Database
from models.outbox import PendingEvent, append_events, lock_realm, read_events
from models.tables import Role


def test_concurrent_writers_get_gap_free_sequences(db: Database) -> None:
    with db.write() as session:
        realm_id = do_create_realm(session, "busy").id
    with db.write() as session:
        do_create_user(session, realm_id, "owner@busy.example.com", role=Role.OWNER)
    writers, per_writer = 4, 10
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(index: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(per_writer):
                with db.write() as session:
                    do_create_stream(session, realm_id, f"w{index}-{i}")
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    with db.snapshot() as session:
        events = read_events(session, realm_id, 0)
    assert [e.seq for e in events] == list(range(1, 2 + writers * per_writer))
    # Each writer's channels appear in the order it committed them.
    for index in range(writers):
        names = [
            e.event["streams"][0]["name"]
            for e in events
            if e.event["type"] == "stream"
            and e.event["streams"][0]["name"].startswith(f"w{index}-")
        ]
        assert names == [f"w{index}-{i}" for i in range(per_writer)]


def test_rolled_back_action_writes_no_event(db: Database) -> None:
    with db.write() as session:
        realm_id = do_create_realm(session, "undo").id
    with pytest.raises(RuntimeError), db.write() as session:
        lock_realm(session, realm_id)
        append_events(session, realm_id, [PendingEvent({"type": "x", "op": "y"}, [1])])
        raise RuntimeError("abort")
    with db.snapshot() as session:
        assert read_events(session, realm_id, 0) == []


def test_events_without_recipients_are_dropped(db: Database) -> None:
    with db.write() as session:
        realm_id = do_create_realm(session, "empty").id
    with db.write() as session:
        lock_realm(session, realm_id)
        seqs = append_events(
            session,
            realm_id,
            [
                PendingEvent({"type": "a", "op": "b"}, []),
                PendingEvent({"type": "c", "op": "d"}, [5, 3, 5]),
            ],
        )
    assert seqs == [1]
    with db.snapshot() as session:
        (stored,) = read_events(session, realm_id, 0)
    assert stored.user_ids == (3, 5) and stored.event == {"type": "c", "op": "d"}
