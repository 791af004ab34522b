"""The shape of every event eventq writes: required keys per (type, op), and Zulip's
documented shape of its kind (`tests.helpers.zulip_schema`)."""

from __future__ import annotations

from typing import Any

from tests.helpers import zulip_schema

_REQUIRED: dict[tuple[str, str], dict[str, type]] = {
    ("realm_user", "add"): {"person": dict},
    ("realm_user", "update"): {"person": dict},
    ("stream", "create"): {"streams": list},
    ("stream", "delete"): {"streams": list, "stream_ids": list},
    ("subscription", "add"): {"subscriptions": list},
    ("subscription", "remove"): {"subscriptions": list},
    ("subscription", "peer_add"): {"stream_ids": list, "user_ids": list},
    ("subscription", "peer_remove"): {"stream_ids": list, "user_ids": list},
    ("subscription", "update"): {"stream_id": int, "property": str},
}


def check_event_shape(event: dict[str, Any]) -> None:
    """Assert `event` (as stored, without its per-queue `id`) has a known (type, op), the
    keys that pair requires, and Zulip's documented shape once delivered."""
    key = (event.get("type"), event.get("op"))
    assert key in _REQUIRED, f"unknown event kind {key}"
    for name, kind in _REQUIRED[key].items():
        assert isinstance(event.get(name), kind), f"{key} event lacks {name}: {event}"
    if event["type"] == "realm_user":
        assert isinstance(event["person"].get("user_id"), int), event
    if event["op"] in ("peer_add", "peer_remove"):
        assert event["stream_ids"] and event["user_ids"], event
        assert event["stream_ids"] == sorted(set(event["stream_ids"])), event
        assert event["user_ids"] == sorted(set(event["user_ids"])), event
    if key == ("stream", "delete"):
        assert event["stream_ids"] == [s["stream_id"] for s in event["streams"]], event
    assert "id" not in event, "the per-queue id is added at delivery, never stored"
    # The queue adds the id at delivery; any integer stands for it here.
    zulip_schema.check_event({**event, "id": 0})
