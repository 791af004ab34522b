"""Every event-producing action of the foundation, through verify_action, on both backends."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import func, select

from actions.errors import ActionError, AlreadyExists, InvalidInput, NotFound
from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user
from models.database import Database
from models.outbox import outbox_count
from models.tables import Role, Stream, Subscription, UserProfile
from tests.helpers.realms import CHANNEL_KINDS, VIEWPOINTS, SampleRealm
from tests.helpers.verify import verify_action


def test_create_user_tells_every_active_user(db: Database, realm: SampleRealm) -> None:
    verified = verify_action(
        db,
        realm.realm_id,
        lambda s: do_create_user(s, realm.realm_id, "new@zulip.example.com", "New", Role.MEMBER),
        num_events=1,
    )
    new_id = verified.result.id
    (stored,) = verified.events
    assert stored.event["op"] == "add" and stored.event["person"]["user_id"] == new_id
    assert set(stored.user_ids) == set(realm.users.values()) | {new_id}


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_create_stream_reaches_exactly_its_audience(
    db: Database, realm: SampleRealm, kind: str
) -> None:
    verified = verify_action(
        db,
        realm.realm_id,
        lambda s: do_create_stream(
            s,
            realm.realm_id,
            f"new {kind}",
            invite_only=kind == "private",
            is_web_public=kind == "web_public",
        ),
        num_events=1,
    )
    expected = {
        "public": {"owner", "admin", "member", "loner"},
        "private": {"owner", "admin"},
        "web_public": set(VIEWPOINTS),
    }[kind]
    assert set(verified.events[0].user_ids) == {realm.users[n] for n in expected}


@pytest.mark.parametrize(("viewpoint", "kind"), list(itertools.product(VIEWPOINTS, CHANNEL_KINDS)))
def test_subscribe_and_unsubscribe_converge_for_everyone(
    db: Database, realm: SampleRealm, viewpoint: str, kind: str
) -> None:
    """Subscribe `viewpoint` to a channel, then unsubscribe: every user's state converges."""
    user_id, stream_id = realm.users[viewpoint], realm.streams[kind]
    already = viewpoint in ("member", "guest")
    if already:
        verify_action(
            db,
            realm.realm_id,
            lambda s: bulk_remove_subscriptions(s, realm.realm_id, [user_id], [stream_id]),
        )
    added = verify_action(
        db,
        realm.realm_id,
        lambda s: bulk_add_subscriptions(s, realm.realm_id, [user_id], [stream_id]),
    )
    assert added.result.changed == [(user_id, stream_id)]
    own = added.received_by(user_id)
    assert [e["op"] for e in own if e["type"] == "subscription"] == ["add"]
    for event in added.events:
        if event.event["op"] == "peer_add":
            assert user_id not in event.user_ids, "a user never gets peer events about itself"
    removed = verify_action(
        db,
        realm.realm_id,
        lambda s: bulk_remove_subscriptions(s, realm.realm_id, [user_id], [stream_id]),
    )
    assert removed.result.changed == [(user_id, stream_id)]
    assert [e["op"] for e in removed.received_by(user_id) if e["type"] == "subscription"] == [
        "remove"
    ]


def test_private_channel_peer_events_reach_only_subscribers_and_admins(
    db: Database, realm: SampleRealm
) -> None:
    private = realm.streams["private"]
    verified = verify_action(
        db,
        realm.realm_id,
        lambda s: bulk_add_subscriptions(s, realm.realm_id, [realm.users["loner"]], [private]),
        num_events=3,  # stream create for the loner, its add, one peer_add
    )
    peer = [e for e in verified.events if e.event["op"] == "peer_add"]
    assert len(peer) == 1
    assert set(peer[0].user_ids) == {realm.users[n] for n in ("owner", "admin", "member", "guest")}


def test_bulk_subscribe_groups_peer_events_by_recipients(db: Database, realm: SampleRealm) -> None:
    with db.write() as session:
        names = [do_create_stream(session, realm.realm_id, f"bulk {i}").id for i in range(5)]
    verified = verify_action(
        db,
        realm.realm_id,
        lambda s: bulk_add_subscriptions(
            s, realm.realm_id, [realm.users["loner"], realm.users["admin"]], names
        ),
    )
    peer = [e.event for e in verified.events if e.event["op"] == "peer_add"]
    # Five public channels with the same audience: one grouped event.
    assert peer == [
        {
            "type": "subscription",
            "op": "peer_add",
            "stream_ids": sorted(names),
            "user_ids": sorted([realm.users["loner"], realm.users["admin"]]),
        }
    ]


