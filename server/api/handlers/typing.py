"""`POST /api/v1/typing`: Zulip's typing notifications (feature level 377).

The handler decodes Zulip's parameters in Zulip's order (`type`, `op`, `to`,
`stream_id`, `topic`, so the first bad one is the one named), makes one call to the
service, which checks the request and computes the recipients read-only
(`models.typing`) and sends the `typing` event to their queues on every shard without
storing it (`server.engine.ephemeral`), and answers an empty success. Nothing is
written to the database: the event is ephemeral (docs/architecture.md §5).
"""

from __future__ import annotations

from typing import Any

from models.typing import check_op, message_type_of, typing_notification, typing_request
from server.api.params import check_int, check_list
from server.api.request import ApiHandler


def check_recipient_ids(name: str, value: Any) -> list[int]:
    """`to` of a direct typing notification: a JSON list of user ids (Zulip's wording
    for anything else: "to is not a list", "to[1] is not an integer")."""
    items = check_list(name, value)
    return [check_int(f"{name}[{index}]", item) for index, item in enumerate(items)]


class TypingHandler(ApiHandler):
    """`POST /typing`: the caller started or stopped composing a message."""

    async def post(self) -> None:
        user = await self.authenticate()
        message_type = message_type_of(self.param_str("type", "direct"))
        op = check_op(self.param_str("op"))
        to = self.param_json("to", check_recipient_ids, None)
        stream_id = self.param_json("stream_id", check_int, None)
        topic = self.param_str("topic", None)
        request = typing_request(message_type, op, to, stream_id, topic)
        await self.service.send_ephemeral(typing_notification, user.id, request)
        self.send_success()


TYPING_ROUTES: list[tuple[str, type[ApiHandler]]] = [
    (r"/api/v1/typing", TypingHandler),
]
