"""One message: `GET`, `PATCH` and `DELETE /messages/{id}`, `GET /messages/{id}/history`,
and `POST`/`DELETE /messages/{id}/reactions`, Zulip's way.

Each handler decodes Zulip's parameters into plain values and makes one call: a read in
a snapshot (`models.messages.access.get_message`, `message_history`) or an action in a
write transaction (`actions.message_edits.check_update_message`,
`check_delete_message`; `actions.reactions.check_add_reaction`,
`check_remove_reaction`), which checks access and permissions with Zulip's wording. The
message id comes from the path, checked as an id (anything else is a 400).
"""

from __future__ import annotations

from actions.message_edits import MessageUpdate, check_delete_message, check_update_message
from actions.reactions import ReactionRequest, check_add_reaction, check_remove_reaction
from models.messages.access import get_message, message_history
from server.api.params import check_bool, check_id, check_int, parse_id_text
from server.api.request import ApiHandler

# Any segment is routed for an id, so that a malformed one ("abc") is a JSON 400 like any
# malformed parameter, not a 404 for the whole path (as `handlers.rest` does). The
# routes of `handlers.messages` (`/messages/flags`) come first in `server.api.app`.
_MESSAGE_ID = r"([^/]+)"


def _message_id(raw: str) -> int:
    return parse_id_text("message_id", raw)


class MessageHandler(ApiHandler):
    """`GET` (read), `PATCH` (edit or move) and `DELETE` one message."""

    async def get(self, raw_id: str) -> None:
        user = await self.authenticate()
        apply_markdown = self.param_json("apply_markdown", check_bool, True)
        # Accepted: eventq's topics are never empty, so there is nothing to replace.
        self.param_json("allow_empty_topic_name", check_bool, False)
        answer = await self.query(get_message, user.id, _message_id(raw_id), apply_markdown)
        self.send_success(answer)

    async def patch(self, raw_id: str) -> None:
        user = await self.authenticate()
        topic = self.param_str("topic", None)
        if topic is None:
            topic = self.param_str("subject", None)  # Zulip's deprecated alias
        stream_id = self.param_json("stream_id", check_int, None)
        request = MessageUpdate(
            content=self.param_str("content", None),
            topic=topic,
            stream_id=None if stream_id is None else check_id("stream_id", stream_id),
            propagate_mode=self.param_str("propagate_mode", "change_one"),
            send_notification_to_old_thread=self.param_json(
                "send_notification_to_old_thread", check_bool, False
            ),
            send_notification_to_new_thread=self.param_json(
                "send_notification_to_new_thread", check_bool, True
            ),
        )
        answer = await self.act(
            check_update_message, user.realm_id, user.id, _message_id(raw_id), request
        )
        self.send_success(answer)

    async def delete(self, raw_id: str) -> None:
        user = await self.authenticate()
        await self.act(check_delete_message, user.realm_id, user.id, _message_id(raw_id))
        self.send_success()


class MessageHistoryHandler(ApiHandler):
    """`GET /messages/{id}/history`: the message after each edit, oldest first."""

    async def get(self, raw_id: str) -> None:
        user = await self.authenticate()
        self.param_json("allow_empty_topic_name", check_bool, False)
        history = await self.query(message_history, user.id, _message_id(raw_id))
        self.send_success({"message_history": history})


class ReactionsHandler(ApiHandler):
    """`POST` adds and `DELETE` removes the caller's emoji reaction to a message."""

    def _reaction(self) -> ReactionRequest:
        return ReactionRequest(
            emoji_name=self.param_str("emoji_name", None),
            emoji_code=self.param_str("emoji_code", None),
            reaction_type=self.param_str("reaction_type", None),
        )

    async def post(self, raw_id: str) -> None:
        user = await self.authenticate()
        request = self._reaction()
        await self.act(check_add_reaction, user.realm_id, user.id, _message_id(raw_id), request)
        self.send_success()

    async def delete(self, raw_id: str) -> None:
        user = await self.authenticate()
        request = self._reaction()
        await self.act(check_remove_reaction, user.realm_id, user.id, _message_id(raw_id), request)
        self.send_success()


MESSAGE_EDIT_ROUTES: list[tuple[str, type[ApiHandler]]] = [
    (rf"/api/v1/messages/{_MESSAGE_ID}", MessageHandler),
    (rf"/api/v1/messages/{_MESSAGE_ID}/history", MessageHistoryHandler),
    (rf"/api/v1/messages/{_MESSAGE_ID}/reactions", ReactionsHandler),
]
