"""The presence ping (`POST /users/me/presence`): Zulip's write rule, the write itself,
and the `presence` event when a user's state changes in a small realm.

At realm scale this is the hottest write there is: 10,000 clients pinging every minute
are about 170 pings a second. So a ping takes no realm lock and shares no counter:

1. One indexed read of the user and their presence row (`_read`).
2. Zulip's rule decides (`decide_presence`): a stored time is rewritten only when the new
   one is more than PRESENCE_UPDATE_MIN_FREQ_SECONDS newer (the last connected time on
   every ping, the last active time on `active` ones). When nothing a client could see
   changes, the ping ends there: no write, no lock.
3. Otherwise one statement writes: an `INSERT ... ON CONFLICT DO UPDATE ... WHERE
   last_update_id = <the id read> RETURNING last_update_id`. The `WHERE` makes it a
   compare-and-set: if another ping of the same user wrote in between, nothing is
   written (no row comes back), and the ping decides again from a fresh read. The new
   `last_update_id` is computed in the statement (`models.presence` explains the ids).
4. Only when the user's state changed in a way clients are told of at once (Zulip's:
   their first presence ever, or an `active` ping after more than
   CAME_ONLINE_AFTER_SECS without one, "came online"), and only in a realm of at most
   USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS active users, does the ping take the
   realm lock, in its shared mode, and write a `presence` event to every active user
   (`append_events`, last). Larger realms' clients learn the same by polling; the size
   is checked before the lock, so a ping in a large realm never takes it.

The caller runs this in a write transaction (`Database.write()`) with the request's time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, false, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from actions.actors import lock_realm_for_actor
from actions.errors import ActorDeactivated, InvalidInput
from models.outbox import PendingEvent, append_events
from models.presence import (
    ACTIVE,
    CAME_ONLINE_AFTER_SECS,
    IDLE,
    PRESENCE_UPDATE_MIN_FREQ_SECONDS,
    USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS,
    presence_event,
    unix_time,
)
from models.tables import UserPresence, UserProfile

# A ping that keeps losing its compare-and-set to other pings of the same user (their
# tabs and devices) gives up: those pings have just written times at least as new.
MAX_WRITE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class PresenceTimes:
    """A user's presence as stored: Unix seconds; `last_active` None: never active."""

    last_active: float | None
    last_connected: float


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """What a ping must write, and whether clients are told of it at once."""

    times: PresenceTimes
    # The user's first presence, or they came online: a `presence` event (small realms).
    announce: bool


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """What a ping did."""

    written: bool
    event_sent: bool


def decide_presence(
    stored: PresenceTimes | None, active: bool, now: float
) -> PresenceChange | None:
    """Zulip's rule for a ping at `now`: the times to store, or None when nothing changes.

    A time that is not more than PRESENCE_UPDATE_MIN_FREQ_SECONDS older than `now` (or
    newer: another server's clock) stays, so a user's several clients write once a
    minute between them. An `active` ping refreshes the last active time and keeps the
    last connected time at least as new.
    """
    if stored is None:
        return PresenceChange(PresenceTimes(now if active else None, now), announce=True)
    since_active = None if stored.last_active is None else now - stored.last_active
    came_online = active and (since_active is None or since_active > CAME_ONLINE_AFTER_SECS)
    last_active, last_connected = stored.last_active, stored.last_connected
    if now - stored.last_connected > PRESENCE_UPDATE_MIN_FREQ_SECONDS:
        last_connected = now
    if active and (since_active is None or since_active > PRESENCE_UPDATE_MIN_FREQ_SECONDS):
        last_active = now
        last_connected = max(last_connected, now)
    times = PresenceTimes(last_active, last_connected)
    if times == stored:
        return None
    return PresenceChange(times, announce=came_online)


def do_update_user_presence(
    session: Session, realm_id: int, user_id: int, status: str, *, now: float
) -> PresenceUpdate:
    """Record a ping of `status` (`active` or `idle`) by the user at `now` (see module).

    Refused: another status ("Invalid status"), a bot (Zulip's endpoint is for humans),
    and a user deactivated since the server authenticated them (USER_DEACTIVATED).
    """
    if status not in (ACTIVE, IDLE):
        raise InvalidInput(f"Invalid status: {status}")
    for _ in range(MAX_WRITE_ATTEMPTS):
        user, stored, seen_update_id = _read(session, realm_id, user_id)
        change = decide_presence(stored, status == ACTIVE, now)
        if change is None:
            return PresenceUpdate(written=False, event_sent=False)
        if _write(session, realm_id, user_id, seen_update_id, change.times):
            break
    else:
        return PresenceUpdate(written=False, event_sent=False)
    if not change.announce:
        return PresenceUpdate(written=True, event_sent=False)
    active_time = change.times.last_active
    if active_time is None:
        active_time = unix_time(user.date_joined)  # Zulip's default for "never active"
    sent = _announce(session, realm_id, user_id, active_time, change.times.last_connected, now)
    return PresenceUpdate(written=True, event_sent=sent)


