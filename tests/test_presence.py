"""Presence: Zulip's write rule, the ping's cost (statements, locks), the `presence` event
and who gets it, the realm-size limit, `last_update_id` deltas (with concurrent pings on
PostgreSQL), the modern and legacy shapes, deactivated users and bots, and the three
endpoints over HTTP against a real `eventq serve`, with the `zulip` client too.

Pings are given their time (`now`), so no test waits for one: a minute passes by adding
sixty seconds. The times start at the wall clock's, since reads look back 14 days from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import zulip
from sqlalchemy import insert, select, update

from actions.errors import ActorDeactivated, InvalidInput
from actions.presence import (
    PresenceChange,
    PresenceTimes,
    PresenceUpdate,
    _write,
    decide_presence,
    do_update_user_presence,
)
from actions.realms import do_create_realm
from actions.users import do_create_user, do_deactivate_user, generate_api_key
from clients.state import StateCache
from models.database import Database
from models.outbox import outbox_count, read_events
from models.presence import (
    CAME_ONLINE_AFTER_SECS,
    OFFLINE_THRESHOLD_SECS,
    PRESENCE_UPDATE_MIN_FREQ_SECONDS,
    SECONDS_PER_DAY,
    USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS,
    RealmPresence,
    legacy_entry,
    realm_presence,
    realm_presence_legacy,
    unix_time,
    user_presence,
)
from models.state import fetch_initial_state
from models.tables import Realm, Role, UserPresence, UserProfile
from tests.helpers import zulip_schema
from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer
from tests.helpers.statements import count_statements, is_realm_lock
from tests.helpers.verify import verify_action

MINUTE = 60.0


@pytest.fixture
def base() -> float:
    """The first ping's time: now, to the second (Zulip's timestamps are whole seconds)."""
    return float(int(time.time()))


def ping(db: Database, realm_id: int, user_id: int, status: str, now: float) -> PresenceUpdate:
    with db.write() as session:
        return do_update_user_presence(session, realm_id, user_id, status, now=now)


def stored(db: Database, user_id: int) -> UserPresence | None:
    with db.snapshot() as session:
        return session.get(UserPresence, user_id)


def last_seq(db: Database, realm_id: int) -> int:
    with db.snapshot() as session:
        return int(session.scalar(select(Realm.last_event_seq).where(Realm.id == realm_id)) or 0)


def writes(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]


def realm_of(db: Database, name: str, humans: int, bots: int = 0) -> tuple[int, list[int]]:
    """A realm of `humans` active users then `bots` active bots, inserted in bulk (no
    events): its id and the users' ids in order."""
    with db.write() as session:
        realm_id = do_create_realm(session, name, name.title()).id
    rows = [
        {
            "realm_id": realm_id,
            "email": f"user{index}@{name}.example.com",
            "full_name": f"User {index}",
            "role": int(Role.OWNER if index == 0 else Role.MEMBER),
            "api_key": generate_api_key(),
            "is_bot": index >= humans,
        }
        for index in range(humans + bots)
    ]
    with db.write() as session:
        session.execute(insert(UserProfile), rows)
    with db.snapshot() as session:
        ids = session.scalars(
            select(UserProfile.id).where(UserProfile.realm_id == realm_id).order_by(UserProfile.id)
        ).all()
    return realm_id, [int(i) for i in ids]


# -- the rule ---------------------------------------------------------------------------------


