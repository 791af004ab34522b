"""`watch`: print one user's live events, and how channel membership changes, as text.

The engine of `eventq watch REALM EMAIL` (the CLI looks up the API key and calls
`watch`). Output, one line each, flushed as written:

- `# ...`: status: the registered queue, a reconnection, a resync;
- `[ID] TYPE OP DETAILS`: one live event, users by email and channels as `#name`;
- `members: #chan +added@... -removed@... #other ...`: after an event that changed the
  members of channels whose members the user is told about.

The summary compares the cache's subscriber sets after the event with the previous
ones, only for the channels the event names (every channel for an `is_active` change,
since a legacy server's deactivation names none), so a big realm costs little per event.

Caveats: `register` is tried once, so a server that is down at start raises
`ServerUnavailable` (the CLI reports it); later outages are retried by `EventClient`.
The queue is deleted when `watch` returns. Not thread-safe (one event loop).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TextIO

from clients.client import ALL_EVENTS, EventClient, JsonDict
from clients.state import StateCache

WATCH_USER_AGENT = "eventq-watch/0.1"


def _user(state: StateCache, user_id: int) -> str:
    return str(state.users.get(user_id, {}).get("email", f"user{user_id}"))


def _users(state: StateCache, user_ids: list[int]) -> str:
    return ",".join(sorted(_user(state, u) for u in user_ids))


def _channel(state: StateCache, stream_id: int, fallback: str | None = None) -> str:
    for table in (state.streams, state.subscribed, state.unsubscribed, state.never_subscribed):
        if stream_id in table and "name" in table[stream_id]:
            return f"#{table[stream_id]['name']}"
    # A deleted channel is gone from the cache; its event still names it.
    return f"#{fallback}" if fallback is not None else f"#{stream_id}"


def _channels(
    state: StateCache, entries: list[JsonDict], known: Mapping[int, str] | None = None
) -> str:
    def fallback(entry: JsonDict) -> str | None:
        name = entry.get("name")
        return str(name) if name is not None else (known or {}).get(int(entry["stream_id"]))

    return ",".join(_channel(state, int(e["stream_id"]), fallback(e)) for e in entries)


class ChannelNames:
    """Every channel name the user was told, kept after the channel leaves the cache: a
    `stream` `delete` event names channels by id only (Zulip since feature level 343),
    and the cache no longer knows them once the event is applied."""

    def __init__(self) -> None:
        self.known: dict[int, str] = {}

    def reset(self, state: StateCache) -> None:
        """Learn the names of every channel of a (re)built cache."""
        for table in (state.streams, state.subscribed, state.unsubscribed, state.never_subscribed):
            for stream_id, entry in table.items():
                if "name" in entry:
                    self.known[stream_id] = str(entry["name"])

    def learn(self, event: JsonDict) -> None:
        """Learn the names an event carries (channels created, subscribed, left)."""
        for key in ("streams", "subscriptions"):
            for entry in event.get(key, []):
                if isinstance(entry, dict) and "name" in entry and "stream_id" in entry:
                    self.known[int(entry["stream_id"])] = str(entry["name"])


def format_event(
    state: StateCache, event: JsonDict, known_names: Mapping[int, str] | None = None
) -> str:
    """`[id] type op details`, with the names the cache knows (state after the event);
    `known_names` names channels the event removed from the cache."""
    kind, op = str(event.get("type")), event.get("op")
    head = f"[{event.get('id')}] {kind}" + (f" {op}" if op is not None else "")
    details: str
    if kind == "realm_user" and "person" in event:
        person = event["person"]
        details = _user(state, int(person["user_id"]))
        if op == "update":  # the changed fields; an add is described by the email
            details += "".join(
                f" {key}={json.dumps(value, separators=(',', ':'))}"
                for key, value in sorted(person.items())
                if key != "user_id"
            )
    elif kind == "stream" and "streams" in event:
        details = _channels(state, event["streams"], known_names)
        if op == "update":
            value = json.dumps(event.get("value"), separators=(",", ":"))
            details += f" {event.get('property')}={value}"
    elif kind == "subscription" and "stream_ids" in event:
        channels = ",".join(_channel(state, int(s)) for s in event["stream_ids"])
        details = f"{channels} {_users(state, event.get('user_ids', []))}"
    elif kind == "subscription" and "subscriptions" in event:
        details = _channels(state, event["subscriptions"])
    else:
        rest = {k: v for k, v in event.items() if k not in ("id", "type", "op")}
        details = json.dumps(rest, separators=(",", ":"), sort_keys=True)
    return f"{head} {details}".rstrip()


class MemberTracker:
    """Subscriber sets as last printed, to print what each event changed."""

    def __init__(self) -> None:
        self.known: dict[int, set[int]] = {}

    def reset(self, state: StateCache) -> None:
        """Start over from `state` (after register or a resync)."""
        self.known = {stream_id: set(m) for stream_id, m in state.subscribers.items()}

    def summary(self, state: StateCache, event: JsonDict) -> str | None:
        """`members: ...` for the channels `event` changed, or None if it changed none."""
        affected = self._affected(state, event)
        parts = []
        for stream_id in sorted(affected):
            before = self.known.pop(stream_id, set())
            if stream_id not in state.subscribers:
                continue  # deleted, or a channel whose members we are not told
            after = state.members_of(stream_id)
            self.known[stream_id] = after
            changes = [f"+{_user(state, u)}" for u in after - before]
            changes += [f"-{_user(state, u)}" for u in before - after]
            if changes:
                # Sorted by email so the line does not depend on set order.
                changes.sort(key=lambda change: change[1:])
                parts.append(" ".join([_channel(state, stream_id), *changes]))
        return "members: " + " ".join(parts) if parts else None

    def _affected(self, state: StateCache, event: JsonDict) -> set[int]:
        kind = event.get("type")
        if kind == "subscription":
            if "stream_ids" in event:
                return {int(s) for s in event["stream_ids"]}
            return {int(s["stream_id"]) for s in event.get("subscriptions", [])}
        if kind == "realm_user" and "is_active" in event.get("person", {}):
            return set(state.subscribers) | set(self.known)
        if kind == "stream" and event.get("op") in ("create", "delete"):
            return {int(s["stream_id"]) for s in event.get("streams", [])}
        return set()


async def watch(
    site: str,
    email: str,
    api_key: str,
    out: TextIO,
    *,
    stop: asyncio.Event | None = None,
    max_events: int | None = None,
) -> None:
    """Register as `email` on `site` and print events to `out` until `stop` is set or
    `max_events` event lines were printed; raises what `EventClient.run` raises."""

    def write(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    client = EventClient(site, email, api_key, user_agent=WATCH_USER_AGENT)
    members = MemberTracker()
    names = ChannelNames()
    printed = 0
    reconnecting = False

    def on_event(event: JsonDict) -> None:
        nonlocal printed
        if max_events is not None and printed >= max_events:
            return
        write(format_event(client.state, event, names.known))
        names.learn(event)
        printed += 1
        summary = members.summary(client.state, event)
        if summary is not None:
            write(summary)
        if max_events is not None and printed >= max_events:
            client.stop()

    def on_resync(state: StateCache) -> None:
        members.reset(state)
        names.reset(state)
        write(f"# queue lost; registered again: queue {client.queue_id}, state rebuilt")

    def on_connection_state(connection: str) -> None:
        nonlocal reconnecting
        # Only outages are news: the first connection is implied by the header line.
        if connection == "reconnecting" or (connection == "connected" and reconnecting):
            write(f"# {connection}")
        reconnecting = connection == "reconnecting"

    stop_waiter: asyncio.Future[Any] | None = None
    try:
        state = await client.register()
        members.reset(state)
        names.reset(state)
        write(
            f"# watching {email} on {client.site}: queue {client.queue_id}, "
            f"{len(state.users)} users, {len(state.streams)} channels"
        )
        if max_events is not None and max_events <= 0:
            return
        client.on(ALL_EVENTS, on_event)
        client.on_resync = on_resync
        client.on_connection_state = on_connection_state
        runner = asyncio.ensure_future(client.run())
        waiters: set[asyncio.Future[Any]] = {runner}
        if stop is not None:
            stop_waiter = asyncio.ensure_future(stop.wait())
            waiters.add(stop_waiter)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            client.stop()
            await asyncio.wait({runner})
        runner.result()  # what ended run() other than stop(), e.g. AuthenticationError
    finally:
        if stop_waiter is not None:
            stop_waiter.cancel()
            await asyncio.wait({stop_waiter})
        await client.close(delete_queue=True)
