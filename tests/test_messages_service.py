"""Message delivery through the event service, and the message endpoints over HTTP, in
this process on both backends.

The service delivers each message to the queues of its recipients, filtered by each
queue's narrow and rendered as each queue asked; a queue rebuilt from its descriptor
after a restart filters and renders identically and numbers its events on. Over HTTP,
`POST /messages` takes every form of Zulip's `to` and answers refusals with Zulip's codes
and fields; `GET /messages` answers a bad narrow with BAD_NARROW. Every answer is checked
against the OpenAPI document and Zulip's shapes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.users import do_deactivate_user
from models.database import Database
from models.messages.narrows import parse_narrow
from queues.types import Capabilities
from server.engine.authentication import AuthenticatedUser
from server.engine.registration import RegisterRequest
from server.engine.service import EventService
from tests.helpers import zulip_messages
from tests.helpers.api import encode_params
from tests.helpers.inprocess_api import InProcessApi, inprocess_api
from tests.helpers.realms import SampleRealm

zulip_messages.install()


def who(realm: SampleRealm, name: str) -> AuthenticatedUser:
    role = {"owner": 100, "admin": 200, "guest": 600, "outsider_guest": 600}.get(name, 400)
    return AuthenticatedUser(realm.users[name], realm.realm_id, realm.emails[name], role)


def register_request(narrow: list[Any], apply_markdown: bool) -> RegisterRequest:
    return RegisterRequest(
        event_types=frozenset({"message", "subscription"}),
        fetch_event_types=frozenset(),
        capabilities=Capabilities(),
        include_subscribers=False,
        queue_lifespan_secs=None,
        user_agent="ZulipPython/0.9.1",
        narrow=parse_narrow(narrow),
        apply_markdown=apply_markdown,
    )


async def send(
    db: Database, realm: SampleRealm, sender: str, target: ChannelTarget | DirectTarget
) -> int:
    def work() -> int:
        with db.write() as session:
            return check_send_message(
                session, realm.realm_id, realm.users[sender], target, "news", "*new*", "test"
            )

    return await asyncio.to_thread(work)


async def events_of(service: EventService, user: AuthenticatedUser, queue_id: str) -> list[Any]:
    await service.drain_outbox()
    answer = await service.get_events(user, queue_id, None, dont_block=True)
    return [json.loads(event) for event in answer.events]


async def test_narrow_and_rendering_hold_across_a_rebuild(db: Database, realm: SampleRealm) -> None:
    member = who(realm, "member")
    service = EventService(db)
    await service.start()
    try:
        narrowed = (
            await service.register(member, register_request([["channel", "public"]], False))
        )["queue_id"]
        everything = (await service.register(member, register_request([], True)))["queue_id"]
        dms = (await service.register(member, register_request([["is", "dm"]], True)))["queue_id"]
        public = await send(db, realm, "guest", ChannelTarget("public"))
        private = await send(db, realm, "guest", ChannelTarget("private"))
        direct = await send(db, realm, "loner", DirectTarget(user_ids=(member.id,)))
        got = await events_of(service, member, narrowed)
        assert [(e["id"], e["message"]["id"]) for e in got] == [(0, public)]
        assert got[0]["message"]["content"] == "*new*"
        assert got[0]["message"]["content_type"] == "text/x-markdown"
        assert got[0]["flags"] == []
        full = await events_of(service, member, everything)
        assert [e["message"]["id"] for e in full] == [public, private, direct]
        assert all(e["message"]["content"] == "<p><em>new</em></p>\n" for e in full)
        assert [e["message"]["id"] for e in await events_of(service, member, dms)] == [direct]
    finally:
        await service.stop()

    # While no server runs, more messages commit; the queue comes back from its
    # descriptor and the outbox with the same filter and rendering, numbering on.
    later_public = await send(db, realm, "member", ChannelTarget("public"))
    await send(db, realm, "member", ChannelTarget("web-public"))
    restarted = EventService(db)
    await restarted.start()
    try:
        again = await events_of(restarted, member, narrowed)
        assert [(e["id"], e["message"]["id"]) for e in again] == [(0, public), (1, later_public)]
        assert again[1]["flags"] == ["read"] and again[1]["message"]["content"] == "*new*"
    finally:
        await restarted.stop()


async def post(api: InProcessApi, realm: SampleRealm, name: str, params: dict[str, Any]) -> Any:
    return await api.call(realm.emails[name], realm.api_keys[name], "POST", "/messages", params)


async def test_send_message_takes_zulips_forms_of_to_and_refuses_zulips_way(
    db: Database, realm: SampleRealm
) -> None:
    member, loner = realm.users["member"], realm.users["loner"]
    async with inprocess_api(db) as api:
        accepted: list[dict[str, Any]] = [
            {"type": "stream", "to": "public", "topic": "a", "content": "x"},
            {"type": "channel", "to": '"public"', "subject": "old name", "content": "x"},
            {"type": "stream", "to": str(realm.streams["public"]), "topic": "a", "content": "x"},
            {"type": "stream", "to": '["PUBLIC"]', "topic": "a", "content": "x"},
            {"type": "private", "to": [loner], "content": "x"},
            {"type": "direct", "to": [realm.emails["loner"]], "content": "x"},
            {
                "type": "private",
                "to": f"{realm.emails['loner']}, {realm.emails['admin']}",
                "content": "x",
            },
            {"type": "private", "to": str(loner), "content": "x"},
        ]
        sent = []
        for params in accepted:
            answer = await post(api, realm, "member", params)
            assert answer.ok, (params, answer.body)
            sent.append(answer.body["id"])
        assert sent == sorted(sent) and len(set(sent)) == len(sent)

        refused: list[tuple[dict[str, Any], dict[str, Any]]] = [
            (
                {"type": "stream", "to": "nowhere", "topic": "a", "content": "x"},
                {"code": "STREAM_DOES_NOT_EXIST", "stream": "nowhere"},
            ),
            (
                {"type": "stream", "to": "99999", "topic": "a", "content": "x"},
                {"code": "STREAM_DOES_NOT_EXIST", "stream_id": 99999},
            ),
            ({"type": "stream", "to": "public", "content": "x"}, {"msg": "Missing topic"}),
            (
                {"type": "stream", "to": "public", "topic": "a", "content": " "},
                {"msg": "Message must not be empty"},
            ),
            (
                {"type": "private", "to": [loner, realm.emails["admin"]], "content": "x"},
                {"msg": "Recipient lists may contain emails or user IDs, but not both."},
            ),
            (
                {"type": "private", "to": [{"id": loner}], "content": "x"},
                {"msg": "Invalid data type for recipients"},
            ),
            ({"type": "private", "to": [2**40], "content": "x"}, {"code": "BAD_REQUEST"}),
            ({"type": "huddle", "to": "public", "content": "x"}, {"msg": "Invalid message type"}),
            (
                {"type": "stream", "to": "public", "topic": "a"},
                {"code": "REQUEST_VARIABLE_MISSING", "var_name": "content"},
            ),
        ]
        for params, expected in refused:
            answer = await post(api, realm, "member", params)
            assert answer.status == 400, (params, answer.body)
            assert {k: answer.body.get(k) for k in expected} == expected, (params, answer.body)
        # A private channel: hidden from the loner, visible to an administrator who may
        # not post to it.
        hidden = await post(
            api, realm, "loner", {"type": "stream", "to": "private", "topic": "a", "content": "x"}
        )
        assert hidden.body["code"] == "STREAM_DOES_NOT_EXIST"
        admin = await post(
            api, realm, "admin", {"type": "stream", "to": "private", "topic": "a", "content": "x"}
        )
        assert admin.body["msg"] == "Not authorized to send to channel 'private'"

        def deactivate() -> None:
            with db.write() as session:
                do_deactivate_user(session, realm.realm_id, loner)

        await asyncio.to_thread(deactivate)
        gone = await post(api, realm, "member", {"type": "private", "to": [loner], "content": "x"})
        assert gone.body["msg"] == "'loner@zulip.example.com' is no longer using Zulip."

        async def get(params: dict[str, Any]) -> Any:
            # A GET's parameters travel in its query string.
            query = urlencode(encode_params(params))
            return await api.call(
                realm.emails["admin"], realm.api_keys["admin"], "GET", f"/messages?{query}", {}
            )

        found = await get({"anchor": "newest", "num_before": 10, "narrow": [["channel", "public"]]})
        assert [m["id"] for m in found.body["messages"]] == sent[:4]
        assert all(m["flags"] == ["read", "historical"] for m in found.body["messages"])
        by_dm = await get(
            {"num_before": 10, "narrow": [{"operator": "dm", "operand": [member, loner]}]}
        )
        assert [m["id"] for m in by_dm.body["messages"]] == [sent[6]]
        assert (await get({"narrow": [["has", "video"]]})).body["code"] == "BAD_NARROW"
        assert (await get({"anchor": "middle"})).body["msg"] == "Invalid anchor"
        assert (await get({"num_before": -1})).status == 400
