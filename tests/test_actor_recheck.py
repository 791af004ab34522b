"""The acting user is judged as the realm lock finds them, not as authentication did.

The server authenticates a request (from its credentials cache, whose role and active
flag the routed outbox updates only after the fact) before the action's transaction
begins. A deactivation or a demotion may commit in between. Every action an
administrator (or any user) can take over HTTP must then refuse, USER_DEACTIVATED or
the role's refusal, having written nothing (security review, issue 22 item 1: a
deactivated administrator reactivated themselves with requests already in flight).

Each race is run deterministically, in the order that used to go wrong: the actor is
read active with their role, as authentication read them; the deactivation (by the
owner) or the demotion (an UPDATE: there is no role-change action) commits; then the
action runs as that actor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from actions.errors import ActionError, ActorDeactivated
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.streams import do_create_stream
from actions.subscriptions import check_add_subscriptions, check_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.database import Database
from models.outbox import outbox_count
from models.tables import Message, Realm, Role, Stream, Subscription, UserMessage, UserProfile
from server.engine.service import EventService
from tests.helpers.inprocess_api import InProcessApi, inprocess_api
from tests.helpers.lock_race import request_behind_the_lock
from tests.helpers.realms import SampleRealm

# How long a test waits for another thread before failing (a bound, not a sleep).
THREAD_TIMEOUT_SECS = 30.0
# The reported scenario: the deactivated administrator's requests already in flight.
IN_FLIGHT_REQUESTS = 20

ADMIN_REQUIRED = ("UNAUTHORIZED_PRINCIPAL", "Must be an organization administrator")
NEW_EMAIL = "new@zulip.example.com"

Run = Callable[[Session, SampleRealm, int], object]


def _deactivate_by_owner(db: Database, realm: SampleRealm, who: str) -> None:
    with db.write() as session:
        do_deactivate_user(
            session, realm.realm_id, realm.users[who], acting_user_id=realm.users["owner"]
        )


@dataclass(frozen=True)
class Action:
    """An action a user can take over HTTP, as the administrator of the sample realm.

    `demoted_to` is a role that lacks what the action needs (None: every role may), and
    `refusal` the (code, message) of the action's refusal for it. `prepare` makes the
    action possible (a deactivated user to reactivate).
    """

    run: Run
    demoted_to: Role | None
    refusal: tuple[str, str] | None = None
    prepare: Callable[[Database, SampleRealm], None] | None = None


ACTIONS: dict[str, Action] = {
    # POST /users
    "create user": Action(
        lambda s, r, actor: do_create_user(
            s, r.realm_id, NEW_EMAIL, "New", Role.MEMBER, acting_user_id=actor
        ),
        Role.MEMBER,
        ADMIN_REQUIRED,
    ),
    # DELETE /users/{id}
    "deactivate user": Action(
        lambda s, r, actor: do_deactivate_user(
            s, r.realm_id, r.users["loner"], acting_user_id=actor
        ),
        Role.MEMBER,
        ADMIN_REQUIRED,
    ),
    # POST /users/{id}/reactivate
    "reactivate user": Action(
        lambda s, r, actor: do_reactivate_user(
            s, r.realm_id, r.users["loner"], acting_user_id=actor
        ),
        Role.MEMBER,
        ADMIN_REQUIRED,
        prepare=lambda db, r: _deactivate_by_owner(db, r, "loner"),
    ),
    # POST /users/me/subscriptions with principals: guests may not subscribe others.
    "subscribe others": Action(
        lambda s, r, actor: check_add_subscriptions(
            s, r.realm_id, actor, ["public"], [r.emails["loner"]]
        ),
        Role.GUEST,
        ("UNAUTHORIZED_PRINCIPAL", "Guests cannot subscribe other users."),
    ),
    # POST /users/me/subscriptions naming a new channel: guests may not create one.
    "create channel": Action(
        lambda s, r, actor: check_add_subscriptions(s, r.realm_id, actor, ["Brand new"]),
        Role.GUEST,
        ("UNAUTHORIZED_PRINCIPAL", "Guests cannot create channels."),
    ),
    # ... with is_web_public: administrators only.
    "create web-public channel": Action(
        lambda s, r, actor: check_add_subscriptions(
            s, r.realm_id, actor, ["Brand new"], is_web_public=True
        ),
        Role.MEMBER,
        ("UNAUTHORIZED_PRINCIPAL", "Only administrators can create web-public channels."),
    ),
    # DELETE /users/me/subscriptions with principals: administrators only.
    "unsubscribe others": Action(
        lambda s, r, actor: check_remove_subscriptions(
            s, r.realm_id, actor, ["public"], [r.users["member"]]
        ),
        Role.MEMBER,
        ("UNAUTHORIZED_PRINCIPAL", "Insufficient permission to unsubscribe other users."),
    ),
    # POST /messages to a channel the administrator is not subscribed to: a guest may
    # see a web-public channel but post only to those they are subscribed to.
    "send channel message": Action(
        lambda s, r, actor: check_send_message(
            s, r.realm_id, actor, ChannelTarget("web-public"), "topic", "hello", "tests"
        ),
        Role.GUEST,
        ("BAD_REQUEST", "Not authorized to send to channel 'web-public'"),
    ),
    # POST /messages, direct: every role may.
    "send direct message": Action(
        lambda s, r, actor: check_send_message(
            s, r.realm_id, actor, DirectTarget(user_ids=(r.users["member"],)), None, "hi", "tests"
        ),
        None,
    ),
    # Not an HTTP action today, but it takes an acting user like every `do_*` action.
    "create channel (do_create_stream)": Action(
        lambda s, r, actor: do_create_stream(s, r.realm_id, "Brand new", acting_user_id=actor),
        Role.GUEST,
        ("UNAUTHORIZED_PRINCIPAL", "Guests cannot create channels."),
    ),
}
DEMOTABLE = [name for name, action in ACTIONS.items() if action.demoted_to is not None]


def _written(db: Database, realm: SampleRealm) -> dict[str, object]:
    """Everything an action could have written: the realm's event counter and outbox,
    its users (with their role and active flag), channels, subscriptions and messages."""
    with db.snapshot() as session:
        return {
            "seq": session.scalar(select(Realm.last_event_seq).where(Realm.id == realm.realm_id)),
            "outbox": outbox_count(session, realm.realm_id),
            "users": sorted(
                tuple(row)
                for row in session.execute(
                    select(
                        UserProfile.id, UserProfile.email, UserProfile.role, UserProfile.is_active
                    )
                )
            ),
            "streams": sorted(session.scalars(select(Stream.name))),
            "subscriptions": sorted(
                tuple(row)
                for row in session.execute(
                    select(
                        Subscription.user_profile_id,
                        Subscription.stream_id,
                        Subscription.active,
                        Subscription.is_user_active,
                    )
                )
            ),
            "messages": session.scalar(select(func.count()).select_from(Message)),
            "user_messages": session.scalar(select(func.count()).select_from(UserMessage)),
        }


def _authenticated(db: Database, realm: SampleRealm, who: str) -> tuple[bool, int]:
    """The actor's active flag and role as authentication reads them (the server's
    credentials read is the same one row, before the action's transaction)."""
    with db.snapshot() as session:
        row = session.execute(
            select(UserProfile.is_active, UserProfile.role).where(
                UserProfile.id == realm.users[who]
            )
        ).one()
    return bool(row.is_active), int(row.role)