def test_the_rule_writes_only_what_a_client_could_see_change() -> None:
    t = 1_000_000.0
    fresh = PresenceTimes(last_active=t, last_connected=t)
    # A user's first ping: written, and announced whatever its status.
    assert decide_presence(None, True, t) == PresenceChange(fresh, announce=True)
    assert decide_presence(None, False, t) == PresenceChange(PresenceTimes(None, t), True)
    # Within PRESENCE_UPDATE_MIN_FREQ_SECONDS nothing is written, active or idle.
    within = t + PRESENCE_UPDATE_MIN_FREQ_SECONDS
    assert decide_presence(fresh, True, within) is None
    assert decide_presence(fresh, False, within) is None
    # A stored time newer than the ping's (another server's clock) stays.
    assert decide_presence(fresh, True, t - 100) is None
    # Past it: an idle ping moves the connected time only; an active one both.
    later = t + PRESENCE_UPDATE_MIN_FREQ_SECONDS + 1
    assert decide_presence(fresh, False, later) == PresenceChange(PresenceTimes(t, later), False)
    assert decide_presence(fresh, True, later) == PresenceChange(PresenceTimes(later, later), False)
    # An active ping after CAME_ONLINE_AFTER_SECS without one: came online.
    back = t + CAME_ONLINE_AFTER_SECS + 1
    assert decide_presence(fresh, True, back) == PresenceChange(PresenceTimes(back, back), True)
    # Idle all along (connected, never active), then active: idle to active.
    idle = PresenceTimes(None, t)
    # (the connected time follows, so it is never older than the active one)
    assert decide_presence(idle, True, t + 1) == PresenceChange(PresenceTimes(t + 1, t + 1), True)
    # Idle for minutes but connected (connected time fresh), then active: announced.
    dozing = PresenceTimes(last_active=t, last_connected=t + 3 * MINUTE)
    assert decide_presence(dozing, True, t + 3 * MINUTE + 1) == PresenceChange(
        PresenceTimes(t + 3 * MINUTE + 1, t + 3 * MINUTE + 1), True
    )
    # Zulip's derivation of "came online" from its ping interval and offline threshold.
    assert CAME_ONLINE_AFTER_SECS == OFFLINE_THRESHOLD_SECS - 60 - 10 == 70


# -- the ping: statements, locks, events ------------------------------------------------------


def test_first_ping_is_announced_to_every_active_user(
    db: Database, realm: SampleRealm, base: float
) -> None:
    member = realm.users["member"]
    verified = verify_action(
        db,
        realm.realm_id,
        lambda s: do_update_user_presence(s, realm.realm_id, member, "active", now=base),
        num_events=1,
        with_presence=True,
    )
    assert verified.result == PresenceUpdate(written=True, event_sent=True)
    (stored_event,) = verified.events
    assert set(stored_event.user_ids) == set(realm.users.values())  # themselves too
    assert stored_event.event == {
        "type": "presence",
        "user_id": member,
        "email": realm.emails["member"],
        "server_timestamp": base,
        "presence": {
            "website": {
                "client": "website",
                "status": "active",
                "timestamp": int(base),
                "pushable": False,
            }
        },
    }


def test_events_only_when_the_state_changes(db: Database, realm: SampleRealm, base: float) -> None:
    """Came online after being offline, and idle to active: a `presence` event each
    (through `verify_action`); every other ping writes no event."""
    realm_id, loner = realm.realm_id, realm.users["loner"]

    def quiet(status: str, at: float, written: bool) -> None:
        before = last_seq(db, realm_id)
        assert ping(db, realm_id, loner, status, at) == PresenceUpdate(written, False)
        assert last_seq(db, realm_id) == before, "no event"

    def announced(status: str, at: float) -> None:
        verified = verify_action(
            db,
            realm_id,
            lambda s: do_update_user_presence(s, realm_id, loner, status, now=at),
            num_events=1,
            with_presence=True,
        )
        assert verified.result == PresenceUpdate(True, True)

    announced("active", base)  # first presence
    quiet("active", base + 30, written=False)  # within a minute: nothing
    quiet("active", base + MINUTE, written=True)  # still online: times move, no event
    quiet("idle", base + 2 * MINUTE, written=True)
    quiet("idle", base + 3 * MINUTE, written=True)
    announced("active", base + 3 * MINUTE + 30)  # idle for 2.5 minutes, then active
    quiet("active", base + 4 * MINUTE + 30, written=True)
    # Offline (no ping) for ten minutes, then back, idle: times move, nothing announced;
    # then active: came online.
    quiet("idle", base + 15 * MINUTE, written=True)
    announced("active", base + 15 * MINUTE + 10)


