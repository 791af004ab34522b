"""The shape of every event eventq writes: required keys per (type, op)."""

from __future__ import annotations

from typing import Any

_REQUIRED: dict[tuple[str, str], dict[str, type]] = {
    ("realm_user", "add"): {"person": dict},
    ("realm_user", "update"): {"person": dict},
    ("stream", "create"): {"streams": list},
    ("stream", "delete"): {"streams": list},
    ("subscription", "add"): {"subscriptions": list},
    ("subscription", "remove"): {"subscriptions": list},
    ("subscription", "peer_add"): {"stream_ids": list, "user_ids": list},
    ("subscription", "peer_remove"): {"stream_ids": list, "user_ids": list},
}


def check_event_shape(event: dict[str, Any]) -> None:
    """Assert `event` has a known (type, op) and the keys that pair requires."""
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
    assert "id" not in event, "the per-queue id is added at delivery, never stored"
