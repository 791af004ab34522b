"""Ephemeral events: sent to the queues in memory of every shard, never stored, never
replayed (docs/architecture.md §5, "Ephemeral events"). Typing notifications are the
first kind.

This module owns both ends:

* **Sending** (`EphemeralBus.send`): a read-only computation (`models.typing`) runs in
  a snapshot on a database thread and says who receives what; nothing is written, no
  outbox row, no sequence number. On PostgreSQL the shard that took the request then
  sends one `pg_notify` on the ephemeral channel, outside any transaction (an
  autocommit connection: a NOTIFY writes no table); every shard, this one included,
  receives it on its LISTEN connection (`server.engine.wakeup`). On SQLite (one
  process) and in-memory databases the event goes straight to this process's queues.
* **Receiving** (`EphemeralBus.receive`, `EphemeralBus.deliver`): the payload is
  checked and offered to the warm queues of its users (`queues.routing.route_ephemeral`),
  whose waiting polls are answered at once.

The payload is compact JSON, ``{"realm_id", "user_ids", "event"}`` (and
``"capability"`` when the event needs a client capability). PostgreSQL refuses a
payload of 8,000 bytes or more; the same bound applies on every database, so behaviour
does not depend on it: a larger one is dropped, counted and logged (at most once a
minute), and the request still succeeds, as Zulip's own typing request does when it
notifies nobody. Zulip's cap of 100 subscribers on channel typing keeps typing far
below the bound.

PostgreSQL delivers a NOTIFY to every session of the database that LISTENs on the
channel, whatever its schema, so the channel is named after the schema the
connection uses (`ephemeral_channel`): two deployments (or two test schemas) in one
database never see each other's typing.

Runs on the event loop, except the work handed to the database threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Collection
from typing import Concatenate, ParamSpec, Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.database import Database
from queues.queue import EphemeralEvent
from queues.routing import route_ephemeral
from queues.types import JsonDict
from server.engine.database_threads import DatabaseThreads
from server.engine.live_queues import LiveQueues

log = logging.getLogger("eventq.ephemeral")

P = ParamSpec("P")

# The NOTIFY channel of the `public` schema; other schemas get a suffix
# (`ephemeral_channel`). Distinct from the outbox's wake-up channel, whose payload is
# only a realm id.
EPHEMERAL_CHANNEL = "eventq_ephemeral"
# PostgreSQL: "payload string must be shorter than 8000 bytes" (the default build).
MAX_PAYLOAD_BYTES = 7999
# A dropped or malformed payload is logged at most this often; the counts keep the rest.
DROP_LOG_INTERVAL_SECS = 60.0
_SEPARATORS = (",", ":")


def ephemeral_channel(schema: str) -> str:
    """The NOTIFY channel of ephemeral events for connections using `schema`."""
    if schema == "public":
        return EPHEMERAL_CHANNEL
    # A LISTEN channel is an identifier of at most 63 bytes; a digest fits any schema.
    return f"{EPHEMERAL_CHANNEL}_{hashlib.sha256(schema.encode()).hexdigest()[:16]}"


class EphemeralNotification(Protocol):
    """What a read-only computation returns for an ephemeral event
    (`models.typing.TypingNotification`)."""

    @property
    def realm_id(self) -> int: ...

    @property
    def user_ids(self) -> Collection[int]: ...

    @property
    def event(self) -> JsonDict: ...

    @property
    def required_capability(self) -> str | None: ...


def encode_payload(
    realm_id: int, user_ids: Collection[int], event_json: str, capability: str | None
) -> str:
    """The NOTIFY payload, around the event's own compact JSON."""
    head = {"realm_id": realm_id, "user_ids": sorted(user_ids)}
    if capability is not None:
        head["capability"] = capability
    encoded_head = json.dumps(head, separators=_SEPARATORS)
    return encoded_head[:-1] + ',"event":' + event_json + "}"


def decode_payload(payload: str) -> tuple[int, list[int], JsonDict, str | None]:
    """(realm id, user ids, event, capability) of a payload; ValueError if malformed.

    The payload comes from the database, written by a shard of this deployment, but it
    is checked as input all the same: a malformed one must not reach a queue.
    """
    value = json.loads(payload)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    realm_id, user_ids, event = value.get("realm_id"), value.get("user_ids"), value.get("event")
    capability = value.get("capability")
    if isinstance(realm_id, bool) or not isinstance(realm_id, int):
        raise ValueError("realm_id is not an integer")
    if not isinstance(user_ids, list) or any(
        isinstance(u, bool) or not isinstance(u, int) for u in user_ids
    ):
        raise ValueError("user_ids is not a list of integers")
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or "id" in event:
        raise ValueError("event is not an event without an id")
    if capability is not None and not isinstance(capability, str):
        raise ValueError("capability is not a string")
    return realm_id, user_ids, event, capability


