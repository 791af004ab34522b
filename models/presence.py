"""Presence: Zulip's constants, the reads of a realm's and of one user's presence, and
every presence wire shape (the modern and legacy entries, and the `presence` event).

A user's presence is one `user_presence` row: when a client last reported the user
connected (`last_connected_time`) and when last actively using it (`last_active_time`),
written by `actions.presence`. Clients learn of it by polling (`POST /users/me/presence`,
`GET /realm/presence`) and, in small realms only, from `presence` events; the rules are
in docs/architecture.md §4.

Shapes (Zulip's API documentation at feature level 377):

* modern (`slim_presence`, or any `last_update_id`): keyed by the user id as a string,
  `{"active_timestamp", "idle_timestamp"}`;
* legacy: keyed by email, `{"aggregated": {client, status, timestamp}, "website":
  {client, status, timestamp, pushable}}`, the status `active` when the last active
  time is within `PRESENCE_LEGACY_EVENT_OFFSET_FOR_ACTIVITY_SECONDS` of the last
  connected one, else `idle`. The `presence` event carries the `website` entry.

A time never set reads as the user's `date_joined`, as in Zulip, whose legacy format
always had timestamps.

`last_update_id`: every write of a row gives it a new id, larger than any id the row or
any row committed before it had. On PostgreSQL it is the id of the writing transaction
(`pg_current_xact_id()`), so concurrent pings share no counter and never wait for each
other; but a transaction holding a smaller id may commit after one holding a larger one.
A read therefore hands out as `presence_last_update_id` no more than its *horizon*: the
largest id below every transaction still running when its snapshot was taken
(`pg_snapshot_xmin`), under which every row that will ever commit is already visible. A
client asking from that id may see a row again, never miss one. On SQLite the one writer
takes the next id after the realm's largest, in commit order, so every id is final.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, Select, case, literal_column, select
from sqlalchemy.orm import Session

# The action layer's typed refusal, answered with its Zulip code by the HTTP layer.
from actions.errors import InvalidInput
from models.tables import MAX_EMAIL_LENGTH, UserPresence, UserProfile

# Zulip's settings of the same names (zproject/default_settings.py), which the
# `server_presence_*` fields of its register answer announce to clients: a client pings
# every PRESENCE_PING_INTERVAL_SECS and shows a user offline whose newest time is older
# than OFFLINE_THRESHOLD_SECS.
PRESENCE_PING_INTERVAL_SECS = 60
OFFLINE_THRESHOLD_SECS = 140
# A stored time is rewritten only when the new one is this much newer: one write a
# minute per user, however many of their clients ping.
PRESENCE_UPDATE_MIN_FREQ_SECONDS = 55
# Zulip's "came online": an `active` ping whose user was last active longer ago than
# this. Missed pings long enough that other clients may already show the user offline
# before their next poll (OFFLINE_THRESHOLD_SECS - PRESENCE_PING_INTERVAL_SECS - 10).
CAME_ONLINE_AFTER_SECS = OFFLINE_THRESHOLD_SECS - PRESENCE_PING_INTERVAL_SECS - 10
# Legacy entries show `active` when the user was active within this of their last
# connection, else `idle`.
PRESENCE_LEGACY_EVENT_OFFSET_FOR_ACTIVITY_SECONDS = 70
# Realms with more active users than this get no `presence` events: every event goes to
# everyone and users come online all day, so their cost grows with the square of the
# realm; their clients learn the same by polling.
USER_LIMIT_FOR_SENDING_PRESENCE_UPDATE_EVENTS = 100
# How far back a read looks when the client does not say (`history_limit_days`).
DEFAULT_HISTORY_LIMIT_DAYS = 14
SECONDS_PER_DAY = 86_400

# The event type, and the `fetch_event_types` name of the presence state of `register`.
PRESENCE_EVENT_TYPE = "presence"
ACTIVE = "active"
IDLE = "idle"
# Zulip's legacy entries name one client, always this one since feature level 178.
LEGACY_CLIENT = "website"
# In the answer of `GET /users/{user}/presence`, an aggregated status this old.
OFFLINE = "offline"

# PostgreSQL: the largest transaction id below every one running at this snapshot (a
# sub-select, so it is computed once per statement, not once per row).
_POSTGRES_HORIZON = literal_column(
    "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1)", BigInteger
).label("horizon")


def unix_time(moment: datetime) -> float:
    """Unix seconds of a stored datetime (SQLite returns them naive, in UTC)."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


# -- wire shapes ---------------------------------------------------------------------------


def modern_entry(active_time: float, connected_time: float) -> dict[str, int]:
    """Zulip's modern presence entry (`ModernPresenceFormat`)."""
    return {"active_timestamp": int(active_time), "idle_timestamp": int(connected_time)}


