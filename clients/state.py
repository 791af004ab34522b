"""A client's local copy of users, channels and channel members, kept current by events.

`StateCache.from_register` builds the cache from a `register` answer; `apply` applies
one `realm_user`, `stream` or `subscription` event; `to_register_shape` renders the
cache in the exact shape `register` returns, so a test can compare a cache that applied
events with a fresh `register`. The current user's own keys of the answer (`user_id`,
`full_name`, `is_admin`, ...: Zulip sends them with `realm_user` state) are kept in
`own` and follow `realm_user` updates about the current user. Subscriber lists are
sets, so `peer_add` and `peer_remove` events with many `stream_ids` x `user_ids` cost
set operations, not list scans.

The user's own message state, when the answer holds it: `unread_msgs` (each unread
message id with its conversation; a `message` event without the `read` flag adds one,
an `update_message_flags` event of `read` removes ids or, marking unread, adds them
from its `message_details`) and `starred_messages` (`update_message_flags` of
`starred`). Both render in the server's order (`models.messages.unreads`).

The realm's presence, when the answer holds it (`presences`, `presence_last_update_id`,
`server_timestamp`): a `presence` event replaces its user's legacy entry, or, in the
modern shape (`slim_presence`), moves the user's timestamps forward, as Zulip's web app
does; a deactivated user's entry goes, as a fresh `register` leaves it out. The rest of
presence changes without events (the client polls `POST /users/me/presence`), so the
answer's `presence_last_update_id` and `server_timestamp` are polling bookkeeping: kept
in `presence_meta` (the time moves with each event) and left out of `to_register_shape`.

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
# Server constants of a `register` answer that fetched `realm` state: the typing
# protocol's periods. No event changes them; the cache keeps them as they came.
SERVER_KEYS = (
    "server_typing_started_expiry_period_milliseconds",
    "server_typing_stopped_wait_period_milliseconds",
    "server_typing_started_wait_period_milliseconds",
)
# The user's own message state (Zulip: `unread_msgs` when `message` and
# `update_message_flags` are fetched, `starred_messages` when `starred_messages` is).
MESSAGE_STATE_KEYS = ("unread_msgs", "starred_messages")
# The realm's presence (Zulip: when `presence` is fetched), and what comes with it for
# the client's next poll, which is not state.
PRESENCE_STATE_KEYS = ("presences",)
PRESENCE_POLL_KEYS = ("presence_last_update_id", "server_timestamp")
# Where an unread message belongs: ("stream", channel id, topic), or ("dm", the sorted
# ids of the conversation's participants, the current user included).
Conversation = tuple[Any, ...]
# Every key of a `register` answer the cache holds and `to_register_shape` renders.
REGISTER_STATE_KEYS = (
    *_STATE_KEYS,
    *OWN_USER_KEYS,
    *SERVER_KEYS,
    *MESSAGE_STATE_KEYS,
    *PRESENCE_STATE_KEYS,
)
# The flags that put an unread message among `unread_msgs`' mentions.
_MENTION_FLAGS = frozenset(
    {"mentioned", "stream_wildcard_mentioned", "topic_wildcard_mentioned", "wildcard_mentioned"}
)
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
        # The server constants of the register answer (empty without realm state).
        self.server: JsonDict = {}
        self.users: dict[int, JsonDict] = {}
        self.streams: dict[int, JsonDict] = {}
        self.subscribed: dict[int, JsonDict] = {}
        self.unsubscribed: dict[int, JsonDict] = {}
        self.never_subscribed: dict[int, JsonDict] = {}
        # stream_id -> subscriber ids, for every channel whose subscribers we were told.
        self.subscribers: dict[int, set[int]] = {}
        self.include_subscribers = False
        # `unread_msgs`, when fetched: message id -> its conversation; and the rest.
        self.unread: dict[int, Conversation] = {}
        self.unread_mentions: set[int] = set()
        self.old_unreads_missing = False
        self.starred: set[int] = set()
        # `presences` when fetched (None: not fetched), keyed by email, or by user id in
        # the modern shape; and the answer's `presence_last_update_id`, `server_timestamp`.
        self.presences: dict[str, JsonDict] | None = None
        self.slim_presence = False
        self.presence_meta: JsonDict = {}

    @classmethod
    def from_register(
        cls,
        answer: Mapping[str, Any],
        user_id: int,
        *,
        removes_deactivated_users: bool = False,
        include_subscribers: bool | None = None,
        slim_presence: bool | None = None,
    ) -> StateCache:
        """A cache holding the state of a `register` answer (or `fetch_initial_state`).

        `include_subscribers` is what the register asked for; when not given it is
        inferred from the answer, which fails for a user who sees no channel yet.
        `slim_presence` likewise (inferred from the keys of `presences`: user ids).
        """
        cache = cls(user_id, removes_deactivated_users=removes_deactivated_users)
        if include_subscribers is not None:
            cache.include_subscribers = include_subscribers
        cache.present = {key for key in (*_STATE_KEYS, *MESSAGE_STATE_KEYS) if key in answer}
        if "unread_msgs" in answer:
            cache._load_unreads(answer["unread_msgs"])
        cache.starred = set(answer.get("starred_messages", []))
        cache.own = {key: copy.deepcopy(answer[key]) for key in OWN_USER_KEYS if key in answer}
        cache.server = {key: answer[key] for key in SERVER_KEYS if key in answer}
        if "presences" in answer:
            cache.presences = copy.deepcopy(dict(answer["presences"]))
            cache.presence_meta = {key: answer[key] for key in PRESENCE_POLL_KEYS if key in answer}
            cache.slim_presence = (
                slim_presence
                if slim_presence is not None
                else any(key.isdigit() for key in cache.presences)
            )
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
        elif kind == "message":
            self._apply_message(event)
        elif kind == "update_message_flags":
            self._apply_message_flags(event)
        elif kind == "update_message":
            self._apply_update_message(event)
        elif kind == "delete_message":
            self._apply_delete_message(event)
        elif kind == "presence":
            self._apply_presence(event)

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
                self._forget_presence(user_id)
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

    def _apply_presence(self, event: Mapping[str, Any]) -> None:
        """A user came online (or showed presence for the first time)."""
        if self.presences is None:
            return  # presence was not fetched
        if "server_timestamp" in self.presence_meta:
            self.presence_meta["server_timestamp"] = event["server_timestamp"]
        clients: Mapping[str, JsonDict] = event["presence"]
        if self.slim_presence:
            key = str(event["user_id"])
            entry = dict(self.presences.get(key, {}))
            for info in clients.values():
                moment = info["timestamp"]
                if info["status"] == "active":
                    entry["active_timestamp"] = max(entry.get("active_timestamp", moment), moment)
                entry["idle_timestamp"] = max(entry.get("idle_timestamp", moment), moment)
            self.presences[key] = entry
            return
        # The legacy entry: the event's clients (one, `website`), and the newest again
        # as `aggregated`, without `pushable`.
        newest = max(clients.values(), key=lambda info: info["timestamp"])
        aggregated = {key: newest[key] for key in ("client", "status", "timestamp")}
        self.presences[event["email"]] = {"aggregated": aggregated, **copy.deepcopy(clients)}

    def _forget_presence(self, user_id: int) -> None:
        """A deactivated user has no presence in a fresh `register`."""
        if self.presences is None:
            return
        self.presences.pop(str(user_id), None)
        email = self.users.get(user_id, {}).get("email")
        if email is not None:
            self.presences.pop(email, None)

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
        elif op == "update":
            # One of the user's own settings of a channel they are subscribed to.
            own = self.subscribed.get(event["stream_id"])
            if own is not None:
                own[event["property"]] = event["value"]
                # The legacy `in_home_view` is the inverse of `is_muted`; Zulip sends
                # both events, and a client keeps both fields true after either.
                if event["property"] == "is_muted":
                    own["in_home_view"] = not event["value"]
                elif event["property"] == "in_home_view":
                    own["is_muted"] = not event["value"]
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

    # -- message state -------------------------------------------------------------------

    def _load_unreads(self, unread: Mapping[str, Any]) -> None:
        for entry in unread["streams"]:
            key: Conversation = ("stream", entry["stream_id"], entry["topic"])
            self.unread.update(dict.fromkeys(entry["unread_message_ids"], key))
        for entry in unread["pms"]:
            key = ("dm", tuple(sorted({self.user_id, entry["other_user_id"]})))
            self.unread.update(dict.fromkeys(entry["unread_message_ids"], key))
        for entry in unread["huddles"]:
            participants = tuple(sorted(int(u) for u in entry["user_ids_string"].split(",")))
            self.unread.update(dict.fromkeys(entry["unread_message_ids"], ("dm", participants)))
        self.unread_mentions = set(unread["mentions"])
        self.old_unreads_missing = bool(unread["old_unreads_missing"])

    def _apply_message(self, event: Mapping[str, Any]) -> None:
        flags = event.get("flags", [])
        message = event["message"]
        if "unread_msgs" in self.present and "read" not in flags:
            if message["type"] == "stream":
                key: Conversation = ("stream", message["stream_id"], message["subject"])
            else:
                key = ("dm", tuple(sorted(p["id"] for p in message["display_recipient"])))
            self.unread[message["id"]] = key
            if _MENTION_FLAGS & set(flags):
                self.unread_mentions.add(message["id"])
        if "starred" in flags:
            self.starred.add(message["id"])

    def _apply_message_flags(self, event: Mapping[str, Any]) -> None:
        adding = event["op"] == "add"
        ids = event["messages"]
        if event["flag"] == "starred":
            if adding:
                self.starred.update(ids)
            else:
                self.starred.difference_update(ids)
        if event["flag"] != "read" or "unread_msgs" not in self.present:
            return
        if adding:
            if event.get("all"):
                self.unread.clear()
                self.unread_mentions.clear()
                return
            for message_id in ids:
                self.unread.pop(message_id, None)
                self.unread_mentions.discard(message_id)
            return
        details = event.get("message_details")
        if details is None:
            raise StateError("update_message_flags removing read without message_details")
        for message_id in ids:
            detail = details[str(message_id)]
            if detail["type"] == "stream":
                key: Conversation = ("stream", detail["stream_id"], detail["topic"])
            else:
                key = ("dm", tuple(sorted({self.user_id, *detail["user_ids"]})))
            self.unread[message_id] = key
            if detail.get("mentioned"):
                self.unread_mentions.add(message_id)

    def _apply_update_message(self, event: Mapping[str, Any]) -> None:
        """An edit or a move: moved unread messages change conversation, and the edited
        message's mention bits follow its new `flags` (Zulip's `update_message`)."""
        if "unread_msgs" not in self.present:
            return
        new_stream = event.get("new_stream_id")
        new_topic = event.get("subject")
        if new_stream is not None or new_topic is not None:
            for message_id in event["message_ids"]:
                key = self.unread.get(message_id)
                if key is None or key[0] != "stream":
                    continue
                stream_id = new_stream if new_stream is not None else key[1]
                self.unread[message_id] = (
                    "stream",
                    stream_id,
                    new_topic if new_topic is not None else key[2],
                )
        message_id = event["message_id"]
        if message_id in self.unread and "orig_content" in event:
            flags = set(event.get("flags", []))
            if flags & _MENTION_FLAGS:
                self.unread_mentions.add(message_id)
            else:
                self.unread_mentions.discard(message_id)

    def _apply_delete_message(self, event: Mapping[str, Any]) -> None:
        """Deleted messages (or ones the user lost access to) leave every state."""
        ids = event.get("message_ids", [event.get("message_id")])
        for message_id in ids:
            self.unread.pop(message_id, None)
            self.unread_mentions.discard(message_id)
            self.starred.discard(message_id)

    def _unread_msgs_shape(self) -> JsonDict:
        """`unread_msgs` grouped and sorted as the server groups them."""
        groups: dict[Conversation, list[int]] = {}
        for message_id, key in self.unread.items():
            groups.setdefault(key, []).append(message_id)
        streams: list[JsonDict] = []
        pms: list[JsonDict] = []
        huddles: list[JsonDict] = []
        for key in sorted(groups):
            ids = sorted(groups[key])
            if key[0] == "stream":
                streams.append({"stream_id": key[1], "topic": key[2], "unread_message_ids": ids})
                continue
            others = [u for u in key[1] if u != self.user_id]
            if len(others) <= 1:
                other = others[0] if others else self.user_id
                pms.append({"other_user_id": other, "sender_id": other, "unread_message_ids": ids})
            else:
                huddles.append(
                    {
                        "user_ids_string": ",".join(str(u) for u in key[1]),
                        "unread_message_ids": ids,
                    }
                )
        return {
            "count": len(self.unread),
            "pms": sorted(pms, key=lambda entry: entry["other_user_id"]),
            "streams": streams,
            "huddles": huddles,
            "mentions": sorted(self.unread_mentions),
            "old_unreads_missing": self.old_unreads_missing,
        }

    # -- reading ------------------------------------------------------------------------

    def members_of(self, stream_id: int) -> set[int]:
        """The channel's known subscribers (empty when unknown)."""
        return set(self.subscribers.get(stream_id, ()))

    def active_members_of(self, stream_id: int) -> set[int]:
        """Known subscribers who are active users."""
        return {u for u in self.members_of(stream_id) if self.users.get(u, {}).get("is_active")}

    def to_register_shape(self) -> JsonDict:
        """The cache in the shape of a `register` answer, sorted as the server sorts it
        (without the presence poll's bookkeeping, `PRESENCE_POLL_KEYS`)."""

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
        if "unread_msgs" in self.present:
            shape["unread_msgs"] = self._unread_msgs_shape()
        if "starred_messages" in self.present:
            shape["starred_messages"] = sorted(self.starred)
        rendered = {key: value for key, value in shape.items() if key in self.present}
        rendered.update(copy.deepcopy(self.own))
        rendered.update(self.server)
        if self.presences is not None:
            rendered["presences"] = copy.deepcopy(self.presences)
        return rendered
