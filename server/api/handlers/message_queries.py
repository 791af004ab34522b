"""`GET /api/v1/users/me/{stream_id}/topics` and `POST /api/v1/messages/flags/narrow`,
Zulip's way.

Each handler decodes Zulip's parameters and makes one call: the topics are read in a
snapshot (`models.messages.history.fetch_stream_topics`, which applies Zulip's rules of
who may list a channel's topics), and the flag change over a narrow runs in one write
transaction (`actions.message_flags.check_update_message_flags_for_narrow`: the
messages the narrow and anchor name, then one `UPDATE` of their flags and one
`update_message_flags` event), so the range read and the change see the same messages.
"""

from __future__ import annotations

from typing import Any

from actions.message_flags import check_update_message_flags_for_narrow
from models.messages.history import InvalidChannelId, fetch_stream_topics, parse_anchor
from models.messages.narrows import MAX_ID, MIN_ID, parse_narrow
from server.api.params import check_bool, check_int, check_list, parse_int_text
from server.api.request import ApiHandler
from server.engine.errors import BadRequest


def _narrow_or_null(name: str, value: Any) -> list[Any]:
    """`narrow`: a JSON list, or JSON null, which Zulip reads as no narrow."""
    return [] if value is None else check_list(name, value)


def _count(name: str, value: Any) -> int:
    """`num_before` / `num_after`: a non-negative integer (Zulip's `NonNegativeInt`)."""
    number = check_int(name, value)
    if number < 0:
        raise BadRequest(f"{name} is too small")
    return number


class StreamTopicsHandler(ApiHandler):
    """`GET /users/me/{stream_id}/topics`: the channel's topics, newest first."""

    async def get(self, stream_id: str) -> None:
        user = await self.authenticate()
        channel_id = parse_int_text("stream_id", stream_id)
        if not MIN_ID <= channel_id <= MAX_ID:
            raise InvalidChannelId()  # no channel has it (Zulip's answer for any unknown id)
        topics = await self.query(fetch_stream_topics, user.id, channel_id)
        self.send_success({"topics": topics})


class MessageFlagsNarrowHandler(ApiHandler):
    """`POST /messages/flags/narrow`: add or remove a flag on a narrow's messages."""

    async def post(self) -> None:
        user = await self.authenticate()
        anchor = parse_anchor(self.param_str("anchor"))
        include_anchor = self.param_json("include_anchor", check_bool, True)
        num_before = self.param_json("num_before", _count)
        num_after = self.param_json("num_after", _count)
        narrow = parse_narrow(self.param_json("narrow", _narrow_or_null, []))
        operation = self.param_str("op")
        flag = self.param_str("flag")
        change = await self.act(
            check_update_message_flags_for_narrow,
            user.realm_id,
            user.id,
            operation,
            flag,
            anchor=anchor,
            include_anchor=include_anchor,
            num_before=num_before,
            num_after=num_after,
            narrow=narrow,
        )
        self.send_success(change.to_api())


MESSAGE_QUERY_ROUTES: list[tuple[str, type[ApiHandler]]] = [
    # A channel id is a 32-bit id: longer digit strings name no channel (404).
    # Any segment, so that a malformed id is a JSON 400 like any malformed parameter.
    (r"/api/v1/users/me/([^/]+)/topics", StreamTopicsHandler),
    (r"/api/v1/messages/flags/narrow", MessageFlagsNarrowHandler),
]
