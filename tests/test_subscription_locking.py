"""Lock before read (the outbox rule) in subscription requests and channel creation.

Every action takes its realm's writer lock before it reads anything, then reads what it
checks. So an acting user deactivated after the server authenticated them (the
credentials are checked before the action's transaction, and may come from a cache) is
seen, and the request gets a typed refusal, USER_DEACTIVATED, having written nothing:
never a failed `assert` answered as a 500, and never a write on a stale read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from actions.errors import ActorDeactivated
from actions.streams import do_create_stream, do_create_streams
from actions.subscriptions import (
    bulk_add_subscriptions,
    bulk_remove_subscriptions,
    check_add_subscriptions,
    check_remove_subscriptions,
)
from actions.users import do_deactivate_user
from models.database import Database
from models.outbox import read_events
from models.tables import Realm, Stream, Subscription
from server.api.request import ApiHandler
from server.engine.authentication import AuthenticatedUser
from server.ops.cli.main import build_parser
from tests.helpers.inprocess_api import inprocess_api
from tests.helpers.lock_race import request_behind_the_lock
from tests.helpers.realms import SampleRealm
from tests.helpers.statements import count_statements, is_realm_lock

# How long a test waits for the other thread before failing (a bound, not a sleep).
THREAD_TIMEOUT_SECS = 30.0

Action = Callable[[Session, SampleRealm], object]

ACTIONS: dict[str, Action] = {
    "check_add_subscriptions": lambda s, r: check_add_subscriptions(
        s, r.realm_id, r.users["admin"], ["public", "Brand new"], [r.emails["loner"]]
    ),
    "check_remove_subscriptions": lambda s, r: check_remove_subscriptions(
        s, r.realm_id, r.users["admin"], ["public"], [r.users["member"]]
    ),
    "bulk_add_subscriptions": lambda s, r: bulk_add_subscriptions(
        s, r.realm_id, [r.users["loner"]], [r.streams["public"]]
    ),
    "bulk_remove_subscriptions": lambda s, r: bulk_remove_subscriptions(
        s, r.realm_id, [r.users["member"]], [r.streams["public"]]
    ),
    "do_create_stream": lambda s, r: do_create_stream(s, r.realm_id, "Brand new"),
    "do_create_streams": lambda s, r: do_create_streams(s, r.realm_id, ["one", "two"]),
}


@pytest.mark.parametrize("name", ACTIONS)
def test_the_first_statement_of_each_action_is_the_realm_lock(
    db: Database, realm: SampleRealm, name: str
) -> None:
    with count_statements(db.engine) as statements, db.write() as session:
        ACTIONS[name](session, realm)
    assert statements.count > 1, "the action did some work"
    assert is_realm_lock(statements.statements[0], db.is_sqlite), statements.statements[:2]


def test_the_subscribe_command_locks_the_realm_once_it_knows_it(
    db: Database, realm: SampleRealm
) -> None:
    """The CLI names the realm by subdomain: reading that is the one read before the lock."""
    args = build_parser().parse_args(["subscribe", "zulip", realm.emails["loner"], "public"])
    with count_statements(db.engine) as statements:
        args.func(args, db)
    first, second = statements.statements[:2]
    assert "FROM realm" in first and "string_id" in first, first
    assert is_realm_lock(second, db.is_sqlite), second


def _written(db: Database, realm: SampleRealm) -> tuple[int, list[str], set[tuple[int, int, bool]]]:
    """What an action could have written: the realm's event counter, its channels and
    every subscription row."""
    with db.snapshot() as session:
        seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == realm.realm_id)
        ).scalar_one()
        streams = sorted(session.scalars(select(Stream.name)))
        rows = {
            (int(u), int(s), bool(a))
            for u, s, a in session.execute(
                select(Subscription.user_profile_id, Subscription.stream_id, Subscription.active)
            )
        }
    return int(seq), streams, rows


def _only_deactivation_events(db: Database, realm: SampleRealm, after_seq: int) -> bool:
    """Whether the realm's events since `after_seq` are one deactivation's, and nothing
    else (no `stream` `create`, no `subscription` `add` or `remove`)."""
    with db.snapshot() as session:
        kinds = [
            (e.event["type"], e.event["op"])
            for e in read_events(session, realm.realm_id, after_seq)
        ]
    allowed = {("realm_user", "update"), ("subscription", "peer_remove")}
    return ("realm_user", "update") in kinds and set(kinds) <= allowed


def _deactivate(db: Database, realm: SampleRealm, who: str) -> None:
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, realm.users[who])


REQUESTS: dict[str, Callable[[Session, SampleRealm, int], object]] = {
    # The member may create channels and subscribe others, so only the deactivation
    # stands between these requests and a write.
    "subscribe": lambda s, r, actor: check_add_subscriptions(
        s, r.realm_id, actor, ["public", "Brand new"], [r.emails["loner"]]
    ),
    "unsubscribe": lambda s, r, actor: check_remove_subscriptions(
        s, r.realm_id, actor, ["public", "private"]
    ),
}


@pytest.mark.parametrize("request_name", REQUESTS)
def test_an_actor_deactivated_after_authentication_is_refused_and_nothing_is_written(
    db: Database, realm: SampleRealm, request_name: str
) -> None:
    _deactivate(db, realm, "member")
    before = _written(db, realm)
    with pytest.raises(ActorDeactivated) as refused:
        with db.write() as session:
            REQUESTS[request_name](session, realm, realm.users["member"])
    assert refused.value.code == "USER_DEACTIVATED"
    assert str(refused.value) == "Account is deactivated"
    assert _written(db, realm) == before


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("POST", {"subscriptions": [{"name": "public"}, {"name": "Brand new"}]}),
        ("DELETE", {"subscriptions": ["public", "private"]}),
    ],
)
async def test_rest_request_by_a_user_deactivated_after_authentication_gets_a_typed_refusal(
    db: Database,
    realm: SampleRealm,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    params: dict[str, Any],
) -> None:
    authenticate = ApiHandler.authenticate

    async def authenticate_then_deactivate(handler: ApiHandler) -> AuthenticatedUser:
        # The window between the credentials check and the action's transaction.
        user = await authenticate(handler)
        _deactivate(db, realm, "member")
        return user

    monkeypatch.setattr(ApiHandler, "authenticate", authenticate_then_deactivate)
    before_seq = _written(db, realm)[0]
    async with inprocess_api(db) as api:
        answer = await api.call(
            realm.emails["member"],
            realm.api_keys["member"],
            method,
            "/users/me/subscriptions",
            params,
        )
    assert answer.status == 401, answer.body
    assert answer.body == {
        "result": "error",
        "msg": "Account is deactivated",
        "code": "USER_DEACTIVATED",
    }
    _, streams, rows = _written(db, realm)
    assert "Brand new" not in streams
    member, public = realm.users["member"], realm.streams["public"]
    assert (member, public, True) in rows, "the subscription was not removed"
    assert _only_deactivation_events(db, realm, before_seq)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_deactivation_committed_while_the_request_waits_for_the_lock_is_seen(
    db: Database, realm: SampleRealm
) -> None:
    """PostgreSQL, where readers do not wait for writers: the request starts while a
    deactivation of its actor holds the realm lock uncommitted, and the deactivation
    commits once the request is about to take the lock.

    A request that read its actor before locking (the old order) read them active from
    the last committed state, and then wrote on that stale read once the lock was
    released. Reading after the lock, it sees the deactivation whether its lock
    statement reached the server before the commit (and waited) or after it.
    """
    member = realm.users["member"]
    before = _written(db, realm)
    _, result = request_behind_the_lock(
        db,
        # Takes the realm lock and holds it, uncommitted, until the request is about to lock.
        lambda session: do_deactivate_user(session, realm.realm_id, member),
        lambda session: REQUESTS["subscribe"](session, realm, member),
    )
    assert isinstance(result, ActorDeactivated), result
    _, streams, rows = _written(db, realm)
    assert streams == before[1], "no channel was created"
    assert rows == before[2], "no subscription was written"
    assert _only_deactivation_events(db, realm, before[0])
