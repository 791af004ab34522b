"""The API shapes of users and channels, and the state snapshot that `register` returns.

Field names follow Zulip's API documentation for `POST /register` (`realm_users`,
`realm_non_active_users`, `subscriptions`, `unsubscribed`, `never_subscribed`,
`streams`). Events carry the same dicts (`user_to_api`, `stream_to_api`), so a client
that applies events ends with exactly what a fresh `register` returns.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.queries import get_stream_by_name
from models.tables import Role, Stream, Subscription, UserProfile
from models.visibility import active_subscribers, can_see_stream

# The event types whose state `register` can return.
STATE_EVENT_TYPES = frozenset({"realm_user", "subscription", "stream"})
# Zulip's default subscription color for a channel the user never picked one for.
DEFAULT_STREAM_COLOR = "#c2c2c2"


def _as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they are stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def user_to_api(user: UserProfile) -> dict[str, Any]:
    """A user as Zulip's `realm_users` entries and `realm_user` `add` events show it."""
    return {
        "user_id": user.id,
        "email": user.email,
        "delivery_email": None,
        "full_name": user.full_name,
        "role": user.role,
        "is_owner": user.role == Role.OWNER,
        "is_admin": user.role <= Role.ADMINISTRATOR,
        "is_moderator": user.role == Role.MODERATOR,
        "is_guest": user.role == Role.GUEST,
        "is_bot": user.is_bot,
        "bot_type": 1 if user.is_bot else None,
        "bot_owner_id": None,
        "is_active": user.is_active,
        "is_billing_admin": False,
        "timezone": "",
        "avatar_url": None,
        "avatar_version": 1,
        "date_joined": _as_utc(user.date_joined).isoformat(),
        "profile_data": {},
    }


def stream_to_api(stream: Stream) -> dict[str, Any]:
    """A channel as Zulip's `streams` entries and `stream` events show it."""
    return {
        "stream_id": stream.id,
        "name": stream.name,
        "description": stream.description,
        "rendered_description": f"<p>{stream.description}</p>" if stream.description else "",
        "invite_only": stream.invite_only,
        "is_web_public": stream.is_web_public,
        "is_archived": False,
        "history_public_to_subscribers": not stream.invite_only,
        "is_announcement_only": False,
        "stream_post_policy": 1,
        "message_retention_days": None,
        "first_message_id": None,
        "stream_weekly_traffic": None,
        "date_created": int(_as_utc(stream.date_created).timestamp()),
    }


def subscription_to_api(stream: Stream, subscribers: Collection[int] | None) -> dict[str, Any]:
    """A subscription entry: the channel plus the user's settings and, if given, subscribers."""
    entry = stream_to_api(stream)
    entry.update(
        {
            "color": DEFAULT_STREAM_COLOR,
            "is_muted": False,
            "in_home_view": True,
            "pin_to_top": False,
            "desktop_notifications": None,
            "audible_notifications": None,
            "push_notifications": None,
            "email_notifications": None,
            "wildcard_mentions_notify": None,
        }
    )
    if subscribers is not None:
        entry["subscribers"] = sorted(subscribers)
    return entry


