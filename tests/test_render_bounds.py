"""Issue 22, item 3: the size a message renders to, and the size of a history answer.

A message whose HTML would be longer than `MAX_RENDERED_LENGTH` is refused with Zulip's
wording, "Unable to render message", before its transaction writes anything, and source
that would be refused for its length is stopped while it is parsed
(`MAX_RENDER_BLOCK_TOKENS`), not after the whole table was built. A message just under
the bounds renders and sends. A `GET /messages` answer holds at most
`MAX_FETCH_ANSWER_BYTES` of messages, leaves out the ones farthest from the anchor, and
says so through `found_oldest` / `found_newest`, so a client pages through everything.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from sqlalchemy import func, select

import models.messages.history as message_history
import models.messages.rendering as rendering
from actions.errors import InvalidInput
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from models.database import Database
from models.messages.history import MAX_FETCH_ANSWER_BYTES, fetch_messages
from models.messages.rendering import (
    MAX_RENDER_BLOCK_TOKENS,
    MAX_RENDERED_LENGTH,
    MarkdownRenderingError,
    render_markdown,
)
from models.messages.wire import MessageView, Participant, message_to_api
from models.outbox import outbox_count
from models.tables import MAX_MESSAGE_LENGTH, Message, UserMessage
from tests.helpers import zulip_messages
from tests.helpers.api import ApiClient, encode_params
from tests.helpers.inprocess_api import inprocess_api
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer

zulip_messages.install()

# Zulip's answer to a message it cannot render (zerver/actions/message_send.py).
UNABLE = {"result": "error", "msg": "Unable to render message", "code": "BAD_REQUEST"}


def review_table(total: int = 7203) -> str:
    """A table like the review's: 256 columns, body rows that write one cell each (the
    parser fills in the other 255, up to markdown-it's 65,536 filled cells), padded to
    exactly `total` characters."""
    columns = 256
    delimiter = "|" + "|".join("---" for _ in range(columns)) + "|\n"
    body = "".join(f"| {i} |\n" for i in range(257))
    cells = [f"c{i}" for i in range(columns)]
    missing = total - len(delimiter) - len(body) - 2 - sum(map(len, cells)) - (columns - 1)
    for index in range(missing):
        cells[index % columns] += "x"
    text = ("|" + "|".join(cells) + "|\n" + delimiter + body).rstrip("\n")
    assert len(text) == total
    return text


def filled_table(rows: int, columns: int = 256) -> str:
    """A table whose `rows` body rows write one cell each: about 10 characters of HTML and
    three block tokens for every cell the parser fills in."""
    return (
        "|" + "a|" * columns + "\n|" + "-|" * columns + "\n" + "".join("b\n" for _ in range(rows))
    ).rstrip("\n")


# The most rows of `filled_table` under both bounds (checked below): 37 rows are 29,266
# block tokens and about 98,000 characters of HTML.
ROWS_UNDER_BOUNDS = 37


def counts(db: Database, realm: SampleRealm) -> tuple[int, int, int]:
    with db.snapshot() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Message)) or 0),
            int(session.scalar(select(func.count()).select_from(UserMessage)) or 0),
            outbox_count(session, realm.realm_id),
        )


# -- rendering ------------------------------------------------------------------------------


def test_the_reviews_table_is_refused_with_zulips_wording() -> None:
    table = review_table()
    with pytest.raises(MarkdownRenderingError) as refused:
        render_markdown(table)
    assert str(refused.value) == UNABLE["msg"]
    assert refused.value.code == UNABLE["code"] and isinstance(refused.value, InvalidInput)
    # Several smaller tables in one message under MAX_MESSAGE_LENGTH (4 MB of HTML and
    # 6 s of CPU before the bound) are refused too.
    many = "\n".join([filled_table(256)] * 6)
    assert len(many) < MAX_MESSAGE_LENGTH
    with pytest.raises(MarkdownRenderingError):
        render_markdown(many)


def test_the_parser_stops_at_the_token_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal comes while the table is parsed: no more block tokens are made than
    the bound (the whole table is about 198,000), which is what bounds its CPU."""
    made = 0
    append = rendering._BoundedBlockTokens.append

    def counting(self: Any, token: Any) -> None:
        nonlocal made
        made += 1
        append(self, token)

    monkeypatch.setattr(rendering._BoundedBlockTokens, "append", counting)
    with pytest.raises(MarkdownRenderingError):
        render_markdown(review_table())
    assert made == MAX_RENDER_BLOCK_TOKENS + 1


