"""`POST /messages/render`, `GET /realm/emoji` and `GET /users/me/alert_words` through the
unmodified `zulip` client against a live server: Zulip's shapes, a preview rendered
exactly as the sent message is, and nothing written."""

from __future__ import annotations

from sqlalchemy import func, select

from models.database import Database
from models.tables import Message
from tests.helpers.api import ApiClient, zulip_client
from tests.helpers.openapi import validate_response
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer


def message_count(db: Database) -> int:
    with db.snapshot() as session:
        return int(session.scalar(select(func.count()).select_from(Message)) or 0)


def test_a_preview_renders_as_the_message_will(
    db: Database, server: LiveServer, realm: SampleRealm
) -> None:
    member = zulip_client(server, realm, "member")
    content = "**hi** @**Admin** and `@**Owner**`"
    before = message_count(db)
    preview = member.render_message({"content": content})
    validate_response("POST", "/api/v1/messages/render", 200, preview)
    assert preview["rendered"] == (
        f'<p><strong>hi</strong> <span class="user-mention" data-user-id="{realm.users["admin"]}">'
        "@Admin</span> and <code>@**Owner**</code></p>\n"
    )
    assert message_count(db) == before
    sent = member.send_message({"type": "stream", "to": "public", "topic": "t", "content": content})
    assert sent["result"] == "success", sent
    fetched = member.get_raw_message(sent["id"])
    assert fetched["message"]["content"] == preview["rendered"]

    api = ApiClient(server.url, realm.emails["member"], realm.api_keys["member"])
    empty = api.call("POST", "/messages/render", {"content": "  "})
    assert empty.status == 400 and empty.body["code"] == "BAD_REQUEST", empty.body
    missing = api.call("POST", "/messages/render", {})
    assert missing.status == 400 and missing.body["code"] == "REQUEST_VARIABLE_MISSING"


def test_no_custom_emoji_and_no_alert_words(server: LiveServer, realm: SampleRealm) -> None:
    guest = zulip_client(server, realm, "guest")
    emoji = guest.get_realm_emoji()
    validate_response("GET", "/api/v1/realm/emoji", 200, emoji)
    assert emoji["emoji"] == {}
    words = guest.get_alert_words()
    validate_response("GET", "/api/v1/users/me/alert_words", 200, words)
    assert words["alert_words"] == []
    stranger = ApiClient(server.url, realm.emails["guest"], "not-the-key")
    assert stranger.call("GET", "/realm/emoji").status == 401