def legacy_client_entry(active_time: float, connected_time: float) -> dict[str, Any]:
    """The legacy entry of the one client Zulip names (`website`), as in the event."""
    if active_time + PRESENCE_LEGACY_EVENT_OFFSET_FOR_ACTIVITY_SECONDS >= connected_time:
        status, moment = ACTIVE, active_time
    else:
        status, moment = IDLE, connected_time
    return {"client": LEGACY_CLIENT, "status": status, "timestamp": int(moment), "pushable": False}


def legacy_entry(active_time: float, connected_time: float) -> dict[str, Any]:
    """Zulip's legacy presence entry: the client's entry and the same as `aggregated`."""
    client = legacy_client_entry(active_time, connected_time)
    aggregated = {key: client[key] for key in ("client", "status", "timestamp")}
    return {"aggregated": aggregated, LEGACY_CLIENT: client}


def presence_event(
    user_id: int, email: str, active_time: float, connected_time: float, server_timestamp: float
) -> dict[str, Any]:
    """The `presence` event: the user's legacy client entry, whatever the recipient
    registered with (Zulip sends this form to every client)."""
    return {
        "type": PRESENCE_EVENT_TYPE,
        "user_id": user_id,
        "email": email,
        "server_timestamp": server_timestamp,
        "presence": {LEGACY_CLIENT: legacy_client_entry(active_time, connected_time)},
    }


# -- reads -------------------------------------------------------------------------------------


class PresenceRow(NamedTuple):
    """One active human user's presence row, with what its wire shapes need (a tuple:
    a realm's read builds 10,000 of them)."""

    user_id: int
    email: str
    last_update_id: int
    last_connected_time: float
    # The stored time, or the user's `date_joined` when they were never active.
    active_time: float


def _rows_query(postgres: bool) -> Select[Any]:
    columns: list[Any] = [
        UserPresence.user_profile_id,
        UserProfile.email,
        UserPresence.last_update_id,
        UserPresence.last_connected_time,
        UserPresence.last_active_time,
        # Only where it stands in for a missing time: decoding 10,000 timestamps that
        # are not used would cost more than the rest of the read.
        case((UserPresence.last_active_time.is_(None), UserProfile.date_joined)),
    ]
    if postgres:
        # In the select list: computed from the same snapshot as the rows.
        columns.append(_POSTGRES_HORIZON)
    # Deactivated users and bots have no presence to show, as in Zulip.
    return (
        select(*columns)
        .join(UserProfile, UserProfile.id == UserPresence.user_profile_id)
        .where(UserProfile.is_active.is_(True), UserProfile.is_bot.is_(False))
    )


def _row(found: Sequence[Any]) -> PresenceRow:
    user_id, email, update_id, connected, active, joined = found[:6]
    return PresenceRow(
        int(user_id),
        email,
        int(update_id),
        float(connected),
        float(active) if active is not None else unix_time(joined),
    )


class RealmPresence:
    """A realm's presence rows as one snapshot saw them, with that read's time and
    horizon. Read-only once read; the answers it builds are shared by the callers that
    ask for the same shape (`server.engine.registration` shares one read among the
    registers that arrive together), who never modify them."""

    def __init__(
        self, rows: Iterable[PresenceRow], server_timestamp: float, horizon: int | None
    ) -> None:
        self.rows = tuple(rows)
        self.server_timestamp = server_timestamp
        # The largest `last_update_id` that no later commit can undercut; None: all are.
        self.horizon = horizon
        self._answers: dict[tuple[bool, int | None, int | None], dict[str, Any]] = {}

    @classmethod
    def read(
        cls,
        session: Session,
        realm_id: int,
        *,
        now: float,
        changed_after: int | None = None,
        since: float | None = None,
    ) -> RealmPresence:
        """The rows of the realm's active human users, in one indexed statement: all of
        them, or those written after the update id `changed_after`, or those connected
        at `since` or later."""
        postgres = session.get_bind().dialect.name == "postgresql"
        query = _rows_query(postgres).where(UserPresence.realm_id == realm_id)
        if changed_after is not None:
            query = query.where(UserPresence.last_update_id > changed_after)
        if since is not None:
            query = query.where(UserPresence.last_connected_time >= since)
        # Core rows (no ORM loading): plain tuples for a realm's thousands of rows.
        found = session.connection().execute(query).all()
        horizon = None
        if postgres and found:
            horizon = int(found[0][-1])
        return cls(map(_row, found), now, horizon)

    def answer(
        self,
        *,
        slim: bool,
        last_update_id: int | None = None,
        history_limit_days: int | None = None,
    ) -> dict[str, Any]:
        """`presences`, `presence_last_update_id` and `server_timestamp`, Zulip's way.

        With `last_update_id`, only rows written after it; unless it is above 0 (the
        client has data), only rows connected within `history_limit_days` (default 14;
        0: none). `presence_last_update_id` is the newest id handed out, held to the
        horizon; with no row, the client's own id, or -1.
        """
        key = (slim, last_update_id, history_limit_days)
        cached = self._answers.get(key)
        if cached is not None:
            return cached
        days = DEFAULT_HISTORY_LIMIT_DAYS if history_limit_days is None else history_limit_days
        since = self.server_timestamp - days * SECONDS_PER_DAY
        rows = [
            row
            for row in self.rows
            if days != 0
            and (last_update_id is None or row.last_update_id > last_update_id)
            and (
                (last_update_id is not None and last_update_id > 0)
                or row.last_connected_time >= since
            )
        ]
        presences: dict[str, Any] = {}
        for row in rows:
            if slim:
                presences[str(row.user_id)] = modern_entry(row.active_time, row.last_connected_time)
            else:
                presences[row.email] = legacy_entry(row.active_time, row.last_connected_time)
        if rows:
            newest = max(row.last_update_id for row in rows)
            if self.horizon is not None:
                newest = min(newest, self.horizon)
            if last_update_id is not None:
                # Zulip's promise: never below what the client passed.
                newest = max(newest, last_update_id)
        else:
            newest = last_update_id if last_update_id is not None else -1
        answer = {
            "presences": presences,
            "presence_last_update_id": newest,
            "server_timestamp": self.server_timestamp,
        }
        self._answers[key] = answer
        return answer