def _set_role(db: Database, realm: SampleRealm, who: str, role: Role) -> None:
    """A change of role committed behind the actions (there is no role-change action)."""
    with db.write() as session:
        session.execute(
            update(UserProfile).where(UserProfile.id == realm.users[who]).values(role=int(role))
        )


@pytest.mark.parametrize("name", ACTIONS)
def test_each_action_succeeds_for_the_active_administrator(
    db: Database, realm: SampleRealm, name: str
) -> None:
    """The control: every race below is refused because of the race, not the setup."""
    action = ACTIONS[name]
    if action.prepare is not None:
        action.prepare(db, realm)
    before = _written(db, realm)
    with db.write() as session:
        action.run(session, realm, realm.users["admin"])
    after = _written(db, realm)
    assert after["outbox"] != before["outbox"], "the action wrote its events"


@pytest.mark.parametrize("name", ACTIONS)
def test_an_actor_deactivated_after_authentication_is_refused_and_nothing_is_written(
    db: Database, realm: SampleRealm, name: str
) -> None:
    action = ACTIONS[name]
    if action.prepare is not None:
        action.prepare(db, realm)
    assert _authenticated(db, realm, "admin") == (True, Role.ADMINISTRATOR)
    _deactivate_by_owner(db, realm, "admin")
    before = _written(db, realm)
    with pytest.raises(ActorDeactivated) as refused, db.write() as session:
        action.run(session, realm, realm.users["admin"])
    assert (refused.value.code, str(refused.value)) == (
        "USER_DEACTIVATED",
        "Account is deactivated",
    )
    assert _written(db, realm) == before


