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
names themselves (DESIGN.md §3).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from actions.errors import InvalidInput, NotAllowed, NotFound
from actions.peer_events import PeerEventGrouper
from actions.streams import do_create_stream
from models.outbox import PendingEvent, append_events, lock_realm
from models.queries import get_stream_by_name
from models.state import stream_to_api, subscription_to_api
from models.tables import Role, Stream, Subscription, UserProfile
from models.visibility import (
    AudienceIndex,
    active_subscribers,
    active_user_roles,
    can_see_stream,
    is_realm_admin,
)


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
            select(UserProfile).where(
                UserProfile.realm_id == realm_id, UserProfile.id.in_(wanted_users)
            )
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
) -> dict[tuple[int, int], tuple[int, bool]]:
    """`{(user_id, stream_id): (row id, active)}` for the pairs that have a row."""
    rows = session.execute(
        select(
            Subscription.user_profile_id,
            Subscription.stream_id,
            Subscription.id,
            Subscription.active,
        ).where(
            Subscription.user_profile_id.in_(list(user_ids)),
            Subscription.stream_id.in_(list(stream_ids)),
        )
    )
    return {(int(u), int(s)): (int(row_id), bool(active)) for u, s, row_id, active in rows}


def bulk_add_subscriptions(
    session: Session, realm_id: int, user_ids: Collection[int], stream_ids: Collection[int]
) -> SubscriptionChange:
    """Subscribe every user to every channel; pairs already subscribed are left alone."""
    lock_realm(session, realm_id)
    users, streams = _load_targets(session, realm_id, user_ids, stream_ids)
    existing = _existing_rows(session, users.keys(), streams.keys())
    change = SubscriptionChange()
    to_insert: list[dict[str, Any]] = []
    to_reactivate: list[int] = []
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
    if not change.changed:
        return change
    if to_insert:
        session.execute(insert(Subscription), to_insert)
    if to_reactivate:
        session.execute(
            update(Subscription).where(Subscription.id.in_(to_reactivate)).values(active=True)
        )

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
        events.append(
            PendingEvent(
                {
                    "type": "stream",
                    "op": "create",
                    "streams": [stream_to_api(s) for s in group_streams],
                },
                recipients,
            )
        )
    for group_streams, recipients in _group_by_stream_set(added_by_user):
        events.append(
            PendingEvent(
                {
                    "type": "subscription",
                    "op": "add",
                    "subscriptions": [
                        subscription_to_api(s, subscribers.get(s.id, set())) for s in group_streams
                    ],
                },
                recipients,
            )
        )
    peers = PeerEventGrouper("peer_add", audience, tell_changed_users=False)
    for stream_id in sorted(changed_streams):
        peers.add(streams[stream_id], subscribers.get(stream_id, set()), added_by_stream[stream_id])
    events.extend(peers.events())
    append_events(session, realm_id, events)
    return change


def bulk_remove_subscriptions(
    session: Session, realm_id: int, user_ids: Collection[int], stream_ids: Collection[int]
) -> SubscriptionChange:
    """Unsubscribe every user from every channel; pairs not subscribed are left alone."""
    lock_realm(session, realm_id)
    users, streams = _load_targets(session, realm_id, user_ids, stream_ids)
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
        return change
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
        events.append(
            PendingEvent(
                {
                    "type": "subscription",
                    "op": "remove",
                    "subscriptions": [{"name": s.name, "stream_id": s.id} for s in group_streams],
                },
                recipients,
            )
        )
    for group_streams, recipients in _group_by_stream_set(no_longer_visible):
        events.append(
            PendingEvent(
                {
                    "type": "stream",
                    "op": "delete",
                    "streams": [stream_to_api(s) for s in group_streams],
                },
                recipients,
            )
        )
    peers = PeerEventGrouper("peer_remove", audience, tell_changed_users=True)
    for stream_id in sorted(changed_streams):
        peers.add(
            streams[stream_id], subscribers.get(stream_id, set()), removed_by_stream[stream_id]
        )
    events.extend(peers.events())
    append_events(session, realm_id, events)
    return change


@dataclass
class SubscriptionRequestResult:
    """What `check_add_subscriptions` / `check_remove_subscriptions` did, by name."""

    changed: dict[int, list[str]] = field(default_factory=dict)
    unchanged: dict[int, list[str]] = field(default_factory=dict)


def _resolve_principals(
    session: Session, actor: UserProfile, principals: Collection[str | int] | None
) -> list[UserProfile]:
    """Users named by email or id (default: the actor), all of the actor's realm."""
    if not principals:
        return [actor]
    found: dict[int, UserProfile] = {}
    for principal in principals:
        if isinstance(principal, bool) or not isinstance(principal, str | int):
            raise InvalidInput("principals must be emails or user ids.")
        if isinstance(principal, int):
            user = session.get(UserProfile, principal)
        else:
            user = session.scalars(
                select(UserProfile).where(
                    UserProfile.realm_id == actor.realm_id,
                    UserProfile.email == principal.strip().lower(),
                )
            ).first()
        if user is None or user.realm_id != actor.realm_id or not user.is_active:
            raise NotFound(f"No such user: {principal}.")
        found[user.id] = user
    return list(found.values())


