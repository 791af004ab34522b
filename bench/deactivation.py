"""Deactivating a user subscribed to 1,000 channels in a realm of 10,000 users, on
PostgreSQL, with every user's long-poll parked on the server: the action's wall time and
statement count, the events and recipients it wrote, and the time until every parked
poll has been answered. TARGETS such users are deactivated one after another, each once
every other poll is parked again (acknowledging what the last one brought); the figure
is the median. The baseline beside it is the same number of parked polls answered by a
heartbeat-free no-op: the time to answer them when one event wakes all, measured after
each deactivation (the median is the figure). It answers each with the same bytes, the
median answer of eventq's in that round (a user's answer lists every channel it sees,
about 3.5 KB here), and its client does the same work with each answer as eventq's."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from typing import Any

from sqlalchemy import insert, select

from actions.realms import do_create_realm
from actions.users import do_deactivate_user, generate_api_key
from bench.support import (
    BareTornado,
    ServerProcess,
    bare_parked,
    basic_auth,
    build_request,
    fresh_database,
    http_request,
    wait_until,
)
from models.database import Database
from models.outbox import read_events
from models.tables import Realm, Role, Stream, Subscription, UserProfile
from tests.helpers.statements import count_statements

# Connections opened at once while registering and parking: enough to keep the server's
# database threads busy without exhausting the client's file descriptors.
CONCURRENCY = 200
OTHER_SUBSCRIBERS_PER_CHANNEL = 20
# A poll retried after a refused connection or a heartbeat, at most this many times.
MAX_POLL_TRIES = 100
# Users deactivated one after another, each once every other user's poll is parked
# again; the figure is the median. The bare baseline is measured after each of them.
TARGETS = 3
# What the first round reports of the action itself (every round's are alike).
ACTION_FIGURES = (
    "action_ms",
    "statements",
    "events",
    "peer_remove_events",
    "recipients",
    "parked_polls",
    "answer_bytes",
)


def _populate(
    db: Database, users: int, channels: int
) -> tuple[int, list[tuple[str, str]], list[int]]:
    """A realm of `users` users and TARGETS users subscribed to all `channels` channels."""
    rng = random.Random(377)
    with db.write() as session:
        realm_id = do_create_realm(session, "bench").id
    rows = []
    for index in range(users):
        if index == 0:
            role = Role.OWNER
        elif index < 20:
            role = Role.ADMINISTRATOR
        elif index < users - users // 20:
            role = Role.MEMBER
        else:
            role = Role.GUEST
        rows.append(
            {
                "realm_id": realm_id,
                "email": f"user{index}@bench.example.com",
                "full_name": f"User {index}",
                "role": int(role),
                "api_key": generate_api_key(),
            }
        )
    with db.write() as session:
        session.execute(insert(UserProfile), rows)
        session.execute(
            insert(Stream),
            [
                {
                    "realm_id": realm_id,
                    "name": f"channel {i}",
                    "invite_only": i % 10 < 2,
                    "is_web_public": i % 10 == 9,
                }
                for i in range(channels)
            ],
        )
    with db.snapshot() as session:
        credentials = [
            (u.id, u.email, u.api_key)
            for u in session.scalars(
                select(UserProfile).where(UserProfile.realm_id == realm_id).order_by(UserProfile.id)
            )
        ]
        stream_ids = list(session.scalars(select(Stream.id).where(Stream.realm_id == realm_id)))
    middle = len(credentials) // 2
    targets = [credentials[middle + i][0] for i in range(TARGETS)]
    user_ids = [c[0] for c in credentials]
    subscriptions = [
        {"user_profile_id": target, "stream_id": sid} for target in targets for sid in stream_ids
    ]
    for sid in stream_ids:
        for uid in rng.sample(user_ids, OTHER_SUBSCRIBERS_PER_CHANNEL):
            if uid not in targets:
                subscriptions.append({"user_profile_id": uid, "stream_id": sid})
    with db.write() as session:
        session.execute(insert(Subscription), subscriptions)
    others = [(email, key) for uid, email, key in credentials if uid not in targets]
    return realm_id, others, targets


async def _register(
    port: int, logins: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], float]:
    """A queue for each login: (authorization, queue id) each, and the seconds taken."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def register(email: str, key: str) -> tuple[str, str]:
        async with limit:
            status, body = await http_request(
                port,
                "POST",
                "/api/v1/register",
                basic_auth(email, key),
                {"event_types": ["realm_user", "subscription"], "fetch_event_types": []},
            )
            assert status == 200, body
            return basic_auth(email, key), body["queue_id"]

    started = time.time()
    queues = await asyncio.gather(*(register(e, k) for e, k in logins))
    return queues, time.time() - started


