"""Small endpoints Zulip's clients call beside the event system: `POST /messages/render`
(a preview of a message's HTML), `GET /realm/emoji` and `GET /users/me/alert_words`.

eventq has no custom emoji and no alert words, so the two reads answer Zulip's shapes
empty, as a new Zulip organization does; zulip-js calls both. The preview renders exactly
as sending would (`models.messages.mentions.render_message_content`, mentions included),
writing nothing.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from actions.messages import normalize_content
from models.messages.mentions import render_message_content
from server.api.request import ApiHandler
from server.engine.errors import BadRequest


def _rendered(session: Session, realm_id: int, content: str) -> str:
    return render_message_content(session, realm_id, content).html


class RenderMessageHandler(ApiHandler):
    """`POST /messages/render`: `{"rendered": html}` for `content`."""

    async def post(self) -> None:
        user = await self.authenticate()
        content = self.param_str("content")
        if not content.strip():
            raise BadRequest("Message must not be empty")  # Zulip's wording for a send
        rendered = await self.query(_rendered, user.realm_id, normalize_content(content))
        self.send_success({"rendered": rendered})


class RealmEmojiHandler(ApiHandler):
    """`GET /realm/emoji`: the realm's custom emoji (none in eventq)."""

    async def get(self) -> None:
        await self.authenticate()
        self.send_success({"emoji": {}})


class AlertWordsHandler(ApiHandler):
    """`GET /users/me/alert_words`: the caller's alert words (none in eventq)."""

    async def get(self) -> None:
        await self.authenticate()
        self.send_success({"alert_words": []})


CLIENT_EXTRA_ROUTES: list[tuple[str, type[ApiHandler]]] = [
    (r"/api/v1/messages/render", RenderMessageHandler),
    (r"/api/v1/realm/emoji", RealmEmojiHandler),
    (r"/api/v1/users/me/alert_words", AlertWordsHandler),
]