def _read(
    session: Session, realm_id: int, user_id: int
) -> tuple[Any, PresenceTimes | None, int | None]:
    """The user and their presence row, in one statement (the row's primary key)."""
    found = session.execute(
        select(
            UserProfile.realm_id,
            UserProfile.is_active,
            UserProfile.is_bot,
            UserProfile.date_joined,
            UserPresence.last_active_time,
            UserPresence.last_connected_time,
            UserPresence.last_update_id,
        )
        .select_from(UserProfile)
        .outerjoin(UserPresence, UserPresence.user_profile_id == UserProfile.id)
        .where(UserProfile.id == user_id)
    ).first()
    if found is None or found.realm_id != realm_id or not found.is_active:
        # Deactivated since authentication: answered as a deactivated key is.
        raise ActorDeactivated()
    if found.is_bot:
        raise InvalidInput("This endpoint does not accept bot requests.")
    if found.last_update_id is None:
        return found, None, None
    active = found.last_active_time
    stored = PresenceTimes(
        None if active is None else float(active), float(found.last_connected_time)
    )
    return found, stored, int(found.last_update_id)


def _write(
    session: Session,
    realm_id: int,
    user_id: int,
    seen_update_id: int | None,
    times: PresenceTimes,
) -> bool:
    """Store `times` if the row still has `seen_update_id` (or, with None, if there is
    still no row), in one statement; whether it was written."""
    if session.get_bind().dialect.name == "postgresql":
        # The writing transaction's own id: no counter to share (`models.presence`).
        new_id: Any = literal_column("pg_current_xact_id()::text::bigint", BigInteger)
        upsert: Any = postgresql_insert(UserPresence)
    else:
        # SQLite has one writer at a time: the next id after the realm's largest is
        # taken in commit order (the index makes it one lookup).
        new_id = (
            select(func.coalesce(func.max(UserPresence.last_update_id), 0) + 1)
            .where(UserPresence.realm_id == realm_id)
            .scalar_subquery()
        )
        upsert = sqlite_insert(UserPresence)
    upsert = upsert.values(
        user_profile_id=user_id,
        realm_id=realm_id,
        last_active_time=times.last_active,
        last_connected_time=times.last_connected,
        last_update_id=new_id,
    )
    unchanged = (
        UserPresence.last_update_id == seen_update_id if seen_update_id is not None else false()
    )
    upsert = upsert.on_conflict_do_update(
        index_elements=[UserPresence.user_profile_id],
        set_={
            "last_active_time": upsert.excluded.last_active_time,
            "last_connected_time": upsert.excluded.last_connected_time,
            "last_update_id": upsert.excluded.last_update_id,
        },
        where=unchanged,
    ).returning(UserPresence.last_update_id)
    return session.execute(upsert).first() is not None


def _active_user_ids(session: Session, realm_id: int) -> list[int]:
    """The realm's active users, bots included (Zulip's recipients), or one more than
    the limit of a realm that gets presence events: never the whole of a large realm."""
    return list(
        session.scalars(
            select(UserProfile.id)
            .where(UserProfile.realm_id == realm_id, UserProfile.is_active.is_(True))
            .limit(USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS + 1)
        )
    )


def _announce(
    session: Session,
    realm_id: int,
    user_id: int,
    active_time: float,
    connected_time: float,
    now: float,
) -> bool:
    """Write the `presence` event to every active user of a small realm; whether it was."""
    if len(_active_user_ids(session, realm_id)) > USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS:
        return False  # a large realm: no event, and no lock
    # Shared: other pings and messages go on; an exclusive holder (a deactivation, a
    # new user) is waited for, so the recipients read next are current.
    locked = lock_realm_for_actor(session, realm_id, user_id, shared=True)
    recipients = _active_user_ids(session, realm_id)
    if len(recipients) > USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS:
        return False  # grew past the limit meanwhile
    event = presence_event(user_id, locked.user.email, active_time, connected_time, now)
    append_events(session, realm_id, [PendingEvent(event, recipients)])
    return True