def test_a_modern_client_applies_the_event_too(
    db: Database, realm: SampleRealm, base: float
) -> None:
    """The event is always the legacy entry; a client registered with `slim_presence`
    moves the user's timestamps forward from it and ends where a fresh read is."""
    realm_id, owner, admin = realm.realm_id, realm.users["owner"], realm.users["admin"]

    def slim_state() -> dict[str, Any]:
        with db.snapshot() as session:
            viewer = session.get(UserProfile, owner)
            assert viewer is not None
            return fetch_initial_state(session, viewer, {"presence"}, False, slim_presence=True)

    def applied(status: str, at: float) -> StateCache:
        cache = StateCache.from_register(slim_state(), owner, slim_presence=True)
        seq = last_seq(db, realm_id)
        assert ping(db, realm_id, admin, status, at).event_sent
        with db.snapshot() as session:
            cache.apply_all(e.event for e in read_events(session, realm_id, seq))
        return cache

    # A first report, idle, well after joining: the event says `idle` and when, not
    # that the user was never active (a fresh read shows the join time for that), so
    # only the idle time is known.
    first = applied("idle", base + 10 * MINUTE)
    assert first.presences is not None
    assert first.presences[str(admin)] == {"idle_timestamp": int(base + 10 * MINUTE)}
    # Came online: both times are the event's, exactly as a fresh read has them.
    back = applied("active", base + 20 * MINUTE)
    assert back.to_register_shape()["presences"] == slim_state()["presences"]
    assert back.presence_meta["server_timestamp"] == base + 20 * MINUTE


def test_a_ping_that_changes_nothing_runs_one_read(
    db: Database, realm: SampleRealm, base: float
) -> None:
    ping(db, realm.realm_id, realm.users["member"], "active", base)
    with count_statements(db.engine) as log:
        update = ping(db, realm.realm_id, realm.users["member"], "active", base + 20)
    assert update == PresenceUpdate(written=False, event_sent=False)
    assert len(log.statements) == 1, log.statements
    assert writes(log.statements) == [], log.statements
    assert not any(is_realm_lock(s, db.is_sqlite) for s in log.statements)
    assert not any(is_realm_lock(s, db.is_sqlite, shared=True) for s in log.statements)


def test_a_write_is_one_statement_and_takes_no_lock(
    db: Database, realm: SampleRealm, base: float
) -> None:
    member = realm.users["member"]
    ping(db, realm.realm_id, member, "active", base)
    with count_statements(db.engine) as log:
        update = ping(db, realm.realm_id, member, "active", base + MINUTE)
    assert update == PresenceUpdate(written=True, event_sent=False)
    (write,) = writes(log.statements)
    assert "ON CONFLICT" in write and "RETURNING" in write, write
    assert len(log.statements) == 2, log.statements  # the read, the upsert
    assert not any(
        is_realm_lock(s, db.is_sqlite) or is_realm_lock(s, db.is_sqlite, shared=True)
        for s in log.statements
    )
    row = stored(db, member)
    assert row is not None
    assert (row.last_active_time, row.last_connected_time) == (base + MINUTE, base + MINUTE)


def test_an_announcing_ping_shares_the_realm_lock_and_appends_last(
    db: Database, realm: SampleRealm, base: float
) -> None:
    with count_statements(db.engine) as log:
        update = ping(db, realm.realm_id, realm.users["guest"], "idle", base)
    assert update == PresenceUpdate(written=True, event_sent=True)
    flat = [" ".join(s.split()) for s in log.statements]
    locks = [i for i, s in enumerate(log.statements) if is_realm_lock(s, db.is_sqlite, shared=True)]
    assert len(locks) == 1, flat
    if not db.is_sqlite:
        assert not any(is_realm_lock(s, False) for s in log.statements), "never exclusive"
    upsert = next(i for i, s in enumerate(flat) if s.startswith("INSERT INTO user_presence"))
    assert upsert < locks[0], "the row is written before, and without, the lock"
    # `append_events` (one statement on PostgreSQL, three on SQLite) comes last.
    append = next(i for i, s in enumerate(flat) if "UPDATE realm SET last_event_seq" in s)
    assert locks[0] < append
    assert all("outbox" in s or "realm" in s for s in flat[append:]), flat[append:]
    assert "outbox_recipient" in flat[-1] or "pg_notify" in flat[-1], flat[-1]


