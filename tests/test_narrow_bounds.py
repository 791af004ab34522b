"""Issue 22, item 5: the size of a narrow, and the cost of a queue's filter per message.

A narrow naming more than `MAX_NARROW_USERS` users in its `dm` terms, or with more than
`MAX_NARROW_OPERAND_CHARS` characters of text operands, is refused as BAD_NARROW at
register and in `GET /messages`; one at the bounds registers and routes as its terms say.
A queue's filter is prepared once (`EventNarrow.prepared`), so filtering one message never
reads the users its terms name; a narrow stored before the bounds, over them, still
rebuilds its queue, which filters as registered.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import update

from actions.messages import ChannelTarget, DirectTarget, check_send_message
from models.database import Database
from models.messages.narrows import (
    MAX_NARROW_OPERAND_CHARS,
    MAX_NARROW_TERMS,
    MAX_NARROW_USERS,
    BadNarrow,
    EventNarrow,
    NarrowTerm,
    PreparedTerm,
    narrow_from_json,
    parse_narrow,
)
from models.messages.wire import MessageView, Participant, message_event
from models.tables import QueueDescriptorRow
from queues.types import Capabilities
from server.engine.authentication import AuthenticatedUser
from server.engine.registration import RegisterRequest
from server.engine.service import EventService
from tests.helpers import zulip_messages
from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer

zulip_messages.install()

OWNER = Participant(10, "owner@x.example", "Owner")
ALICE = Participant(11, "alice@x.example", "Alice")
BOB = Participant(12, "bob@x.example", "Bob")
# Ids of no user: filler for narrows of many users.
FILLER = 1_000_000

TOO_MANY_USERS = f"Invalid narrow operator: dm operands name more than {MAX_NARROW_USERS} users"
TOO_LONG = (
    f"Invalid narrow operator: operands longer than {MAX_NARROW_OPERAND_CHARS} characters in all"
)


def negated_dms(users: int, *conversations: list[int]) -> list[dict[str, Any]]:
    """MAX_NARROW_TERMS negated `dm` terms naming `users` users in all: the given
    conversations, then terms of filler ids."""
    terms: list[list[int]] = [list(c) for c in conversations]
    left = users - sum(map(len, terms))
    fillers = MAX_NARROW_TERMS - len(terms)
    for index in range(fillers):
        count = left // fillers + (1 if index < left % fillers else 0)
        start = FILLER + index * 10_000
        terms.append(list(range(start, start + count)))
    return [{"operator": "dm", "operand": t, "negated": True} for t in terms]


def dm_event(*people: Participant, sender: Participant = ALICE) -> dict[str, Any]:
    ordered = tuple(sorted({sender, *people}, key=lambda p: p.id))
    view = MessageView(
        id=1,
        sender=sender,
        realm_str="zulip",
        recipient_id=3,
        stream=None,
        participants=ordered,
        subject="",
        content="hi",
        rendered_content="<p>hi</p>\n",
        timestamp=0,
        client="test",
    )
    return message_event(view, [])


# -- the bounds -------------------------------------------------------------------------------


def test_a_narrow_over_its_bounds_is_refused_as_bad_narrow() -> None:
    at_bound = parse_narrow(negated_dms(MAX_NARROW_USERS))
    assert sum(len(t.operand) for t in at_bound if isinstance(t.operand, tuple)) == 250
    with pytest.raises(BadNarrow) as refused:
        parse_narrow(negated_dms(MAX_NARROW_USERS + 1))
    assert (refused.value.code, str(refused.value)) == ("BAD_NARROW", TOO_MANY_USERS)
    # The review's narrow: 40,000 ids in 16 negated terms.
    with pytest.raises(BadNarrow):
        parse_narrow(negated_dms(40_000))
    # A user named twice in one term is one user; emails count as users too.
    parse_narrow([["dm", [1] * 1000 + list(range(2, MAX_NARROW_USERS + 1))]])
    emails = [f"u{i}@x.example" for i in range(MAX_NARROW_USERS + 1)]
    with pytest.raises(BadNarrow):
        parse_narrow([["dm", emails]])
    parse_narrow([["dm", emails[:-1]]])

    # Characters of text operands, in all: here a topic and a channel name.
    text = MAX_NARROW_OPERAND_CHARS // 2
    parse_narrow([["channel", "c" * text], ["topic", "t" * text]])
    with pytest.raises(BadNarrow) as refused:
        parse_narrow([["channel", "c" * text], ["topic", "t" * (text + 1)]])
    assert str(refused.value) == TOO_LONG


# -- the prepared filter --------------------------------------------------------------------


class _Guarded(tuple[int, ...]):
    """An operand that refuses to be read once `armed`: a filter that reads it while
    matching a message does work in proportion to its size."""

    armed = False

    def _check(self) -> None:
        if _Guarded.armed:
            raise AssertionError("the operand was read while matching a message")

    def __iter__(self) -> Any:
        self._check()
        return super().__iter__()

    def __contains__(self, item: object) -> bool:
        self._check()
        return super().__contains__(item)

    def __len__(self) -> int:
        self._check()
        return super().__len__()


def test_matching_a_message_never_reads_the_operands() -> None:
    """Routing one message to a queue costs its terms and the conversation's size, never
    the number of users the terms name: the filter reads only what was prepared."""
    big = tuple(range(FILLER, FILLER + MAX_NARROW_USERS - 1))
    terms = (
        NarrowTerm("dm", _Guarded((ALICE.id,)), negated=True),
        NarrowTerm("dm", _Guarded(big), negated=True),
        NarrowTerm("dm", _Guarded((ALICE.id, BOB.id))),
    )
    narrow = EventNarrow(terms, OWNER.id)
    _Guarded.armed = True
    try:
        assert narrow(dm_event(OWNER, BOB))
        assert not narrow(dm_event(OWNER))
        assert not narrow(dm_event(OWNER, BOB, Participant(FILLER, "f@x.example", "F")))
    finally:
        _Guarded.armed = False
    # What it reads instead, prepared when the filter was built.
    assert narrow.prepared == (
        PreparedTerm("dm", True, dm_ids=frozenset({ALICE.id})),
        PreparedTerm("dm", True, dm_ids=frozenset(big)),
        PreparedTerm("dm", False, dm_ids=frozenset({ALICE.id, BOB.id})),
    )
    # Equal narrows are equal, and hash alike, whatever was prepared.
    assert narrow == EventNarrow(terms, OWNER.id) and hash(narrow) == hash(
        EventNarrow(terms, OWNER.id)
    )


def test_a_stored_narrow_over_the_bounds_still_loads_and_filters() -> None:
    stored = json.dumps([["dm", list(range(FILLER, FILLER + 40_000)), True], ["dm", [12], True]])
    terms = narrow_from_json(stored)
    narrow = EventNarrow(terms, OWNER.id)
    assert narrow.prepared[0].dm_ids == frozenset(range(FILLER, FILLER + 40_000))
    assert narrow(dm_event(OWNER))  # Alice and the owner: named by neither term
    assert not narrow(dm_event(OWNER, sender=BOB))  # Bob and the owner: the second term


# -- through the server -----------------------------------------------------------------------


def poll_messages(api: ApiClient, queue_id: str, until: int) -> list[int]:
    """The ids of the `message` events of the queue, polled until message `until`."""
    last, got = -1, []
    for _ in range(20):
        answer = api.poll(queue_id, last)
        assert answer.ok, answer.body
        for event in answer.body["events"]:
            last = max(last, int(event["id"]))
            if event["type"] == "message":
                got.append(int(event["message"]["id"]))
        if until in got:
            return got
    raise AssertionError(f"message {until} never came: {got}")


def test_the_server_refuses_an_oversize_narrow_and_routes_one_at_the_bound(
    server: LiveServer, realm: SampleRealm
) -> None:
    """Through a real `eventq serve`: a narrow one user over the bound is refused at
    register and in history; one at the bound (sixteen negated `dm` terms, one of them the
    conversation with the administrator) takes every message but that conversation's."""
    users = realm.users
    member = ApiClient(server.url, realm.emails["member"], realm.api_keys["member"])
    over = negated_dms(MAX_NARROW_USERS + 1, [users["admin"]])
    for answer in (
        member.call("POST", "/register", {"event_types": ["message"], "narrow": over}),
        member.call("GET", "/messages", {"anchor": "newest", "num_before": 1, "narrow": over}),
    ):
        assert answer.status == 400
        assert (answer.body["code"], answer.body["msg"]) == ("BAD_NARROW", TOO_MANY_USERS)

    at_bound = negated_dms(MAX_NARROW_USERS, [users["admin"]])
    queue_id = member.register(event_types=["message"], narrow=at_bound)["queue_id"]

    def send(name: str, params: dict[str, Any]) -> int:
        sender = ApiClient(server.url, realm.emails[name], realm.api_keys[name])
        return int(sender.ok("POST", "/messages", params)["id"])

    from_loner = send("loner", {"type": "private", "to": [users["member"]], "content": "a"})
    from_admin = send("admin", {"type": "private", "to": [users["member"]], "content": "b"})
    group = send(
        "admin", {"type": "private", "to": [users["member"], users["loner"]], "content": "c"}
    )
    channel = send("admin", {"type": "stream", "to": "public", "topic": "t", "content": "d"})
    assert poll_messages(member, queue_id, channel) == [from_loner, group, channel]
    assert from_admin not in (from_loner, group, channel)