def test_the_rendered_length_bound_is_exact() -> None:
    # "<p>" + text + "</p>\n": eight characters around the text.
    assert len(render_markdown("a" * (MAX_RENDERED_LENGTH - 8))) == MAX_RENDERED_LENGTH
    with pytest.raises(MarkdownRenderingError):
        render_markdown("a" * (MAX_RENDERED_LENGTH - 7))


def test_messages_just_under_the_bounds_render() -> None:
    tokens = rendering._MARKDOWN.parse(filled_table(ROWS_UNDER_BOUNDS))
    assert MAX_RENDER_BLOCK_TOKENS - 1000 < len(tokens) < MAX_RENDER_BLOCK_TOKENS
    html = render_markdown(filled_table(ROWS_UNDER_BOUNDS))
    assert MAX_RENDERED_LENGTH - 5000 < len(html) <= MAX_RENDERED_LENGTH
    with pytest.raises(MarkdownRenderingError):
        render_markdown(filled_table(ROWS_UNDER_BOUNDS + 1))
    # The text that expands most, at the longest a message is: six times.
    assert len(render_markdown('"' * MAX_MESSAGE_LENGTH)) == 6 * MAX_MESSAGE_LENGTH + 8


def test_a_refused_message_writes_nothing(db: Database, realm: SampleRealm) -> None:
    before = counts(db, realm)
    for target in (ChannelTarget("public"), DirectTarget(user_ids=(realm.users["loner"],))):
        with pytest.raises(MarkdownRenderingError), db.write() as session:
            check_send_message(
                session, realm.realm_id, realm.users["member"], target, "t", review_table(), "x"
            )
    assert counts(db, realm) == before


