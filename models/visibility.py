"""Who sees what (docs/architecture.md §3), in one place for `register` and for event recipients.

The rules:

* every active user of a realm sees every user and receives `realm_user` events;
* a private channel (and its subscriber list) is visible to its subscribers and to
  the realm's owners and administrators;
* a public channel is visible to every active non-guest user and to guests
  subscribed to it;
* a web-public channel is visible to every active user.

A channel's metadata and its subscriber list have the same audience, so one predicate
serves both. Deactivated users see nothing and receive nothing.

Who may do what, by role (Zulip's defaults, as `actions.subscriptions` applies them and
the current user's `can_*` keys of `register` announce them): every non-guest creates
public and private channels and subscribes other users; only owners and administrators
create web-public channels and unsubscribe other users.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from typing import NamedTuple, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import Role, Subscription, UserProfile


class StreamAccess(Protocol):
    """The two flags of a channel that decide its audience."""

    @property
    def invite_only(self) -> bool: ...

    @property
    def is_web_public(self) -> bool: ...


def is_realm_admin(role: int) -> bool:
    """Owners and administrators: they see every private channel."""
    return role <= Role.ADMINISTRATOR


def can_create_channels(role: int) -> bool:
    """Whether a user with `role` may create public and private channels (not guests)."""
    return role != Role.GUEST


def can_create_web_public_channels(role: int) -> bool:
    """Whether a user with `role` may create web-public channels (administrators)."""
    return is_realm_admin(role)


def can_subscribe_others(role: int) -> bool:
    """Whether a user with `role` may subscribe other users to channels it sees."""
    return role != Role.GUEST


def can_unsubscribe_others(role: int) -> bool:
    """Whether a user with `role` may unsubscribe other users (administrators)."""
    return is_realm_admin(role)


def can_see_stream(role: int, stream: StreamAccess, is_subscribed: bool) -> bool:
    """Whether an active user with `role` sees `stream` and its subscribers."""
    if stream.is_web_public:
        return True
    if stream.invite_only:
        return is_subscribed or is_realm_admin(role)
    return is_subscribed or role != Role.GUEST


def stream_audience(
    stream: StreamAccess, active_roles: dict[int, int], subscribers: Collection[int]
) -> set[int]:
    """Every active user who sees `stream`, given the realm's active users and their roles.

    `subscribers` are the channel's active subscribers. Linear in the realm's size and
    free of SQL: actions load `active_roles` once and call this per channel.
    """
    if stream.is_web_public:
        return set(active_roles)
    audience = {user_id for user_id in subscribers if user_id in active_roles}
    if stream.invite_only:
        audience.update(uid for uid, role in active_roles.items() if is_realm_admin(role))
    else:
        audience.update(uid for uid, role in active_roles.items() if role != Role.GUEST)
    return audience


class AudienceIndex:
    """The realm's active users split by what they see, to compute many audiences fast.

    A channel's audience is a base set shared by many channels (everyone, every
    non-guest, or the administrators) plus the subscribers outside that base. Keys
    of that form are cheap to hash and compare, so actions group channels with the
    same audience without building a 10,000-member set per channel.
    """

    def __init__(self, active_roles: dict[int, int]) -> None:
        self.active_roles = active_roles
        self._bases: dict[str, frozenset[int]] = {
            "everyone": frozenset(active_roles),
            "non_guests": frozenset(u for u, r in active_roles.items() if r != Role.GUEST),
            "admins": frozenset(u for u, r in active_roles.items() if is_realm_admin(r)),
        }

    def key(self, stream: StreamAccess, subscribers: Collection[int]) -> AudienceKey:
        """The audience of `stream` with these active subscribers, as a hashable key."""
        if stream.is_web_public:
            base = "everyone"
        elif stream.invite_only:
            base = "admins"
        else:
            base = "non_guests"
        members = self._bases[base]
        extra = frozenset(u for u in subscribers if u in self.active_roles and u not in members)
        return AudienceKey(base, extra)

    def base(self, name: str) -> frozenset[int]:
        """One base set: "everyone", "non_guests" or "admins"."""
        return self._bases[name]

    def users(self, key: AudienceKey) -> frozenset[int]:
        """Every user in the audience `key` stands for."""
        if not key.extra:
            return self._bases[key.base]
        return self._bases[key.base] | key.extra


class AudienceKey(NamedTuple):
    """A channel audience: a named base set plus extra users (see `AudienceIndex`)."""

    base: str
    extra: frozenset[int]


def active_user_roles(session: Session, realm_id: int) -> dict[int, int]:
    """`{user_id: role}` for every active user of the realm, in one statement."""
    rows = session.execute(
        select(UserProfile.id, UserProfile.role).where(
            UserProfile.realm_id == realm_id, UserProfile.is_active.is_(True)
        )
    )
    return {int(user_id): int(role) for user_id, role in rows}


def active_subscribers(session: Session, stream_ids: Iterable[int]) -> dict[int, set[int]]:
    """`{stream_id: {user_id, ...}}` of the channels' current subscribers, in one statement.

    A subscription counts when it is active and its user is active.
    """
    ids = list(set(stream_ids))
    result: dict[int, set[int]] = defaultdict(set)
    if not ids:
        return result
    rows = session.execute(
        select(Subscription.stream_id, Subscription.user_profile_id).where(
            Subscription.stream_id.in_(ids),
            Subscription.active.is_(True),
            Subscription.is_user_active.is_(True),
        )
    )
    for stream_id, user_id in rows:
        result[int(stream_id)].add(int(user_id))
    return result
