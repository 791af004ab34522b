"""Shared vocabulary of the queues package: JSON payloads, client
capabilities, and the committed event that many queues share.

A `SharedEvent` is created once per committed outbox row and referenced by
every queue that accepts it; it is never copied per queue. Its JSON body is
encoded once, lazily, and each queue splices its own event id onto that
encoding. Treat ``SharedEvent.data`` as immutable once the event exists:
mutating it would change what every queue delivers and would not refresh the
cached encoding. A `message` event has a second form, for queues that asked for
raw Markdown (`SharedEvent.raw_markdown_variant`), built once and shared too.

Not thread-safe; call from the IOLoop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

JsonDict = dict[str, Any]

# A stored `message` event carries, under this key, the fields of its `message` that a
# queue registered with `apply_markdown` false receives instead (the content as written,
# `content_type` "text/x-markdown"). The key never reaches a client: `SharedEvent` takes
# it out of `data`, and `raw_markdown_variant` builds the other form once, shared by
# every such queue, so routing still hands one object to each queue and encodes nothing.
RAW_MARKDOWN_KEY = "eventq_raw_markdown"

# A queue's message filter (its register `narrow`), fixed at register: called with the
# `data` of each `message` event offered to the queue, on the event loop, so it prepares
# what it reads once, when built, and costs no more per event than its number of terms
# (`models.messages.narrows.EventNarrow`). Built by the server layer.
MessageFilter = Callable[[JsonDict], bool]

# Compact separators: the body goes on the wire to every accepting client, so
# the spaces json.dumps adds by default would be paid thousands of times.
_JSON_SEPARATORS = (",", ":")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a client declared it understands at register time
    (Zulip's ``client_capabilities``). One small frozen object instead of a
    constructor flag per capability."""

    # The client handles subscription peer_remove events about a user who is
    # being deactivated (written before the realm_user deactivation event).
    deactivation_peer_events: bool = False
    # The client shows typing notifications for channel messages; Zulip sends them
    # only to clients that declare it (direct-message ones go to every client).
    stream_typing_notifications: bool = False

    @classmethod
    def from_client_capabilities(cls, raw: Mapping[str, object]) -> Capabilities:
        """Build from the decoded ``client_capabilities`` object.

        Unknown keys are ignored, as Zulip does, so newer clients keep working
        against an older server. A known key with a non-bool value raises
        `ValueError`: a client sending ``"deactivation_peer_events": 1`` has a
        bug we would rather report than guess about.
        """
        values: dict[str, bool] = {}
        for field in dataclasses.fields(cls):
            if field.name not in raw:
                continue
            value = raw[field.name]
            # isinstance(1, bool) is False, so integers are rejected too.
            if not isinstance(value, bool):
                raise ValueError(
                    f"client_capabilities.{field.name} must be a boolean, "
                    f"got {type(value).__name__}"
                )
            values[field.name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, bool]:
        """Every capability by name, for summaries and durable storage."""
        return {field.name: bool(getattr(self, field.name)) for field in dataclasses.fields(self)}


def splice_id(body: bytes, event_id: int) -> bytes:
    """The JSON object `body` with ``"id": event_id`` appended as its last key, without
    decoding it: what every queue hands out, built from one shared encoding."""
    id_bytes = str(event_id).encode("ascii")
    if body == b"{}":
        # No existing key, so no separating comma.
        return b'{"id":' + id_bytes + b"}"
    # body is a JSON object, so it ends with "}": drop it and append.
    return body[:-1] + b',"id":' + id_bytes + b"}"


class SharedEvent:
    """One committed outbox event, shared by every queue that receives it.

    ``data`` is the event body without ``"id"``: ids are per queue and are
    added at encoding time by `encode_with_id`. ``user_ids`` are the target
    users computed by the action at write time. ``legacy_skip`` marks events
    that clients using the legacy deactivation sequence must not receive (the
    peer_remove events written by a user deactivation).
    """

    __slots__ = (
        "realm_id",
        "seq",
        "data",
        "user_ids",
        "legacy_skip",
        "_encoded",
        "created_at",
        "_raw_fields",
        "_raw_variant",
    )

    def __init__(
        self,
        realm_id: int,
        seq: int,
        data: JsonDict,
        user_ids: frozenset[int] | Collection[int],
        legacy_skip: bool = False,
        encoded: bytes | None = None,
        created_at: float = 0.0,
    ) -> None:
        if "id" in data:
            # encode_with_id appends "id"; a second one would give a JSON
            # object with a duplicate key that parsers resolve differently.
            raise ValueError("SharedEvent data must not contain 'id'; ids are per queue")
        raw_fields = data.get(RAW_MARKDOWN_KEY)
        if raw_fields is not None:
            # The stored JSON holds the key, so it cannot be sent as it is: encode the
            # event without it (once, lazily, like any event without stored JSON).
            data = {key: value for key, value in data.items() if key != RAW_MARKDOWN_KEY}
            encoded = None
        self._raw_fields: JsonDict | None = raw_fields if isinstance(raw_fields, dict) else None
        self._raw_variant: SharedEvent | None = None
        self.realm_id = realm_id
        self.seq = seq
        self.data = data
        # frozenset: membership tests are O(1) and the set cannot change
        # under the router's feet. Avoid a copy when we already have one.
        self.user_ids: frozenset[int] = (
            user_ids if isinstance(user_ids, frozenset) else frozenset(user_ids)
        )
        self.legacy_skip = legacy_skip
        # The outbox already stores the compact JSON; passing it in saves the encoding.
        self._encoded: bytes | None = encoded
        # When its outbox row was written (Unix time, 0.0 if unknown): delivery lag.
        self.created_at = created_at

    def raw_markdown_variant(self) -> SharedEvent:
        """The event as a queue registered with ``apply_markdown`` false receives it: its
        ``message`` with the stored raw fields; ``self`` when it has none.

        Built on first use and cached, so every such queue shares one object, one
        encoding, the same ``seq`` and the same checkpoints.
        """
        if self._raw_fields is None:
            return self
        if self._raw_variant is None:
            message = self.data.get("message")
            if not isinstance(message, dict):
                return self
            self._raw_variant = SharedEvent(
                self.realm_id,
                self.seq,
                {**self.data, "message": {**message, **self._raw_fields}},
                self.user_ids,
                self.legacy_skip,
                created_at=self.created_at,
            )
        return self._raw_variant

    @property
    def type(self) -> str:
        """The event's ``type`` field, used by queue filters."""
        event_type: str = self.data["type"]
        return event_type

    @property
    def encoded(self) -> bytes:
        """Compact JSON of ``data``, encoded on first use and then cached.

        Lazy because an event that no waiting poll asks for right away may
        never be encoded in this process (e.g. its queues are dropped first).
        ``allow_nan=False``: NaN/Infinity are not JSON and clients reject them.
        """
        if self._encoded is None:
            self._encoded = json.dumps(
                self.data, separators=_JSON_SEPARATORS, allow_nan=False
            ).encode("utf-8")
        return self._encoded

    def encode_with_id(self, event_id: int) -> bytes:
        """The JSON object of ``data`` with ``"id": event_id`` as its last key.

        Built by splicing onto the cached encoding, so delivering the same
        event to N queues encodes it once, not N times. Equal, once decoded,
        to ``json.dumps({**data, "id": event_id})``.
        """
        return splice_id(self.encoded, event_id)

    def __repr__(self) -> str:
        return (
            f"SharedEvent(realm_id={self.realm_id}, seq={self.seq}, "
            f"type={self.data.get('type')!r}, targets={len(self.user_ids)}, "
            f"legacy_skip={self.legacy_skip})"
        )
