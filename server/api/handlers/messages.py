"""`POST /api/v1/messages` (send), `GET /api/v1/messages` (history) and
`POST /api/v1/messages/flags` (the caller's own flags), Zulip's way.

The handler decodes Zulip's parameters into plain values, makes one call
(`actions.messages.check_send_message` in a write transaction, or
`models.messages.history.fetch_messages` in a snapshot), and encodes the answer. It owns the
decoding of `to`, which Zulip accepts in several forms: for a channel message its name
(plain or JSON-encoded) or its id (a JSON integer); for a direct message a JSON list of
user ids or of emails, a single id, or emails separated by commas.

Both answers are bounded in `models.messages`: a send whose content would render past
`rendering.MAX_RENDERED_LENGTH` is refused with Zulip's "Unable to render message", and a
history answer holds at most `history.MAX_FETCH_ANSWER_BYTES` of messages, its `found_oldest` /
`found_newest` false on the side it cut, so the client pages on.

`POST /messages/flags` decodes `messages` (a JSON list of ids), `op` and `flag` and runs
`actions.message_flags.check_update_message_flags`, which checks the flag and the
operation; its list of ids is bounded by the route's body limit.
"""

from __future__ import annotations

import json
from typing import Any

from actions.message_flags import check_update_message_flags
from actions.messages import ChannelTarget, DirectTarget, StreamDoesNotExist, check_send_message
from models.messages.history import fetch_messages, parse_anchor
from models.messages.narrows import parse_narrow
from queues.descriptor import parse_user_agent
from server.api.params import check_bool, check_id, check_int, check_json_value, check_list
from server.api.request import ApiHandler
from server.engine.errors import ApiError, BadRequest, StreamNotFound

# `type` values Zulip accepts: the current names and the ones they replaced.
CHANNEL_TYPES = frozenset({"stream", "channel"})
DIRECT_TYPES = frozenset({"private", "direct"})


class StreamIdNotFound(ApiError):
    """A channel named by id that does not exist or that the sender may not see."""

    code = "STREAM_DOES_NOT_EXIST"

    def __init__(self, stream_id: int) -> None:
        super().__init__(f"Channel with ID '{stream_id}' does not exist", stream_id=stream_id)


def _decoded(raw: str) -> Any:
    """`raw` as JSON if it is JSON, else None; checked like any JSON parameter."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return check_json_value("to", value)


def channel_target(raw: str) -> ChannelTarget:
    """`to` of a channel message: an id (a JSON integer), or a name."""
    value = _decoded(raw)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # Zulip's clients once sent ["name"]
    if isinstance(value, int) and not isinstance(value, bool):
        return ChannelTarget(check_id("to", value))
    if isinstance(value, str):
        return ChannelTarget(value)
    return ChannelTarget(raw)


def direct_target(raw: str) -> DirectTarget:
    """`to` of a direct message: user ids or emails, never both (Zulip's wording)."""
    value = _decoded(raw)
    if value is None and raw.strip() != "null":
        value = raw
    if isinstance(value, str):
        return DirectTarget(emails=tuple(p.strip() for p in value.split(",") if p.strip()))
    if isinstance(value, int) and not isinstance(value, bool):
        return DirectTarget(user_ids=(check_id("to", value),))
    if not isinstance(value, list):
        raise BadRequest("Invalid data type for recipients")
    if any(isinstance(item, bool) or not isinstance(item, int | str) for item in value):
        raise BadRequest("Invalid data type for recipients")
    ids = [item for item in value if isinstance(item, int)]
    emails = [item for item in value if isinstance(item, str)]
    if ids and emails:
        raise BadRequest("Recipient lists may contain emails or user IDs, but not both.")
    return DirectTarget(
        user_ids=tuple(check_id(f"to[{i}]", item) for i, item in enumerate(ids)),
        emails=tuple(emails),
    )


class MessagesHandler(ApiHandler):
    """`POST /messages` sends one message; `GET /messages` reads history."""

    async def post(self) -> None:
        user = await self.authenticate()
        kind = self.param_str("type")
        raw_to = self.param_str("to")
        content = self.param_str("content")
        # `subject` is the name Zulip's API used before `topic`.
        topic = self.param_str("topic", None)
        if topic is None:
            topic = self.param_str("subject", None)
        target: ChannelTarget | DirectTarget
        if kind in CHANNEL_TYPES:
            target = channel_target(raw_to)
        elif kind in DIRECT_TYPES:
            target = direct_target(raw_to)
        else:
            raise BadRequest("Invalid message type")
        client, _ = parse_user_agent(self.request.headers.get("User-Agent"))
        try:
            message_id = await self.act(
                check_send_message, user.realm_id, user.id, target, topic, content, client
            )
        except StreamDoesNotExist as error:
            # Zulip's answer names the channel asked for, by name or by id.
            if isinstance(error.channel, int):
                raise StreamIdNotFound(error.channel) from None
            raise StreamNotFound(error.channel) from None
        self.send_success({"id": message_id})

    async def get(self) -> None:
        user = await self.authenticate()
        anchor = parse_anchor(self.param_str("anchor", "newest"))
        if self.param_json("use_first_unread_anchor", check_bool, False):
            anchor = "first_unread"
        num_before = self.param_json("num_before", check_int, 0)
        num_after = self.param_json("num_after", check_int, 0)
        narrow = parse_narrow(self.param_json("narrow", check_list, []))
        include_anchor = self.param_json("include_anchor", check_bool, True)
        apply_markdown = self.param_json("apply_markdown", check_bool, True)
        # Accepted: eventq's avatars are always computed by the client (null).
        self.param_json("client_gravatar", check_bool, True)
        answer = await self.query(
            fetch_messages,
            user.id,
            anchor=anchor,
            num_before=num_before,
            num_after=num_after,
            narrow=narrow,
            include_anchor=include_anchor,
            apply_markdown=apply_markdown,
        )
        self.send_success(answer)


def message_ids(name: str, value: Any) -> list[int]:
    """`messages` of a flag change: a list of message ids."""
    return [check_id(f"{name}[{i}]", item) for i, item in enumerate(check_list(name, value))]


class MessageFlagsHandler(ApiHandler):
    """`POST /messages/flags`: add or remove one of the caller's flags on messages."""

    async def post(self) -> None:
        user = await self.authenticate()
        messages = self.param_json("messages", message_ids)
        operation = self.param_str("op")
        flag = self.param_str("flag")
        change = await self.act(
            check_update_message_flags, user.realm_id, user.id, operation, flag, messages
        )
        self.send_success(change.to_api())


MESSAGE_ROUTES: list[tuple[str, type[ApiHandler]]] = [
    (r"/api/v1/messages", MessagesHandler),
    (r"/api/v1/messages/flags", MessageFlagsHandler),
]