class EphemeralBus:
    """Sends ephemeral events to every shard and delivers those that reach this one."""

    def __init__(
        self,
        db: Database,
        threads: DatabaseThreads,
        live: LiveQueues,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.threads = threads
        self.live = live
        self.clock = clock
        # PostgreSQL: through NOTIFY to every shard; otherwise this process only.
        self.via_notify = db.is_postgresql
        # The channel of the schema this database's connections use, read once.
        self._channel: str | None = None
        # sent, delivered (reached this shard's queues), too_large, malformed.
        self.counts: Counter[str] = Counter()
        self._last_logged = -math.inf

    @property
    def channel(self) -> str | None:
        """The NOTIFY channel, once the first send on PostgreSQL has read it."""
        return self._channel

    async def send(
        self,
        compute: Callable[Concatenate[Session, P], EphemeralNotification | None],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> bool:
        """Run `compute(session, *args, **kwargs)` in a snapshot (it reads; it may refuse the
        request with an `ActionError`) and send the event it returns to its users on
        every shard. False when there was nothing to send or it was dropped as too large.
        """

        def work() -> tuple[EphemeralNotification, str, int] | None:
            with self.db.snapshot() as session:
                notification = compute(session, *args, **kwargs)
            if notification is None or not notification.user_ids:
                return None
            event_json = json.dumps(notification.event, separators=_SEPARATORS)
            payload = encode_payload(
                notification.realm_id,
                notification.user_ids,
                event_json,
                notification.required_capability,
            )
            size = len(payload.encode())
            if size <= MAX_PAYLOAD_BYTES and self.via_notify:
                self._notify(payload)
            return notification, event_json, size

        outcome = await self.threads.run(work)
        if outcome is None:
            return False
        notification, event_json, size = outcome
        if size > MAX_PAYLOAD_BYTES:
            self.counts["too_large"] += 1
            self._log_drop(
                "ephemeral %s event for %d users dropped: %d bytes, past the %d a NOTIFY holds",
                notification.event.get("type"),
                len(notification.user_ids),
                size,
                MAX_PAYLOAD_BYTES,
            )
            return False
        self.counts["sent"] += 1
        if not self.via_notify:
            self.deliver(
                notification.realm_id,
                notification.user_ids,
                notification.event,
                notification.required_capability,
                event_json.encode(),
            )
        return True

    def _notify(self, payload: str) -> None:
        """One NOTIFY, on a database thread, on a connection in autocommit: it is
        delivered at once, and belongs to no transaction (so to none that writes)."""
        with self.db.engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            if self._channel is None:
                schema = connection.execute(text("SELECT current_schema()")).scalar_one()
                self._channel = ephemeral_channel(str(schema))
            connection.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": self._channel, "payload": payload},
            )

    def receive(self, payload: str) -> None:
        """A payload from the LISTEN connection (on the loop): deliver it here."""
        try:
            realm_id, user_ids, event, capability = decode_payload(payload)
        except ValueError as error:
            self.counts["malformed"] += 1
            self._log_drop("malformed ephemeral payload dropped: %s", error)
            return
        self.deliver(realm_id, user_ids, event, capability)

    def deliver(
        self,
        realm_id: int,
        user_ids: Collection[int],
        event: JsonDict,
        capability: str | None = None,
        encoded: bytes | None = None,
    ) -> None:
        """Offer the event to this process's warm queues of `user_ids` and answer their
        waiting polls now. Queues being built, cold queues and other shards' queues do
        not get it from here: at most once, never replayed."""
        shared = EphemeralEvent(realm_id, event, user_ids, capability, encoded)
        woken = route_ephemeral(self.live.registry, shared, self.clock())
        self.counts["delivered"] += 1
        self.live.answer_woken(woken)

    def _log_drop(self, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._last_logged >= DROP_LOG_INTERVAL_SECS:
            self._last_logged = now
            log.warning(message, *args)