def fetch_initial_state(
    session: Session,
    user: UserProfile,
    event_types: Collection[str],
    include_subscribers: bool,
) -> dict[str, Any]:
    """The part of the `register` answer for `event_types` (a subset of STATE_EVENT_TYPES).

    Runs a constant number of statements: all users, all channels, this user's
    subscription rows, and (with subscribers) one query for every visible channel.
    """
    state: dict[str, Any] = {}
    if "realm_user" in event_types:
        users = session.scalars(
            select(UserProfile)
            .where(UserProfile.realm_id == user.realm_id)
            .order_by(UserProfile.id)
        ).all()
        state["realm_users"] = [user_to_api(u) for u in users if u.is_active]
        state["realm_non_active_users"] = [user_to_api(u) for u in users if not u.is_active]
    if not {"subscription", "stream"} & set(event_types):
        return state

    streams = session.scalars(
        select(Stream).where(Stream.realm_id == user.realm_id).order_by(Stream.id)
    ).all()
    own_rows = session.execute(
        select(Subscription.stream_id, Subscription.active).where(
            Subscription.user_profile_id == user.id
        )
    ).all()
    own_active = {int(stream_id): bool(active) for stream_id, active in own_rows}
    subscribed = {sid for sid, active in own_active.items() if active}
    visible = [s for s in streams if can_see_stream(user.role, s, s.id in subscribed)]

    if "stream" in event_types:
        state["streams"] = [stream_to_api(s) for s in visible]
    if "subscription" in event_types:
        members = (
            active_subscribers(session, [s.id for s in visible]) if include_subscribers else {}
        )

        def subscribers_of(stream: Stream) -> set[int] | None:
            return members.get(stream.id, set()) if include_subscribers else None

        state["subscriptions"] = [
            subscription_to_api(s, subscribers_of(s)) for s in visible if s.id in subscribed
        ]
        state["unsubscribed"] = [
            subscription_to_api(s, subscribers_of(s))
            for s in visible
            if s.id in own_active and s.id not in subscribed
        ]
        never: list[dict[str, Any]] = []
        for s in visible:
            if s.id in own_active:
                continue
            entry = stream_to_api(s)
            if include_subscribers:
                entry["subscribers"] = sorted(members.get(s.id, set()))
            never.append(entry)
        state["never_subscribed"] = never
    return state


def realm_members(session: Session, realm_id: int) -> list[dict[str, Any]]:
    """Every user of the realm, active or not (`GET /users`)."""
    users = session.scalars(
        select(UserProfile).where(UserProfile.realm_id == realm_id).order_by(UserProfile.id)
    ).all()
    return [user_to_api(u) for u in users]


def member(session: Session, realm_id: int, user_id: int) -> dict[str, Any] | None:
    """One user of the realm (`GET /users/{id}`), or None."""
    user = session.get(UserProfile, user_id)
    if user is None or user.realm_id != realm_id:
        return None
    return user_to_api(user)


def _visible_stream(session: Session, viewer: UserProfile, stream: Stream | None) -> bool:
    if stream is None or stream.realm_id != viewer.realm_id:
        return False
    subscribed = session.scalars(
        select(Subscription.id).where(
            Subscription.user_profile_id == viewer.id,
            Subscription.stream_id == stream.id,
            Subscription.active.is_(True),
        )
    ).first()
    return can_see_stream(viewer.role, stream, subscribed is not None)


def visible_stream_id(session: Session, viewer_id: int, name: str) -> int | None:
    """The id of the channel named `name` if the viewer may see it (`GET /get_stream_id`)."""
    viewer = session.get(UserProfile, viewer_id)
    assert viewer is not None, "the server authenticated this user"
    stream = get_stream_by_name(session, viewer.realm_id, name)
    return stream.id if stream is not None and _visible_stream(session, viewer, stream) else None


def visible_stream_members(session: Session, viewer_id: int, stream_id: int) -> list[int] | None:
    """The channel's subscribers if the viewer may see them (`GET /streams/{id}/members`)."""
    viewer = session.get(UserProfile, viewer_id)
    assert viewer is not None, "the server authenticated this user"
    stream = session.get(Stream, stream_id)
    if stream is None or not _visible_stream(session, viewer, stream):
        return None
    return sorted(active_subscribers(session, [stream_id]).get(stream_id, set()))


def state_for(
    session: Session, user_id: int, event_types: Collection[str], include_subscribers: bool
) -> dict[str, Any]:
    """`fetch_initial_state` for a user id (the REST endpoints' shortcut)."""
    user = session.get(UserProfile, user_id)
    assert user is not None, "the server authenticated this user"
    return fetch_initial_state(session, user, event_types, include_subscribers)