def test_the_server_refuses_the_table_and_sends_one_just_under(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    """Through a real `eventq serve`: the review's table is answered with Zulip's error
    and leaves no message, `user_message` or outbox row; the largest table under the
    bounds is sent, stored and read back as rendered."""
    member = ApiClient(server.url, realm.emails["member"], realm.api_keys["member"])
    before = counts(db, realm)
    for params in (
        {"type": "stream", "to": "public", "topic": "t", "content": review_table()},
        {"type": "private", "to": [realm.users["loner"]], "content": review_table()},
    ):
        answer = member.call("POST", "/messages", params)
        assert (answer.status, answer.body) == (400, UNABLE)
    assert counts(db, realm) == before

    content = filled_table(ROWS_UNDER_BOUNDS)
    sent = member.ok(
        "POST", "/messages", {"type": "stream", "to": "public", "topic": "t", "content": content}
    )
    history = member.ok("GET", "/messages", {"anchor": sent["id"], "num_before": 0})
    [message] = history["messages"]
    assert message["content"] == render_markdown(content)
    assert len(message["content"]) <= MAX_RENDERED_LENGTH


# -- the size of a history answer ---------------------------------------------------------


async def test_history_pages_through_large_messages_within_the_bound(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP, with the bound lowered to hold a few of these messages (and messages
    loaded three at a time): every answer stays under it, says there is more on the side
    it cut, and a client paging on with Zulip's parameters gets every message once."""
    bound = 200_000
    monkeypatch.setattr(message_history, "MAX_FETCH_ANSWER_BYTES", bound)
    monkeypatch.setattr(message_history, "_FETCH_LOAD_BATCH", 3)
    sent = []
    with db.write() as session:
        for index in range(14):
            # 9,000 `"` render to 54,000 characters; every third message is small.
            content = f"small {index}" if index % 3 == 0 else '"' * 9000
            sent.append(
                check_send_message(
                    session,
                    realm.realm_id,
                    realm.users["member"],
                    ChannelTarget("public"),
                    "t",
                    content,
                    "x",
                )
            )

    async with inprocess_api(db) as api:
        token = base64.b64encode(
            f"{realm.emails['member']}:{realm.api_keys['member']}".encode()
        ).decode()

        async def get(params: dict[str, Any]) -> dict[str, Any]:
            response = await api.client.fetch(
                f"{api.base_url}/api/v1/messages?{urlencode(encode_params(params))}",
                headers={"Authorization": f"Basic {token}"},
                raise_error=False,
            )
            assert response.code == 200, response.body
            assert len(response.body) <= message_history.MAX_FETCH_ANSWER_BYTES
            answer: dict[str, Any] = json.loads(response.body)
            return answer

        narrow = [["channel", "public"]]
        # Backwards from the newest, as Zulip's clients page.
        seen: list[int] = []
        anchor: int | str = "newest"
        pages = 0
        while True:
            page = await get(
                {
                    "anchor": anchor,
                    "num_before": 100,
                    "num_after": 0,
                    "include_anchor": anchor == "newest",
                    "narrow": narrow,
                }
            )
            pages += 1
            ids = [m["id"] for m in page["messages"]]
            assert ids and ids == sorted(ids)
            assert page["found_newest"] == (anchor == "newest")
            seen = ids + seen
            if page["found_oldest"]:
                break
            anchor = ids[0]
        assert seen == sent and pages >= 3

        # From the middle, both sides cut about evenly, and both say so.
        middle = sent[7]
        both = await get({"anchor": middle, "num_before": 100, "num_after": 100, "narrow": narrow})
        ids = [m["id"] for m in both["messages"]]
        assert both["found_anchor"] and middle in ids
        assert not both["found_oldest"] and not both["found_newest"]
        assert abs(ids.index(middle) - (len(ids) - 1 - ids.index(middle))) <= 1
        # Forwards from the oldest.
        forward: list[int] = []
        anchor = "oldest"
        while True:
            page = await get(
                {
                    "anchor": anchor,
                    "num_before": 0,
                    "num_after": 100,
                    "include_anchor": anchor == "oldest",
                    "narrow": narrow,
                }
            )
            ids = [m["id"] for m in page["messages"]]
            assert ids and page["found_oldest"] == (anchor == "oldest")
            forward += ids
            if page["found_newest"]:
                break
            anchor = ids[-1]
        assert forward == sent

        # At the real bound, these fourteen messages (about 700 KB) are one answer.
        monkeypatch.setattr(message_history, "MAX_FETCH_ANSWER_BYTES", MAX_FETCH_ANSWER_BYTES)
        whole = await get({"anchor": "newest", "num_before": 100, "narrow": narrow})
        assert [m["id"] for m in whole["messages"]] == sent and whole["found_oldest"]


def test_a_page_always_holds_a_message(
    db: Database, realm: SampleRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paging never stalls: a page of the real bound holds dozens of the largest messages
    there can be (the rendered form at its bound, a topic and a content whose every
    character JSON escapes as `\\u0001`, six bytes, a conversation of 100 people), and the
    message nearest the anchor is answered even when it alone is over the bound."""
    people = tuple(Participant(i, f"user{i}@example.com", f"User {i}") for i in range(100))
    worst = MessageView(
        id=2**31 - 1,
        sender=people[0],
        realm_str="zulip",
        recipient_id=1,
        stream=None,
        participants=people,
        subject="\x01" * 60,
        content="\x01" * MAX_MESSAGE_LENGTH,
        rendered_content="\x01" * MAX_RENDERED_LENGTH,
        timestamp=0,
        client="x" * 30,
    )
    largest = max(len(orjson.dumps(message_to_api(worst, markdown))) for markdown in (True, False))
    assert MAX_FETCH_ANSWER_BYTES // largest >= 10

    with db.write() as session:
        sent = [
            check_send_message(
                session,
                realm.realm_id,
                realm.users["member"],
                ChannelTarget("public"),
                "t",
                '"' * 9000,
                "x",
            )
            for _ in range(2)
        ]
    monkeypatch.setattr(message_history, "MAX_FETCH_ANSWER_BYTES", 10_000)
    with db.snapshot() as session:
        answer = fetch_messages(
            session, realm.users["member"], anchor="newest", num_before=10, num_after=0
        )
    assert [m["id"] for m in answer["messages"]] == sent[1:]
    assert not answer["found_oldest"] and answer["found_newest"]