@pytest.mark.parametrize("name", DEMOTABLE)
def test_an_actor_demoted_after_authentication_is_refused_and_nothing_is_written(
    db: Database, realm: SampleRealm, name: str
) -> None:
    action = ACTIONS[name]
    assert action.demoted_to is not None and action.refusal is not None
    if action.prepare is not None:
        action.prepare(db, realm)
    assert _authenticated(db, realm, "admin") == (True, Role.ADMINISTRATOR)
    _set_role(db, realm, "admin", action.demoted_to)
    before = _written(db, realm)
    with pytest.raises(ActionError) as refused, db.write() as session:
        action.run(session, realm, realm.users["admin"])
    assert not isinstance(refused.value, ActorDeactivated)
    assert (refused.value.code, str(refused.value)) == action.refusal
    assert _written(db, realm) == before


def test_a_deactivated_administrator_cannot_reactivate_themselves(
    db: Database, realm: SampleRealm
) -> None:
    """The reported scenario at the action: the owner's deactivation of admin M commits
    while M's request to reactivate M is in flight."""
    admin = realm.users["admin"]
    assert _authenticated(db, realm, "admin") == (True, Role.ADMINISTRATOR)
    _deactivate_by_owner(db, realm, "admin")
    before = _written(db, realm)
    with pytest.raises(ActorDeactivated), db.write() as session:
        do_reactivate_user(session, realm.realm_id, admin, acting_user_id=admin)
    assert _written(db, realm) == before
    assert _authenticated(db, realm, "admin")[0] is False


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_deactivation_committed_while_the_reactivation_waits_for_the_lock_is_seen(
    db: Database, realm: SampleRealm
) -> None:
    """PostgreSQL, where readers do not wait for writers: M's request to reactivate M
    starts while the owner's deactivation of M holds the realm lock, uncommitted, and
    the deactivation commits once the request is about to take the lock. Whether the
    request's lock statement reaches the server before the commit (and waits) or after,
    it reads M after the commit, deactivated."""
    admin = realm.users["admin"]
    assert _authenticated(db, realm, "admin") == (True, Role.ADMINISTRATOR)

    def deactivate(session: Session) -> int:
        do_deactivate_user(session, realm.realm_id, admin, acting_user_id=realm.users["owner"])
        return outbox_count(session, realm.realm_id)

    before_commit_outbox, result = request_behind_the_lock(
        db,
        deactivate,
        lambda session: do_reactivate_user(session, realm.realm_id, admin, acting_user_id=admin),
    )
    assert isinstance(result, ActorDeactivated), result
    assert _authenticated(db, realm, "admin")[0] is False
    assert _written(db, realm)["outbox"] == before_commit_outbox, "only the deactivation's events"


# -- over HTTP, with the credentials cache still holding the actor as they were ------------


