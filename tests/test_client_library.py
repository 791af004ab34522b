"""The Python client library (`clients.client`, `clients.watch`) against real servers.

Live tests start `eventq serve` on both backends, run `EventClient.run()` as a task and
act in-process on the database; they wait for conditions (`Changes.until`), never for
time. Backoff and retries are tested without waiting: `sleep` and `random` are
injected, and errors come from a closed port or a small in-process fake server.
A server restart changes its port, so the restart test goes through a TCP proxy whose
upstream port follows the server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from sqlalchemy import select
from sqlalchemy.orm import Session

from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_deactivate_user, do_reactivate_user
from clients.client import (
    ALL_EVENTS,
    BACKOFF_CAP_SECS,
    LEGACY_FEATURE_LEVEL,
    STATE_KEYS,
    AuthenticationError,
    EventClient,
    backoff_delay,
)
from clients.state import StateCache
from clients.watch import watch
from models.database import Database
from models.outbox import read_events
from models.tables import Realm
from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server

# Generous bound on one condition (an event crossing server and client): a failure
# shows as a timeout with the state that differed, never as a hang.
CONDITION_TIMEOUT_SECS = 15.0
# stop() must end run() well within a long-poll (the server answers a parked poll after
# 45-55 s): ten seconds still tells "promptly" from "at the heartbeat", and leaves a
# loaded machine time to schedule the client's task.
STOP_WITHIN_SECS = 10.0
# Retries in the restart test wait at most this long: the backoff itself is tested
# with injected sleeps, here it only must not slow the test down.
FAST_RETRY_SECS = 0.05


# -- waiting for conditions -------------------------------------------------------------


class Changes:
    """Something changed (an event, a state, a line): wakes `until`, which rechecks."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self, *_: object) -> None:
        self._changed.set()

    async def until(
        self, predicate: Callable[[], bool], what: str, timeout: float = CONDITION_TIMEOUT_SECS
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    # No await between the check and clear(): no change is missed.
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


class Watched:
    """An `EventClient` running as a task, with every callback recorded."""

    def __init__(self, client: EventClient) -> None:
        self.client = client
        self.changes = Changes()
        self.events: list[dict[str, Any]] = []
        self.states: list[str] = []
        self.resyncs: list[StateCache] = []
        self.heartbeats: list[dict[str, Any]] = []
        client.on(ALL_EVENTS, self._event)
        client.on_connection_state = self._state
        client.on_resync = self._resync
        client.on_heartbeat = self._heartbeat
        self.task: asyncio.Task[None] | None = None

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changes.notify()

    async def _state(self, state: str) -> None:  # async on purpose: both kinds are supported
        self.states.append(state)
        self.changes.notify()

    def _resync(self, state: StateCache) -> None:
        self.resyncs.append(state)
        self.changes.notify()

    def _heartbeat(self, event: dict[str, Any]) -> None:
        self.heartbeats.append(event)
        self.changes.notify()

    async def start(self) -> Watched:
        self.task = asyncio.create_task(self.client.run())
        self.task.add_done_callback(self.changes.notify)
        await self.changes.until(lambda: self.states[-1:] == ["connected"], "connected")
        return self

    async def converge(self, expected: dict[str, Any], what: str) -> None:
        """Wait until the cache renders exactly `expected` (a fresh register's state)."""
        try:
            await self.changes.until(
                lambda: self.client.state.to_register_shape() == expected, what
            )
        except AssertionError:
            assert self.client.state.to_register_shape() == expected, what
            raise

    async def close(self, delete_queue: bool = True) -> None:
        await self.client.close(delete_queue=delete_queue)
        if self.task is not None:
            await self.task  # raises what run() raised


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def realm(db: Database) -> SampleRealm:
    return make_sample_realm(db)


@pytest.fixture
def server(database_url: str, realm: SampleRealm, db: Database) -> Iterator[LiveServer]:
    with live_server(database_url) as running:
        yield running
        settle(running, realm, db)


def settle(server: LiveServer, realm: SampleRealm, db: Database) -> None:
    """Before SIGTERM: commit one event and wait until a poll receives it.

    Works around a server bug on Python 3.11 (reported to the lead): a commit by the
    server itself just before SIGTERM (the descriptor delete that follows
    `DELETE /events`) wakes the outbox consumer in the very loop iteration that
    cancels it, `asyncio.wait_for` swallows the cancellation, and the server never
    exits. Once this event was delivered, the consumer has settled after every commit.
    """
    caller = api(server.url, realm, "owner")
    queue_id = caller.register(event_types=["stream"])["queue_id"]
    with db.write() as session:
        do_create_stream(session, realm.realm_id, "teardown barrier")
    answer = caller.poll(queue_id, -1)  # blocks until the event is routed
    assert answer.ok and answer.body["events"][0]["type"] == "stream", answer.body


def event_client(site: str, realm: SampleRealm, name: str, **options: Any) -> EventClient:
    return EventClient(site, realm.emails[name], realm.api_keys[name], **options)


def api(site: str, realm: SampleRealm, name: str) -> ApiClient:
    return ApiClient(site, realm.emails[name], realm.api_keys[name])


async def act(db: Database, action: Callable[[Session], object]) -> None:
    """Run an action in its own write transaction, off the event loop."""

    def work() -> None:
        with db.write() as session:
            action(session)

    await asyncio.to_thread(work)


async def fresh_state(site: str, realm: SampleRealm, name: str) -> dict[str, Any]:
    """The state keys of a fresh register (raw HTTP, OpenAPI-checked), queue deleted."""
    caller = api(site, realm, name)

    def work() -> dict[str, Any]:
        answer = caller.register(
            event_types=["realm_user", "subscription", "stream"],
            include_subscribers=True,
            client_capabilities={"deactivation_peer_events": True},
        )
        caller.ok("DELETE", "/events", {"queue_id": answer["queue_id"]})
        return {key: answer[key] for key in STATE_KEYS if key in answer}

    return await asyncio.to_thread(work)


async def fast_sleep(delay: float) -> None:
    """The client's injected back-off sleep, shortened: a deliberate wait under test."""
    await asyncio.sleep(min(delay, FAST_RETRY_SECS))  # deliberate: the back-off itself


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def realm_seq(db: Database, realm_id: int) -> int:
    with db.snapshot() as session:
        return int(
            session.execute(select(Realm.last_event_seq).where(Realm.id == realm_id)).scalar_one()
        )


# -- backoff, without a server ----------------------------------------------------------


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    top = [backoff_delay(n, lambda: 1.0) for n in range(9)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [backoff_delay(n, lambda: 0.25) for n in range(3)] == [0.125, 0.25, 0.5]
    rng = random.Random(377)
    jittered = [backoff_delay(n, rng.random) for n in range(200)]
    assert all(0.0 <= d < min(BACKOFF_CAP_SECS, 0.5 * 2**n) for n, d in enumerate(jittered))
    assert len(set(jittered)) == len(jittered), "full jitter: no two waits alike"
    assert backoff_delay(100_000, lambda: 1.0) == BACKOFF_CAP_SECS  # no float overflow


def test_cache_keeps_own_keys_and_applies_zulips_stream_forms() -> None:
    """Without a server: the current user's keys follow updates about that user only; a
    stream delete by `stream_ids` (or by id-only `streams`) and a stream update apply."""
    me, peer = 7, 8
    people = [
        {"user_id": me, "email": "me@example.com", "full_name": "Me", "is_active": True},
        {"user_id": peer, "email": "peer@example.com", "full_name": "Peer", "is_active": True},
    ]
    channels = [{"stream_id": s, "name": f"c{s}", "description": ""} for s in (20, 21, 22)]
    answer = {
        "realm_users": people,
        "realm_non_active_users": [],
        "user_id": me,
        "full_name": "Me",
        "is_admin": False,
        "is_owner": False,
        "is_moderator": False,
        "is_guest": True,
        "streams": channels,
    }
    cache = StateCache.from_register(answer, me)
    assert cache.to_register_shape()["full_name"] == "Me"

    def update(user_id: int, **change: object) -> None:
        cache.apply(
            {"type": "realm_user", "op": "update", "person": {"user_id": user_id, **change}}
        )

    update(peer, full_name="Someone else")
    update(me, full_name="Renamed")
    update(me, role=300)
    shape = cache.to_register_shape()
    assert (shape["full_name"], shape["is_moderator"], shape["is_guest"]) == (
        "Renamed",
        True,
        False,
    )
    assert shape["realm_users"][1]["full_name"] == "Someone else"

    cache.apply(
        {"type": "stream", "op": "delete", "streams": [{"stream_id": 20}], "stream_ids": [20]}
    )
    cache.apply({"type": "stream", "op": "delete", "streams": [{"stream_id": 21}]})  # older form
    cache.apply(
        {"type": "stream", "op": "update", "stream_id": 22, "property": "name", "value": "new"}
    )
    assert cache.to_register_shape()["streams"] == [{**channels[2], "name": "new"}]


async def test_connection_errors_are_retried_with_backoff_until_stop() -> None:
    delays: list[float] = []

    async def recording_sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 7:
            refused.stop()
        await asyncio.sleep(0)  # deliberate: yield once, as the real back-off would

    refused = EventClient(
        f"http://127.0.0.1:{closed_port()}",
        "a@example.com",
        "key",
        sleep=recording_sleep,
        random=lambda: 1.0,
    )
    watched = Watched(refused)
    await asyncio.wait_for(refused.run(), CONDITION_TIMEOUT_SECS)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert watched.states == ["connecting", "stopped"], "never connected, so never reconnecting"
    await refused.close()


class _FakeApi(tornado.web.RequestHandler):
    """One endpoint of a scripted server: answers its list of (status, body) in turn."""

    def initialize(self, script: list[tuple[int, dict[str, Any]]], seen: list[Any]) -> None:
        self.script = script
        self.seen = seen

    def _answer(self) -> None:
        self.seen.append(
            (
                self.request.method,
                self.request.path,
                {k: v[-1].decode() for k, v in self.request.arguments.items()},
                self.request.headers.get("Authorization"),
                self.request.headers.get("User-Agent"),
            )
        )
        status, body = self.script.pop(0)
        self.set_status(status)
        self.finish(json.dumps(body))

    def get(self) -> None:
        self._answer()

    def post(self) -> None:
        self._answer()


async def test_legacy_server_5xx_retries_heartbeats_and_auth_stop() -> None:
    """Against a scripted server below feature level 377: register, two 503s, an event
    (a deactivation the cache must apply itself), a heartbeat, then 401."""
    me, peer, channel = 7, 8, 20
    people = [
        {"user_id": me, "email": "me@example.com", "full_name": "Me", "is_active": True},
        {"user_id": peer, "email": "peer@example.com", "full_name": "Peer", "is_active": True},
    ]
    register = {
        "result": "success",
        "msg": "",
        "queue_id": "q1",
        "last_event_id": -1,
        "zulip_feature_level": LEGACY_FEATURE_LEVEL - 1,
        # The current user as every Zulip server names it with realm_user state; the
        # client takes its id from here, not from matching its email.
        "user_id": me,
        "realm_users": people,
        "realm_non_active_users": [],
        "subscriptions": [{"stream_id": channel, "name": "general", "subscribers": [me, peer]}],
    }
    deactivate = {"type": "realm_user", "op": "update", "id": 0}
    deactivate["person"] = {"user_id": peer, "is_active": False}
    error = {"result": "error", "msg": "down", "code": "BAD_REQUEST"}
    gone = {"result": "error", "msg": "Account is deactivated", "code": "USER_DEACTIVATED"}
    polls = [
        (503, error),
        (503, error),
        (200, {"result": "success", "msg": "", "events": [deactivate], "queue_id": "q1"}),
        (200, {"result": "success", "msg": "", "events": [{"type": "heartbeat", "id": 0}]}),
        (401, gone),
    ]
    seen: list[Any] = []
    app = tornado.web.Application(
        [
            (r"/api/v1/register", _FakeApi, {"script": [(200, register)], "seen": seen}),
            (r"/api/v1/events", _FakeApi, {"script": polls, "seen": seen}),
        ]
    )
    [listener] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    fake = tornado.httpserver.HTTPServer(app)
    fake.add_sockets([listener])
    delays: list[float] = []

    async def recording_sleep(delay: float) -> None:
        delays.append(delay)

    try:
        client = EventClient(
            f"http://127.0.0.1:{listener.getsockname()[1]}/",
            "Me@Example.com",
            "secret",
            sleep=recording_sleep,
            random=lambda: 0.5,
        )
        watched = Watched(client)
        with pytest.raises(AuthenticationError) as refused:
            await asyncio.wait_for(client.run(), CONDITION_TIMEOUT_SECS)
        await client.close()
    finally:
        fake.stop()
        await fake.close_all_connections()

    assert refused.value.code == "USER_DEACTIVATED" and refused.value.status == 401
    assert client.user_id == me and client.state.removes_deactivated_users
    assert client.state.members_of(channel) == {me}, "legacy: the cache removed the user"
    assert [e["id"] for e in watched.events] == [0] and watched.heartbeats == [
        {"type": "heartbeat", "id": 0}
    ]
    assert delays == [0.25, 0.5], "two 5xx answers: two jittered backoffs"
    assert watched.states == ["connecting", "connected", "reconnecting", "connected", "stopped"]
    method, path, params, auth, agent = seen[0]
    assert (method, path, agent) == ("POST", "/api/v1/register", "eventq-client/0.1")
    assert auth == "Basic " + base64.b64encode(b"Me@Example.com:secret").decode()
    assert json.loads(params["event_types"]) == ["realm_user", "subscription", "stream"]
    assert "realm_user" in json.loads(params["fetch_event_types"])
    assert params["include_subscribers"] == "true"
    assert json.loads(params["client_capabilities"]) == {"deactivation_peer_events": True}
    # Every poll acknowledges what was applied: -1 until the event, then its id 0; after
    # an error the first poll does not block, so a server that is back answers at once.
    acks = [(p["last_event_id"], p["dont_block"]) for _, _, p, _, _ in seen[1:]]
    assert acks == [("-1", "false"), ("-1", "true"), ("-1", "true"), ("0", "false"), ("0", "false")]


# -- against a live server ---------------------------------------------------------------


async def test_cache_converges_through_subscribe_unsubscribe_deactivate_reactivate(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    viewers = {
        name: await Watched(event_client(server.url, realm, name)).start()
        for name in ("owner", "member")
    }
    users, streams = realm.users, realm.streams
    for name, viewer in viewers.items():
        # The current user comes from register's own keys, not from a guess.
        assert viewer.client.user_id == users[name]
        assert viewer.client.state.own["email"] == realm.emails[name]
        assert viewer.client.state.own["is_admin"] is (name == "owner")
    steps: list[tuple[str, Callable[[Session], object]]] = [
        (
            "subscribe loner to public and private",
            lambda s: bulk_add_subscriptions(
                s, realm.realm_id, [users["loner"]], [streams["public"], streams["private"]]
            ),
        ),
        (
            "unsubscribe member from public",
            lambda s: bulk_remove_subscriptions(
                s, realm.realm_id, [users["member"]], [streams["public"]]
            ),
        ),
        (
            # The member loses sight of the private channel: a stream delete by id.
            "unsubscribe member from private",
            lambda s: bulk_remove_subscriptions(
                s, realm.realm_id, [users["member"]], [streams["private"]]
            ),
        ),
        ("deactivate guest", lambda s: do_deactivate_user(s, realm.realm_id, users["guest"])),
        ("reactivate guest", lambda s: do_reactivate_user(s, realm.realm_id, users["guest"])),
    ]
    for what, action in steps:
        await act(db, action)
        for name, viewer in viewers.items():
            expected = await fresh_state(server.url, realm, name)
            await viewer.converge(expected, f"{name} after: {what}")
            if what == "deactivate guest":
                cache = viewer.client.state
                assert cache.users[users["guest"]]["is_active"] is False
                assert all(users["guest"] not in m for m in cache.subscribers.values()), name
    for name, viewer in viewers.items():
        assert viewer.resyncs == [], f"{name}'s cache never contradicted an event"
        await viewer.close()
        assert viewer.states[-1] == "stopped"


async def test_deactivation_removes_the_user_from_every_member_list(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    owner = await Watched(event_client(server.url, realm, "owner")).start()
    member = realm.users["member"]
    listed = {s for s, m in owner.client.state.subscribers.items() if member in m}
    assert listed == set(realm.streams.values())
    await act(db, lambda s: do_deactivate_user(s, realm.realm_id, member))
    await owner.changes.until(
        lambda: any(
            e["type"] == "realm_user" and e["person"] == {"user_id": member, "is_active": False}
            for e in owner.events
        ),
        "the realm_user deactivation event",
    )
    # The full sequence: peer_remove events came first, so StateCache's own check passed.
    removed = [e for e in owner.events if e.get("op") == "peer_remove"]
    assert {s for e in removed for s in e["stream_ids"]} == listed
    assert all(member not in m for m in owner.client.state.subscribers.values())
    assert owner.resyncs == [] and not owner.client.state.removes_deactivated_users
    await owner.close()


async def test_deactivated_user_stops_with_an_authentication_error(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    member = await Watched(event_client(server.url, realm, "member")).start()
    await act(db, lambda s: do_deactivate_user(s, realm.realm_id, realm.users["member"]))
    assert member.task is not None
    with pytest.raises(AuthenticationError) as stopped:
        await asyncio.wait_for(asyncio.shield(member.task), CONDITION_TIMEOUT_SECS)
    assert stopped.value.code == "USER_DEACTIVATED"
    assert member.states[-1] == "stopped"
    await member.client.close()


async def test_queue_deleted_on_the_server_re_registers_and_calls_on_resync(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    owner = await Watched(event_client(server.url, realm, "owner")).start()
    old_queue = owner.client.queue_id
    old_state = owner.client.state
    caller = api(server.url, realm, "owner")
    await asyncio.to_thread(caller.ok, "DELETE", "/events", {"queue_id": old_queue})
    await owner.changes.until(lambda: len(owner.resyncs) == 1, "on_resync")
    assert owner.resyncs[0] is owner.client.state is not old_state
    assert owner.client.queue_id not in (None, old_queue)
    # The new queue delivers: the cache keeps converging after the resync.
    await act(db, lambda s: do_create_stream(s, realm.realm_id, "after resync"))
    await owner.converge(await fresh_state(server.url, realm, "owner"), "after the resync")
    assert owner.states.count("reconnecting") == 0, "a lost queue is not a lost connection"
    await owner.close()


class TcpProxy:
    """Forwards loopback connections to `upstream` (changeable), so a client keeps one
    address while the server behind it restarts on another port."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            except OSError:
                return  # server down: the client sees its connection closed
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.close()


async def test_client_survives_a_server_restart_and_keeps_its_queue(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    proxy = await TcpProxy(server.port).start()
    owner = Watched(event_client(proxy.url, realm, "owner", sleep=fast_sleep))
    try:
        await owner.start()
        queue_id = owner.client.queue_id
        await act(db, lambda s: do_create_stream(s, realm.realm_id, "before restart"))
        await owner.converge(await fresh_state(server.url, realm, "owner"), "before restart")

        assert await asyncio.to_thread(server.stop) == 0
        await owner.changes.until(lambda: "reconnecting" in owner.states, "reconnecting")
        await act(db, lambda s: do_create_stream(s, realm.realm_id, "while down"))
        await asyncio.to_thread(server.start)
        proxy.upstream = server.port

        await owner.changes.until(lambda: owner.states[-1] == "connected", "connected again")
        await owner.converge(await fresh_state(server.url, realm, "owner"), "after restart")
        assert owner.client.queue_id == queue_id and owner.resyncs == []
        names = [s["name"] for e in owner.events if e["type"] == "stream" for s in e["streams"]]
        assert names == ["before restart", "while down"], "no event lost or repeated"
        await owner.close()
    finally:
        await proxy.close()


async def test_stop_ends_run_promptly_and_close_deletes_the_queue(
    server: LiveServer, realm: SampleRealm
) -> None:
    owner = await Watched(event_client(server.url, realm, "owner")).start()
    assert owner.task is not None and owner.client.queue_id is not None
    queue_id = owner.client.queue_id
    owner.client.stop()  # the poll is parked on the server: nothing else would wake it
    await asyncio.wait_for(asyncio.shield(owner.task), STOP_WITHIN_SECS)
    assert owner.states[-1] == "stopped"
    await owner.close(delete_queue=True)
    answer = await asyncio.to_thread(api(server.url, realm, "owner").poll, queue_id, -1, True)
    assert answer.status == 400 and answer.body["code"] == "BAD_EVENT_QUEUE_ID"


class LineOutput(io.StringIO):
    """A StringIO that reports each write, so a test can await a printed line."""

    def __init__(self, changes: Changes) -> None:
        super().__init__()
        self.changes = changes

    def write(self, text: str) -> int:
        written = super().write(text)
        self.changes.notify()
        return written

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


async def _watching(
    out: LineOutput, run: Callable[[], Coroutine[Any, Any, None]]
) -> asyncio.Task[None]:
    task = asyncio.create_task(run())
    task.add_done_callback(out.changes.notify)
    await out.changes.until(
        lambda: task.done() or any(line.startswith("# watching") for line in out.lines()),
        "the watch header",
    )
    if task.done():
        task.result()
    return task


async def test_watch_prints_events_and_member_summaries(
    server: LiveServer, realm: SampleRealm, db: Database
) -> None:
    email = realm.emails["owner"]
    key = realm.api_keys["owner"]
    member = realm.emails["member"]
    changes = Changes()

    out = LineOutput(changes)
    stop = asyncio.Event()
    task = await _watching(out, lambda: watch(server.url, email, key, out, stop=stop))
    before = realm_seq(db, realm.realm_id)
    await act(db, lambda s: do_deactivate_user(s, realm.realm_id, realm.users["member"]))
    update = f"realm_user update {member} is_active=false"
    await changes.until(lambda: any(update in line for line in out.lines()), "the update line")
    stop.set()
    await asyncio.wait_for(task, CONDITION_TIMEOUT_SECS)

    with db.snapshot() as session:
        sent = [
            e
            for e in read_events(session, realm.realm_id, before)
            if realm.users["owner"] in e.user_ids
        ]
    lines = out.lines()
    event_lines = [line for line in lines if line.startswith("[")]
    assert len(event_lines) == len(sent), lines
    assert all(" subscription peer_remove #" in line for line in event_lines[:-1]), lines
    assert event_lines[-1].endswith(update), lines
    summaries = [line for line in lines if line.startswith("members: ")]
    for channel in ("public", "private", "web-public"):
        assert any(f"#{channel} -{member}" in line for line in summaries), (channel, lines)

    out = LineOutput(changes)
    task = await _watching(out, lambda: watch(server.url, email, key, out, max_events=1))
    await act(db, lambda s: do_create_stream(s, realm.realm_id, "watched"))
    await asyncio.wait_for(task, CONDITION_TIMEOUT_SECS)
    assert [line for line in out.lines() if not line.startswith("#")] == [
        "[0] stream create #watched"
    ]

    # A stream delete names channels by id only; watch still prints the name it knew.
    guest = realm.emails["guest"]
    out = LineOutput(changes)
    task = await _watching(
        out, lambda: watch(server.url, guest, realm.api_keys["guest"], out, max_events=2)
    )
    await act(
        db,
        lambda s: bulk_remove_subscriptions(
            s, realm.realm_id, [realm.users["guest"]], [realm.streams["private"]]
        ),
    )
    await asyncio.wait_for(task, CONDITION_TIMEOUT_SECS)
    assert [line for line in out.lines() if line.startswith("[")] == [
        "[0] subscription remove #private",
        "[1] stream delete #private",
    ]
