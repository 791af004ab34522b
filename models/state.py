"""The state snapshot that `register` returns, and the reads of the REST state endpoints.

Field names follow Zulip's API documentation for `POST /register` (`realm_users`,
`realm_non_active_users`, the current user's own keys, `subscriptions`, `unsubscribed`,
`never_subscribed`, `streams`). Every object is built by `models.wire`, the one source
of the wire shapes; events carry the same objects, so a client that applies events ends
with exactly what a fresh `register` returns.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

# The action layer's typed refusal: the HTTP layer answers every ActionError with its
# Zulip code (a leaf module of exception classes; models imports nothing else of it).
from actions.errors import ActionError
from models.messages.unreads import user_state
from models.presence import PRESENCE_EVENT_TYPE, realm_presence
from models.queries import get_stream_by_name
from models.register_keys import (
    USER_GROUPS_TYPE,
    own_message_keys,
    read_realm_facts,
    realm_wide_state,
    system_user_groups,
)
from models.tables import Stream, Subscription, UserProfile
from models.typing import TYPING_PROTOCOL_KEYS
from models.visibility import active_subscribers, can_see_stream
from models.wire import (
    DEFAULT_SUBSCRIPTION_SETTINGS,
    SUBSCRIPTION_SETTING_COLUMNS,
    SubscriptionSettings,
    never_subscribed_to_api,
    own_profile,
    own_user_keys,
)
from models.wire import stream_to_api as stream_to_api
from models.wire import subscription_to_api as subscription_to_api
from models.wire import user_to_api as user_to_api

# The event types whose state `register` can return. Of Zulip's `realm` state eventq
# returns only the typing protocol's three periods (`models.typing.TYPING_PROTOCOL_KEYS`).
STATE_EVENT_TYPES = frozenset({"realm_user", "subscription", "stream", "realm"})


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


class RealmState:
    """What `register` shows of one realm, read in one snapshot: its users, its channels
    and their subscriptions. Read-only once built, so one instance may serve many
    registers (`server.engine.registration` keeps one per realm while no event changed it).

    The wire objects are built once, when first asked for, and shared by every answer
    that holds them: callers serialize answers and never modify them.
    """

    def __init__(
        self,
        users: Sequence[UserProfile],
        streams: Sequence[Stream],
        subscription_rows: Iterable[tuple[int, int, bool, bool, SubscriptionSettings]],
    ) -> None:
        self._users = {user.id: user for user in users}
        self._streams = list(streams)
        # user -> {stream -> active}; and each channel's active subscribers.
        self._own: dict[int, dict[int, bool]] = {}
        self._subscribers: dict[int, set[int]] = {stream.id: set() for stream in streams}
        # (user, stream) -> the user's own settings of it, where not Zulip's defaults.
        self._settings: dict[tuple[int, int], SubscriptionSettings] = {}
        for user_id, stream_id, active, user_active, settings in subscription_rows:
            self._own.setdefault(int(user_id), {})[int(stream_id)] = bool(active)
            if settings != DEFAULT_SUBSCRIPTION_SETTINGS:
                self._settings[(int(user_id), int(stream_id))] = settings
            if active and user_active and int(stream_id) in self._subscribers:
                self._subscribers[int(stream_id)].add(int(user_id))
        self._realm_users: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None
        self._own_keys: dict[int, dict[str, Any]] = {}
        self._stream_entries: dict[int, dict[str, Any]] = {}
        # (stream id, with subscribers): the `subscriptions`/`unsubscribed` entry and the
        # `never_subscribed` entry.
        self._sub_entries: dict[tuple[int, bool], tuple[dict[str, Any], dict[str, Any]]] = {}
        # `realm_user_groups` (`models.register_keys`), built when first asked for.
        self._user_groups: list[dict[str, Any]] | None = None

    @classmethod
    def read(
        cls,
        session: Session,
        realm_id: int,
        viewer: int | None = None,
        *,
        users: bool = True,
        subscribers: bool = True,
    ) -> RealmState:
        """The realm's state in the caller's snapshot, in three statements.

        With `viewer`, only what that user's answer needs: its own subscription rows
        (and, with `subscribers`, every channel's subscribers), and with `users=False`
        its own user row only. Without, everything, for any user's answer.
        """
        users_query = select(UserProfile).where(UserProfile.realm_id == realm_id)
        if not users and viewer is not None:
            users_query = users_query.where(UserProfile.id == viewer)
        subscriptions = (
            select(
                Subscription.user_profile_id,
                Subscription.stream_id,
                Subscription.active,
                Subscription.is_user_active,
                *(getattr(Subscription, name) for name in SUBSCRIPTION_SETTING_COLUMNS),
            )
            .join(Stream, Stream.id == Subscription.stream_id)
            .where(Stream.realm_id == realm_id)
        )
        if viewer is not None:
            wanted = Subscription.user_profile_id == viewer
            if subscribers:
                wanted = wanted | (
                    Subscription.active.is_(True) & Subscription.is_user_active.is_(True)
                )
            subscriptions = subscriptions.where(wanted)
        found_users = session.scalars(users_query.order_by(UserProfile.id)).all()
        streams = session.scalars(
            select(Stream).where(Stream.realm_id == realm_id).order_by(Stream.id)
        ).all()
        # Rows with equal settings share one object (a realm's rows hold few distinct ones).
        shared: dict[tuple[Any, ...], SubscriptionSettings] = {}
        rows = [
            (
                int(user_id),
                int(stream_id),
                bool(active),
                bool(user_active),
                shared.setdefault(tuple(settings), SubscriptionSettings(*settings)),
            )
            for user_id, stream_id, active, user_active, *settings in session.execute(subscriptions)
        ]
        return cls(found_users, streams, rows)

    def build_shared(self) -> RealmState:
        """Build now the wire objects every answer shares (the user lists, each channel's
        entries without subscribers), so that a caller on a database thread does this
        work there rather than the first register on the event loop; returns self."""
        self.realm_users()
        for stream in self._streams:
            self._stream_entry(stream)
            self._subscription_entries(stream, include_subscribers=False)
        return self

    def user_groups(self, date_created: int) -> list[dict[str, Any]]:
        """`realm_user_groups`: the system groups of this state's users (all of them:
        read without `users=False`), built once and shared."""
        if self._user_groups is None:
            self._user_groups = system_user_groups(self._users.values(), date_created)
        return self._user_groups

    def is_active(self, user_id: int) -> bool:
        """Whether the user exists in this realm and is active."""
        user = self._users.get(user_id)
        return user is not None and user.is_active

    def realm_users(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """`realm_users` and `realm_non_active_users`."""
        if self._realm_users is None:
            users = self._users.values()
            self._realm_users = (
                [user_to_api(u) for u in users if u.is_active],
                [user_to_api(u) for u in users if not u.is_active],
            )
        return self._realm_users

    def _own_user_keys(self, user_id: int) -> dict[str, Any]:
        keys = self._own_keys.get(user_id)
        if keys is None:
            keys = self._own_keys[user_id] = own_user_keys(self._users[user_id])
        return keys

    def _stream_entry(self, stream: Stream) -> dict[str, Any]:
        entry = self._stream_entries.get(stream.id)
        if entry is None:
            entry = self._stream_entries[stream.id] = stream_to_api(stream)
        return entry

    def _subscription_entries(
        self, stream: Stream, include_subscribers: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        key = (stream.id, include_subscribers)
        entries = self._sub_entries.get(key)
        if entries is None:
            subscribers = self._subscribers[stream.id] if include_subscribers else None
            entries = self._sub_entries[key] = (
                subscription_to_api(stream, subscribers),
                never_subscribed_to_api(stream, subscribers),
            )
        return entries

    def initial_state(
        self, user_id: int, event_types: Collection[str], include_subscribers: bool
    ) -> dict[str, Any]:
        """The part of the `register` answer for `event_types` (a subset of
        STATE_EVENT_TYPES), as the user sees it. With `realm_user`, the answer also holds
        the user's own keys (`models.wire.OWN_USER_KEYS`), as Zulip's does."""
        user = self._users.get(user_id)
        if user is None or not user.is_active:
            raise ViewerDeactivated()
        state: dict[str, Any] = {}
        if "realm" in event_types:
            # Zulip sends them with the `realm` state (its `fetch_initial_state_data`).
            state.update(TYPING_PROTOCOL_KEYS)
        if "realm_user" in event_types:
            state["realm_users"], state["realm_non_active_users"] = self.realm_users()
            state.update(self._own_user_keys(user_id))
        if not {"subscription", "stream"} & set(event_types):
            return state
        own = self._own.get(user_id, {})
        visible = [s for s in self._streams if can_see_stream(user.role, s, own.get(s.id, False))]
        if "stream" in event_types:
            state["streams"] = [self._stream_entry(s) for s in visible]
        if "subscription" in event_types:
            subscriptions: list[dict[str, Any]] = []
            unsubscribed: list[dict[str, Any]] = []
            never_subscribed: list[dict[str, Any]] = []
            for stream in visible:
                entry, never_entry = self._subscription_entries(stream, include_subscribers)
                active = own.get(stream.id)
                settings = self._settings.get((user_id, stream.id))
                if settings is not None:
                    # The shared entry carries the default settings: this user's own.
                    entry = {**entry, **settings.to_api()}
                if active is None:
                    never_subscribed.append(never_entry)
                elif active:
                    subscriptions.append(entry)
                else:
                    unsubscribed.append(entry)
            state["subscriptions"] = subscriptions
            state["unsubscribed"] = unsubscribed
            state["never_subscribed"] = never_subscribed
        return state


def fetch_initial_state(
    session: Session,
    user: UserProfile,
    event_types: Collection[str],
    include_subscribers: bool,
    *,
    slim_presence: bool = False,
    presence_history_limit_days: int | None = None,
    register_keys: bool = False,
    server_url: str = "",
    user_settings_object: bool = False,
) -> dict[str, Any]:
    """The part of the `register` answer for `event_types`, read in the caller's snapshot
    (`RealmState`, read for this one user), with the user's own message state
    (`models.messages.unreads`) when `event_types` asks for it, and the realm's presence
    with `presence` (`presences`, `presence_last_update_id`, `server_timestamp`; modern
    entries with `slim_presence`).

    With `register_keys`, every other key of the answer too (`models.register_keys`:
    the realm's settings, the system groups, `max_message_id`, ...), as `register`
    answers them (the address keys with `server_url` only). Without, the state a client
    cache (`clients.state`) holds, which the REST endpoints and most tests compare."""
    wants_groups = register_keys and USER_GROUPS_TYPE in event_types
    state = RealmState.read(
        session,
        user.realm_id,
        user.id,
        users="realm_user" in event_types or wants_groups,
        subscribers=include_subscribers and "subscription" in event_types,
    )
    answer = state.initial_state(user.id, set(event_types) & STATE_EVENT_TYPES, include_subscribers)
    # Per-user state: never part of a `RealmState`, which registers share (see
    # `models.messages.unreads`).
    answer.update(user_state(session, user.id, event_types))
    if register_keys:
        answer.update(own_message_keys(session, user.id, event_types))
        # The realm's name and creation time: read only for the keys that show them.
        facts = None
        if "realm" in event_types or wants_groups:
            facts = read_realm_facts(session, user.realm_id)
        created = facts.date_created if facts is not None else 0
        answer.update(
            realm_wide_state(
                event_types,
                facts,
                server_url,
                user_settings_object=user_settings_object,
                user_groups=lambda: state.user_groups(created),
            )
        )
    if PRESENCE_EVENT_TYPE in event_types:
        # Read here, never part of a `RealmState`: presence changes without events.
        answer.update(
            realm_presence(
                session,
                user.realm_id,
                slim=slim_presence,
                now=time.time(),
                history_limit_days=presence_history_limit_days,
            )
        )
    return answer


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
