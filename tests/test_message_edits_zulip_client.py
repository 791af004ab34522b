"""Editing, reacting and deleting through the unmodified `zulip` client from PyPI, against a
live `eventq serve` on both backends: `update_message` (content, then topic), `add_reaction`,
`remove_reaction`, `get_raw_message`, `get_message_history`, `delete_message`, and a
second client's queue receiving exactly the `update_message`, `reaction` and
`delete_message` events, each of eventq's documented shape and Zulip's. A third user,
who may not read the private channel, gets nothing about a message there, and is refused
it by id. Waits are long-polls with a deadline, never sleeps.
"""

from __future__ import annotations

import time
from typing import Any

from tests.helpers import zulip_messages
from tests.helpers.api import zulip_client
from tests.helpers.openapi import validate_event, validate_response
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer

zulip_messages.install()

# How long a committed event may take to reach a waiting poll (it takes milliseconds).
EVENT_TIMEOUT = 30.0
EVENT_TYPES = ["update_message", "reaction", "delete_message"]


def succeeded(answer: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    assert answer["result"] == "success", answer
    validate_response(method, path, 200, answer)
    return answer


def events_until(client: Any, queue_id: str, count: int) -> list[dict[str, Any]]:
    """Long-poll the queue until it has handed out `count` events (or the deadline)."""
    received: list[dict[str, Any]] = []
    last_event_id = -1
    deadline = time.monotonic() + EVENT_TIMEOUT
    while len(received) < count:
        assert time.monotonic() < deadline, f"only {received} arrived"
        answer = client.get_events(queue_id=queue_id, last_event_id=last_event_id)
        assert answer["result"] == "success", answer
        for event in answer["events"]:
            last_event_id = event["id"]
            if event["type"] != "heartbeat":
                validate_event(event)
                received.append(event)
    return received


def test_the_zulip_client_edits_reacts_and_deletes(server: LiveServer, realm: SampleRealm) -> None:
    member = zulip_client(server, realm, "member")
    guest = zulip_client(server, realm, "guest")
    loner = zulip_client(server, realm, "loner")
    queued = guest.register(event_types=EVENT_TYPES)
    assert queued["result"] == "success", queued
    outsider = loner.register(event_types=EVENT_TYPES)
    assert outsider["result"] == "success", outsider

    sent = member.send_message(
        {"type": "stream", "to": "private", "topic": "plans", "content": "draft"}
    )
    message_id = sent["id"]
    path = f"/api/v1/messages/{message_id}"
    succeeded(member.update_message({"message_id": message_id, "content": "final"}), "PATCH", path)
    succeeded(
        member.update_message(
            {"message_id": message_id, "topic": "decided", "propagate_mode": "change_all"}
        ),
        "PATCH",
        path,
    )
    succeeded(
        guest.add_reaction({"message_id": message_id, "emoji_name": "octopus"}),
        "POST",
        f"{path}/reactions",
    )
    twice = guest.add_reaction({"message_id": message_id, "emoji_name": "octopus"})
    assert twice["code"] == "REACTION_ALREADY_EXISTS", twice
    raw = succeeded(member.get_raw_message(message_id), "GET", path)
    assert raw["raw_content"] == "final"
    message = raw["message"]
    assert message["subject"] == "decided" and "last_edit_timestamp" in message
    assert message["reactions"] == [
        {
            "emoji_name": "octopus",
            "emoji_code": "1f419",
            "reaction_type": "unicode_emoji",
            "user_id": realm.users["guest"],
        }
    ]
    history = succeeded(member.get_message_history(message_id), "GET", f"{path}/history")
    assert [h["content"] for h in history["message_history"]] == ["draft", "final", "final"]
    assert history["message_history"][2]["prev_topic"] == "plans"
    succeeded(
        guest.remove_reaction({"message_id": message_id, "emoji_name": "octopus"}),
        "DELETE",
        f"{path}/reactions",
    )
    # The loner may not read the private channel: refused by id, as a missing message.
    hidden = loner.get_raw_message(message_id)
    assert (hidden["result"], hidden["msg"]) == ("error", "Invalid message(s)")
    validate_response("GET", path, 400, hidden)
    refused = loner.update_message({"message_id": message_id, "content": "mine"})
    assert refused["msg"] == "Invalid message(s)", refused
    succeeded(member.delete_message(message_id), "DELETE", path)
    gone = member.get_raw_message(message_id)
    assert gone["msg"] == "Invalid message(s)"

    events = events_until(guest, queued["queue_id"], 5)
    assert [(e["type"], e.get("op")) for e in events] == [
        ("update_message", None),
        ("update_message", None),
        ("reaction", "add"),
        ("reaction", "remove"),
        ("delete_message", None),
    ]
    assert events[0]["orig_content"] == "draft" and events[0]["content"] == "final"
    assert events[1]["orig_subject"] == "plans" and events[1]["subject"] == "decided"
    assert events[4]["message_ids"] == [message_id] and events[4]["message_type"] == "stream"
    # Nothing about the private channel's message reached the loner's queue: the realm's
    # events are routed in order, and the last of them has reached the guest's.
    nothing = loner.get_events(queue_id=outsider["queue_id"], last_event_id=-1, dont_block=True)
    assert nothing["result"] == "success" and nothing["events"] == [], nothing
