"""Subscription actions: subscribing and unsubscribing users in bulk, with peer events.

Each call runs a fixed number of statements whatever the number of users and channels
(bulk SELECT, INSERT and UPDATE; no statement per row). Events, in order:

* subscribing: `stream` `create` to users who could not see a channel before (a
  private channel, or a public one for a guest), `subscription` `add` to each new
  subscriber, `subscription` `peer_add` to everyone else who sees the channel;
* unsubscribing: `subscription` `remove` to each removed user, `stream` `delete` to
  those who can no longer see the channel, `subscription` `peer_remove` to everyone
  else who still sees it.

Peer events are grouped, one event per set of identical recipients and users, with
`stream_ids` and `user_ids` lists, as Zulip does. No user receives a peer event that
names themselves (docs/architecture.md §3).

`check_add_subscriptions` and `check_remove_subscriptions` serve the REST requests, by
channel name and principal: they take the realm's writer lock first, then re-read the
acting user with every principal in one statement (`actions.actors`: the server
authenticated them before the transaction began, and a deactivation or a change of role
may have committed since, so `ActorDeactivated` and every role refusal are judged on
what is read under the lock), then resolve every name and every new channel in bulk, so
a request also runs a fixed number of statements whatever the number of principals and
channels.

`bulk_add_subscriptions` and `bulk_remove_subscriptions` act for nobody: they are the
machine administrator's (the command line, the demo) and the building blocks above.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from actions.actors import (
    CREATE_CHANNELS,
    CREATE_WEB_PUBLIC_CHANNELS,
    SUBSCRIBE_OTHERS,
    UNSUBSCRIBE_OTHERS,
    LockedActor,
    lock_realm_for_actor,
)
from actions.errors import InvalidInput, NotFound
from actions.peer_events import PeerEventGrouper
from actions.streams import check_new_stream, insert_streams
from actions.subscription_properties import pick_colors
from models.outbox import PendingEvent, append_events, lock_realm
from models.queries import get_streams_by_names
from models.tables import Stream, Subscription, UserProfile
from models.visibility import AudienceIndex, active_subscribers, active_user_roles, can_see_stream
from models.wire import (
    SUBSCRIPTION_SETTING_COLUMNS,
    SubscriptionSettings,
    stream_create_event,
    stream_delete_event,
    subscription_add_event,
    subscription_remove_event,
    subscription_to_api,
)

# One user's new subscriptions: (channel id, the user's settings of it), by channel id.
_AddedEntries = tuple[tuple[int, SubscriptionSettings], ...]


@dataclass
class SubscriptionChange:
    """What a bulk (un)subscribe did: `changed` pairs, and pairs already in that state."""

    changed: list[tuple[int, int]] = field(default_factory=list)
    unchanged: list[tuple[int, int]] = field(default_factory=list)

    def changed_streams_of(self, user_id: int) -> list[int]:
        """The channels whose subscription changed for this user."""
        return [stream_id for uid, stream_id in self.changed if uid == user_id]


def _group_by_stream_set(per_user: dict[int, list[Stream]]) -> list[tuple[list[Stream], set[int]]]:
    """Users with identical channel lists share one event: [(channels, users)]."""
    groups: dict[tuple[int, ...], set[int]] = defaultdict(set)
    streams_by_id: dict[int, Stream] = {}
    for user_id, streams in per_user.items():
        for stream in streams:
            streams_by_id[stream.id] = stream
        groups[tuple(sorted({s.id for s in streams}))].add(user_id)
    return [([streams_by_id[sid] for sid in key], users) for key, users in sorted(groups.items())]


def _load_targets(
    session: Session, realm_id: int, user_ids: Iterable[int], stream_ids: Iterable[int]
) -> tuple[dict[int, UserProfile], dict[int, Stream]]:
    """The users and channels named, all of this realm, in two statements."""
    wanted_users = set(user_ids)
    wanted_streams = set(stream_ids)
    users = {
        u.id: u
        for u in session.scalars(
            select(UserProfile)
            .where(UserProfile.realm_id == realm_id, UserProfile.id.in_(wanted_users))
            # `is_active` is checked below: read the committed row, not the session's copy.
            .execution_options(populate_existing=True)
        )
    }
    streams = {
        s.id: s
        for s in session.scalars(
            select(Stream).where(Stream.realm_id == realm_id, Stream.id.in_(wanted_streams))
        )
    }
    if missing := wanted_users - users.keys():
        raise NotFound(f"No such user: {sorted(missing)}.")
    if missing := wanted_streams - streams.keys():
        raise NotFound(f"No such channel: {sorted(missing)}.")
    if inactive := sorted(u.email for u in users.values() if not u.is_active):
        raise InvalidInput(f"User is deactivated: {', '.join(inactive)}.")
    return users, streams


def _existing_rows(
    session: Session, user_ids: Collection[int], stream_ids: Collection[int]
) -> dict[tuple[int, int], tuple[int, bool, SubscriptionSettings]]:
    """`{(user_id, stream_id): (row id, active, the user's settings)}` for the pairs
    that have a row."""
    rows = session.execute(
        select(
            Subscription.user_profile_id,
            Subscription.stream_id,
            Subscription.id,
            Subscription.active,
            *(getattr(Subscription, name) for name in SUBSCRIPTION_SETTING_COLUMNS),
        ).where(
            Subscription.user_profile_id.in_(list(user_ids)),
            Subscription.stream_id.in_(list(stream_ids)),
        )
    )
    return {
        (int(u), int(s)): (int(row_id), bool(active), SubscriptionSettings(*settings))
        for u, s, row_id, active, *settings in rows
    }


def _new_colors(
    session: Session, new_pairs: Collection[tuple[int, int]]
) -> dict[tuple[int, int], str]:
    """The colour of each new (user, channel) subscription, Zulip's way
    (`actions.subscription_properties.pick_colors`), from the colours each user's
    subscriptions already have, read in one statement."""
    new_by_user: dict[int, list[int]] = defaultdict(list)
    for user_id, stream_id in new_pairs:
        new_by_user[user_id].append(stream_id)
    used: dict[int, set[str]] = defaultdict(set)
    for user_id, color in session.execute(
        select(Subscription.user_profile_id, Subscription.color)
        .where(Subscription.user_profile_id.in_(list(new_by_user)))
        .distinct()
    ):
        used[int(user_id)].add(str(color))
    return {
        (user_id, stream_id): color
        for user_id, stream_ids in new_by_user.items()
        for stream_id, color in pick_colors(used[user_id], stream_ids).items()
    }


def bulk_add_subscriptions(
    session: Session, realm_id: int, user_ids: Collection[int], stream_ids: Collection[int]
) -> SubscriptionChange:
    """Subscribe every user to every channel; pairs already subscribed are left alone."""
    lock_realm(session, realm_id)
    users, streams = _load_targets(session, realm_id, user_ids, stream_ids)
    change, events = _add_subscriptions(session, realm_id, users, streams)
    append_events(session, realm_id, events)
    return change


def _add_subscriptions(
    session: Session,
    realm_id: int,
    users: dict[int, UserProfile],
    streams: dict[int, Stream],
    audience: AudienceIndex | None = None,
) -> tuple[SubscriptionChange, list[PendingEvent]]:
    """Subscribe checked, active `users` to `streams`; return the events to write.

    The caller holds the realm lock. `audience` is the realm's, when the caller has
    already read it; otherwise it is read here, only if something changes.
    """
    existing = _existing_rows(session, users.keys(), streams.keys())
    change = SubscriptionChange()
    to_insert: list[dict[str, Any]] = []
    to_reactivate: list[int] = []
    # A renewed subscription keeps the settings it had; a new one gets a colour.
    settings: dict[tuple[int, int], SubscriptionSettings] = {}
    for user_id in sorted(users):
        for stream_id in sorted(streams):
            row = existing.get((user_id, stream_id))
            if row is not None and row[1]:
                change.unchanged.append((user_id, stream_id))
                continue
            change.changed.append((user_id, stream_id))
            if row is None:
                to_insert.append(
                    {
                        "user_profile_id": user_id,
                        "stream_id": stream_id,
                        "active": True,
                        "is_user_active": True,
                    }
                )
            else:
                to_reactivate.append(row[0])
                settings[(user_id, stream_id)] = row[2]
    if not change.changed:
        return change, []
    if to_insert:
        colors = _new_colors(
            session, [(new["user_profile_id"], new["stream_id"]) for new in to_insert]
        )
        for new in to_insert:
            pair = (new["user_profile_id"], new["stream_id"])
            new["color"] = colors[pair]
            settings[pair] = SubscriptionSettings(colors[pair])
        session.execute(insert(Subscription), to_insert)
    if to_reactivate:
        session.execute(
            update(Subscription).where(Subscription.id.in_(to_reactivate)).values(active=True)
        )

    if audience is None:
        audience = AudienceIndex(active_user_roles(session, realm_id))
    changed_streams = {stream_id for _, stream_id in change.changed}
    subscribers = active_subscribers(session, changed_streams)
    added_by_user: dict[int, list[Stream]] = defaultdict(list)
    added_by_stream: dict[int, set[int]] = defaultdict(set)
    newly_visible: dict[int, list[Stream]] = defaultdict(list)
    for user_id, stream_id in change.changed:
        stream = streams[stream_id]
        added_by_user[user_id].append(stream)
        added_by_stream[stream_id].add(user_id)
        if not can_see_stream(users[user_id].role, stream, is_subscribed=False):
            newly_visible[user_id].append(stream)

    events: list[PendingEvent] = []
    for group_streams, recipients in _group_by_stream_set(newly_visible):
        events.append(PendingEvent(stream_create_event(group_streams), recipients))
    # Users whose new subscriptions are the same channels with the same settings share
    # one event.
    added_with_settings: dict[_AddedEntries, set[int]] = defaultdict(set)
    for user_id, user_streams in added_by_user.items():
        key = tuple(sorted((s.id, settings[(user_id, s.id)]) for s in user_streams))
        added_with_settings[key].add(user_id)
    for key, recipients in sorted(added_with_settings.items(), key=lambda item: min(item[1])):
        entries = [
            subscription_to_api(streams[stream_id], subscribers.get(stream_id, set()), own)
            for stream_id, own in key
        ]
        events.append(PendingEvent(subscription_add_event(entries), recipients))
    peers = PeerEventGrouper("peer_add", audience, tell_changed_users=False)
    for stream_id in sorted(changed_streams):
        peers.add(streams[stream_id], subscribers.get(stream_id, set()), added_by_stream[stream_id])
    events.extend(peers.events())
    return change, events


def bulk_remove_subscriptions(
    session: Session, realm_id: int, user_ids: Collection[int], stream_ids: Collection[int]
) -> SubscriptionChange:
    """Unsubscribe every user from every channel; pairs not subscribed are left alone."""
    lock_realm(session, realm_id)
    users, streams = _load_targets(session, realm_id, user_ids, stream_ids)
    change, events = _remove_subscriptions(session, realm_id, users, streams)
    append_events(session, realm_id, events)
    return change


def _remove_subscriptions(
    session: Session, realm_id: int, users: dict[int, UserProfile], streams: dict[int, Stream]
) -> tuple[SubscriptionChange, list[PendingEvent]]:
    """Unsubscribe checked `users` from `streams`; return the events to write. The caller
    holds the realm lock."""
    existing = _existing_rows(session, users.keys(), streams.keys())
    change = SubscriptionChange()
    to_deactivate: list[int] = []
    for user_id in sorted(users):
        for stream_id in sorted(streams):
            row = existing.get((user_id, stream_id))
            if row is None or not row[1]:
                change.unchanged.append((user_id, stream_id))
                continue
            change.changed.append((user_id, stream_id))
            to_deactivate.append(row[0])
    if not change.changed:
        return change, []
    session.execute(
        update(Subscription).where(Subscription.id.in_(to_deactivate)).values(active=False)
    )

    audience = AudienceIndex(active_user_roles(session, realm_id))
    changed_streams = {stream_id for _, stream_id in change.changed}
    subscribers = active_subscribers(session, changed_streams)
    removed_by_user: dict[int, list[Stream]] = defaultdict(list)
    removed_by_stream: dict[int, set[int]] = defaultdict(set)
    no_longer_visible: dict[int, list[Stream]] = defaultdict(list)
    for user_id, stream_id in change.changed:
        stream = streams[stream_id]
        removed_by_user[user_id].append(stream)
        removed_by_stream[stream_id].add(user_id)
        if not can_see_stream(users[user_id].role, stream, is_subscribed=False):
            no_longer_visible[user_id].append(stream)

    events: list[PendingEvent] = []
    for group_streams, recipients in _group_by_stream_set(removed_by_user):
        events.append(PendingEvent(subscription_remove_event(group_streams), recipients))
    for group_streams, recipients in _group_by_stream_set(no_longer_visible):
        events.append(PendingEvent(stream_delete_event(group_streams), recipients))
    peers = PeerEventGrouper("peer_remove", audience, tell_changed_users=True)
    for stream_id in sorted(changed_streams):
        peers.add(
            streams[stream_id], subscribers.get(stream_id, set()), removed_by_stream[stream_id]
        )
    events.extend(peers.events())
    return change, events


@dataclass
class SubscriptionRequestResult:
    """What `check_add_subscriptions` / `check_remove_subscriptions` did, by name."""

    changed: dict[int, list[str]] = field(default_factory=dict)
    unchanged: dict[int, list[str]] = field(default_factory=dict)


def _locked_actor(
    session: Session, realm_id: int, actor_id: int, principals: Collection[object] | None
) -> LockedActor:
    """Take the realm's writer lock, then read the acting user and every principal in one
    statement (`actions.actors.lock_realm_for_actor`, which refuses a deactivated actor).
    """
    given = list(principals or ())
    ids = {p for p in given if isinstance(p, int) and not isinstance(p, bool)}
    emails = {p.strip().lower() for p in given if isinstance(p, str)}
    return lock_realm_for_actor(session, realm_id, actor_id, user_ids=ids, emails=emails)


def _resolve_principals(
    actor: UserProfile, principals: Collection[object] | None, known: LockedActor
) -> list[UserProfile]:
    """Users named by email or id (default: the actor), all active users of the actor's
    realm; the first principal that is not (in the order given) is the one reported."""
    if not principals:
        return [actor]
    found: dict[int, UserProfile] = {}
    for principal in principals:
        if isinstance(principal, bool) or not isinstance(principal, str | int):
            raise InvalidInput("principals must be emails or user ids.")
        if isinstance(principal, int):
            user = known.by_id.get(principal)
        else:
            user = known.by_email.get(principal.strip().lower())
        if user is None or not user.is_active:
            raise NotFound(f"No such user: {principal}.")
        found[user.id] = user
    return list(found.values())


@dataclass
class _NamedChannels:
    """The channels a request names, as the acting user may know them."""

    visible: dict[str, Stream]  # by lower-case name
    missing: list[str]  # names (stripped) of no channel the actor may see, in order
    hidden: set[str]  # those of `missing` that name a channel the actor may not see


def _by_name_visible_to(
    session: Session, actor: UserProfile, names: Collection[str]
) -> _NamedChannels:
    """Match the names to channels (case-insensitively) and split them by what the actor
    may see, in two statements however many names there are.

    A private channel the actor cannot see counts as missing, so its existence is not
    revealed.
    """
    # One entry per name in any case; the last spelling given is the one kept.
    wanted = {name.strip().lower(): name.strip() for name in names}
    matched = get_streams_by_names(session, actor.realm_id, wanted.values())
    subscribed: set[int] = set()
    if matched:
        subscribed = set(
            session.scalars(
                select(Subscription.stream_id).where(
                    Subscription.user_profile_id == actor.id,
                    Subscription.active.is_(True),
                    Subscription.stream_id.in_({s.id for s in matched.values()}),
                )
            )
        )
    named = _NamedChannels({}, [], set())
    for key, name in wanted.items():
        stream = matched.get(name)
        if stream is not None and can_see_stream(actor.role, stream, stream.id in subscribed):
            named.visible[key] = stream
            continue
        named.missing.append(name)
        if stream is not None:
            named.hidden.add(name)
    return named


def check_add_subscriptions(
    session: Session,
    realm_id: int,
    actor_id: int,
    names: list[str],
    principals: list[str | int] | None = None,
    *,
    invite_only: bool = False,
    is_web_public: bool = False,
) -> SubscriptionRequestResult:
    """`POST /users/me/subscriptions`: subscribe principals, creating missing channels.

    Guests may only subscribe themselves and may not create channels; only owners and
    administrators create web-public channels (Zulip's defaults). New channels are
    inserted in one statement, and their `stream` `create` events are written with the
    subscription events in one `append_events` call.
    """
    known = _locked_actor(session, realm_id, actor_id, principals)
    actor = known.user
    if not names:
        raise InvalidInput("Nothing to subscribe to: subscriptions is empty.")
    users = _resolve_principals(actor, principals, known)
    if any(u.id != actor.id for u in users):
        SUBSCRIBE_OTHERS.check(actor.role)
    named = _by_name_visible_to(session, actor, names)
    # Every refusal is decided before anything is written, in the order of the names,
    # so the first bad name is the one reported.
    to_create: list[str] = []
    for name in named.missing:
        CREATE_CHANNELS.check(actor.role)
        if is_web_public:
            CREATE_WEB_PUBLIC_CHANNELS.check(actor.role)
        if name in named.hidden:
            # It exists but is private and invisible to the actor: do not reveal it.
            raise NotFound(f"Channel '{name}' does not exist.")
        to_create.append(
            check_new_stream(name, invite_only=invite_only, is_web_public=is_web_public)
        )
    found = dict(named.visible)
    audience: AudienceIndex | None = None
    events: list[PendingEvent] = []
    if to_create:
        audience = AudienceIndex(active_user_roles(session, realm_id))
        created, events = insert_streams(
            session,
            realm_id,
            to_create,
            audience,
            invite_only=invite_only,
            is_web_public=is_web_public,
        )
        found.update((stream.name.lower(), stream) for stream in created)
    streams = [found[name.strip().lower()] for name in names]
    change, added = _add_subscriptions(
        session, realm_id, {u.id: u for u in users}, {s.id: s for s in streams}, audience
    )
    append_events(session, realm_id, events + added)
    return _by_name(change, streams)


def check_remove_subscriptions(
    session: Session,
    realm_id: int,
    actor_id: int,
    names: list[str],
    principals: list[str | int] | None = None,
) -> SubscriptionRequestResult:
    """`DELETE /users/me/subscriptions`: only administrators may remove other users."""
    known = _locked_actor(session, realm_id, actor_id, principals)
    actor = known.user
    if not names:
        raise InvalidInput("Nothing to unsubscribe from: subscriptions is empty.")
    users = _resolve_principals(actor, principals, known)
    if any(u.id != actor.id for u in users):
        UNSUBSCRIBE_OTHERS.check(actor.role)
    named = _by_name_visible_to(session, actor, names)
    if named.missing:
        raise NotFound(f"Channel '{named.missing[0]}' does not exist.")
    streams = [named.visible[name.strip().lower()] for name in names]
    change, events = _remove_subscriptions(
        session, realm_id, {u.id: u for u in users}, {s.id: s for s in streams}
    )
    append_events(session, realm_id, events)
    return _by_name(change, streams)


def _by_name(change: SubscriptionChange, streams: list[Stream]) -> SubscriptionRequestResult:
    names = {s.id: s.name for s in streams}
    result = SubscriptionRequestResult()
    for user_id, stream_id in change.changed:
        result.changed.setdefault(user_id, []).append(names[stream_id])
    for user_id, stream_id in change.unchanged:
        result.unchanged.setdefault(user_id, []).append(names[stream_id])
    return result
