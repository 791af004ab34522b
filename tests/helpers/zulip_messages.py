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
REACTION_TYPE = {"type": "string", "enum": ["unicode_emoji", "realm_emoji", "zulip_extra_emoji"]}
# Zulip's `EmojiReaction` (FL 328 removed its `user` object).
REACTION = closed(
    {
        "emoji_name": STRING,
        "emoji_code": STRING,
        "reaction_type": REACTION_TYPE,
        "user_id": INTEGER,
    },
    ["emoji_name", "emoji_code", "reaction_type", "user_id"],
)
# One entry of `MessagesBase.edit_history`.
EDIT_HISTORY_ENTRY = closed(
    {
        "prev_content": STRING,
        "prev_rendered_content": STRING,
        "prev_stream": INTEGER,
        "prev_topic": STRING,
        "stream": INTEGER,
        "timestamp": INTEGER,
        "topic": STRING,
        "user_id": nullable(INTEGER),
    },
    ["user_id", "timestamp"],
)
# Zulip's `MessagesBase`, with what eventq always sends required; `stream_id` only for
# channel messages; `edit_history` and the edit timestamps only for edited or moved
# messages.
_FIELDS: dict[str, Schema] = {
    "avatar_url": nullable(STRING),
    "client": STRING,
    "content": STRING,
    "content_type": {"type": "string", "enum": ["text/html", "text/x-markdown"]},
    "display_recipient": {"oneOf": [STRING, array(DISPLAY_RECIPIENT_USER)]},
    "id": INTEGER,
    "is_me_message": BOOLEAN,
    "reactions": array(REACTION),
    "edit_history": array(EDIT_HISTORY_ENTRY),
    "last_edit_timestamp": INTEGER,
    "last_moved_timestamp": INTEGER,
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
_OPTIONAL = ("stream_id", "edit_history", "last_edit_timestamp", "last_moved_timestamp")
_REQUIRED = [name for name in _FIELDS if name not in _OPTIONAL]
_BY_TYPE: Schema = {
    "if": {"properties": {"type": {"const": "stream"}}},
    "then": {"required": ["stream_id"], "properties": {"display_recipient": STRING}},
    "else": {"not": {"required": ["stream_id"]}},
}
FLAGS = array(STRING)
MESSAGE: Schema = {**closed(_FIELDS, _REQUIRED), "allOf": [_BY_TYPE]}
HISTORY_MESSAGE: Schema = {
    # `match_content` and `match_subject`: only with a `search` narrow.
    **closed(
        {**_FIELDS, "flags": FLAGS, "match_content": STRING, "match_subject": STRING},
        [*_REQUIRED, "flags"],
    ),
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

# `update_message` (Zulip's event at FL 377): the always-present keys required, the rest
# as each edit has them.
UPDATE_MESSAGE_EVENT: Schema = closed(
    {
        "id": INTEGER,
        "type": {"const": "update_message"},
        "user_id": nullable(INTEGER),
        "rendering_only": BOOLEAN,
        "message_id": INTEGER,
        "message_ids": array(INTEGER),
        "flags": FLAGS,
        "edit_timestamp": INTEGER,
        "stream_name": STRING,
        "stream_id": INTEGER,
        "new_stream_id": INTEGER,
        "propagate_mode": {"type": "string", "enum": ["change_one", "change_later", "change_all"]},
        "orig_subject": STRING,
        "subject": STRING,
        "topic_links": array(TOPIC_LINK),
        "orig_content": STRING,
        "orig_rendered_content": STRING,
        "content": STRING,
        "rendered_content": STRING,
        "is_me_message": BOOLEAN,
    },
    [
        "id",
        "type",
        "user_id",
        "message_id",
        "message_ids",
        "flags",
        "edit_timestamp",
        "rendering_only",
    ],
)
DELETE_MESSAGE_EVENT: Schema = closed(
    {
        "id": INTEGER,
        "type": {"const": "delete_message"},
        "message_ids": array(INTEGER),
        "message_id": INTEGER,
        "message_type": {"type": "string", "enum": ["private", "stream"]},
        "stream_id": INTEGER,
        "topic": STRING,
    },
    ["id", "type", "message_type"],
)
REACTION_EVENT_USER = closed(
    {"user_id": INTEGER, "email": STRING, "full_name": STRING, "is_mirror_dummy": BOOLEAN}
)


def _reaction_event(op: str) -> Schema:
    return zulip_schema.event(
        "reaction",
        op,
        {
            "message_id": INTEGER,
            "emoji_code": STRING,
            "emoji_name": STRING,
            "reaction_type": REACTION_TYPE,
            "user_id": INTEGER,
            "user": REACTION_EVENT_USER,
        },
    )


GET_MESSAGE = zulip_schema.success(
    {"raw_content": STRING, "message": HISTORY_MESSAGE}, ["raw_content", "message"]
)
HISTORY_SNAPSHOT = closed(
    {
        "topic": STRING,
        "prev_topic": STRING,
        "stream": INTEGER,
        "prev_stream": INTEGER,
        "content": STRING,
        "rendered_content": STRING,
        "prev_content": STRING,
        "prev_rendered_content": STRING,
        "user_id": nullable(INTEGER),
        "content_html_diff": STRING,
        "timestamp": INTEGER,
    },
    ["topic", "content", "rendered_content", "user_id", "timestamp"],
)
GET_MESSAGE_HISTORY = zulip_schema.success(
    {"message_history": array(HISTORY_SNAPSHOT)}, ["message_history"]
)
UPDATE_MESSAGE = zulip_schema.success({"detached_uploads": array({"type": "object"})})
EMPTY_SUCCESS = zulip_schema.success({})


def install() -> None:
    """Make `zulip_schema` check message events and the message endpoints' answers."""
    zulip_schema.EVENTS[("message", None)] = MESSAGE_EVENT
    zulip_schema.ANSWERS[("GET", "/messages")] = GET_MESSAGES
    zulip_schema.ANSWERS[("POST", "/messages")] = SEND_MESSAGE
    zulip_schema.EVENTS[("update_message", None)] = UPDATE_MESSAGE_EVENT
    zulip_schema.EVENTS[("delete_message", None)] = DELETE_MESSAGE_EVENT
    zulip_schema.EVENTS[("reaction", "add")] = _reaction_event("add")
    zulip_schema.EVENTS[("reaction", "remove")] = _reaction_event("remove")
    zulip_schema.ANSWERS[("GET", "/messages/{message_id}")] = GET_MESSAGE
    zulip_schema.ANSWERS[("PATCH", "/messages/{message_id}")] = UPDATE_MESSAGE
    zulip_schema.ANSWERS[("DELETE", "/messages/{message_id}")] = EMPTY_SUCCESS
    zulip_schema.ANSWERS[("GET", "/messages/{message_id}/history")] = GET_MESSAGE_HISTORY
    zulip_schema.ANSWERS[("POST", "/messages/{message_id}/reactions")] = EMPTY_SUCCESS
    zulip_schema.ANSWERS[("DELETE", "/messages/{message_id}/reactions")] = EMPTY_SUCCESS


install()
