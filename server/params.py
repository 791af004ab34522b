"""Checks for JSON-decoded parameter values: each takes (name, value) and returns the
value typed, or raises `BadRequest` with Zulip's wording ("x is not a list")."""

from __future__ import annotations

from typing import Any

from server.errors import BadRequest

# Larger values are not ids or counts any client sends; refusing them keeps integer
# columns (64-bit on PostgreSQL) and arithmetic safe.
MAX_INT_PARAM = 2**53


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{name} is not a boolean")
    return value


def check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} is not an integer")
    if abs(value) > MAX_INT_PARAM:
        raise BadRequest(f"{name} is too large")
    return value


def check_str_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} is not a list")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(f"{name}[{index}] is not a string")
    return value


def check_list(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} is not a list")
    return value


def check_dict(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name} is not a dict")
    return value


def parse_int_text(name: str, raw: str) -> int:
    """An integer given as plain text (path segments, `last_event_id`)."""
    text = raw.strip()
    if not text.lstrip("-").isdigit() or len(text) > 20:
        raise BadRequest(f"{name} is not an integer")
    return check_int(name, int(text))