async def _fetch(
    port: int, request: bytes, connecting: asyncio.Semaphore | None = None
) -> tuple[int, bytes, Any]:
    """One request on its own connection (opened under `connecting`, if given): the
    status, the body's bytes and its JSON. Both clients (eventq's polls, the bare
    process's) do exactly this with an answer."""
    if connecting is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        async with connecting:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    raw = await reader.read()
    writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    return int(header.split(b" ", 2)[1]), payload, json.loads(payload)


async def _poll(
    port: int, auth: str, queue_id: str, last_event_id: int
) -> tuple[float, int, bytes]:
    """One client's long-poll until its first real event: when it came, the newest id of
    the answer (the next poll acknowledges it) and the answer's bytes."""
    # Parking 10,000 polls can outlast a heartbeat: poll again until a real event.
    for _ in range(MAX_POLL_TRIES):
        request = build_request(
            "GET",
            "/api/v1/events",
            auth,
            {"queue_id": queue_id, "last_event_id": last_event_id},
            keep_alive=False,
        )
        try:
            status, payload, body = await _fetch(port, request)
        except ConnectionError:
            continue  # the listen backlog overflowed while thousands connected: retry
        assert status == 200 and body["events"], body
        if body["events"][0]["type"] != "heartbeat":
            return time.time(), max(event["id"] for event in body["events"]), payload
        last_event_id = body["events"][-1]["id"]
    raise RuntimeError(f"no event for queue {queue_id} after {MAX_POLL_TRIES} polls")


async def _parked_count(port: int, owner: tuple[str, str]) -> int:
    _, body = await http_request(port, "GET", "/api/v1/eventq/queues", basic_auth(*owner))
    return sum(1 for q in body["queues"] if q["waiting"])


def bare_tornado_baseline(parked: int, answer: bytes) -> float:
    """Milliseconds for a bare Tornado process to answer `parked` parked requests with
    `answer` (an answer of eventq's from the same round), each on its own connection as
    the polls above, released once all of them are parked."""
    bare = BareTornado()
    try:

        async def measure() -> float:
            limit = asyncio.Semaphore(CONCURRENCY)

            async def park() -> float:
                request = build_request("GET", "/park", keep_alive=False)
                for _ in range(MAX_POLL_TRIES):
                    try:
                        status, _, body = await _fetch(bare.port, request, limit)
                    except ConnectionError:
                        continue  # the listen backlog overflowed: retry
                    # What the eventq client does with its answer (`_poll`).
                    assert status == 200 and body["events"][0]["type"] != "heartbeat", body
                    return time.time()
                raise RuntimeError(f"could not park after {MAX_POLL_TRIES} tries")

            tasks = [asyncio.create_task(park()) for _ in range(parked)]
            count = await wait_until(lambda: bare_parked(bare.port), parked, 300.0)
            if count < parked:
                raise RuntimeError(f"only {count} of {parked} requests parked (bare)")
            released = time.time()
            await http_request(bare.port, "POST", "/release", "none", {"body": answer.decode()})
            done = await asyncio.gather(*tasks)
            return 1000 * (max(done) - released)

        return asyncio.run(measure())
    finally:
        bare.stop()