async def test_a_descriptor_stored_over_the_bounds_rebuilds_its_queue(
    db: Database, realm: SampleRealm
) -> None:
    """A queue whose stored narrow is over the bounds (written before them) comes back
    after a restart, prepared, and filters as registered."""
    member = AuthenticatedUser(
        realm.users["member"], realm.realm_id, realm.emails["member"], role=400
    )
    request = RegisterRequest(
        event_types=frozenset({"message"}),
        fetch_event_types=frozenset(),
        capabilities=Capabilities(),
        include_subscribers=False,
        queue_lifespan_secs=None,
        user_agent="ZulipPython/0.9.1",
        narrow=parse_narrow([["is", "dm"]]),
    )
    service = EventService(db)
    await service.start()
    try:
        queue_id = (await service.register(member, request))["queue_id"]
    finally:
        await service.stop()
    oversize = [["dm", list(range(FILLER, FILLER + 40_000)), True]] * 15 + [
        ["dm", [realm.users["admin"]], True]
    ]
    with db.write() as session:
        session.execute(
            update(QueueDescriptorRow)
            .where(QueueDescriptorRow.queue_id == queue_id)
            .values(narrow=json.dumps(oversize))
        )

    def send(name: str, target: ChannelTarget | DirectTarget) -> int:
        with db.write() as session:
            return check_send_message(
                session, realm.realm_id, realm.users[name], target, "t", "x", "test"
            )

    to_member = DirectTarget(user_ids=(realm.users["member"],))
    from_loner = send("loner", to_member)
    send("admin", to_member)
    channel = send("admin", ChannelTarget("public"))
    restarted = EventService(db)
    await restarted.start()
    try:
        await restarted.drain_outbox()
        answer = await restarted.get_events(member, queue_id, None, dont_block=True)
        got = [json.loads(event)["message"]["id"] for event in answer.events]
        assert got == [from_loner, channel]
        client = restarted.registry.get(queue_id)
        assert client is not None and isinstance(client.narrow, EventNarrow)
        assert len(client.narrow.prepared) == 16
        assert client.narrow.prepared[0].dm_ids == frozenset(range(FILLER, FILLER + 40_000))
    finally:
        await restarted.stop()