def test_bulk_unsubscribe_tells_removed_users_about_each_other(
    db: Database, realm: SampleRealm
) -> None:
    public = realm.streams["public"]
    with db.write() as session:
        bulk_add_subscriptions(session, realm.realm_id, [realm.users["admin"]], [public])
    verified = verify_action(
        db,
        realm.realm_id,
        lambda s: bulk_remove_subscriptions(
            s, realm.realm_id, [realm.users["admin"], realm.users["member"]], [public]
        ),
    )
    admin_peers = [
        e for e in verified.received_by(realm.users["admin"]) if e["op"] == "peer_remove"
    ]
    assert admin_peers == [
        {
            "type": "subscription",
            "op": "peer_remove",
            "stream_ids": [public],
            "user_ids": [realm.users["member"]],
        }
    ]


def _bulk_counts(db: Database, realm: SampleRealm, n_users: int, n_streams: int) -> tuple[int, int]:
    with db.write() as session:
        user_ids = [
            do_create_user(session, realm.realm_id, f"u{n_users}-{i}@bulk.example.com").id
            for i in range(n_users)
        ]
        stream_ids = [
            do_create_stream(session, realm.realm_id, f"s{n_streams}-{i}").id
            for i in range(n_streams)
        ]
    add = verify_action(
        db,
        realm.realm_id,
        lambda s: bulk_add_subscriptions(s, realm.realm_id, user_ids, stream_ids),
    )
    remove = verify_action(
        db,
        realm.realm_id,
        lambda s: bulk_remove_subscriptions(s, realm.realm_id, user_ids, stream_ids),
    )
    assert len(add.result.changed) == n_users * n_streams
    return add.statements, remove.statements


def test_bulk_subscriptions_run_a_constant_number_of_statements(
    db: Database, realm: SampleRealm
) -> None:
    small = _bulk_counts(db, realm, 2, 2)
    large = _bulk_counts(db, realm, 20, 30)
    assert small == large, f"statement counts grow with size: {small} vs {large}"
    assert large[0] <= 12 and large[1] <= 12


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s, r: do_create_user(s, r.realm_id, "not-an-email"), InvalidInput),
        (lambda s, r: do_create_user(s, r.realm_id, "OWNER@zulip.example.com"), AlreadyExists),
        (lambda s, r: do_create_user(s, r.realm_id, "x@y.example.com", "n" * 101), InvalidInput),
        (lambda s, r: do_create_stream(s, r.realm_id, "PUBLIC"), AlreadyExists),
        (lambda s, r: do_create_stream(s, r.realm_id, "c" * 61), InvalidInput),
        (lambda s, r: do_create_stream(s, r.realm_id, "   "), InvalidInput),
        (
            lambda s, r: do_create_stream(s, r.realm_id, "x", invite_only=True, is_web_public=True),
            InvalidInput,
        ),
        (lambda s, r: bulk_add_subscriptions(s, r.realm_id, [r.users["owner"]], [99999]), NotFound),
        (
            lambda s, r: bulk_remove_subscriptions(s, r.realm_id, [99999], [r.streams["public"]]),
            NotFound,
        ),
        (lambda s, r: do_create_realm(s, "Bad Subdomain!"), InvalidInput),
        (lambda s, r: do_create_realm(s, "zulip"), AlreadyExists),
    ],
)
def test_refused_actions_change_nothing(
    db: Database, realm: SampleRealm, call: object, error: type[ActionError]
) -> None:
    def counts() -> tuple[int, ...]:
        with db.snapshot() as session:
            return (
                outbox_count(session, realm.realm_id),
                session.scalar(select(func.count()).select_from(UserProfile)) or 0,
                session.scalar(select(func.count()).select_from(Stream)) or 0,
                session.scalar(select(func.count()).select_from(Subscription)) or 0,
            )

    before = counts()
    with pytest.raises(error):
        with db.write() as session:
            call(session, realm)  # type: ignore[operator]
    assert counts() == before
