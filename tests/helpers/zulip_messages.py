"""Zulip's documented shapes of messages, for the conformance checks of `zulip_schema`.

Written from the facts of Zulip's API documentation (the `message` event of
`GET /events`, `GET /messages`, `POST /messages`): a message object's fields, a
direct-message participant, the event's `flags`, and the two answers. The message object
is closed here, so no field Zulip does not document (such as eventq's stored
raw-Markdown form, which must never reach a client) passes.

`install()` adds them to `tests.helpers.zulip_schema`'s tables of events and answers, so
every `GET /events` answer holding a message event, and every answer of the message
endpoints, is checked against Zulip's shape like the rest. It is idempotent, and runs
when this module is imported (`tests.helpers.verify` imports it).
"""

from __future__ import annotations

from typing import Any

from tests.helpers import zulip_schema
from tests.helpers.zulip_schema import BOOLEAN, INTEGER, STRING, array, closed, nullable

Schema = dict[str, Any]

DISPLAY_RECIPIENT_USER = closed(
    {"id": INTEGER, "email": STRING, "full_name": STRING, "is_mirror_dummy": BOOLEAN},
    ["id", "email", "full_name", "is_mirror_dummy"],
)
TOPIC_LINK = closed({"text": STRING, "url": STRING}, ["text", "url"])
# Zulip's `MessagesBase`, with what eventq always sends required; `stream_id` only for
# channel messages; `edit_history` and the edit timestamps only for edited messages,
# which eventq never has.
_FIELDS: dict[str, Schema] = {
    "avatar_url": nullable(STRING),
    "client": STRING,
    "content": STRING,
    "content_type": {"type": "string", "enum": ["text/html", "text/x-markdown"]},
    "display_recipient": {"oneOf": [STRING, array(DISPLAY_RECIPIENT_USER)]},
    "id": INTEGER,
    "is_me_message": BOOLEAN,
    "reactions": array({"type": "object"}),
    "recipient_id": INTEGER,
    "sender_email": STRING,
    "sender_full_name": STRING,
    "sender_id": INTEGER,
    "sender_realm_str": STRING,
    "stream_id": INTEGER,
    "subject": STRING,
    "submessages": array({"type": "object"}),
    "timestamp": INTEGER,
    "topic_links": array(TOPIC_LINK),
    "type": {"type": "string", "enum": ["stream", "private"]},
}
_REQUIRED = [name for name in _FIELDS if name != "stream_id"]
_BY_TYPE: Schema = {
    "if": {"properties": {"type": {"const": "stream"}}},
    "then": {"required": ["stream_id"], "properties": {"display_recipient": STRING}},
    "else": {"not": {"required": ["stream_id"]}},
}
FLAGS = array(STRING)
MESSAGE: Schema = {**closed(_FIELDS, _REQUIRED), "allOf": [_BY_TYPE]}
HISTORY_MESSAGE: Schema = {
    **closed({**_FIELDS, "flags": FLAGS}, [*_REQUIRED, "flags"]),
    "allOf": [_BY_TYPE],
}
MESSAGE_EVENT = zulip_schema.event("message", None, {"message": MESSAGE, "flags": FLAGS})
GET_MESSAGES = zulip_schema.success(
    {
        "messages": array(HISTORY_MESSAGE),
        "anchor": INTEGER,
        "found_anchor": BOOLEAN,
        "found_oldest": BOOLEAN,
        "found_newest": BOOLEAN,
        "history_limited": BOOLEAN,
    },
    ["messages", "anchor", "found_anchor", "found_oldest", "found_newest", "history_limited"],
)
SEND_MESSAGE = zulip_schema.success(
    {"id": INTEGER, "automatic_new_visibility_policy": INTEGER}, ["id"]
)


def install() -> None:
    """Make `zulip_schema` check message events and the message endpoints' answers."""
    zulip_schema.EVENTS[("message", None)] = MESSAGE_EVENT
    zulip_schema.ANSWERS[("GET", "/messages")] = GET_MESSAGES
    zulip_schema.ANSWERS[("POST", "/messages")] = SEND_MESSAGE


install()
