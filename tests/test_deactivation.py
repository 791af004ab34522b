"""Deactivation and reactivation: ordered events to exactly the right peers, proven by
convergence from every viewpoint, for full-sequence and legacy clients, on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from actions.errors import InvalidInput, NotAllowed
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.database import Database
from models.outbox import outbox_count
from models.queries import realm_streams
from models.tables import Role, Stream, Subscription
from tests.helpers.realms import VIEWPOINTS, SampleRealm
from tests.helpers.verify import verify_action

DEACTIVATABLE = [v for v in VIEWPOINTS if v != "owner"]


@pytest.mark.parametrize("legacy", [False, True], ids=["full", "legacy"])
@pytest.mark.parametrize("viewpoint", DEACTIVATABLE)
def test_deactivate_then_reactivate_converges_for_everyone(
    db: Database, realm: SampleRealm, viewpoint: str, legacy: bool
) -> None:
    target = realm.users[viewpoint]
    observers = set(realm.users.values()) if legacy else set()
    deactivated = verify_action(
        db,
        realm.realm_id,
        lambda s: do_deactivate_user(s, realm.realm_id, target),
        legacy_users=observers,
    )
    kinds = [(e.event["type"], e.event["op"]) for e in deactivated.events]
    assert kinds[-1] == ("realm_user", "update"), "the realm_user update comes last"
    assert all(k == ("subscription", "peer_remove") for k in kinds[:-1])
    assert deactivated.events[-1].event["person"] == {"user_id": target, "is_active": False}
    for stored in deactivated.events:
        assert target not in stored.user_ids, "the deactivated user receives nothing"
        if stored.event["op"] == "peer_remove":
            assert stored.legacy_skip and stored.event["user_ids"] == [target]
    # A subscribed user's removal reaches exactly those who see each channel.
    if viewpoint in ("member", "guest"):
        by_stream: dict[int, set[int]] = {}
        for e in deactivated.events:
            if e.event["op"] == "peer_remove":
                for sid in e.event["stream_ids"]:
                    by_stream.setdefault(sid, set()).update(e.user_ids)
        # Each recipient gets exactly one peer_remove, listing every channel it sees.
        peer_recipients = [
            u for e in deactivated.events if e.event["op"] == "peer_remove" for u in e.user_ids
        ]
        assert len(peer_recipients) == len(set(peer_recipients))
        others = {n: realm.users[n] for n in VIEWPOINTS if n != viewpoint}
        sub = {"member", "guest"} - {viewpoint}
        assert by_stream[realm.streams["private"]] == {
            others[n] for n in ({"owner", "admin"} | sub)
        }
        assert by_stream[realm.streams["public"]] == {
            others[n] for n in ({"owner", "admin", "member", "loner"} | sub) if n in others
        }
        assert by_stream[realm.streams["web_public"]] == set(others.values())
    else:
        assert kinds == [("realm_user", "update")]

    reactivated = verify_action(
        db,
        realm.realm_id,
        lambda s: do_reactivate_user(s, realm.realm_id, target),
        legacy_users=observers,
    )
    kinds = [(e.event["type"], e.event["op"]) for e in reactivated.events]
    assert kinds[0] == ("realm_user", "update")
    assert all(k == ("subscription", "peer_add") for k in kinds[1:])
    assert not any(e.legacy_skip for e in reactivated.events), "every client gets peer_add"


def test_peer_events_are_grouped_by_recipients(db: Database, realm: SampleRealm) -> None:
    """Users who see the same channels share one peer_remove event listing all of them."""
    with db.write() as session:
        session.execute(
            insert(Stream), [{"realm_id": realm.realm_id, "name": f"extra {i}"} for i in range(5)]
        )
    with db.snapshot() as session:
        extra = [s.id for s in realm_streams(session, realm.realm_id) if s.name.startswith("extra")]
    with db.write() as session:
        session.execute(
            insert(Subscription),
            [{"user_profile_id": realm.users["member"], "stream_id": sid} for sid in extra],
        )
    verified = verify_action(
        db, realm.realm_id, lambda s: do_deactivate_user(s, realm.realm_id, realm.users["member"])
    )
    peer = [
        (e.event["stream_ids"], set(e.user_ids))
        for e in verified.events
        if e.event["op"] == "peer_remove"
    ]
    streams = realm.streams
    users = realm.users
    assert sorted(peer, key=lambda p: len(p[0])) == [
        # Guests see the web-public channel, and the channels they are subscribed to.
        ([streams["web_public"]], {users["outsider_guest"]}),
        (sorted([streams["public"], streams["private"], streams["web_public"]]), {users["guest"]}),
        # Members see the public ones; administrators also see the private one.
        (sorted([streams["public"], streams["web_public"], *extra]), {users["loner"]}),
        (
            sorted([streams["public"], streams["private"], streams["web_public"], *extra]),
            {users["owner"], users["admin"]},
        ),
    ]


def _deactivation_statements(db: Database, realm: SampleRealm, channels: int) -> int:
    with db.write() as session:
        user_id = do_create_user(session, realm.realm_id, f"many{channels}@x.example.com").id
    with db.write() as session:
        session.execute(
            insert(Stream),
            [
                {"realm_id": realm.realm_id, "name": f"c{channels}-{i}", "invite_only": i % 3 == 0}
                for i in range(channels)
            ],
        )
    with db.snapshot() as session:
        ids = [
            s.id
            for s in realm_streams(session, realm.realm_id)
            if s.name.startswith(f"c{channels}-")
        ]
    with db.write() as session:
        session.execute(
            insert(Subscription),
            [
                {"user_profile_id": uid, "stream_id": sid}
                for sid in ids
                for uid in (user_id, realm.users["loner"])
            ],
        )
    verified = verify_action(
        db, realm.realm_id, lambda s: do_deactivate_user(s, realm.realm_id, user_id)
    )
    assert {
        sid
        for e in verified.events
        if e.event["op"] == "peer_remove"
        for sid in e.event["stream_ids"]
    } == set(ids)
    return verified.statements


def test_deactivation_statement_count_does_not_grow(db: Database, realm: SampleRealm) -> None:
    assert _deactivation_statements(db, realm, 10) == _deactivation_statements(db, realm, 1000)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda s, r: do_deactivate_user(s, r.realm_id, r.users["owner"]),
            InvalidInput,
            "only organization owner",
        ),
        (
            lambda s, r: do_reactivate_user(s, r.realm_id, r.users["member"]),
            InvalidInput,
            "already active",
        ),
        (
            lambda s, r: do_deactivate_user(s, r.realm_id, r.users["owner"], r.users["admin"]),
            NotAllowed,
            "owner",
        ),
    ],
)
def test_refused_changes_change_nothing(
    db: Database, realm: SampleRealm, call: object, error: type[Exception], message: str
) -> None:
    with db.snapshot() as session:
        before = outbox_count(session, realm.realm_id)
    with pytest.raises(error, match=message), db.write() as session:
        call(session, realm)  # type: ignore[operator]
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == before


def test_deactivating_twice_is_refused(db: Database, realm: SampleRealm) -> None:
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, realm.users["loner"])
    with pytest.raises(InvalidInput, match="already deactivated"), db.write() as session:
        do_deactivate_user(session, realm.realm_id, realm.users["loner"])


def test_second_owner_can_be_deactivated(db: Database, realm: SampleRealm) -> None:
    with db.write() as session:
        second = do_create_user(session, realm.realm_id, "boss2@x.example.com", role=Role.OWNER)
    verify_action(db, realm.realm_id, lambda s: do_deactivate_user(s, realm.realm_id, second.id))
