"""A client's local copy of users, channels and channel members, kept current by events.

`StateCache.from_register` builds the cache from a `register` answer; `apply` applies
one `realm_user`, `stream` or `subscription` event; `to_register_shape` renders the
cache in the exact shape `register` returns, so a test can compare a cache that applied
events with a fresh `register`. Subscriber lists are sets, so `peer_add` and
`peer_remove` events with many `stream_ids` x `user_ids` cost set operations, not
list scans.

Deactivation has two sequences (DESIGN.md §4): a client on the full sequence receives
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


class StateError(Exception):
    """Raised by `StateCache.apply` when an event contradicts the cache (a server bug)."""


class StateCache:
    """Users, channels and subscriber sets as one user sees them."""

    def __init__(self, user_id: int, *, removes_deactivated_users: bool = False) -> None:
        self.user_id = user_id
        # Legacy servers (feature level < 377) send no peer_remove on deactivation.
        self.removes_deactivated_users = removes_deactivated_users
        self.present: set[str] = set()
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
            if person.get("is_active") is False:
                self._user_deactivated(user_id)
        elif event["op"] == "remove":
            self.users.pop(user_id, None)

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
        for stream in event["streams"]:
            stream_id = stream["stream_id"]
            if event["op"] == "create":
                self.streams[stream_id] = dict(stream)
                if stream_id not in self.subscribed and stream_id not in self.unsubscribed:
                    self.never_subscribed[stream_id] = dict(stream)
                    if self.include_subscribers:
                        self.subscribers.setdefault(stream_id, set())
            elif event["op"] == "delete":
                for table in (
                    self.streams,
                    self.subscribed,
                    self.unsubscribed,
                    self.never_subscribed,
                ):
                    table.pop(stream_id, None)
                self.subscribers.pop(stream_id, None)
            elif event["op"] == "update":
                prop, value = event["property"], event["value"]
                for table in (
                    self.streams,
                    self.subscribed,
                    self.unsubscribed,
                    self.never_subscribed,
                ):
                    if stream_id in table:
                        table[stream_id][prop] = value

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
        return {key: value for key, value in shape.items() if key in self.present}