def realm_presence(
    session: Session,
    realm_id: int,
    *,
    slim: bool,
    now: float,
    last_update_id: int | None = None,
    history_limit_days: int | None = None,
) -> dict[str, Any]:
    """The presence answer of `POST /users/me/presence` (and the presence state of
    `register`), reading only the rows it needs, in one indexed statement."""
    if history_limit_days == 0:
        # Zulip: the client wants no presence data; nothing is read.
        return RealmPresence((), now, None).answer(
            slim=slim, last_update_id=last_update_id, history_limit_days=0
        )
    if last_update_id is not None and last_update_id > 0:
        read = RealmPresence.read(session, realm_id, now=now, changed_after=last_update_id)
    else:
        days = DEFAULT_HISTORY_LIMIT_DAYS if history_limit_days is None else history_limit_days
        since = now - days * SECONDS_PER_DAY
        read = RealmPresence.read(
            session, realm_id, now=now, changed_after=last_update_id, since=since
        )
    return read.answer(
        slim=slim, last_update_id=last_update_id, history_limit_days=history_limit_days
    )


def realm_presence_legacy(session: Session, realm_id: int, *, now: float) -> dict[str, Any]:
    """`GET /realm/presence`: the legacy entries of the last two weeks, and the time."""
    answer = realm_presence(session, realm_id, slim=False, now=now)
    return {"presences": answer["presences"], "server_timestamp": answer["server_timestamp"]}


def user_presence(
    session: Session, realm_id: int, user_id_or_email: str, *, now: float
) -> dict[str, Any]:
    """`GET /users/{user_id_or_email}/presence`: one user's legacy entries without
    `client` and `pushable`, the aggregated status `offline` when its time is older
    than OFFLINE_THRESHOLD_SECS. Refusals are Zulip's: a user of another realm, unknown
    or deactivated is "No such user"; a bot, or a user with no presence yet, their own.
    """
    user = _find_user(session, realm_id, user_id_or_email)
    if user is None or not user.is_active:
        raise InvalidInput("No such user")
    if user.is_bot:
        raise InvalidInput("Presence is not supported for bot users.")
    found = (
        session.connection()
        .execute(_rows_query(postgres=False).where(UserPresence.user_profile_id == user.id))
        .first()
    )
    if found is None:
        raise InvalidInput(f"No presence data for {user_id_or_email}")
    row = _row(found)
    entries = legacy_entry(row.active_time, row.last_connected_time)
    shown = {
        key: {"status": entry["status"], "timestamp": entry["timestamp"]}
        for key, entry in entries.items()
    }
    if int(now) - shown["aggregated"]["timestamp"] > OFFLINE_THRESHOLD_SECS:
        shown["aggregated"]["status"] = OFFLINE
    return {"presence": shown}


def _find_user(session: Session, realm_id: int, user_id_or_email: str) -> UserProfile | None:
    """The user named by a path segment: an id when it is all digits, else an email."""
    text = user_id_or_email.strip()
    if text.isascii() and text.isdigit():
        user_id = int(text)
        # Beyond a 32-bit id nothing can match; the column could not even be compared.
        if user_id > 2**31 - 1:
            return None
        user = session.get(UserProfile, user_id)
        return user if user is not None and user.realm_id == realm_id else None
    if len(text) > MAX_EMAIL_LENGTH:
        return None
    return session.scalars(
        select(UserProfile).where(
            UserProfile.realm_id == realm_id, UserProfile.email == text.lower()
        )
    ).first()
