"""A client's local copy of users, channels and channel members, kept current by events.

`StateCache.from_register` builds the cache from a `register` answer; `apply` applies
one `realm_user`, `stream` or `subscription` event; `to_register_shape` renders the
cache in the exact shape `register` returns, so a test can compare a cache that applied
events with a fresh `register`. The current user's own keys of the answer (`user_id`,
`full_name`, `is_admin`, ...: Zulip sends them with `realm_user` state) are kept in
`own` and follow `realm_user` updates about the current user. Subscriber lists are
sets, so `peer_add` and `peer_remove` events with many `stream_ids` x `user_ids` cost
set operations, not list scans.

Deactivation has two sequences (docs/architecture.md §4): a client on the full sequence receives
`peer_remove` events before the `realm_user` update and only checks that the user is
in no list afterwards; a legacy client (`removes_deactivated_users=True`) receives the
update alone and removes the user from every subscriber list itself.

Not thread-safe; one cache belongs to one event loop or thread.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

JsonDict = dict[str, Any]
_STATE_KEYS = (
    "realm_users",
    "realm_non_active_users",
    "subscriptions",
    "unsubscribed",
    "never_subscribed",
    "streams",
)
# The current user's own keys of a `register` answer that fetched `realm_user` state
# (Zulip's POST /register: "Present if `realm_user` is present in fetch_event_types").
OWN_USER_KEYS = (
    "user_id",
    "email",
    "delivery_email",
    "full_name",
    "is_admin",
    "is_owner",
    "is_moderator",
    "is_guest",
    "avatar_source",
    "avatar_url",
    "avatar_url_medium",
    "can_create_streams",
    "can_create_public_streams",
    "can_create_private_streams",
    "can_create_web_public_streams",
    "can_subscribe_other_users",
    "can_invite_others_to_realm",
    "cross_realm_bots",
)
# Every key of a `register` answer the cache holds and `to_register_shape` renders.
REGISTER_STATE_KEYS = (*_STATE_KEYS, *OWN_USER_KEYS)
# Role numbers, for the current user's role flags after a role change.
_OWNER, _ADMINISTRATOR, _MODERATOR, _GUEST = 100, 200, 300, 600


class StateError(Exception):
    """Raised by `StateCache.apply` when an event contradicts the cache (a server bug)."""


class StateCache:
    """Users, channels and subscriber sets as one user sees them."""

    def __init__(self, user_id: int, *, removes_deactivated_users: bool = False) -> None:
        self.user_id = user_id
        # Legacy servers (feature level < 377) send no peer_remove on deactivation.
        self.removes_deactivated_users = removes_deactivated_users
        self.present: set[str] = set()
        # The current user's own keys of the register answer (empty without realm_user).
        self.own: JsonDict = {}
        self.users: dict[int, JsonDict] = {}
        self.streams: dict[int, JsonDict] = {}
        self.subscribed: dict[int, JsonDict] = {}
        self.unsubscribed: dict[int, JsonDict] = {}
        self.never_subscribed: dict[int, JsonDict] = {}
        # stream_id -> subscriber ids, for every channel whose subscribers we were told.
        self.subscribers: dict[int, set[int]] = {}
        self.include_subscribers = False

    @classmethod
    def from_register(
        cls,
        answer: Mapping[str, Any],
        user_id: int,
        *,
        removes_deactivated_users: bool = False,
        include_subscribers: bool | None = None,
    ) -> StateCache:
        """A cache holding the state of a `register` answer (or `fetch_initial_state`).

        `include_subscribers` is what the register asked for; when not given it is
        inferred from the answer, which fails for a user who sees no channel yet.
        """
        cache = cls(user_id, removes_deactivated_users=removes_deactivated_users)
        if include_subscribers is not None:
            cache.include_subscribers = include_subscribers
        cache.present = {key for key in _STATE_KEYS if key in answer}
        cache.own = {key: copy.deepcopy(answer[key]) for key in OWN_USER_KEYS if key in answer}
        for person in [*answer.get("realm_users", []), *answer.get("realm_non_active_users", [])]:
            cache.users[person["user_id"]] = dict(person)
        for stream in answer.get("streams", []):
            cache.streams[stream["stream_id"]] = dict(stream)
        for key, target in (
            ("subscriptions", cache.subscribed),
            ("unsubscribed", cache.unsubscribed),
            ("never_subscribed", cache.never_subscribed),
        ):
            for entry in answer.get(key, []):
                entry = dict(entry)
                if "subscribers" in entry:
                    if include_subscribers is None:
                        cache.include_subscribers = True
                    cache.subscribers[entry["stream_id"]] = set(entry.pop("subscribers"))
                target[entry["stream_id"]] = entry
        return cache

    # -- applying events -------------------------------------------------------------

    def apply(self, event: Mapping[str, Any]) -> None:
        """Apply one event; events of other types (and heartbeats) are ignored."""
        kind = event.get("type")
        if kind == "realm_user":
            self._apply_realm_user(event)
        elif kind == "stream":
            self._apply_stream(event)
        elif kind == "subscription":
            self._apply_subscription(event)

    def apply_all(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Apply events in order."""
        for event in events:
            self.apply(event)

    def _apply_realm_user(self, event: Mapping[str, Any]) -> None:
        person = event["person"]
        user_id = person["user_id"]
        if event["op"] == "add":
            self.users[user_id] = dict(person)
        elif event["op"] == "update":
            if user_id not in self.users:
                raise StateError(f"realm_user update for unknown user {user_id}")
            self.users[user_id].update({k: v for k, v in person.items() if k != "user_id"})
            if user_id == self.user_id and self.own:
                self._own_user_updated(person)
            if person.get("is_active") is False:
                self._user_deactivated(user_id)
        elif event["op"] == "remove":
            self.users.pop(user_id, None)

    def _own_user_updated(self, person: Mapping[str, Any]) -> None:
        """Carry a `realm_user` update about the current user into its own keys."""
        for key in (
            "full_name",
            "delivery_email",
            "avatar_url",
            "avatar_source",
            "avatar_url_medium",
        ):
            if key in person:
                self.own[key] = person[key]
        if "new_email" in person:
            self.own["email"] = person["new_email"]
        if "role" in person:
            role = int(person["role"])
            self.own["is_owner"] = role == _OWNER
            self.own["is_admin"] = role <= _ADMINISTRATOR
            self.own["is_moderator"] = role == _MODERATOR
            self.own["is_guest"] = role == _GUEST

    def _user_deactivated(self, user_id: int) -> None:
        if self.removes_deactivated_users:
            for members in self.subscribers.values():
                members.discard(user_id)
            return
        # The full sequence already removed the user with peer_remove events.
        still_listed = [sid for sid, members in self.subscribers.items() if user_id in members]
        if still_listed:
            raise StateError(
                f"user {user_id} deactivated but still subscribed to channels {still_listed}"
            )

    def _apply_stream(self, event: Mapping[str, Any]) -> None:
        if event["op"] == "delete":
            # `stream_ids` since Zulip feature level 343; older servers name them in
            # `streams` (whose objects hold only `stream_id` on newer ones).
            ids = event.get("stream_ids")
            if ids is None:
                ids = [stream["stream_id"] for stream in event["streams"]]
            for stream_id in ids:
                for table in (
                    self.streams,
                    self.subscribed,
                    self.unsubscribed,
                    self.never_subscribed,
                ):
                    table.pop(stream_id, None)
                self.subscribers.pop(stream_id, None)
            return
        if event["op"] == "update":
            # Zulip's form: one channel's `stream_id`, `property` and `value`.
            stream_id, prop, value = event["stream_id"], event["property"], event["value"]
            for table in (self.streams, self.subscribed, self.unsubscribed, self.never_subscribed):
                if stream_id in table:
                    table[stream_id][prop] = value
            return
        if event["op"] != "create":
            return  # an op this cache does not know changes nothing it holds
        for stream in event["streams"]:
            stream_id = stream["stream_id"]
            self.streams[stream_id] = dict(stream)
            if stream_id not in self.subscribed and stream_id not in self.unsubscribed:
                self.never_subscribed[stream_id] = dict(stream)
                if self.include_subscribers:
                    self.subscribers.setdefault(stream_id, set())

    def _apply_subscription(self, event: Mapping[str, Any]) -> None:
        op = event["op"]
        if op == "add":
            for sub in event["subscriptions"]:
                entry = dict(sub)
                stream_id = entry["stream_id"]
                members = set(entry.pop("subscribers", []))
                self.unsubscribed.pop(stream_id, None)
                self.never_subscribed.pop(stream_id, None)
                self.subscribed[stream_id] = entry
                if self.include_subscribers:
                    self.subscribers[stream_id] = members
        elif op == "remove":
            for sub in event["subscriptions"]:
                stream_id = sub["stream_id"]
                if stream_id in self.subscribed:
                    self.unsubscribed[stream_id] = self.subscribed.pop(stream_id)
                if stream_id in self.subscribers:
                    self.subscribers[stream_id].discard(self.user_id)
        elif op in ("peer_add", "peer_remove"):
            user_ids = set(event["user_ids"])
            for stream_id in event["stream_ids"]:
                if stream_id not in self.subscribers:
                    continue  # a channel whose members this client is not told
                members = self.subscribers[stream_id]
                if op == "peer_add":
                    members |= user_ids
                else:
                    members -= user_ids

    # -- reading ------------------------------------------------------------------------

    def members_of(self, stream_id: int) -> set[int]:
        """The channel's known subscribers (empty when unknown)."""
        return set(self.subscribers.get(stream_id, ()))

    def active_members_of(self, stream_id: int) -> set[int]:
        """Known subscribers who are active users."""
        return {u for u in self.members_of(stream_id) if self.users.get(u, {}).get("is_active")}

    def to_register_shape(self) -> JsonDict:
        """The cache in the shape of a `register` answer, sorted as the server sorts it."""

        def with_members(entries: dict[int, JsonDict]) -> list[JsonDict]:
            result = []
            for stream_id in sorted(entries):
                entry = copy.deepcopy(entries[stream_id])
                if self.include_subscribers:
                    entry["subscribers"] = sorted(self.subscribers.get(stream_id, set()))
                result.append(entry)
            return result

        shape: JsonDict = {
            "realm_users": [
                self.users[u] for u in sorted(self.users) if self.users[u].get("is_active")
            ],
            "realm_non_active_users": [
                self.users[u] for u in sorted(self.users) if not self.users[u].get("is_active")
            ],
            "streams": [self.streams[s] for s in sorted(self.streams)],
            "subscriptions": with_members(self.subscribed),
            "unsubscribed": with_members(self.unsubscribed),
            "never_subscribed": with_members(self.never_subscribed),
        }
        rendered = {key: value for key, value in shape.items() if key in self.present}
        rendered.update(copy.deepcopy(self.own))
        return rendered