async def _cached_as(
    service: EventService, api: InProcessApi, realm: SampleRealm, who: str
) -> tuple[int, int]:
    """Authenticate `who` once over HTTP, so their credentials are cached; return the
    cached (id, role), which raises if the cache holds them deactivated."""
    email, key = realm.emails[who], realm.api_keys[who]
    assert (await api.call(email, key, "GET", "/users/me", {})).ok
    cached = service.authenticate_cached(email, key)
    assert cached is not None, "the credentials are cached"
    return cached.id, cached.role


def _in_db(db: Database, realm: SampleRealm) -> tuple[dict[str, bool], int]:
    """Every user's active flag, by email, and the realm's outbox size."""
    with db.snapshot() as session:
        active = {
            str(email): bool(flag)
            for email, flag in session.execute(select(UserProfile.email, UserProfile.is_active))
        }
        return active, outbox_count(session, realm.realm_id)


async def test_in_flight_reactivations_of_a_deactivated_administrator_are_refused_over_http(
    db: Database, realm: SampleRealm
) -> None:
    """The reported scenario: the owner deactivates admin M, and M's requests to
    reactivate M arrive with M still cached as an active administrator."""
    admin = realm.users["admin"]
    email, key = realm.emails["admin"], realm.api_keys["admin"]
    async with inprocess_api(db) as api:
        service = api.service
        assert await _cached_as(service, api, realm, "admin") == (admin, Role.ADMINISTRATOR)
        _deactivate_by_owner(db, realm, "admin")
        # Authentication still lets M through as an active administrator (it would raise
        # for a deactivated one): only the action can see the deactivation.
        cached = service.authenticate_cached(email, key)
        assert cached is not None and cached.role == Role.ADMINISTRATOR
        before = _in_db(db, realm)
        answers = await asyncio.gather(
            *(
                api.call(email, key, "POST", f"/users/{admin}/reactivate", {})
                for _ in range(IN_FLIGHT_REQUESTS)
            )
        )
    for answer in answers:
        # 401, as Zulip answers a deactivated account, although authentication passed.
        assert answer.status == 401, answer
        assert answer.body == {
            "result": "error",
            "msg": "Account is deactivated",
            "code": "USER_DEACTIVATED",
        }
    assert _in_db(db, realm) == before, "M stays deactivated, and no event was written"
    assert before[0][email] is False


HTTP_ADMIN_REQUESTS: dict[str, tuple[str, Callable[[SampleRealm], str], dict[str, Any]]] = {
    "create user": (
        "POST",
        lambda r: "/users",
        {"email": NEW_EMAIL, "password": "p", "full_name": "New"},
    ),
    "deactivate user": ("DELETE", lambda r: f"/users/{r.users['loner']}", {}),
    "reactivate user": ("POST", lambda r: f"/users/{r.users['outsider_guest']}/reactivate", {}),
}


@pytest.mark.parametrize("name", HTTP_ADMIN_REQUESTS)
async def test_an_administrator_demoted_after_authentication_is_refused_over_http(
    db: Database, realm: SampleRealm, name: str
) -> None:
    """`require_admin()` passes on the cached role; the action reads the current one."""
    method, path, params = HTTP_ADMIN_REQUESTS[name]
    _deactivate_by_owner(db, realm, "outsider_guest")  # someone to reactivate
    async with inprocess_api(db) as api:
        service = api.service
        assert await _cached_as(service, api, realm, "admin") == (
            realm.users["admin"],
            Role.ADMINISTRATOR,
        )
        _set_role(db, realm, "admin", Role.MEMBER)
        cached = service.authenticate_cached(realm.emails["admin"], realm.api_keys["admin"])
        assert cached is not None and cached.role == Role.ADMINISTRATOR, "still cached as admin"
        before = _in_db(db, realm)
        answer = await api.call(
            realm.emails["admin"], realm.api_keys["admin"], method, path(realm), params
        )
    assert (answer.status, answer.body) == (
        400,
        {"result": "error", "msg": ADMIN_REQUIRED[1], "code": ADMIN_REQUIRED[0]},
    )
    assert _in_db(db, realm) == before, "no user created or changed, no event written"