@pytest.mark.parametrize(("humans", "bots", "announced"), [(99, 1, True), (100, 1, False)])
def test_no_event_in_a_realm_over_the_limit(
    db: Database, base: float, humans: int, bots: int, announced: bool
) -> None:
    """Zulip counts every active user, bots too: 100 get events, 101 do not, and a ping
    in the larger realm takes no lock at all."""
    assert USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS == 100
    realm_id, ids = realm_of(db, "sized", humans, bots)
    with count_statements(db.engine) as log:
        update = ping(db, realm_id, ids[1], "active", base)
    assert update == PresenceUpdate(written=True, event_sent=announced)
    locked = any(is_realm_lock(s, db.is_sqlite, shared=True) for s in log.statements)
    assert locked is announced
    with db.snapshot() as session:
        events = read_events(session, realm_id, 0)
        assert outbox_count(session, realm_id) == (1 if announced else 0)
    if announced:
        assert set(events[0].user_ids) == set(ids)  # the bot too
    # Coming back online later: the same answer.
    ping(db, realm_id, ids[1], "active", base + 10 * MINUTE)
    with db.snapshot() as session:
        assert outbox_count(session, realm_id) == (2 if announced else 0)


def test_a_deactivated_user_gets_no_event_and_the_write_rolls_back(
    db: Database, realm: SampleRealm, base: float
) -> None:
    """Deactivated after authentication: the ping is refused as a deactivated key is,
    with nothing written; and no later event goes to them."""
    loner, member = realm.users["loner"], realm.users["member"]
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, loner)
    with pytest.raises(ActorDeactivated):
        ping(db, realm.realm_id, loner, "active", base)
    assert stored(db, loner) is None
    verified = verify_action(
        db,
        realm.realm_id,
        lambda s: do_update_user_presence(s, realm.realm_id, member, "active", now=base),
        num_events=1,
        with_presence=True,
    )
    assert loner not in verified.events[0].user_ids


def test_a_user_deactivated_with_presence_leaves_every_read(
    db: Database, realm: SampleRealm, base: float
) -> None:
    loner = realm.users["loner"]
    ping(db, realm.realm_id, loner, "active", base)
    with db.snapshot() as session:
        assert (
            realm.emails["loner"]
            in realm_presence_legacy(session, realm.realm_id, now=base)["presences"]
        )
    # The deactivation's own events carry the change; a client drops the entry.
    verify_action(
        db,
        realm.realm_id,
        lambda s: do_deactivate_user(s, realm.realm_id, loner),
        with_presence=True,
    )
    with db.snapshot() as session:
        assert realm_presence_legacy(session, realm.realm_id, now=base)["presences"] == {}
        answer = realm_presence(session, realm.realm_id, slim=True, now=base, last_update_id=-1)
        assert answer["presences"] == {}
        with pytest.raises(InvalidInput, match="No such user"):
            user_presence(session, realm.realm_id, str(loner), now=base)


def test_bots_may_not_ping(db: Database, realm: SampleRealm, base: float) -> None:
    with db.write() as session:
        bot = do_create_user(session, realm.realm_id, "bot@zulip.example.com", is_bot=True).id
    with pytest.raises(InvalidInput, match="does not accept bot requests"):
        ping(db, realm.realm_id, bot, "active", base)
    with pytest.raises(InvalidInput, match="Invalid status"):
        ping(db, realm.realm_id, realm.users["member"], "away", base)
    with db.snapshot() as session, pytest.raises(InvalidInput, match="not supported for bot"):
        user_presence(session, realm.realm_id, "bot@zulip.example.com", now=base)


