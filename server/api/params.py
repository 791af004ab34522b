"""Parameter values: decoding a JSON-encoded one as Zulip does (`parse_json_param`), and
checks for decoded values, each taking (name, value) and returning the value typed, or
raising `BadRequest` with Zulip's wording ("x is not a list")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from models.register_keys import KNOWN_EVENT_TYPES
from server.engine.errors import BadRequest

T = TypeVar("T")

# Larger values are not ids or counts any client sends; refusing them keeps integer
# columns (64-bit on PostgreSQL) and arithmetic safe.
MAX_INT_PARAM = 2**53
# Ids are INTEGER columns, 32-bit on PostgreSQL, which refuses a larger bound value with
# an error instead of finding nothing (and SQLite overflows past 64 bits): an id outside
# this range names nothing, so it is refused before it reaches the database.
MIN_ID = -(2**31)
MAX_ID = 2**31 - 1
# No parameter of this API nests deeper than three (a list of objects of lists, as a
# `narrow` can be); the margin is for clients sending richer values we ignore.
MAX_JSON_DEPTH = 16
# A register's event types: Zulip has about sixty, named in a few words each
# (`realm_user_settings_defaults` is among the longest); see `check_event_types`.
MAX_EVENT_TYPES = 100
MAX_EVENT_TYPE_LENGTH = 64
# ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
_INT_TEXT = re.compile(r"-?[0-9]{1,20}")


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


def check_id(name: str, value: Any) -> int:
    """An integer that can be a row id (negative ones simply match nothing)."""
    number = check_int(name, value)
    if not MIN_ID <= number <= MAX_ID:
        raise BadRequest(f"{name} is not a valid id")
    return number


def check_str_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} is not a list")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(f"{name}[{index}] is not a string")
    return value


def check_event_types(name: str, value: Any) -> list[str]:
    """`event_types` or `fetch_event_types` of a register: a list of short names. Zulip
    has about sixty event types, each a word or two; a queue keeps its list for its whole
    life (in memory and in its descriptor), so a longer list, or a longer name, names
    nothing real and is refused rather than kept.

    A name that is no event type Zulip documents (`models.register_keys.KNOWN_EVENT_TYPES`)
    is refused too: a typo would otherwise leave the client without the state or events
    it meant to ask for, with nothing saying why. Zulip itself ignores such a name;
    eventq knows every documented name, newer ones included, so no client a Zulip server
    serves is refused."""
    names = check_str_list(name, value)
    if len(names) > MAX_EVENT_TYPES:
        raise BadRequest(f"{name} has more than {MAX_EVENT_TYPES} event types")
    for index, item in enumerate(names):
        if len(item) > MAX_EVENT_TYPE_LENGTH:
            raise BadRequest(f"{name}[{index}] is longer than {MAX_EVENT_TYPE_LENGTH} characters")
        if item not in KNOWN_EVENT_TYPES:
            raise BadRequest(f"Invalid event type {item!r} in {name}")
    return names


def or_null(check: Callable[[str, Any], T]) -> Callable[[str, Any], T | None]:
    """`check`, with JSON `null` read as the parameter's absence (None), as Zulip reads
    it for its optional parameters (`Json[X] | None`): zulip-js sends `event_types=null`."""

    def checked(name: str, value: Any) -> T | None:
        return None if value is None else check(name, value)

    return checked


def check_list(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} is not a list")
    return value


def check_dict(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name} is not a dict")
    return value


def check_text(name: str, text: str) -> str:
    """A string the database can store: no NUL (PostgreSQL refuses it in text) and no
    lone surrogate (which JSON's \\ud800 escapes can produce and UTF-8 cannot encode)."""
    if "\x00" in text:
        raise BadRequest(f'Argument "{name}" contains a NUL character.')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f'Argument "{name}" contains an unpaired surrogate.') from None
    return text


def _check_depth(name: str, depth: int) -> None:
    if depth >= MAX_JSON_DEPTH:
        raise BadRequest(f'Argument "{name}" is nested too deeply.')


def check_json_value(name: str, value: Any) -> Any:
    """A decoded JSON value whose strings (keys too) all pass `check_text` and whose
    nesting is at most MAX_JSON_DEPTH; walked without recursion, so depth cannot hurt."""
    if value is None or isinstance(value, int | float):  # bool is an int
        return value
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            check_text(name, item)
        elif isinstance(item, dict):
            _check_depth(name, depth)
            for key, child in item.items():
                check_text(name, key)
                pending.append((child, depth + 1))
        elif isinstance(item, list):
            _check_depth(name, depth)
            pending.extend((child, depth + 1) for child in item)
    return value


def parse_int_text(name: str, raw: str) -> int:
    """An integer given as plain text (path segments, `last_event_id`)."""
    text = raw.strip()
    if not _INT_TEXT.fullmatch(text):
        raise BadRequest(f"{name} is not an integer")
    return check_int(name, int(text))


def parse_id_text(name: str, raw: str) -> int:
    """A row id given as plain text (path segments)."""
    return check_id(name, parse_int_text(name, raw))


_MISSING: Any = object()
# The long-poll's own parameters (`last_event_id`, `dont_block`) are small integers and
# booleans; these are decoded without the JSON parser, exactly as it would decode them.
_JSON_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}
_MAX_FAST_INT_DIGITS = 18


def parse_json_param(name: str, raw: str) -> Any:
    """Decode a JSON-encoded parameter value the way Zulip does, refusing what no
    parameter can be: deep nesting, NUL characters and unpaired surrogates."""
    literal = _JSON_LITERALS.get(raw, _MISSING)
    if literal is not _MISSING:
        return literal
    digits = raw[1:] if raw[:1] == "-" else raw
    if (
        0 < len(digits) <= _MAX_FAST_INT_DIGITS
        and digits.isascii()
        and digits.isdigit()
        and (digits[0] != "0" or len(digits) == 1)  # JSON has no leading zeros
    ):
        return int(raw)
    try:
        value = json.loads(raw)
    except ValueError:  # also the int() digit limit of a huge number
        raise BadRequest(f'Argument "{name}" is not valid JSON.') from None
    except RecursionError:  # the decoder recurses once per level of "[[[..."
        raise BadRequest(f'Argument "{name}" is nested too deeply.') from None
    return check_json_value(name, value)
