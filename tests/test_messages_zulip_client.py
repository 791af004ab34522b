"""Messages through the unmodified `zulip` client from PyPI, against a live server on
both backends: `send_message` to a channel and to a user, `call_on_each_message` in a
second client receiving exactly the messages meant for it (nothing from a private
channel it is not in, nothing from a conversation it is not part of), a queue registered
with a narrow, and `get_messages` with narrows. Waits are on futures with timeouts.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import pytest
import zulip

from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions
from models.database import Database
from tests.helpers import zulip_messages
from tests.helpers.openapi import validate_response
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer

zulip_messages.install()

# How long a committed message may take to reach a waiting poll (it takes milliseconds).
EVENT_TIMEOUT = 30.0


class StopListening(Exception):
    """Raised by the callback to end `call_on_each_message` once the last message came."""


class ObservedClient(zulip.Client):
    """`zulip.Client` unchanged, plus a record of each queue it registers: a queue gets
    only what is committed after it, so the test sends once the listener has one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.registered: queue.Queue[str] = queue.Queue()
        super().__init__(*args, **kwargs)

    def register(
        self,
        event_types: Iterable[str] | None = None,
        narrow: list[list[str]] | None = None,
        **kwargs: object,
    ) -> dict[str, Any]:
        answer = super().register(event_types, narrow, **kwargs)
        if answer.get("result") == "success":
            self.registered.put(answer["queue_id"])
        return answer


def client_for(
    server: LiveServer, realm: SampleRealm, name: str, cls: type[zulip.Client] = zulip.Client
) -> Any:
    # An empty config file, so nothing from the developer's ~/.zuliprc is read.
    return cls(
        email=realm.emails[name],
        api_key=realm.api_keys[name],
        site=server.url,
        config_file=os.devnull,
    )


def sent_id(answer: dict[str, Any]) -> int:
    assert answer["result"] == "success", answer
    validate_response("POST", "/api/v1/messages", 200, answer)
    message_id: int = answer["id"]
    return message_id


def test_the_zulip_client_sends_listens_and_reads_history(
    server: LiveServer, realm: SampleRealm, database_url: str
) -> None:
    db = Database(database_url)
    try:
        with db.write() as session:
            secret = do_create_stream(session, realm.realm_id, "secret", invite_only=True).id
            bulk_add_subscriptions(session, realm.realm_id, [realm.users["member"]], [secret])
    finally:
        db.dispose()
    member = client_for(server, realm, "member")
    listener: ObservedClient = client_for(server, realm, "guest", ObservedClient)
    narrowed = client_for(server, realm, "guest")
    guest, loner = realm.users["guest"], realm.users["loner"]
    received: list[dict[str, Any]] = []

    def on_message(message: dict[str, Any]) -> None:
        received.append(message)
        # The stock client registers without `apply_markdown`: Zulip's default is the
        # content as sent.
        if message["content"] == "last":
            raise StopListening

    # A daemon thread: should the test fail before the last message, the client's loop
    # (which retries for ever) must not keep the test process alive.
    listening: Future[None] = Future()

    def listen() -> None:
        try:
            listener.call_on_each_message(on_message)
        except BaseException as error:
            listening.set_exception(error)

    threading.Thread(target=listen, name="zulip-listener", daemon=True).start()
    listener.registered.get(timeout=EVENT_TIMEOUT)
    queued = narrowed.register(event_types=["message"], narrow=[["channel", "public"]])
    assert queued["result"] == "success", queued

    expected = [
        sent_id(
            member.send_message({"type": "stream", "to": "public", "topic": "hi", "content": "one"})
        ),
        sent_id(member.send_message({"type": "private", "to": [guest], "content": "two"})),
    ]
    sent_id(member.send_message({"type": "stream", "to": "secret", "topic": "x", "content": "no"}))
    sent_id(member.send_message({"type": "private", "to": [loner], "content": "not yours"}))
    expected.append(
        sent_id(
            member.send_message(
                {"type": "stream", "to": "private", "subject": "s", "content": "three"}
            )
        )
    )
    expected.append(
        sent_id(
            member.send_message(
                {"type": "private", "to": [realm.emails["guest"]], "content": "last"}
            )
        )
    )
    with pytest.raises(StopListening):
        listening.result(timeout=EVENT_TIMEOUT)

    assert [m["id"] for m in received] == expected
    first, second = received[0], received[1]
    assert (first["type"], first["display_recipient"], first["subject"]) == (
        "stream",
        "public",
        "hi",
    )
    assert first["sender_email"] == realm.emails["member"] and first["client"] == "ZulipPython"
    assert second["type"] == "private"
    assert {p["id"] for p in second["display_recipient"]} == {realm.users["member"], guest}

    # The narrowed queue got the public channel's message only.
    polled = narrowed.get_events(queue_id=queued["queue_id"], last_event_id=-1, dont_block=True)
    assert [e["message"]["id"] for e in polled["events"]] == expected[:1]

    # History: the public channel's is public to the loner, who received none of it.
    reader = client_for(server, realm, "loner")
    channel = reader.get_messages(
        {
            "anchor": "newest",
            "num_before": 10,
            "num_after": 0,
            "narrow": [{"operator": "channel", "operand": "public"}],
        }
    )
    validate_response("GET", "/api/v1/messages", 200, channel)
    assert [m["id"] for m in channel["messages"]] == expected[:1]
    assert channel["messages"][0]["flags"] == ["read", "historical"]
    assert channel["found_newest"] and channel["found_oldest"]
    hidden = reader.get_messages(
        {"anchor": "newest", "num_before": 10, "num_after": 0, "narrow": [["channel", "secret"]]}
    )
    assert hidden["result"] == "error" and hidden["code"] == "BAD_NARROW"
    talk = listener.get_messages(
        {
            "anchor": "oldest",
            "num_before": 0,
            "num_after": 10,
            "narrow": [["dm", [realm.users["member"]]]],
        }
    )
    assert [m["id"] for m in talk["messages"]] == [expected[1], expected[3]]