def test_a_write_lost_to_another_ping_writes_nothing(
    db: Database, realm: SampleRealm, base: float
) -> None:
    """The upsert is a compare-and-set on the update id read: a row changed meanwhile
    (or created meanwhile) is left alone, and the ping decides again."""
    member = realm.users["member"]
    ping(db, realm.realm_id, member, "active", base)
    row = stored(db, member)
    assert row is not None
    later = PresenceTimes(base + MINUTE, base + MINUTE)
    with db.write() as session:
        assert not _write(session, realm.realm_id, member, row.last_update_id + 1000, later)
        assert not _write(session, realm.realm_id, member, None, later)
    again = stored(db, member)
    assert again is not None and again.last_update_id == row.last_update_id
    with db.write() as session:
        assert _write(session, realm.realm_id, member, row.last_update_id, later)
    moved = stored(db, member)
    assert moved is not None and moved.last_update_id > row.last_update_id
    assert moved.last_active_time == base + MINUTE


# -- reads: shapes and deltas ---------------------------------------------------------------------

# A bound on `settle`, not a wait: write transactions of other tests on the same
# PostgreSQL last milliseconds.
SETTLE_TIMEOUT_SECS = 30.0


def settle(poll: Callable[[int], dict[str, Any]], cursor: int, had: set[str]) -> int:
    """Poll from `cursor` until a poll hands out nothing; the id it ends at.

    On PostgreSQL a poll hands out no id above the oldest write transaction still
    running anywhere in the cluster (`models.presence`), so while one is (another test's,
    say) the next poll may hand out rows again: only ones the client had (`had`), and the
    id never goes back. On SQLite the first poll hands out nothing.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECS
    while True:
        answer = poll(cursor)
        assert set(answer["presences"]) <= had, answer
        assert answer["presence_last_update_id"] >= cursor, answer
        if not answer["presences"]:
            assert answer["presence_last_update_id"] == cursor, answer
            return cursor
        cursor = answer["presence_last_update_id"]
        assert time.monotonic() < deadline, f"presence ids did not settle: {answer}"


def test_modern_and_legacy_shapes(db: Database, realm: SampleRealm, base: float) -> None:
    realm_id = realm.realm_id
    owner, member, guest = realm.users["owner"], realm.users["member"], realm.users["guest"]
    ping(db, realm_id, owner, "active", base)  # active now
    ping(db, realm_id, member, "active", base - 5 * MINUTE)  # active, then idle
    ping(db, realm_id, member, "idle", base)
    ping(db, realm_id, guest, "idle", base)  # never active
    with db.snapshot() as session:
        joined = session.get(UserProfile, guest)
        assert joined is not None
        legacy = realm_presence(session, realm_id, slim=False, now=base)
        modern = realm_presence(session, realm_id, slim=True, now=base)
    joined_at = int(unix_time(joined.date_joined))
    website_active = {"client": "website", "status": "active", "timestamp": int(base)}
    assert legacy["presences"][realm.emails["owner"]] == {
        "aggregated": website_active,
        "website": {**website_active, "pushable": False},
    }
    website_idle = {"client": "website", "status": "idle", "timestamp": int(base)}
    assert legacy["presences"][realm.emails["member"]] == {
        "aggregated": website_idle,
        "website": {**website_idle, "pushable": False},
    }
    assert set(legacy["presences"]) == {realm.emails[n] for n in ("owner", "member", "guest")}
    assert modern["presences"] == {
        str(owner): {"active_timestamp": int(base), "idle_timestamp": int(base)},
        str(member): {"active_timestamp": int(base - 5 * MINUTE), "idle_timestamp": int(base)},
        # Never active: the join time stands in, as in Zulip.
        str(guest): {"active_timestamp": joined_at, "idle_timestamp": int(base)},
    }
    for answer in (legacy, modern):
        assert answer["server_timestamp"] == base
        zulip_schema.check(
            zulip_schema.ANSWERS[("POST", "/users/me/presence")],
            {
                "result": "success",
                "msg": "",
                **answer,
            },
            "a presence answer",
        )
    assert legacy_entry(base - 71, base)["website"]["status"] == "idle"
    assert legacy_entry(base - 70, base)["website"]["status"] == "active"
    # The register state: the same, in either shape.
    with db.snapshot() as session:
        viewer = session.get(UserProfile, realm.users["loner"])
        assert viewer is not None
        state = fetch_initial_state(session, viewer, {"presence"}, False, slim_presence=True)
    assert state["presences"] == modern["presences"]
    assert set(state) == {"presences", "presence_last_update_id", "server_timestamp"}


def test_a_realms_presence_is_one_statement(db: Database, base: float) -> None:
    """However many users: one read, for the full answer and for a delta."""
    realm_id, ids = realm_of(db, "crowd", 1_000)
    with db.write() as session:
        session.execute(
            insert(UserPresence),
            [
                {
                    "user_profile_id": user_id,
                    "realm_id": realm_id,
                    "last_connected_time": base,
                    "last_active_time": base,
                    "last_update_id": index + 1,
                }
                for index, user_id in enumerate(ids)
            ],
        )
    for last_update_id, expected in ((None, 1_000), (-1, 1_000), (900, 100)):
        with count_statements(db.engine) as log, db.snapshot() as session:
            answer = realm_presence(
                session,
                realm_id,
                slim=last_update_id is not None,
                now=base,
                last_update_id=last_update_id,
            )
        assert len(answer["presences"]) == expected
        assert len(log.statements) == 1, log.statements


def test_one_users_presence(db: Database, realm: SampleRealm, base: float) -> None:
    member = realm.users["member"]
    ping(db, realm.realm_id, member, "active", base)
    with db.snapshot() as session:
        by_email = user_presence(session, realm.realm_id, realm.emails["member"].upper(), now=base)
        by_id = user_presence(session, realm.realm_id, str(member), now=base)
        stale = user_presence(
            session, realm.realm_id, str(member), now=base + OFFLINE_THRESHOLD_SECS + 1
        )
        with pytest.raises(InvalidInput, match="No presence data for"):
            user_presence(session, realm.realm_id, str(realm.users["loner"]), now=base)
        for nobody in ("nobody@zulip.example.com", "99999999999999999999", "0"):
            with pytest.raises(InvalidInput, match="No such user"):
                user_presence(session, realm.realm_id, nobody, now=base)
    entry = {"status": "active", "timestamp": int(base)}
    assert by_email == by_id == {"presence": {"aggregated": entry, "website": entry}}
    assert stale["presence"]["aggregated"]["status"] == "offline"
    assert stale["presence"]["website"]["status"] == "active"


def test_last_update_id_deltas(db: Database, realm: SampleRealm, base: float) -> None:
    realm_id = realm.realm_id
    owner, member, guest = realm.users["owner"], realm.users["member"], realm.users["guest"]

    def poll(last_update_id: int | None, **options: Any) -> dict[str, Any]:
        with db.snapshot() as session:
            return realm_presence(
                session, realm_id, slim=True, now=base, last_update_id=last_update_id, **options
            )

    assert poll(None) == {"presences": {}, "presence_last_update_id": -1, "server_timestamp": base}
    assert poll(-1)["presence_last_update_id"] == -1
    for user in (owner, member):
        ping(db, realm_id, user, "active", base)
    first = poll(-1)
    assert set(first["presences"]) == {str(owner), str(member)}
    # Nothing new: nothing, and the same id (once settled, see `settle`).
    cursor = settle(poll, first["presence_last_update_id"], {str(owner), str(member)})
    assert poll(cursor) == {
        "presences": {},
        "presence_last_update_id": cursor,
        "server_timestamp": base,
    }
    ping(db, realm_id, member, "active", base + MINUTE)  # a write
    ping(db, realm_id, owner, "active", base + 20)  # no write
    ping(db, realm_id, guest, "idle", base)  # a new row
    second = poll(cursor)
    assert set(second["presences"]) == {str(member), str(guest)}
    assert second["presences"][str(member)]["active_timestamp"] == int(base + MINUTE)
    assert second["presence_last_update_id"] >= cursor
    settle(poll, second["presence_last_update_id"], {str(member), str(guest)})
    # The history limit applies to a first fetch only; 0 asks for nothing.
    with db.write() as session:
        session.execute(
            update(UserPresence)
            .where(UserPresence.user_profile_id == owner)
            .values(last_connected_time=base - 20 * SECONDS_PER_DAY)
        )
    assert str(owner) not in poll(-1)["presences"]
    assert str(owner) in poll(-1, history_limit_days=30)["presences"]
    assert poll(-1, history_limit_days=0) == {
        "presences": {},
        "presence_last_update_id": -1,
        "server_timestamp": base,
    }
    assert poll(cursor, history_limit_days=0)["presence_last_update_id"] == cursor
    assert poll(0, history_limit_days=1)["presences"].keys() == {str(member), str(guest)}
    # The legacy shape: by email, no cursor in the realm endpoint's answer.
    with db.snapshot() as session:
        legacy = realm_presence_legacy(session, realm_id, now=base)
    assert set(legacy) == {"presences", "server_timestamp"}
    assert set(legacy["presences"]) == {realm.emails["member"], realm.emails["guest"]}


def test_concurrent_pings_are_never_missed(db: Database, realm: SampleRealm, base: float) -> None:
    """PostgreSQL: a ping still running when a poll reads holds a smaller update id than a
    later one that committed first; the poll's `presence_last_update_id` stays below the
    running one, so the next poll gets its row. (SQLite has one writer: no such race.)"""
    realm_id = realm.realm_id
    owner, member = realm.users["owner"], realm.users["member"]
    for user in (owner, member):
        ping(db, realm_id, user, "active", base)  # online: the pings below send no event
    if db.is_sqlite:
        # One writer at a time, ids in commit order: every id read is final, and the
        # cursor is simply the newest.
        with db.snapshot() as session:
            read = RealmPresence.read(session, realm_id, now=base)
        assert read.horizon is None
        newest = max(row.last_update_id for row in read.rows)
        assert read.answer(slim=True, last_update_id=-1)["presence_last_update_id"] == newest
        return

    def poll(last_update_id: int) -> dict[str, Any]:
        with db.snapshot() as session:
            return realm_presence(
                session, realm_id, slim=True, now=base, last_update_id=last_update_id
            )

    cursor = settle(poll, poll(-1)["presence_last_update_id"], {str(owner), str(member)})
    later = base + MINUTE
    with db.write() as slow:
        # Started first (its transaction id is the smaller), committed last.
        do_update_user_presence(slow, realm_id, owner, "active", now=later)
        ping(db, realm_id, member, "active", later)  # another transaction, committed now
        with db.snapshot() as session:
            seen = RealmPresence.read(session, realm_id, now=base)
        first = seen.answer(slim=True, last_update_id=cursor)
        assert set(first["presences"]) == {str(member)}  # not the running one, of course
        # Below the running ping's id, so below the member's row's id too.
        member_row = next(row for row in seen.rows if row.user_id == member)
        assert first["presence_last_update_id"] < member_row.last_update_id
    second = poll(first["presence_last_update_id"])
    # The owner's row, committed after the first poll, comes now (the member's again).
    assert str(owner) in second["presences"]
    assert second["presence_last_update_id"] >= first["presence_last_update_id"]


def test_each_write_gets_a_larger_update_id(db: Database, realm: SampleRealm, base: float) -> None:
    ids = []
    for minute in range(4):
        for name in ("owner", "member"):
            ping(db, realm.realm_id, realm.users[name], "active", base + minute * MINUTE)
            row = stored(db, realm.users[name])
            assert row is not None
            ids.append(row.last_update_id)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


# -- over HTTP ------------------------------------------------------------------------------------


def api(server: LiveServer, realm: SampleRealm, name: str) -> ApiClient:
    """Every answer is checked against eventq's document and Zulip's shapes."""
    return ApiClient(server.url, realm.emails[name], realm.api_keys[name])


def test_the_endpoints_over_http(server: LiveServer, realm: SampleRealm, db: Database) -> None:
    member, owner = api(server, realm, "member"), api(server, realm, "owner")
    # The owner's queue of presence events, and the register state (modern shape).
    registered = owner.register(event_types=["presence"], slim_presence=True)
    assert registered["presences"] == {} and registered["presence_last_update_id"] == -1
    queue_id = registered["queue_id"]

    # The benchmark's request: a ping, nothing more.
    pinged = member.ok("POST", "/users/me/presence", {"status": "active", "ping_only": True})
    assert pinged == {"result": "success", "msg": ""}
    answer = owner.poll(queue_id, -1)
    assert answer.ok
    (event,) = answer.body["events"]
    assert event["type"] == "presence" and event["user_id"] == realm.users["member"]
    assert event["presence"]["website"]["status"] == "active"

    # Polling presence: legacy by default, modern with last_update_id.
    legacy = owner.ok("POST", "/users/me/presence", {"status": "idle", "new_user_input": False})
    assert set(legacy["presences"]) == {realm.emails["member"], realm.emails["owner"]}
    first = owner.ok("POST", "/users/me/presence", {"status": "idle", "last_update_id": -1})
    assert set(first["presences"]) == {str(realm.users["member"]), str(realm.users["owner"])}
    settle(
        lambda cursor: owner.ok(
            "POST", "/users/me/presence", {"status": "idle", "last_update_id": cursor}
        ),
        first["presence_last_update_id"],
        set(first["presences"]),
    )
    slim = member.ok("POST", "/users/me/presence", {"status": "active", "slim_presence": True})
    assert str(realm.users["member"]) in slim["presences"]

    everyone = owner.ok("GET", "/realm/presence")
    assert set(everyone["presences"]) == {realm.emails["member"], realm.emails["owner"]}
    one = owner.ok("GET", f"/users/{realm.emails['member']}/presence")
    assert one["presence"]["aggregated"]["status"] == "active"
    assert owner.ok("GET", f"/users/{realm.users['member']}/presence") == one

    # Zulip's refusals.
    refused = member.call("POST", "/users/me/presence", {"status": "away"})
    assert refused.status == 400 and refused.body["msg"] == "Invalid status: away"
    missing = member.call("POST", "/users/me/presence", {})
    assert missing.body["code"] == "REQUEST_VARIABLE_MISSING"
    unknown = member.call("GET", "/users/nobody@zulip.example.com/presence")
    assert unknown.status == 400 and unknown.body["msg"] == "No such user"
    silent = member.call("GET", f"/users/{realm.users['loner']}/presence")
    assert silent.body["msg"] == f"No presence data for {realm.users['loner']}"
    # Zulip's route takes POST only (the document has no GET to check the answer by).
    not_allowed = member.session.get(f"{server.url}/api/v1/users/me/presence", timeout=10)
    assert not_allowed.status_code == 405, not_allowed.text
    with db.write() as session:
        bot = do_create_user(session, realm.realm_id, "pingbot@zulip.example.com", is_bot=True)
        bot_email, bot_key = bot.email, bot.api_key
    as_bot = ApiClient(server.url, bot_email, bot_key)
    refused_bot = as_bot.call("POST", "/users/me/presence", {"status": "active"})
    assert refused_bot.body["msg"] == "This endpoint does not accept bot requests."
    assert as_bot.ok("GET", "/realm/presence")["presences"].keys() == everyone["presences"].keys()

    # A register without event_types holds presence too, legacy by default.
    full = member.register(presence_history_limit_days=1)
    assert set(full["presences"]) == {realm.emails["member"], realm.emails["owner"]}
    assert member.register(event_types=["stream"]).keys().isdisjoint({"presences"})


def test_the_zulip_client(server: LiveServer, realm: SampleRealm) -> None:
    client = zulip.Client(
        email=realm.emails["guest"],
        api_key=realm.api_keys["guest"],
        site=server.url,
        config_file=os.devnull,
    )
    answer = client.update_presence(
        {"status": "active", "ping_only": False, "new_user_input": False, "last_update_id": -1}
    )
    assert answer["result"] == "success", answer
    assert str(realm.users["guest"]) in answer["presences"]
    everyone = client.get_realm_presence()
    assert everyone["result"] == "success", everyone
    assert everyone["presences"][realm.emails["guest"]]["website"]["status"] == "active"
    mine = client.get_user_presence(realm.emails["guest"])
    assert mine["result"] == "success" and mine["presence"]["aggregated"]["status"] == "active"