def _by_name_visible_to(
    session: Session, actor: UserProfile, names: Collection[str]
) -> tuple[dict[str, Stream], list[str]]:
    """Existing channels the actor may see, by lower-case name, and the missing names.

    A private channel the actor cannot see counts as missing, so its existence is not
    revealed.
    """
    wanted = {name.strip().lower(): name.strip() for name in names}
    rows = session.scalars(select(Stream).where(Stream.realm_id == actor.realm_id)).all()
    subscribed = set(
        session.scalars(
            select(Subscription.stream_id).where(
                Subscription.user_profile_id == actor.id, Subscription.active.is_(True)
            )
        )
    )
    found: dict[str, Stream] = {}
    hidden: list[str] = []
    for stream in rows:
        key = stream.name.lower()
        if key not in wanted:
            continue
        if can_see_stream(actor.role, stream, stream.id in subscribed):
            found[key] = stream
        else:
            hidden.append(wanted[key])
    missing = [original for key, original in wanted.items() if key not in found]
    return found, missing + [h for h in hidden if h not in missing]


def _locked_actor(session: Session, actor_id: int) -> UserProfile:
    """The acting user, with their realm's writer lock taken before anything else is read."""
    actor = session.get(UserProfile, actor_id)
    assert actor is not None and actor.is_active, "the server authenticated an active user"
    lock_realm(session, actor.realm_id)
    return actor


def check_add_subscriptions(
    session: Session,
    actor_id: int,
    names: list[str],
    principals: list[str | int] | None = None,
    *,
    invite_only: bool = False,
    is_web_public: bool = False,
) -> SubscriptionRequestResult:
    """`POST /users/me/subscriptions`: subscribe principals, creating missing channels.

    Guests may only subscribe themselves and may not create channels; only owners and
    administrators create web-public channels (Zulip's defaults).
    """
    actor = _locked_actor(session, actor_id)
    if not names:
        raise InvalidInput("Nothing to subscribe to: subscriptions is empty.")
    users = _resolve_principals(session, actor, principals)
    if actor.role == Role.GUEST and any(u.id != actor.id for u in users):
        raise NotAllowed("Guests cannot subscribe other users.")
    found, missing = _by_name_visible_to(session, actor, names)
    for name in missing:
        if actor.role == Role.GUEST:
            raise NotAllowed("Guests cannot create channels.")
        if is_web_public and not is_realm_admin(actor.role):
            raise NotAllowed("Only administrators can create web-public channels.")
        if get_stream_by_name(session, actor.realm_id, name) is not None:
            # It exists but is private and invisible to the actor: do not reveal it.
            raise NotFound(f"Channel '{name}' does not exist.")
        stream = do_create_stream(
            session, actor.realm_id, name, invite_only=invite_only, is_web_public=is_web_public
        )
        found[stream.name.lower()] = stream
    streams = [found[name.strip().lower()] for name in names]
    change = bulk_add_subscriptions(
        session, actor.realm_id, [u.id for u in users], list({s.id for s in streams})
    )
    return _by_name(change, streams)


def check_remove_subscriptions(
    session: Session, actor_id: int, names: list[str], principals: list[str | int] | None = None
) -> SubscriptionRequestResult:
    """`DELETE /users/me/subscriptions`: only administrators may remove other users."""
    actor = _locked_actor(session, actor_id)
    if not names:
        raise InvalidInput("Nothing to unsubscribe from: subscriptions is empty.")
    users = _resolve_principals(session, actor, principals)
    if any(u.id != actor.id for u in users) and not is_realm_admin(actor.role):
        raise NotAllowed("Insufficient permission to unsubscribe other users.")
    found, missing = _by_name_visible_to(session, actor, names)
    if missing:
        raise NotFound(f"Channel '{missing[0]}' does not exist.")
    streams = [found[name.strip().lower()] for name in names]
    change = bulk_remove_subscriptions(
        session, actor.realm_id, [u.id for u in users], list({s.id for s in streams})
    )
    return _by_name(change, streams)


def _by_name(change: SubscriptionChange, streams: list[Stream]) -> SubscriptionRequestResult:
    names = {s.id: s.name for s in streams}
    result = SubscriptionRequestResult()
    for user_id, stream_id in change.changed:
        result.changed.setdefault(user_id, []).append(names[stream_id])
    for user_id, stream_id in change.unchanged:
        result.unchanged.setdefault(user_id, []).append(names[stream_id])
    return result
