"""Typing notifications (`POST /api/v1/typing`), ephemeral events end to end, on both
backends unless said otherwise.

- who receives a typing event (`models.typing`): direct-message participants, the
  sender included, deactivated ones listed but not told; a channel's active subscribers,
  nobody past Zulip's cap of 100, nobody who cannot see a private channel;
- Zulip's refusals, over HTTP in this process;
- nothing is written: every table's rows and the realm's counters stay, and the request
  runs only SELECTs (the NOTIFY on PostgreSQL is `SELECT pg_notify`);
- delivery through the event service: the id a typing event carries, its place among
  durable events, at most once, its expiry, the queue's filters, a waiting poll answered
  at once;
- a real `eventq serve` process driven by the unmodified `zulip` client;
- a restart: a typing event not yet polled is gone, the durable events are not;
- two shards behind nginx (PostgreSQL: SQLite is one process): a typing event sent to
  one shard reaches a queue held by the other.

Waits are on polls, futures and log lines, each with a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Generator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import zulip
from sqlalchemy import func, select

from actions.errors import ActionError, ActorDeactivated
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions
from actions.users import do_create_user, do_deactivate_user
from models.base import Base
from models.database import Database
from models.descriptors import load_descriptor
from models.tables import Realm
from models.typing import (
    MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS,
    STREAM_TYPING_CAPABILITY,
    TYPING_PROTOCOL_KEYS,
    TypingNotification,
    TypingRequest,
    typing_notification,
    typing_request,
)
from queues.types import Capabilities
from server.engine.authentication import AuthenticatedUser
from server.engine.live_queues import QueueState
from server.engine.registration import RegisterRequest
from server.engine.service import EventService, PollAnswer
from server.ops.cluster.nginx import ShardAddress
from tests.helpers.api import ApiClient
from tests.helpers.inprocess_api import inprocess_api
from tests.helpers.nginx import NginxServer, nginx_binary
from tests.helpers.openapi import validate_event
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer
from tests.helpers.statements import count_statements
from tests.test_service import FakeClock

# A poll of an event sent now: milliseconds, through a NOTIFY at worst.
WAIT_SECS = 20.0
# The line a shard logs once its LISTEN connection hears ephemeral events.
LISTENING = r"listening for outbox wake-ups on \S+ and ephemeral events on eventq_ephemeral"
ROLES = {"owner": 100, "admin": 200, "guest": 600, "outsider_guest": 600}


def who(realm: SampleRealm, name: str) -> AuthenticatedUser:
    return AuthenticatedUser(
        realm.users[name], realm.realm_id, realm.emails[name], ROLES.get(name, 400)
    )


def direct(op: str, *user_ids: int) -> TypingRequest:
    return typing_request("direct", op, list(user_ids), None, None)


def channel(op: str, stream_id: int, topic: str = "lunch") -> TypingRequest:
    return typing_request("stream", op, None, stream_id, topic)


def compute(db: Database, sender: int, request: TypingRequest) -> TypingNotification | None:
    with db.snapshot() as session:
        return typing_notification(session, sender, request)


def refusal(db: Database, sender: int, request: TypingRequest) -> str:
    with pytest.raises(ActionError) as refused:
        compute(db, sender, request)
    return str(refused.value)


def sender_of(realm: SampleRealm, name: str) -> dict[str, Any]:
    return {"user_id": realm.users[name], "email": realm.emails[name]}


# --- who receives it --------------------------------------------------------------------


def test_direct_typing_goes_to_the_participants_and_the_sender(
    db: Database, realm: SampleRealm
) -> None:
    users = realm.users
    found = compute(db, users["member"], direct("start", users["loner"], users["guest"]))
    assert found is not None
    assert found.event == {
        "type": "typing",
        "op": "start",
        "message_type": "direct",
        "sender": sender_of(realm, "member"),
        "recipients": [
            sender_of(realm, name)
            for name in sorted(("member", "loner", "guest"), key=lambda name: users[name])
        ],
    }
    assert set(found.user_ids) == {users["member"], users["loner"], users["guest"]}
    assert found.required_capability is None and found.realm_id == realm.realm_id
    validate_event({**found.event, "id": -1})

    # To oneself: the sender alone; a repeated id counts once.
    alone = compute(db, users["loner"], direct("stop", users["loner"], users["loner"]))
    assert alone is not None and alone.user_ids == (users["loner"],)
    assert alone.event["recipients"] == [sender_of(realm, "loner")]
    validate_event({**alone.event, "id": 3})


def test_a_deactivated_participant_is_listed_but_not_told(db: Database, realm: SampleRealm) -> None:
    users = realm.users
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, users["loner"])
    found = compute(db, users["member"], direct("start", users["loner"]))
    assert found is not None
    assert [r["user_id"] for r in found.event["recipients"]] == sorted(
        (users["member"], users["loner"])
    )
    assert found.user_ids == (users["member"],)
    # A sender deactivated since the server authenticated them is refused.
    with pytest.raises(ActorDeactivated):
        compute(db, users["loner"], direct("start", users["member"]))


def test_direct_typing_refuses_unknown_recipients(db: Database, realm: SampleRealm) -> None:
    other = make_sample_realm(db, "elsewhere")
    member = realm.users["member"]
    for unknown in (9_999_999, other.users["member"], 0, -4, 2**40):
        request = direct("start", realm.users["loner"], unknown)
        assert refusal(db, member, request) == f"Invalid user ID {unknown}"


def test_channel_typing_goes_to_its_active_subscribers(db: Database, realm: SampleRealm) -> None:
    users, streams = realm.users, realm.streams
    # The public channel's subscribers are `member` and `guest`.
    found = compute(db, users["member"], channel("start", streams["public"], "lunch"))
    assert found is not None
    assert found.event == {
        "type": "typing",
        "op": "start",
        "message_type": "stream",
        "sender": sender_of(realm, "member"),
        "stream_id": streams["public"],
        "topic": "lunch",
    }
    assert set(found.user_ids) == {users["member"], users["guest"]}
    assert found.required_capability == STREAM_TYPING_CAPABILITY
    validate_event({**found.event, "id": 0})
    # A sender who may post without being subscribed is not told of their own typing.
    from_loner = compute(db, users["loner"], channel("stop", streams["public"]))
    assert from_loner is not None and set(from_loner.user_ids) == {users["member"], users["guest"]}
    # The topic is cut where a message's would be.
    long_topic = compute(db, users["member"], channel("start", streams["public"], "t" * 70))
    assert long_topic is not None and long_topic.event["topic"] == "t" * 57 + "..."


def test_nobody_who_cannot_see_a_private_channel_is_told(db: Database, realm: SampleRealm) -> None:
    users, private = realm.users, realm.streams["private"]
    found = compute(db, users["guest"], channel("start", private))
    assert found is not None
    # Its subscribers only: not the owner and administrator who see it, nor anyone else.
    assert set(found.user_ids) == {users["member"], users["guest"]}
    # Who cannot see it is answered as for a channel that does not exist.
    assert refusal(db, users["loner"], channel("start", private)) == "Invalid channel ID"
    # Who sees it without being subscribed may not post there, and may not type either.
    assert (
        refusal(db, users["admin"], channel("start", private))
        == "Not authorized to send to channel 'private'"
    )


def test_channel_refusals(db: Database, realm: SampleRealm) -> None:
    users, streams = realm.users, realm.streams
    other = make_sample_realm(db, "elsewhere")
    for stream_id in (9_999_999, other.streams["public"], 0, 2**40):
        assert refusal(db, users["member"], channel("start", stream_id)) == "Invalid channel ID"
    # A guest sees a public channel only when subscribed, a web-public one always, and
    # posts only where subscribed.
    guest = users["outsider_guest"]
    assert refusal(db, guest, channel("start", streams["public"])) == "Invalid channel ID"
    assert (
        refusal(db, guest, channel("start", streams["web_public"]))
        == "Not authorized to send to channel 'web-public'"
    )


def test_no_channel_typing_past_the_subscriber_cap(db: Database, realm: SampleRealm) -> None:
    assert MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS == 100
    with db.write() as session:
        crowd = do_create_stream(session, realm.realm_id, "crowd").id
    with db.write() as session:
        ids = [
            do_create_user(session, realm.realm_id, f"crowd{n}@zulip.example.com").id
            for n in range(MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS)
        ]
    with db.write() as session:
        bulk_add_subscriptions(session, realm.realm_id, ids, [crowd])
    full = compute(db, ids[0], channel("start", crowd))
    assert full is not None and len(full.user_ids) == MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS
    with db.write() as session:
        bulk_add_subscriptions(session, realm.realm_id, [realm.users["member"]], [crowd])
    assert compute(db, ids[0], channel("start", crowd)) is None
    # Only active subscribers count.
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, ids[-1])
    again = compute(db, ids[0], channel("start", crowd))
    assert again is not None and ids[-1] not in again.user_ids
    assert len(again.user_ids) == MAX_STREAM_SIZE_FOR_TYPING_NOTIFICATIONS


# --- the endpoint ---------------------------------------------------------------------------


async def test_the_endpoint_answers_zulips_refusals(db: Database, realm: SampleRealm) -> None:
    users, streams = realm.users, realm.streams
    loner = json.dumps([users["loner"]])
    refused: list[tuple[dict[str, Any], str, str]] = [
        ({"to": loner}, "REQUEST_VARIABLE_MISSING", "Missing 'op' argument"),
        ({"to": loner, "op": "foo"}, "BAD_REQUEST", "Invalid op"),
        ({"to": loner, "op": "start", "type": "invalid"}, "BAD_REQUEST", "Invalid type"),
        # `private` is no longer a typing type (Zulip 8.0, feature level 215).
        ({"to": loner, "op": "start", "type": "private"}, "BAD_REQUEST", "Invalid type"),
        ({"op": "start"}, "BAD_REQUEST", "Missing 'to' argument"),
        ({"op": "start", "to": "2"}, "BAD_REQUEST", "to is not a list"),
        ({"op": "start", "to": '[2, "a", 4]'}, "BAD_REQUEST", "to[1] is not an integer"),
        ({"op": "start", "to": "[]"}, "BAD_REQUEST", "Empty 'to' list"),
        ({"op": "start", "to": "[9999999]"}, "BAD_REQUEST", "Invalid user ID 9999999"),
        ({"type": "stream", "op": "start", "topic": "x"}, "BAD_REQUEST", "Missing channel ID"),
        (
            {"type": "stream", "op": "start", "stream_id": "invalid", "topic": "x"},
            "BAD_REQUEST",
            'Argument "stream_id" is not valid JSON.',
        ),
        (
            {"type": "channel", "op": "start", "stream_id": str(streams["public"])},
            "BAD_REQUEST",
            "Missing topic",
        ),
        (
            {"type": "stream", "op": "start", "stream_id": "9999999", "topic": "x"},
            "BAD_REQUEST",
            "Invalid channel ID",
        ),
        (
            {"type": "stream", "op": "start", "stream_id": str(streams["private"]), "topic": "x"},
            "BAD_REQUEST",
            "Invalid channel ID",
        ),
    ]
    async with inprocess_api(db) as api:
        for params, code, message in refused:
            answer = await api.call(
                realm.emails["loner"], realm.api_keys["loner"], "POST", "/typing", params
            )
            assert (answer.status, answer.body["code"], answer.body["msg"]) == (
                400,
                code,
                message,
            ), params
        accepted: list[dict[str, Any]] = [
            {"op": "start", "to": loner},
            {"op": "stop", "to": loner, "type": "direct"},
            {"op": "start", "type": "stream", "stream_id": streams["public"], "topic": "x"},
            {"op": "stop", "type": "channel", "stream_id": streams["public"], "topic": "x"},
            # The other type's parameters are ignored (once they decode, as in Zulip).
            {
                "op": "start",
                "type": "stream",
                "stream_id": streams["public"],
                "topic": "",
                "to": [3],
            },
            {"op": "start", "to": loner, "stream_id": 9999999},
        ]
        for params in accepted:
            answer = await api.call(
                realm.emails["member"], realm.api_keys["member"], "POST", "/typing", params
            )
            assert answer.ok and answer.body == {"result": "success", "msg": ""}, params


def _table_rows(db: Database) -> dict[str, Any]:
    with db.snapshot() as session:
        rows: dict[str, Any] = {
            table.name: session.scalar(select(func.count()).select_from(table))
            for table in Base.metadata.sorted_tables
        }
        rows["realm positions"] = session.execute(
            select(Realm.id, Realm.last_event_seq, Realm.state_seq).order_by(Realm.id)
        ).all()
    return rows


async def test_a_typing_request_writes_nothing(db: Database, realm: SampleRealm) -> None:
    users, streams = realm.users, realm.streams
    requests: list[dict[str, Any]] = [
        {"op": "start", "to": json.dumps([users["loner"], users["guest"]])},
        {"op": "stop", "type": "stream", "stream_id": streams["public"], "topic": "lunch"},
        {"op": "start", "type": "stream", "stream_id": streams["private"], "topic": "x"},
    ]
    before = _table_rows(db)
    async with inprocess_api(db) as api:
        with count_statements(db.engine) as statements:
            answers = [
                await api.call(
                    realm.emails["member"], realm.api_keys["member"], "POST", "/typing", params
                )
                for params in requests
            ]
    assert [answer.ok for answer in answers] == [True, True, True]
    assert _table_rows(db) == before
    assert statements.statements, "the requests read the database"
    for statement in statements.statements:
        assert statement.lstrip().upper().startswith("SELECT"), statement
    notifies = [s for s in statements.statements if "pg_notify" in s]
    # PostgreSQL: one NOTIFY per event, a SELECT outside any transaction; SQLite: none.
    assert len(notifies) == (3 if db.is_postgresql else 0), statements.statements


# --- delivery through the event service ----------------------------------------------------


def register_request(
    event_types: set[str] | None = None, *, channel_typing: bool = True
) -> RegisterRequest:
    return RegisterRequest(
        event_types=frozenset(event_types) if event_types is not None else None,
        fetch_event_types=None,
        capabilities=Capabilities(
            deactivation_peer_events=True, stream_typing_notifications=channel_typing
        ),
        include_subscribers=False,
        queue_lifespan_secs=None,
        user_agent="ZulipPython/0.9.1",
    )


@asynccontextmanager
async def started(db: Database, clock: FakeClock) -> AsyncIterator[EventService]:
    # No heartbeat within a test: a waiting poll ends only with events.
    service = EventService(db, clock=clock, heartbeat_secs=(300.0, 300.0))
    await service.start()
    try:
        assert await service.wait_listening(WAIT_SECS), "the LISTEN connection is not up"
        yield service
    finally:
        await service.stop(drain_timeout=1.0)


async def poll(
    service: EventService,
    user: AuthenticatedUser,
    queue_id: str,
    last_event_id: int,
    dont_block: bool = False,
    waiter: asyncio.Future[Any] | None = None,
) -> list[dict[str, Any]]:
    async with asyncio.timeout(WAIT_SECS):
        answer: PollAnswer = await service.get_events(
            user, queue_id, last_event_id, dont_block, waiter
        )
    events = [json.loads(raw) for raw in answer.events]
    for event in events:
        validate_event(event)
    return events


class ParkingWaiter(asyncio.Future[Any]):
    """The future a poll parks on, which tells the test the moment the service awaits it
    (`parked`): the poll is then waiting, and anything sent next must wake it."""

    def __init__(self) -> None:
        super().__init__()
        self.parked = asyncio.Event()

    def __await__(self) -> Generator[Any, None, Any]:
        self.parked.set()
        return (yield from super().__await__())


async def parked(
    service: EventService, user: AuthenticatedUser, queue_id: str, last_event_id: int
) -> asyncio.Task[list[dict[str, Any]]]:
    """A poll of the queue, started and left waiting before anything is sent."""
    waiter = ParkingWaiter()
    task = asyncio.ensure_future(poll(service, user, queue_id, last_event_id, False, waiter))
    async with asyncio.timeout(WAIT_SECS):
        await waiter.parked.wait()
    return task


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(event["type"], event["id"]) for event in events]


async def test_typing_events_carry_the_newest_durable_id_and_come_once(
    db: Database, realm: SampleRealm
) -> None:
    clock = FakeClock()
    member, loner = who(realm, "member"), who(realm, "loner")
    async with started(db, clock) as service:
        mine = (await service.register(member, register_request()))["queue_id"]
        streams_only = (await service.register(member, register_request({"stream"})))["queue_id"]
        watcher = (await service.register(loner, register_request({"typing"})))["queue_id"]
        with db.write() as session:
            do_create_stream(session, realm.realm_id, "news")
        await service.drain_outbox()

        # A poll with nothing pending waits; a typing event answers it at once, alone.
        waiting = await parked(service, loner, watcher, -1)
        assert await service.send_ephemeral(
            typing_notification, member.id, direct("start", loner.id)
        )
        answered = await waiting
        assert kinds(answered) == [("typing", -1)]
        assert answered[0]["sender"] == sender_of(realm, "member")

        # The sender's own queue got it too, after the durable event it arrived after,
        # carrying that event's id; the queue that takes no typing events did not.
        events = await poll(service, member, mine, -1, dont_block=True)
        assert kinds(events) == [("stream", 0), ("typing", 0)]
        assert kinds(await poll(service, member, streams_only, -1, dont_block=True)) == [
            ("stream", 0)
        ]
        # At most once: the durable event stays until acknowledged, the typing is gone.
        assert kinds(await poll(service, member, mine, -1, dont_block=True)) == [("stream", 0)]
        # Acknowledging the id the typing event carried skips nothing.
        assert await poll(service, member, mine, 0, dont_block=True) == []
        with db.write() as session:
            do_create_stream(session, realm.realm_id, "sports")
        await service.drain_outbox()
        assert kinds(await poll(service, member, mine, 0, dont_block=True)) == [("stream", 1)]
        live = service.live.get(mine)
        assert live is not None and live.checkpoint[1] == 0 and live.state is QueueState.WARM


async def test_typing_events_expire_and_follow_the_client_capability(
    db: Database, realm: SampleRealm
) -> None:
    clock = FakeClock()
    member, guest, loner = who(realm, "member"), who(realm, "guest"), who(realm, "loner")
    public = realm.streams["public"]
    async with started(db, clock) as service:
        capable = (await service.register(member, register_request()))["queue_id"]
        incapable = (await service.register(member, register_request(channel_typing=False)))[
            "queue_id"
        ]
        guests = (await service.register(guest, register_request({"typing"})))["queue_id"]
        lonely = (await service.register(loner, register_request()))["queue_id"]

        waiting = await parked(service, guest, guests, -1)
        assert await service.send_ephemeral(
            typing_notification, member.id, channel("start", public, "lunch")
        )
        (event,) = await waiting
        assert (event["message_type"], event["stream_id"], event["topic"]) == (
            "stream",
            public,
            "lunch",
        )
        assert kinds(await poll(service, member, capable, -1, dont_block=True)) == [("typing", -1)]
        # Zulip: channel typing only for clients that declared `stream_typing_notifications`.
        assert await poll(service, member, incapable, -1, dont_block=True) == []
        # Not subscribed: not told.
        assert await poll(service, loner, lonely, -1, dont_block=True) == []

        # A typing event nobody polls for expires with Zulip's started-expiry period.
        waiting = await parked(service, guest, guests, -1)
        assert await service.send_ephemeral(
            typing_notification, member.id, channel("stop", public, "lunch")
        )
        assert kinds(await waiting) == [("typing", -1)]
        clock.now += TYPING_PROTOCOL_KEYS["server_typing_started_expiry_period_milliseconds"] / 1000
        assert await poll(service, member, capable, -1, dont_block=True) == []


async def test_register_announces_the_typing_periods(db: Database, realm: SampleRealm) -> None:
    member = who(realm, "member")
    async with started(db, FakeClock()) as service:
        everything = await service.register(member, register_request())
        assert {key: everything[key] for key in TYPING_PROTOCOL_KEYS} == {
            "server_typing_started_expiry_period_milliseconds": 15000,
            "server_typing_stopped_wait_period_milliseconds": 5000,
            "server_typing_started_wait_period_milliseconds": 10000,
        }
        realm_only = await service.register(
            member,
            RegisterRequest(
                event_types=None,
                fetch_event_types=frozenset({"realm"}),
                capabilities=Capabilities(),
                include_subscribers=False,
                queue_lifespan_secs=None,
                user_agent=None,
            ),
        )
        # The typing periods are among the `realm` keys (with the realm's settings).
        assert set(TYPING_PROTOCOL_KEYS) <= set(realm_only)
        assert {key: realm_only[key] for key in TYPING_PROTOCOL_KEYS} == {
            key: everything[key] for key in TYPING_PROTOCOL_KEYS
        }
        # Zulip sends them with the `realm` state only.
        without = await service.register(member, register_request({"typing", "stream"}))
        assert not set(TYPING_PROTOCOL_KEYS) & set(without)


# --- a real server process ------------------------------------------------------------------


def zulip_client(base_url: str, realm: SampleRealm, name: str) -> zulip.Client:
    return zulip.Client(
        email=realm.emails[name],
        api_key=realm.api_keys[name],
        site=base_url,
        config_file=os.devnull,
    )


def wait_until_listening(server: LiveServer, backend: str) -> None:
    """On PostgreSQL, a typing event reaches a process once its LISTEN connection is up."""
    if backend == "postgresql":
        server.wait_for_log(LISTENING, WAIT_SECS)


def test_the_zulip_client_sends_and_receives_typing(
    server: LiveServer, realm: SampleRealm, backend: str
) -> None:
    wait_until_listening(server, backend)
    member = zulip_client(server.url, realm, "member")
    guest = zulip_client(server.url, realm, "guest")
    registered = guest.register(
        event_types=["typing"],
        fetch_event_types=["realm"],
        client_capabilities={"stream_typing_notifications": True},
    )
    assert registered["result"] == "success", registered
    assert registered["server_typing_started_wait_period_milliseconds"] == 10000
    queue_id = registered["queue_id"]

    sent = member.set_typing_status({"op": "start", "to": [realm.users["guest"]]})
    assert sent == {"result": "success", "msg": ""}, sent
    answer = guest.get_events(queue_id=queue_id, last_event_id=-1)
    assert answer["result"] == "success", answer
    (event,) = answer["events"]
    validate_event(event)
    assert (event["type"], event["op"], event["message_type"], event["id"]) == (
        "typing",
        "start",
        "direct",
        -1,
    )
    assert {r["user_id"] for r in event["recipients"]} == {
        realm.users["member"],
        realm.users["guest"],
    }

    sent = member.set_typing_status(
        {"op": "stop", "type": "stream", "stream_id": realm.streams["public"], "topic": "lunch"}
    )
    assert sent["result"] == "success", sent
    (event,) = guest.get_events(queue_id=queue_id, last_event_id=-1)["events"]
    assert (event["op"], event["stream_id"], event["topic"]) == (
        "stop",
        realm.streams["public"],
        "lunch",
    )

    refused = member.set_typing_status({"op": "start", "to": [realm.users["guest"]], "type": "x"})
    assert (refused["result"], refused["msg"]) == ("error", "Invalid type")


def test_a_typing_event_does_not_survive_a_restart(
    database_url: str, db: Database, realm: SampleRealm, backend: str
) -> None:
    server = LiveServer(database_url).start()
    try:
        wait_until_listening(server, backend)
        loner = ApiClient(server.url, realm.emails["loner"], realm.api_keys["loner"])
        member = ApiClient(server.url, realm.emails["member"], realm.api_keys["member"])
        kept, witness = (
            loner.register(event_types=["typing", "stream"])["queue_id"] for _ in range(2)
        )
        with db.write() as session:
            do_create_stream(session, realm.realm_id, "news")
        # The durable event first reaches both queues (the witness shows it)...
        first = loner.poll(witness, -1)
        assert first.ok and [(e["type"], e["id"]) for e in first.body["events"]] == [
            ("stream", 0)
        ], first.body
        # ...then the typing event, which one delivery hands to every queue of the user:
        # the witness receives it, carrying the stream event's id; `kept` holds it unpolled.
        member.ok("POST", "/typing", {"op": "start", "to": [realm.users["loner"]]})
        second = loner.poll(witness, 0)
        assert second.ok and [(e["type"], e["id"]) for e in second.body["events"]] == [
            ("typing", 0)
        ], second.body
        assert server.stop() == 0
        server.start()
        loner = ApiClient(server.url, realm.emails["loner"], realm.api_keys["loner"])
        after = loner.poll(kept, -1, dont_block=True)
        assert after.ok, after.body
        # The durable event is back with its id; the typing event is not replayed.
        assert [(e["type"], e["id"]) for e in after.body["events"]] == [("stream", 0)]
    finally:
        if server.process is not None and server.process.poll() is None:
            assert server.stop() == 0


# --- two shards behind nginx ----------------------------------------------------------------


def stop_if_running(shard: LiveServer) -> None:
    if shard.process is not None and shard.process.poll() is None:
        assert shard.stop() == 0, "\n".join(shard.lines[-30:])


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_typing_event_crosses_shards(
    database_url: str, db: Database, realm: SampleRealm, tmp_path: Path
) -> None:
    nginx_binary()  # skip (developer) or fail (CI) before starting anything
    names = ("shard1", "shard2")
    with ExitStack() as stack:
        shards: dict[str, LiveServer] = {}
        for name in names:
            shard = LiveServer(
                database_url, {"EVENTQ_TRUSTED_PROXY": "on"}, extra_args=("--shard", name)
            )
            stack.callback(stop_if_running, shard)
            shards[name] = shard.start()
        for shard in shards.values():
            shard.wait_for_log(LISTENING, WAIT_SECS)
        nginx = NginxServer(
            tmp_path / "nginx",
            [ShardAddress(n, "127.0.0.1", shards[n].port) for n in names],
        )
        stack.callback(lambda: nginx.process is not None and nginx.stop())
        nginx.start()

        guest_at_one = ApiClient(
            shards["shard1"].url, realm.emails["guest"], realm.api_keys["guest"]
        )
        queue_id = guest_at_one.register(
            event_types=["typing"], client_capabilities={"stream_typing_notifications": True}
        )["queue_id"]
        assert queue_id.startswith("shard1."), queue_id
        # Sent to the other shard, which does not hold the queue.
        member_at_two = ApiClient(
            shards["shard2"].url, realm.emails["member"], realm.api_keys["member"]
        )
        member_at_two.ok("POST", "/typing", {"op": "start", "to": [realm.users["guest"]]})
        member_at_two.ok(
            "POST",
            "/typing",
            {"op": "stop", "type": "stream", "stream_id": realm.streams["public"], "topic": "x"},
        )
        guest = ApiClient(nginx.url, realm.emails["guest"], realm.api_keys["guest"])
        received: list[dict[str, Any]] = []
        while len(received) < 2:
            answer = guest.poll(queue_id, -1)
            assert answer.ok, answer.body
            received += answer.body["events"]
        assert [(e["op"], e["message_type"], e["id"]) for e in received] == [
            ("start", "direct", -1),
            ("stop", "stream", -1),
        ]
        # Polled where it lives: no shard claimed the queue to deliver the typing.
        with db.snapshot() as session:
            record = load_descriptor(session, queue_id)
        assert record is not None and (record.owner_shard, record.owner_epoch) == ("shard1", 1)
        (upstream,) = nginx.answered_by(queue_id)
        assert upstream == f"127.0.0.1:{shards['shard1'].port}", upstream
