"""One event to 10,000 parked long-polls (100 users, 100 queues each) on PostgreSQL, and
the server's memory per registered queue and per parked poll, each beside a bare
Tornado process parking as many requests.

* Registered queues: the server's RSS growth while 9,500 queues are registered (after
  500 registered first, to warm the process up), divided by 9,500. Nothing polls them
  yet and none is evicted: eviction needs a minute without a poll, and the benchmark
  reports how many the server's log says were evicted before the polls parked.
* Parked polls: the RSS growth while one keep-alive long-poll per queue connects and
  parks, divided by the polls; the baseline is the same growth of the bare process.
* Fan-out: a writer process creates a channel, which all 100 users receive; the time
  from its commit to the last of the 10,000 answers, beside the time from `POST /event`
  to the last answer of the bare process's 10,000 parked requests. Each side gets
  WARMUP_EVENTS events that are not counted (the first round also warms the clients of
  this process up), then EVENTS events, each once all its polls are parked again; the
  figure is the median.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.support import (
    BareTornado,
    HttpConnection,
    PollFleet,
    ServerProcess,
    Writer,
    bare_parked,
    basic_auth,
    build_request,
    create_realm_with_users,
    fresh_database,
    register_queues,
    wait_until,
    waiting_polls,
)
from models.database import Database

USERS = 100
QUEUES_PER_USER = 100
WARMUP_QUEUES = 500
# Events sent to the parked polls, one at a time (the figure is the median), after the
# uncounted warm-up events.
EVENTS = 7
WARMUP_EVENTS = 1
REGISTER_CONCURRENCY = 50
PARK_TIMEOUT_SECS = 240.0
ANSWER_TIMEOUT_SECS = 300.0
# Let the checkpoint writer and allocator settle before reading RSS.
SETTLE_SECS = 2.0
EVENT_TYPES = ["stream", "realm_user", "subscription"]


async def _eventq(
    server: ServerProcess, credentials: list[tuple[int, str, str]], writer: Writer
) -> dict[str, Any]:
    port = server.port
    auths = [basic_auth(email, key) for _, email, key in credentials]
    owners = [auths[i % USERS] for i in range(USERS * QUEUES_PER_USER)]
    params = {"event_types": EVENT_TYPES, "fetch_event_types": []}
    queue_ids = await register_queues(
        port, owners[:WARMUP_QUEUES], params, concurrency=REGISTER_CONCURRENCY
    )
    await asyncio.sleep(SETTLE_SECS)
    rss_start = server.rss_kb()
    started = time.monotonic()
    queue_ids += await register_queues(
        port, owners[WARMUP_QUEUES:], params, concurrency=REGISTER_CONCURRENCY
    )
    register_secs = time.monotonic() - started
    await asyncio.sleep(SETTLE_SECS)
    rss_registered = server.rss_kb()
    evicted_before_polls = _evicted(server)

    prefixes = [f"/api/v1/events?queue_id={q}&last_event_id=" for q in queue_ids]

    def poll(index: int, last: int) -> bytes:
        return build_request("GET", f"{prefixes[index]}{last}", owners[index])

    fleet = PollFleet(port, len(queue_ids), poll)
    started = time.monotonic()
    await fleet.start()
    try:
        parked = await wait_until(
            lambda: waiting_polls(port, auths[0]), len(queue_ids), PARK_TIMEOUT_SECS, 1.0
        )
        if parked < len(queue_ids):
            raise RuntimeError(f"only {parked} of {len(queue_ids)} polls parked")
        park_secs = time.monotonic() - started
        await asyncio.sleep(SETTLE_SECS)
        rss_parked = server.rss_kb()

        async def send_event() -> float:
            _, committed = await writer.commit()
            return committed

        last, median = await _events(
            fleet, send_event, lambda: waiting_polls(port, auths[0]), len(queue_ids)
        )
        if fleet.errors:
            raise RuntimeError(f"{len(fleet.errors)} clients failed: {fleet.errors[0]}")
        return {
            "queues": len(queue_ids),
            "registers_per_sec": (len(queue_ids) - WARMUP_QUEUES) / register_secs,
            "rss_per_registered_queue_bytes": 1024
            * (rss_registered - rss_start)
            / (len(queue_ids) - WARMUP_QUEUES),
            "evicted_before_polls": evicted_before_polls,
            "evicted_in_all": _evicted(server),
            "park_secs": park_secs,
            "parked": parked,
            "rss_per_parked_poll_bytes": 1024 * (rss_parked - rss_registered) / parked,
            "last_answer_ms": statistics.median(last),
            "last_answer_each_ms": last,
            "median_answer_ms": statistics.median(median),
            "heartbeats": fleet.heartbeats,
            "server_errors": server.log_count(r" (ERROR|WARNING) "),
        }
    finally:
        await fleet.stop()


async def _events(
    fleet: PollFleet,
    send_event: Callable[[], Awaitable[float]],
    parked: Callable[[], Awaitable[int]],
    count: int,
) -> tuple[list[float], list[float]]:
    """EVENTS events, each once every poll is parked again; for each, the milliseconds
    from the event to the last answer and to the median answer."""
    last, median = [], []
    for index in range(WARMUP_EVENTS + EVENTS):
        if index:
            again = await wait_until(parked, count, PARK_TIMEOUT_SECS, 0.5)
            if again < count:
                raise RuntimeError(f"only {again} of {count} polls parked again")
        fleet.start_round()
        event_time = await send_event()
        await fleet.wait_round(ANSWER_TIMEOUT_SECS)
        if index >= WARMUP_EVENTS:
            last.append(1000 * (max(fleet.round_answers) - event_time))
            median.append(1000 * (statistics.median(fleet.round_answers) - event_time))
    return last, median


def _evicted(server: ServerProcess) -> int:
    text = server.log_text()
    return sum(int(n) for n in re.findall(r"evicted (\d+) cold queues", text))


async def _bare(parked_target: int) -> dict[str, Any]:
    bare = BareTornado()
    try:
        auth = basic_auth("user0@fanout.example.com", "x" * 32)

        def poll(index: int, last: int) -> bytes:
            return build_request(
                "GET", f"/poll?queue_id=0123456789abcdef0123456789abcdef&last_event_id={last}", auth
            )

        await asyncio.sleep(SETTLE_SECS)
        rss_start = bare.rss_kb()
        fleet = PollFleet(bare.port, parked_target, poll)
        await fleet.start()
        control = await HttpConnection.open(bare.port)
        try:
            parked = await wait_until(
                lambda: bare_parked(bare.port), parked_target, PARK_TIMEOUT_SECS, 1.0
            )
            if parked < parked_target:
                raise RuntimeError(f"only {parked} of {parked_target} polls parked (bare)")
            await asyncio.sleep(SETTLE_SECS)
            rss_parked = bare.rss_kb()

            async def send_event() -> float:
                sent = time.time()
                await control.request(build_request("POST", "/event"))
                return sent

            last, median = await _events(
                fleet, send_event, lambda: bare_parked(bare.port), parked_target
            )
            if fleet.errors:
                raise RuntimeError(f"{len(fleet.errors)} clients failed: {fleet.errors[0]}")
            return {
                "parked": parked,
                "rss_per_parked_poll_bytes": 1024 * (rss_parked - rss_start) / parked,
                "last_answer_ms": statistics.median(last),
                "last_answer_each_ms": last,
                "median_answer_ms": statistics.median(median),
            }
        finally:
            control.close()
            await fleet.stop()
    finally:
        bare.stop()


def run() -> dict[str, Any]:
    with fresh_database("postgresql") as url:
        db = Database(url)
        realm_id, credentials = create_realm_with_users(db, "fanout", USERS)
        db.dispose()
        # The longest heartbeat: parking 10,000 polls must not race their heartbeats.
        server = ServerProcess(url, {"EVENTQ_HEARTBEAT_SECS": "85"})
        writer = Writer(url, realm_id)
        try:
            eventq = asyncio.run(_eventq(server, credentials, writer))
        finally:
            writer.close()
            server.stop()
    bare = asyncio.run(_bare(eventq["parked"]))
    return {"eventq": eventq, "bare": bare}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