def _wait_parked(
    loop: asyncio.AbstractEventLoop,
    port: int,
    owner: tuple[str, str],
    tasks: list[asyncio.Task[tuple[float, int, bytes]]],
) -> int:
    """Wait until every poll is parked on the server (at most 300 s); how many are."""
    deadline = time.time() + 300
    parked = 0
    while parked < len(tasks) and time.time() < deadline:
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} polls failed: {failed[0].exception()}")
        loop.run_until_complete(asyncio.sleep(0.5))  # benchmark set-up, not a test
        parked = loop.run_until_complete(_parked_count(port, owner))
    return parked


def run(users: int, channels: int) -> dict[str, Any]:
    with fresh_database("postgresql") as url:
        db = Database(url)
        realm_id, logins, targets = _populate(db, users, channels)
        # The longest heartbeat: parking 10,000 polls must not race their heartbeats.
        server = ServerProcess(url, {"EVENTQ_HEARTBEAT_SECS": "85"})
        rss_before = server.rss_kb()
        try:
            loop = asyncio.new_event_loop()
            queues, register_secs = loop.run_until_complete(_register(server.port, logins))
            newest = [-1] * len(queues)
            rounds: list[dict[str, Any]] = []
            for target in targets:
                tasks = [
                    loop.create_task(_poll(server.port, auth, queue_id, newest[i]))
                    for i, (auth, queue_id) in enumerate(queues)
                ]
                parked = _wait_parked(loop, server.port, logins[0], tasks)
                if not rounds:
                    rss_after = server.rss_kb()
                with db.snapshot() as session:
                    before_seq = session.execute(
                        select(Realm.last_event_seq).where(Realm.id == realm_id)
                    ).scalar_one()
                with count_statements(db.engine) as statements:
                    started = time.time()
                    with db.write() as session:
                        do_deactivate_user(session, realm_id, target)
                    committed = time.time()
                answers = loop.run_until_complete(asyncio.gather(*tasks))
                answered = sorted(at for at, _, _ in answers)
                newest = [last for _, last, _ in answers]
                # The bare process answers every request with the median answer by size.
                by_size = sorted((payload for _, _, payload in answers), key=len)
                median_answer = by_size[len(by_size) // 2]
                with db.snapshot() as session:
                    events = read_events(session, realm_id, before_seq)
                # The baseline right after each deactivation, so that both run on the
                # machine as it is then (its load moves from minute to minute).
                bare_ms = bare_tornado_baseline(len(queues), median_answer)
                rounds.append(
                    {
                        "bare_tornado_ms": bare_ms,
                        "action_ms": 1000 * (committed - started),
                        "statements": statements.count,
                        "events": len(events),
                        "peer_remove_events": sum(e.event["op"] == "peer_remove" for e in events),
                        "recipients": sum(len(e.user_ids) for e in events),
                        "parked_polls": parked,
                        "answer_bytes": len(median_answer),
                        "all_answered_ms": 1000 * (answered[-1] - committed),
                        "median_answered_ms": 1000 * (answered[len(answered) // 2] - committed),
                    }
                )
            loop.close()
            first = rounds[0]  # the action's own figures are the same in every round
            return {
                "users": users,
                "channels": channels,
                **{key: first[key] for key in ACTION_FIGURES},
                "rounds": len(rounds),
                "all_answered_ms": statistics.median(r["all_answered_ms"] for r in rounds),
                "all_answered_each_ms": [r["all_answered_ms"] for r in rounds],
                "median_answered_ms": statistics.median(r["median_answered_ms"] for r in rounds),
                "register_per_sec": len(logins) / register_secs,
                "bare_tornado_ms": statistics.median(r["bare_tornado_ms"] for r in rounds),
                "bare_tornado_each_ms": [r["bare_tornado_ms"] for r in rounds],
                "rss_per_live_queue_bytes": 1024 * (rss_after - rss_before) / len(logins),
            }
        finally:
            server.stop()
            db.dispose()
