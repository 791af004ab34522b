"""The state snapshot that `register` returns, and the reads of the REST state endpoints.

Field names follow Zulip's API documentation for `POST /register` (`realm_users`,
`realm_non_active_users`, the current user's own keys, `subscriptions`, `unsubscribed`,
`never_subscribed`, `streams`). Every object is built by `models.wire`, the one source
of the wire shapes; events carry the same objects, so a client that applies events ends
with exactly what a fresh `register` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

# The action layer's typed refusal: the HTTP layer answers every ActionError with its
# Zulip code (a leaf module of exception classes; models imports nothing else of it).
from actions.errors import ActionError
from models.queries import get_stream_by_name
from models.tables import Stream, Subscription, UserProfile
from models.visibility import active_subscribers, can_see_stream
from models.wire import never_subscribed_to_api, own_profile, own_user_keys
from models.wire import stream_to_api as stream_to_api
from models.wire import subscription_to_api as subscription_to_api
from models.wire import user_to_api as user_to_api

# The event types whose state `register` can return.
STATE_EVENT_TYPES = frozenset({"realm_user", "subscription", "stream"})


class ViewerDeactivated(ActionError):
    """The authenticated caller no longer exists or was deactivated since it authenticated.

    A request that passed authentication can lose this race with a deactivation; it is
    answered as Zulip answers a deactivated account's requests, never with a crash.
    """

    code = "USER_DEACTIVATED"

    def __init__(self) -> None:
        super().__init__("Account is deactivated")


def _viewer(session: Session, user_id: int) -> UserProfile:
    """The calling user, active; `ViewerDeactivated` if not (any more)."""
    viewer = session.get(UserProfile, user_id)
    if viewer is None or not viewer.is_active:
        raise ViewerDeactivated()
    return viewer


# A realm's users as `register` shows them: (active, not active). The same for every
# viewer, so a server may reuse it for every register at the same outbox position.
RealmUsers = tuple[list[dict[str, Any]], list[dict[str, Any]]]


def fetch_realm_users(session: Session, realm_id: int) -> RealmUsers:
    """Every user of the realm as `realm_users` and `realm_non_active_users` list them."""
    users = session.scalars(
        select(UserProfile).where(UserProfile.realm_id == realm_id).order_by(UserProfile.id)
    ).all()
    return (
        [user_to_api(u) for u in users if u.is_active],
        [user_to_api(u) for u in users if not u.is_active],
    )


def fetch_initial_state(
    session: Session,
    user: UserProfile,
    event_types: Collection[str],
    include_subscribers: bool,
    realm_users: Callable[[], RealmUsers] | None = None,
) -> dict[str, Any]:
    """The part of the `register` answer for `event_types` (a subset of STATE_EVENT_TYPES).

    With `realm_user`, the answer also holds the current user's own keys
    (`models.wire.OWN_USER_KEYS`), as Zulip's does. `realm_users`, if given, supplies the
    realm's user lists (a cache valid for this snapshot) instead of reading them. Runs a
    constant number of statements: all users, all channels, this user's subscription
    rows, and (with subscribers) one query for every visible channel.
    """
    state: dict[str, Any] = {}
    if "realm_user" in event_types:
        active, non_active = (
            realm_users() if realm_users is not None else fetch_realm_users(session, user.realm_id)
        )
        state["realm_users"] = active
        state["realm_non_active_users"] = non_active
        state.update(own_user_keys(user))
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
        state["never_subscribed"] = [
            never_subscribed_to_api(s, subscribers_of(s)) for s in visible if s.id not in own_active
        ]
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


def own_user(session: Session, user_id: int) -> dict[str, Any]:
    """The caller's own data (`GET /users/me`)."""
    return own_profile(_viewer(session, user_id))


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
    viewer = _viewer(session, viewer_id)
    stream = get_stream_by_name(session, viewer.realm_id, name)
    return stream.id if stream is not None and _visible_stream(session, viewer, stream) else None


def visible_stream_members(session: Session, viewer_id: int, stream_id: int) -> list[int] | None:
    """The channel's subscribers if the viewer may see them (`GET /streams/{id}/members`)."""
    viewer = _viewer(session, viewer_id)
    stream = session.get(Stream, stream_id)
    if stream is None or not _visible_stream(session, viewer, stream):
        return None
    return sorted(active_subscribers(session, [stream_id]).get(stream_id, set()))


def state_for(
    session: Session, user_id: int, event_types: Collection[str], include_subscribers: bool
) -> dict[str, Any]:
    """`fetch_initial_state` for a user id (the REST endpoints' shortcut)."""
    return fetch_initial_state(session, _viewer(session, user_id), event_types, include_subscribers)
